package spool

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	// DefaultSegmentBytes is Config.SegmentBytes.
	DefaultSegmentBytes = 32 << 20
	// DefaultMaxBytes is Config.MaxBytes: 4 GiB.
	DefaultMaxBytes = 4 << 30
	// DefaultSyncInterval is Config.SyncInterval.
	DefaultSyncInterval = time.Second
	// MaxRecordBytes bounds one record's data.
	MaxRecordBytes = 1 << 30
)

const (
	magic      = "NDLBSPL2"
	headerSize = 16
	suffix     = ".seg"
	// spareSuffix names a segment file kept for reuse: writing over
	// pages the page cache holds costs the kernel about half of what new
	// pages in a new file do, and nothing is freed or allocated.
	spareSuffix = ".spare"
	// compactSuffix names the file a segment with damage in its middle
	// is rewritten into, before it is renamed over the segment.
	compactSuffix = ".compact"
	// maxSpares is how many spare files are kept.
	maxSpares = 2
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors.
var (
	// ErrClosed: the spool was closed.
	ErrClosed = errors.New("spool: closed")
	// ErrTooLarge: a record larger than the whole spool, or than
	// MaxRecordBytes.
	ErrTooLarge = errors.New("spool: record larger than the spool")
	// ErrFull: the spool is full and its policy is not to wait.
	ErrFull = errors.New("spool: full")
	// ErrInUse: another Spool holds the directory.
	ErrInUse = errors.New("spool: directory in use")
)

// Full is what Append does when the spool holds Config.MaxBytes.
type Full int

// The policies.
const (
	// Block waits until acknowledgements make room (backpressure).
	Block Full = iota
	// DropOldest deletes the oldest sealed segments, reporting their
	// records not yet acknowledged to Config.OnDrop.
	DropOldest
)

// Sync is when appended records are made durable against power loss.
type Sync int

// The sync modes.
const (
	// SyncInterval fsyncs the segment being written every SyncInterval.
	SyncInterval Sync = iota
	// SyncAlways returns from Append after an fsync covering the record.
	SyncAlways
	// SyncNever never fsyncs (the kernel writes back when it will).
	SyncNever
)

// Config is a spool's directory and limits. Start from DefaultConfig.
type Config struct {
	Dir          string
	MaxBytes     int64
	SegmentBytes int64
	Full         Full
	Sync         Sync
	SyncInterval time.Duration
	// OnDrop, if set, is told of records DropOldest deleted before they
	// were acknowledged: how many, and their lines.
	OnDrop func(records, lines int)
	// OnLost, if set, is told of records Next could not read back (a
	// record damaged on disk while the spool ran, a segment file
	// removed): how many, their lines, and what went wrong. It is called
	// as Next leaves the segment, with the spool's lock held.
	OnLost func(records, lines int, err error)
}

// DefaultConfig returns the defaults for dir.
func DefaultConfig(dir string) Config {
	return Config{Dir: dir, MaxBytes: DefaultMaxBytes, SegmentBytes: DefaultSegmentBytes, SyncInterval: DefaultSyncInterval}
}

// ID names a record: its segment and its offset there.
type ID struct {
	Seg uint64
	Off int64
}

// Record is one record Next returns.
type Record struct {
	ID    ID
	Lines int
	Data  []byte // valid until the next Next
	// Replayed: the record was in the spool when it was opened (a
	// previous process appended it).
	Replayed bool
}

// Stats are a spool's counters.
type Stats struct {
	Bytes    int64 // on disk, in segments not yet deleted
	Records  int   // not yet acknowledged
	Lines    int   // in the records not yet acknowledged
	Segments int
	// HandedOff counts the appends AppendHandOff handed to its caller
	// (the others are read back by Next).
	HandedOff uint64
	// Appends, Syncs, Replayed and Acked count since Open;
	// CorruptTails counts segments found damaged at Open; Dropped and DroppedLines
	// what DropOldest deleted unacknowledged.
	Appends, Syncs, Replayed, Acked, CorruptTails, Dropped, DroppedLines uint64
	// CorruptBytes counts the damaged bytes cut from them: the records
	// that did not check, up to the next whole record or the end.
	CorruptBytes uint64
	// Lost and LostLines count the records Next could not read back
	// (Config.OnLost).
	Lost, LostLines uint64
	// SyncTime is the time spent in fsync; SyncErrors counts fsyncs that
	// failed (LastSyncError is the last one's error): the records stay
	// spooled, but may not survive a power loss.
	SyncTime      time.Duration
	SyncErrors    uint64
	LastSyncError error
	// Oldest is when the oldest segment still held was created (zero
	// when there is none).
	Oldest time.Time
	// Waiting is the appends waiting for room (Block, the spool full).
	Waiting int
}

type segment struct {
	seq        uint64
	path       string
	size       int64
	records    int
	lines      int
	acked      int
	ackedLines int
	ackedOffs  []int64 // the offsets of the records acknowledged (Close cuts them out)
	created    time.Time
	fromReplay bool // existed at Open
	fed        int  // records Next returned
	// sealedSynced: the segment was sealed after an fsync that covers
	// all of it (or sealed in a mode where no Append waits for one).
	sealedSynced bool
	fedLines     int
	// lost is what went wrong reading the segment back: Next skipped
	// damage in it, and counts the records it missed as it leaves.
	lost error
	// disk is what the file takes: size, or more while a reused file
	// holds what its earlier use wrote past size.
	disk int64
	// unsynced is the sealed segment's file while its fsync is owed
	// (SyncInterval: the next tick's, unless the segment is deleted
	// first, when its pages need never reach the disk).
	unsynced *os.File
}

// Spool is a directory of segments. Its methods are safe for concurrent
// use.
type Spool struct {
	cfg Config

	mu           sync.Mutex
	room         *sync.Cond // signalled when bytes are freed or the spool closes
	synced       *sync.Cond // signalled when an fsync completes
	segs         []*segment // oldest first; the last is being written
	bySeq        map[uint64]*segment
	active       *os.File
	size         int64 // total bytes of segs
	written      int64 // bytes written to the active segment
	syncedOff    int64 // of the active segment, covered by an fsync
	syncing      bool
	closed       bool
	closing      bool       // Close began: no more appends
	readerParked bool       // Next waits for a record: it queued the one before
	ended        bool       // EndInput: no more appends
	closedReader bool       // Next's stop was closed
	more         *sync.Cond // signalled when a record is appended, or input ends
	rSeq         uint64     // Next's cursor: the segment
	rOff         int64      // and the offset in it (0: its start)
	rFile        *os.File   // the segment rSeq, open for reading
	rBuf         []byte
	stats        Stats
	header       [headerSize]byte // the record header being written; guarded by mu
	activeFd     uintptr          // s.active's descriptor
	syncErr      error            // the last fsync's failure
	dirDirty     bool             // segments were made or deleted since the directory's last fsync
	trash        []spare          // files of removed segments not yet deleted (their bytes still counted)
	waiting      int              // appends waiting for room (Block); guarded by mu
	spares       []spare          // files of deleted segments, kept for new ones
	sweep        chan struct{}    // wakes background to delete the trash
	sweeping     sync.Mutex       // held by deleteTrash
	unfed        int              // records Next has not returned (nor an Append handed off)
	stop         chan struct{}
	done         chan struct{}
	lock         *os.File // flock'ed while the spool is open
}

// spare is a file kept for a new segment, and its size (counted in
// Spool.size).
type spare struct {
	path string
	size int64
}

// Check reports whether a spool could be made in dir, without making
// it: an existing directory must take a file (made and removed at once);
// for one still to be made, the nearest directory above it that exists
// must be writable. Open can still find it in use.
func Check(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return checkParent(dir)
	case err != nil:
		return fmt.Errorf("spool: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("spool: %s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".check-*")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// checkParent checks that Open could make dir, which does not exist:
// the nearest directory above it that exists must be one, and writable
// by this process.
func checkParent(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		switch {
		case (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) && p != filepath.Dir(p):
			continue
		case err != nil:
			return fmt.Errorf("spool: %w", err)
		case !fi.IsDir():
			return fmt.Errorf("spool: cannot make %s: %s is not a directory", dir, p)
		}
		if err := unix.Faccessat(unix.AT_FDCWD, p, unix.W_OK|unix.X_OK, unix.AT_EACCESS); err != nil {
			return fmt.Errorf("spool: cannot make %s: %w", dir, &fs.PathError{Op: "access", Path: p, Err: err})
		}
		return nil
	}
}

// Open opens (making it if needed) the spool in cfg.Dir, checks every
// segment there (cutting torn or corrupt tails) and starts a new segment
// for appends. Next returns the records found first.
func Open(cfg Config) (*Spool, error) {
	switch {
	case cfg.Dir == "":
		return nil, errors.New("spool: no directory")
	case cfg.MaxBytes <= 0 || cfg.SegmentBytes <= 0:
		return nil, errors.New("spool: sizes must be positive")
	case cfg.MaxBytes < 2*cfg.SegmentBytes:
		return nil, fmt.Errorf("spool: %d bytes hold fewer than two segments of %d", cfg.MaxBytes, cfg.SegmentBytes)
	case cfg.Sync == SyncInterval && cfg.SyncInterval <= 0:
		return nil, errors.New("spool: sync interval must be positive")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("spool: %s is in use by another listener or process (%w)", cfg.Dir, ErrInUse)
	}
	s := &Spool{cfg: cfg, bySeq: map[uint64]*segment{}, stop: make(chan struct{}), done: make(chan struct{}), sweep: make(chan struct{}, 1), lock: lock}
	ok := false
	defer func() {
		if !ok {
			lock.Close() // releases the lock
		}
	}()
	s.room, s.synced, s.more = sync.NewCond(&s.mu), sync.NewCond(&s.mu), sync.NewCond(&s.mu)
	entries, err := os.ReadDir(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var next uint64
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, spareSuffix) || strings.HasSuffix(name, compactSuffix) {
			_ = os.Remove(filepath.Join(cfg.Dir, name)) // left by a crash: nothing in it counts
			continue
		}
		if !strings.HasSuffix(name, suffix) || len(name) != 16+len(suffix) {
			continue // not ours
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, suffix), 16, 64)
		if err != nil {
			continue // not ours
		}
		seg, err := s.check(seq, filepath.Join(cfg.Dir, name))
		if err != nil {
			return nil, err
		}
		next = max(next, seq+1)
		if seg == nil {
			continue
		}
		s.segs = append(s.segs, seg)
		s.bySeq[seq] = seg
		s.size += seg.disk
		s.stats.Records += seg.records
		s.unfed += seg.records
	}
	slices.SortFunc(s.segs, func(a, b *segment) int { return cmp.Compare(a.seq, b.seq) })
	if err := s.rollTo(next); err != nil {
		return nil, err
	}
	ok = true
	go s.background()
	return s, nil
}

// check reads a segment, cuts it after its last whole record, and returns
// its state; nil when it holds no record (it is deleted). Damage in the
// middle of the segment (a bit flipped, pages a power loss left
// unwritten) is cut out: the whole records after it are moved down over
// it, so one damaged record does not take the rest of its segment along.
func (s *Spool) check(seq uint64, path string) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var head [len(magic)]byte
	if n, _ := f.ReadAt(head[:], 0); n == len(head) && strings.HasPrefix(string(head[:]), magic[:len(magic)-1]) && string(head[:]) != magic {
		// Another version's segment: what it holds is not ours to cut.
		return nil, fmt.Errorf("spool: %s is a segment of another format (%q, this version writes %q): deliver it with the version that wrote it, or move it away", path, head[:], magic)
	}
	seg := &segment{seq: seq, path: path, created: info.ModTime(), fromReplay: true}
	runs, damaged, err := scan(f, info.Size(), seq, func(Record) error { return nil }, &seg.records, &seg.lines)
	if err != nil {
		return nil, fmt.Errorf("spool: reading %s: %w", path, err)
	}
	end, rewritten, err := compact(f, path, runs)
	if err != nil {
		return nil, fmt.Errorf("spool: cutting the damaged records out of %s: %w", path, err)
	}
	if damaged > 0 {
		s.stats.CorruptTails++
		s.stats.CorruptBytes += uint64(damaged)
	}
	if !rewritten && end < info.Size() {
		if err := f.Truncate(end); err != nil {
			return nil, fmt.Errorf("spool: cutting the torn tail of %s: %w", path, err)
		}
	}
	if seg.records == 0 {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		return nil, nil
	}
	seg.size, seg.disk = end, end
	return seg, nil
}

// span is a stretch [start, end) of whole records in a segment file.
type span struct{ start, end int64 }

// scan reads the records of segment seq, of size bytes, from r, calling
// fn with each whole one, and returns the spans they lie in, in order,
// and how many bytes are damage: the stretches between spans, and what
// follows the last one unless it is left from the file's previous use
// (a recycled segment file: its records carry another segment's tag) or
// too short for a header (a torn header cannot be told from such a
// leftover). After a record that does not fit or does not check, the
// next record is looked for byte by byte.
func scan(r io.ReaderAt, size int64, seq uint64, fn func(Record) error, records, lines *int) (spans []span, damaged int64, err error) {
	var head [len(magic)]byte
	if size < int64(len(magic)) {
		return nil, 0, nil
	}
	if _, err := r.ReadAt(head[:], 0); err != nil {
		return nil, 0, err
	}
	if string(head[:]) != magic {
		return nil, 0, nil // not a segment, or torn before its magic: nothing in it
	}
	off := int64(len(magic))
	for {
		end, bad, err := scanSpan(r, off, size, seq, fn, records, lines)
		if err != nil {
			return spans, damaged, err
		}
		if end > off {
			spans = append(spans, span{off, end})
		}
		if end == size {
			return spans, damaged, nil
		}
		next, err := resync(r, end+1, size, seq)
		if err != nil {
			return spans, damaged, err
		}
		if next < 0 {
			if bad {
				damaged += size - end
			}
			return spans, damaged, nil
		}
		damaged += next - end
		off = next
	}
}

// scanSpan reads whole records from off on, and returns the offset after
// the last; bad is true when what follows is damage for certain (a record
// of this segment that does not fit or does not check).
func scanSpan(r io.ReaderAt, off, size int64, seq uint64, fn func(Record) error, records, lines *int) (end int64, bad bool, err error) {
	var buf []byte
	for off+headerSize <= size {
		data, nl, tagged, whole, err := recordAt(r, off, size, seq, &buf)
		if err != nil || !whole {
			return off, tagged, err
		}
		if err := fn(Record{ID: ID{Seg: seq, Off: off}, Lines: nl, Data: data}); err != nil {
			return off, false, err
		}
		*records++
		*lines += nl
		off += headerSize + int64(len(data))
	}
	return off, false, nil
}

// recordAt reads the record of segment seq at off (with off+headerSize <=
// size), its data into *buf: whole when it carries the segment's tag
// (tagged), fits in size and checks.
func recordAt(r io.ReaderAt, off, size int64, seq uint64, buf *[]byte) (data []byte, lines int, tagged, whole bool, err error) {
	var h [headerSize]byte
	if _, err := r.ReadAt(h[:], off); err != nil {
		return nil, 0, false, false, err
	}
	n := int64(binary.LittleEndian.Uint32(h[0:]))
	if binary.LittleEndian.Uint32(h[8:]) != segTag(seq) {
		return nil, 0, false, false, nil
	}
	if n > MaxRecordBytes || off+headerSize+n > size {
		return nil, 0, true, false, nil
	}
	if int64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	data = (*buf)[:n]
	if n > 0 {
		if _, err := r.ReadAt(data, off+headerSize); err != nil {
			return nil, 0, true, false, err
		}
	}
	if checksum(h[:12], data) != binary.LittleEndian.Uint32(h[12:]) {
		return nil, 0, true, false, nil
	}
	return data, int(binary.LittleEndian.Uint32(h[4:])), true, true, nil
}

// resync returns the offset of the first whole record of segment seq at
// or after from, or -1 when there is none: candidates are found by the
// segment's tag, and kept when their data fits and checks.
func resync(r io.ReaderAt, from, size int64, seq uint64) (int64, error) {
	var tag [4]byte
	binary.LittleEndian.PutUint32(tag[:], segTag(seq))
	buf := make([]byte, min(1<<20, max(size-from, 0)))
	var rec []byte
	checked := from - 1 // candidates up to here were tried
	for base := from; base+headerSize <= size; {
		n := int(min(int64(len(buf)), size-base))
		if _, err := r.ReadAt(buf[:n], base); err != nil {
			return -1, err
		}
		for i := 0; ; {
			j := bytes.Index(buf[i:n], tag[:])
			if j < 0 {
				break
			}
			at := base + int64(i+j) - 8 // the header the tag would be in
			i += j + 1
			if at <= checked || at < from {
				continue
			}
			checked = at
			if at+headerSize > size {
				return -1, nil
			}
			if _, _, _, whole, err := recordAt(r, at, size, seq, &rec); err != nil {
				return -1, err
			} else if whole {
				return at, nil
			}
		}
		if base+int64(n) >= size {
			break
		}
		base += int64(n) - int64(len(tag)) + 1 // a tag across the seam is found in the next read
	}
	return -1, nil
}

// compact makes the file at path (open as f) hold only the spans of whole
// records, each after the one before (from just after the magic), and
// returns where the last ends. When they are not in place already, it
// writes them to a new file, syncs it, and renames it over the old one
// (rewritten), so that a crash at any point leaves one file or the other,
// whole.
func compact(f *os.File, path string, spans []span) (end int64, rewritten bool, err error) {
	if len(spans) == 0 {
		return 0, false, nil
	}
	w := int64(len(magic))
	for _, sp := range spans {
		if sp.start != w {
			break
		}
		w = sp.end
	}
	if w == spans[len(spans)-1].end {
		return w, false, nil // in place: only a tail to cut
	}
	tmp := path + compactSuffix
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, false, err
	}
	defer func() {
		if err != nil {
			out.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = out.Write([]byte(magic)); err != nil {
		return 0, false, err
	}
	end = int64(len(magic))
	for _, sp := range spans {
		n, err := io.Copy(out, io.NewSectionReader(f, sp.start, sp.end-sp.start))
		if err != nil {
			return 0, false, err
		}
		end += n
	}
	if err = out.Sync(); err != nil {
		return 0, false, err
	}
	if err = out.Close(); err != nil {
		return 0, false, err
	}
	if err = os.Rename(tmp, path); err != nil {
		return 0, false, err
	}
	syncDir(filepath.Dir(path))
	return end, true, nil
}

// putHeader writes the record header of data into h.
func putHeader(h, data []byte, lines int, seq uint64) {
	binary.LittleEndian.PutUint32(h[0:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[4:], uint32(lines))
	binary.LittleEndian.PutUint32(h[8:], segTag(seq))
	binary.LittleEndian.PutUint32(h[12:], checksum(h[:12], data))
}

// segTag is the tag of segment seq that its records carry: a record with
// another is left from an earlier use of the file.
func segTag(seq uint64) uint32 { return uint32((seq + 1) * 0x9e3779b97f4a7c15 >> 32) }

func checksum(head, data []byte) uint32 {
	return crc32.Update(crc32.Update(0, crcTable, head), crcTable, data)
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.cfg.Dir, fmt.Sprintf("%016x%s", seq, suffix))
}

// roll seals the active segment and starts the next, once no fsync is in
// progress. s.mu must be held; it is released while waiting.
func (s *Spool) roll() error {
	for s.syncing { // an fsync of the segment to be sealed is in progress
		s.synced.Wait()
	}
	if s.closed {
		return ErrClosed
	}
	return s.rollTo(s.segs[len(s.segs)-1].seq + 1)
}

// rollTo seals the active segment, if any, and starts segment seq. s.mu
// must be held and no fsync be in progress.
func (s *Spool) rollTo(seq uint64) error {
	// The new segment first: if it cannot be made, the old one stays
	// the one written.
	f, disk, err := s.segmentFile(seq)
	if err != nil {
		return err
	}
	if s.active != nil {
		last := s.segs[len(s.segs)-1]
		switch {
		case s.cfg.Sync == SyncInterval && s.syncedOff < s.written && s.syncErr == nil:
			// The next tick syncs it, within the interval the policy
			// promises; appends do not wait for it. A segment
			// acknowledged and deleted before then is never written
			// back at all.
			last.unsynced = s.active
		default:
			// SyncAlways seals it synced: appends that wait for an
			// fsync of it are then satisfied. Appends may come while
			// an fsync runs, so sync until none is left over.
			for s.cfg.Sync == SyncAlways && s.syncedOff < s.written && s.syncErr == nil {
				_ = s.syncActive()
			}
			_ = s.active.Close()
		}
		last.sealedSynced = true
		s.active = nil
		if last.acked == last.records {
			s.remove(last, true)
		}
	}
	if s.cfg.Sync == SyncAlways {
		syncDir(s.cfg.Dir)
	} else {
		s.dirDirty = true // the next tick syncs it
	}
	seg := &segment{seq: seq, path: s.path(seq), size: int64(len(magic)), disk: disk, created: time.Now()}
	s.segs = append(s.segs, seg)
	s.bySeq[seq] = seg
	s.size += seg.disk
	s.active, s.written, s.syncedOff = f, seg.size, 0
	s.activeFd = f.Fd()
	return nil
}

// segmentFile makes the file of segment seq, its magic written, from a
// spare file when there is one, and returns it with the bytes it takes.
// s.mu must be held.
func (s *Spool) segmentFile(seq uint64) (*os.File, int64, error) {
	path := s.path(seq)
	for len(s.spares) > 0 {
		sp := s.spares[len(s.spares)-1]
		s.spares = s.spares[:len(s.spares)-1]
		if err := os.Rename(sp.path, path); err != nil {
			s.discard(sp.path, sp.size)
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err == nil {
			if _, err = f.WriteAt([]byte(magic), 0); err == nil {
				// What the file held after the magic is left from its
				// earlier use: its records carry that segment's tag
				// (segTag), so a crash leaves no record of it readable
				// as this one's. Its bytes move from the spare to the
				// segment.
				s.size -= sp.size
				return f, max(sp.size, int64(len(magic))), nil
			}
			f.Close()
		}
		// Deleted now, not in the background: the name is the new
		// segment's, made again below.
		_ = os.Remove(path)
		s.size -= sp.size
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	if _, err := f.Write([]byte(magic)); err != nil {
		f.Close()
		_ = os.Remove(path)
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	return f, int64(len(magic)), nil
}

// discard has the file path, of size bytes (counted in s.size until it
// is gone), deleted in the background. s.mu must be held.
func (s *Spool) discard(path string, size int64) {
	s.trash = append(s.trash, spare{path: path, size: size})
	select {
	case s.sweep <- struct{}{}:
	default:
	}
}

// noSpace reports whether err is a full disk or quota.
func noSpace(err error) bool { return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) }

// freeFiles deletes the files kept for reuse and those on their way out,
// now, and reports whether there were any. s.mu is held.
func (s *Spool) freeFiles() bool {
	for _, sp := range s.spares {
		s.discard(sp.path, sp.size)
	}
	s.spares = nil
	any := len(s.trash) > 0
	s.deleteTrashNow()
	return any
}

// deleteTrashNow deletes the files on their way out, on the caller's
// goroutine, and uncounts them. s.mu is held.
func (s *Spool) deleteTrashNow() {
	for _, f := range s.trash {
		_ = os.Remove(f.path)
		s.size -= f.size
	}
	s.trash = nil
}

// syncDir makes the directory's entries durable (a new or deleted
// segment); errors are left to the next file operation to show.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// Append writes a record of data holding lines lines and returns its ID.
// With SyncAlways it returns once an fsync covers the record. When the
// spool is full it waits (Block) or deletes the oldest segments
// (DropOldest).
func (s *Spool) Append(data []byte, lines int) (ID, error) {
	id, _, err := s.AppendHandOff(data, lines, nil)
	return id, err
}

// AppendHandOff is Append that may hand the record to the caller: when
// Next has returned every record before it and waits for the next (the
// reader has caught up), take is asked, once the record is written, whether
// the caller has room for it now (it must not block: s.mu is held). If so,
// the reader moves past it as if Next had returned it, and the caller
// delivers data itself and reports it with Ack. Spooling then costs only
// the write; records that wait (the reader behind, or no room) are read
// back by Next. A record handed off is still spooled until its Ack.
func (s *Spool) AppendHandOff(data []byte, lines int, take func() bool) (id ID, handed bool, err error) {
	return s.appendRecord(data, lines, take, false)
}

// Keep appends a record after EndInput, before Close, without waiting for
// room: with DropOldest it drops the oldest segments as Append does,
// otherwise it fails with ErrFull when there is none. It is for lines a
// caller holds in memory only, at its shutdown, that the next Open should
// deliver.
func (s *Spool) Keep(data []byte, lines int) (ID, error) {
	id, _, err := s.appendRecord(data, lines, nil, true)
	return id, err
}

// appendRecord is AppendHandOff, or Keep with keep.
func (s *Spool) appendRecord(data []byte, lines int, take func() bool, keep bool) (id ID, handed bool, err error) {
	need := int64(headerSize + len(data))
	if len(data) > MaxRecordBytes || need+int64(len(magic)) > s.cfg.MaxBytes {
		return ID{}, false, ErrTooLarge
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	freed := false
again:
	// Each wait (for room, for an fsync before a roll) lets other appends
	// go: the conditions are checked again after it.
	for {
		if s.closed || s.closing || s.ended && !keep {
			return ID{}, false, ErrClosed
		}
		active := s.segs[len(s.segs)-1]
		if s.size+max(0, s.written+need-active.disk) > s.cfg.MaxBytes {
			switch {
			case len(s.trash) > 0:
				// Files on their way out: delete them now, to make
				// the room they still take.
				s.deleteTrashNow()
			case len(s.spares) > 0:
				sp := s.spares[len(s.spares)-1]
				s.spares = s.spares[:len(s.spares)-1]
				s.discard(sp.path, sp.size)
			case s.written > int64(len(magic)) && len(s.segs) == 1:
				// All of it is in the segment being written, which is
				// only deleted once sealed: seal it.
				if err := s.roll(); err != nil {
					if noSpace(err) && !freed {
						freed = true
						if s.freeFiles() {
							continue
						}
					}
					return ID{}, false, err
				}
			case s.cfg.Full == DropOldest && len(s.segs) > 1:
				s.dropOldest()
			case keep:
				return ID{}, false, ErrFull
			case s.cfg.Full == DropOldest:
				return ID{}, false, ErrFull // only the segment being written is left
			default:
				s.waiting++
				s.room.Wait()
				s.waiting--
			}
			continue
		}
		if s.written+need > s.cfg.SegmentBytes && s.written > int64(len(magic)) {
			if err := s.roll(); err != nil {
				if noSpace(err) && !freed {
					freed = true
					if s.freeFiles() {
						continue
					}
				}
				return ID{}, false, err
			}
			continue
		}
		break
	}
	seg := s.segs[len(s.segs)-1]
	putHeader(s.header[:], data, lines, seg.seq)
	id = ID{Seg: seg.seq, Off: s.written}
	if err := s.writeRecord(data, need); err != nil {
		// Cut what may have been written of it, so that the segment
		// stays whole.
		if s.active.Truncate(s.written) == nil && seg.disk > s.written {
			s.size -= seg.disk - s.written
			seg.disk = s.written
		}
		if noSpace(err) && !freed {
			// The disk is full before the spool is: the files kept
			// for reuse go, once, and the append is tried again.
			freed = true
			if s.freeFiles() {
				goto again
			}
		}
		return ID{}, false, fmt.Errorf("spool: writing %s: %w", seg.path, err)
	}
	s.written += need
	seg.size += need
	seg.records++
	seg.lines += lines
	if seg.size > seg.disk {
		s.size += seg.size - seg.disk
		seg.disk = seg.size
	}
	s.stats.Records++
	s.stats.Appends++
	if take != nil && s.unfed == 0 && s.readerParked && !s.closedReader && take() {
		// The reader has returned every record before this one and
		// waits for the next (so it queued the one before: a
		// client's batches stay in order), and the caller has room:
		// move the reader past this one too.
		if s.rSeq != seg.seq && s.rFile != nil {
			s.rFile.Close()
			s.rFile = nil
		}
		s.rSeq, s.rOff = seg.seq, s.written
		seg.fed++
		seg.fedLines += lines
		handed = true
		s.stats.HandedOff++
	} else {
		s.unfed++
		s.more.Broadcast()
	}
	if s.cfg.Sync == SyncAlways {
		// The record is written and visible to Next: from here on it is
		// spooled, and an fsync that fails only weakens the promise
		// against power loss (counted, and the error kept for Stats).
		end := s.written
		for s.syncedOff < end && !seg.sealedSynced && s.syncErr == nil {
			if s.closed {
				return id, handed, nil // Close synced what it could
			}
			if !s.syncing {
				_ = s.syncActive()
				continue
			}
			s.synced.Wait()
		}
	}
	return id, handed, nil
}

// writeRecord writes s.header and data at the end of the active segment
// in one pwritev, without copying data. s.mu must be held.
func (s *Spool) writeRecord(data []byte, need int64) error {
	iov := [][]byte{s.header[:], data}
	off := s.written
	for done := int64(0); done < need; {
		n, err := unix.Pwritev(int(s.activeFd), iov, off+done)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		done += int64(n)
		for n > 0 && len(iov) > 0 { // a short write: go on after it
			k := min(n, len(iov[0]))
			iov[0], n = iov[0][k:], n-k
			if len(iov[0]) == 0 {
				iov = iov[1:]
			}
		}
	}
	return nil
}

// syncActive fsyncs the active segment, releasing s.mu meanwhile so that
// appends go on (group commit). s.mu must be held.
func (s *Spool) syncActive() error {
	if s.active == nil || s.syncedOff >= s.written {
		return nil
	}
	s.syncing = true
	f, end := s.active, s.written
	s.mu.Unlock()
	start := time.Now()
	err := f.Sync()
	took := time.Since(start)
	s.mu.Lock()
	s.syncing = false
	s.stats.Syncs++
	s.stats.SyncTime += took
	if err == nil && f == s.active && end > s.syncedOff {
		s.syncedOff = end
	}
	s.synced.Broadcast()
	if err != nil {
		s.stats.SyncErrors++
		s.syncErr = fmt.Errorf("spool: fsync %s: %w", f.Name(), err)
		return s.syncErr
	}
	return nil
}

// syncSealed fsyncs the sealed segments whose fsync is owed, then the
// directory if segments were made or deleted since its last fsync,
// releasing s.mu meanwhile. s.mu must be held and no fsync be in
// progress.
func (s *Spool) syncSealed() error {
	var fs []*os.File
	for _, seg := range s.segs {
		if seg.unsynced != nil {
			fs = append(fs, seg.unsynced) // ours now: remove leaves it
			seg.unsynced = nil
		}
	}
	dir := s.dirDirty
	s.dirDirty = false
	if len(fs) == 0 && !dir {
		return nil
	}
	s.syncing = true
	s.mu.Unlock()
	start := time.Now()
	var err error
	for _, f := range fs {
		if serr := f.Sync(); serr != nil && err == nil {
			err = fmt.Errorf("spool: fsync %s: %w", f.Name(), serr)
		}
		f.Close()
	}
	if dir {
		syncDir(s.cfg.Dir)
	}
	took := time.Since(start)
	s.mu.Lock()
	s.syncing = false
	s.stats.Syncs += uint64(len(fs))
	s.stats.SyncTime += took
	s.synced.Broadcast()
	if err != nil {
		s.stats.SyncErrors++
		s.syncErr = err
	}
	return err
}

// dropOldest deletes the oldest segment, counting what was not
// acknowledged. s.mu must be held.
func (s *Spool) dropOldest() {
	seg := s.segs[0]
	// Records Next returned are in memory, on their way: only the others
	// are lost. (Without a reader, records not acknowledged are.)
	n, lines := seg.records-seg.acked, seg.lines-seg.ackedLines
	if s.reading() {
		n, lines = seg.records-seg.fed, seg.lines-seg.fedLines
	}
	if n > 0 {
		s.stats.Dropped += uint64(n)
		s.stats.DroppedLines += uint64(lines)
		if s.cfg.OnDrop != nil {
			s.cfg.OnDrop(n, lines)
		}
	}
	s.remove(seg, false)
}

// reading reports whether Next has been used (the records it returned are
// held by the caller). s.mu must be held.
func (s *Spool) reading() bool { return s.rSeq != 0 || s.rOff != 0 || s.rFile != nil }

// remove deletes a sealed segment. s.mu must be held.
func (s *Spool) remove(seg *segment, reuse bool) {
	i := slices.Index(s.segs, seg)
	if i < 0 {
		return
	}
	if seg.unsynced != nil {
		seg.unsynced.Close()
		seg.unsynced = nil
	}
	spared := false
	if reuse && len(s.spares) < maxSpares && !s.closed && !s.closing {
		// Kept for a new segment, under a name no Open replays.
		sp := filepath.Join(s.cfg.Dir, fmt.Sprintf("%016x%s", seg.seq, spareSuffix))
		if os.Rename(seg.path, sp) == nil {
			s.spares = append(s.spares, spare{path: sp, size: seg.disk})
			spared = true
		}
	}
	if !spared {
		// The file goes in the background: unlinking a segment frees
		// its pages, which takes long enough to hold up appends. Lost
		// to a crash before then, it is replayed (duplicates, never a
		// loss).
		s.discard(seg.path, seg.disk)
	}
	s.dirDirty = true
	s.unfed -= seg.records - seg.fed
	s.segs = slices.Delete(s.segs, i, i+1)
	delete(s.bySeq, seg.seq)
	s.stats.Records -= seg.records - seg.acked
	s.room.Broadcast()
}

// Ack records that the record id was delivered; a sealed segment whose
// every record is acknowledged is deleted. An ID of a segment already
// deleted (dropped) is ignored.
func (s *Spool) Ack(id ID, lines int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seg := s.bySeq[id.Seg]
	if seg == nil {
		return
	}
	seg.acked++
	seg.ackedLines += lines
	seg.ackedOffs = append(seg.ackedOffs, id.Off)
	s.stats.Records--
	s.stats.Acked++
	if seg.acked >= seg.records && seg != s.segs[len(s.segs)-1] {
		// The deletion is made durable with the next fsync of the
		// directory; lost to a power cut before it, the segment is
		// delivered again (a duplicate, never a loss).
		s.remove(seg, true)
	}
}

// EndInput refuses further appends; Next then returns io.EOF once it has
// returned every record.
func (s *Spool) EndInput() {
	s.mu.Lock()
	s.ended = true
	s.more.Broadcast()
	s.room.Broadcast() // an Append waiting for room returns ErrClosed
	s.mu.Unlock()
}

// Next returns the next record not yet returned, oldest first (the records
// of a previous process first, then those appended since), waiting for
// one. It returns io.EOF after EndInput once every record was returned,
// and ErrClosed when the spool closes or StopReading was called. Its Data
// is valid until the next call. One goroutine calls Next.
func (s *Spool) Next() (Record, error) { return s.NextInto(nil) }

// NextInto is Next reading the record's data into get(n) (a slice of
// length n), or into the spool's own buffer when get is nil: a feeder
// reads straight into the batch it queues.
func (s *Spool) NextInto(get func(n int) []byte) (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed || s.closedReader {
			return Record{}, ErrClosed
		}
		// The cursor's segment, or the next that is still there.
		i := slices.IndexFunc(s.segs, func(seg *segment) bool { return seg.seq >= s.rSeq })
		if i < 0 {
			return Record{}, ErrClosed // cannot happen: the active segment is there
		}
		seg := s.segs[i]
		if seg.seq != s.rSeq || s.rOff == 0 {
			if s.rFile != nil {
				s.rFile.Close()
				s.rFile = nil
			}
			s.rSeq, s.rOff = seg.seq, int64(len(magic))
		}
		last := i == len(s.segs)-1
		if s.rOff < seg.size {
			if s.rFile == nil {
				f, err := s.openForReading(seg, last)
				if errors.Is(err, fs.ErrNotExist) {
					// Gone (the directory removed, say): what it
					// holds cannot be read back.
					s.skipDamage(seg, seg.size, fmt.Errorf("spool: %w", err))
					continue
				}
				if err != nil {
					return Record{}, fmt.Errorf("spool: %w", err) // may pass: the caller tries again
				}
				s.rFile = f
			}
			rec, err := s.readAt(seg, get)
			if errors.Is(err, errDamaged) {
				next, rerr := resync(s.rFile, s.rOff+1, seg.size, seg.seq)
				if rerr != nil || next < 0 {
					next = seg.size
				}
				s.skipDamage(seg, next, err)
				continue
			}
			if err != nil {
				// The next try opens the file again (the error may
				// be the descriptor's), unless its name is gone:
				// this descriptor is then all that reads it.
				if _, serr := os.Lstat(seg.path); last || serr == nil {
					s.rFile.Close()
					s.rFile = nil
				}
				return Record{}, err
			}
			return rec, nil
		}
		if !last {
			s.rSeq, s.rOff = s.segs[i+1].seq, 0
			s.leave(seg) // may delete seg
			continue
		}
		if s.ended {
			return Record{}, io.EOF
		}
		s.readerParked = true
		s.more.Wait()
		s.readerParked = false
	}
}

// openForReading opens seg's file for Next: the segment being written
// through a duplicate of the writer's descriptor, which still reads if
// the file's name is gone; a sealed one by its name. s.mu is held.
func (s *Spool) openForReading(seg *segment, last bool) (*os.File, error) {
	if last && s.active != nil {
		fd, err := unix.FcntlInt(s.activeFd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("fcntl", err)
		}
		return os.NewFile(uintptr(fd), seg.path), nil
	}
	return os.Open(seg.path)
}

// skipDamage moves Next's cursor in seg past a record it could not read
// (err says why) to next, the following whole record or seg's end. The
// records skipped are counted as Next leaves the segment (leave): only
// then is it known how many the damage took. s.mu is held.
func (s *Spool) skipDamage(seg *segment, next int64, err error) {
	if seg.lost == nil {
		seg.lost = err
	}
	s.stats.CorruptBytes += uint64(max(next-s.rOff, 0))
	s.rOff = max(next, s.rOff)
	if seg == s.segs[len(s.segs)-1] && !s.closing && !s.ended {
		// The segment being written: seal it, so that the reader
		// leaves it and counts what it missed now, not once it fills.
		_ = s.roll()
	}
}

// leave is called as Next's cursor leaves the sealed segment seg. When
// damage made it skip records, they are counted lost (Config.OnLost) and
// the segment holds only what Next returned: it is deleted once those are
// acknowledged. s.mu is held.
func (s *Spool) leave(seg *segment) {
	if seg.lost == nil {
		return
	}
	n, lines := seg.records-seg.fed, seg.lines-seg.fedLines
	if n < 0 || lines < 0 {
		// Next returned more than was appended: a record forged in
		// the data, found past the damage. Nothing is counted lost.
		n, lines = 0, 0
	}
	seg.records, seg.lines = seg.records-n, seg.lines-lines
	if n > 0 {
		s.unfed -= n
		s.stats.Records -= n
		s.stats.Lost += uint64(n)
		s.stats.LostLines += uint64(lines)
		if s.cfg.OnLost != nil {
			s.cfg.OnLost(n, lines, seg.lost)
		}
	}
	seg.lost = nil
	if seg.acked >= seg.records && seg != s.segs[len(s.segs)-1] {
		s.remove(seg, false)
	}
}

// loseVanished forgets, as the spool closes, the segments with records
// not yet acknowledged whose files are gone (removed by hand, or the
// directory with them, while the spool was open): the next Open cannot
// replay them. The records Next had not returned are counted lost
// (OnLost); those it had are no longer Has, so that their holders count
// them. A file that is still there, even cut short, is left for Open,
// which keeps what it can read back. s.mu is held; called by Close.
func (s *Spool) loseVanished() {
	last := s.segs[len(s.segs)-1]
	for _, seg := range slices.Clone(s.segs) {
		if seg.records <= seg.acked {
			continue
		}
		if _, err := os.Lstat(seg.path); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			continue
		}
		if n, lines := seg.records-seg.fed, seg.lines-seg.fedLines; n > 0 && lines >= 0 {
			s.stats.Lost += uint64(n)
			s.stats.LostLines += uint64(lines)
			if s.cfg.OnLost != nil {
				s.cfg.OnLost(n, lines, fmt.Errorf("spool: %s is gone: it cannot be replayed", seg.path))
			}
		}
		if seg != last {
			s.remove(seg, false)
			continue
		}
		// The spool keeps a last segment: it stays, emptied, and
		// Close removes it.
		s.unfed -= seg.records - seg.fed
		s.stats.Records -= seg.records - seg.acked
		seg.records, seg.lines = seg.acked, seg.ackedLines
		seg.fed, seg.fedLines = seg.acked, seg.ackedLines // so that remove uncounts nothing more
		delete(s.bySeq, seg.seq)
	}
}

// StopReading makes Next return ErrClosed, now and from now on.
func (s *Spool) StopReading() {
	s.mu.Lock()
	s.closedReader = true
	s.more.Broadcast()
	s.mu.Unlock()
}

// readAt reads the record at the cursor of seg and moves past it. s.mu is
// held.
func (s *Spool) readAt(seg *segment, get func(int) []byte) (Record, error) {
	var h [headerSize]byte
	if _, err := s.rFile.ReadAt(h[:], s.rOff); err != nil {
		return Record{}, readError(seg, err)
	}
	n := int(binary.LittleEndian.Uint32(h[0:]))
	if binary.LittleEndian.Uint32(h[8:]) != segTag(seg.seq) || int64(n) > seg.size-s.rOff-headerSize {
		return Record{}, fmt.Errorf("spool: %s: a record changed on disk at offset %d: %w", seg.path, s.rOff, errDamaged)
	}
	var data []byte
	if get != nil {
		data = get(n)
	} else {
		if cap(s.rBuf) < n {
			s.rBuf = make([]byte, n)
		}
		data = s.rBuf[:n]
	}
	if n > 0 {
		if _, err := s.rFile.ReadAt(data, s.rOff+headerSize); err != nil {
			return Record{}, readError(seg, err)
		}
	}
	if checksum(h[:12], data) != binary.LittleEndian.Uint32(h[12:]) {
		return Record{}, fmt.Errorf("spool: %s: a record changed on disk at offset %d: %w", seg.path, s.rOff, errDamaged)
	}
	lines := int(binary.LittleEndian.Uint32(h[4:]))
	rec := Record{ID: ID{Seg: seg.seq, Off: s.rOff}, Lines: lines, Data: data, Replayed: seg.fromReplay}
	s.rOff += int64(headerSize + n)
	s.unfed--
	seg.fed++
	seg.fedLines += lines
	if seg.fromReplay {
		s.stats.Replayed++
	}
	return rec, nil
}

// errDamaged marks the errors of records that are not what was written:
// Next skips them. Other errors (out of file descriptors, an I/O error)
// may pass; Next returns them and the record stays.
var errDamaged = errors.New("damaged")

// readError is a failed read of seg's file: damage when the file ends
// before the record does (it was cut short).
func readError(seg *segment, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("spool: %s was cut short: %w", seg.path, errDamaged)
	}
	return fmt.Errorf("spool: reading %s: %w", seg.path, err)
}

// Has reports whether the record id is still in the spool (its segment
// was not dropped, nor deleted after its acknowledgement, nor found gone
// by Close).
func (s *Spool) Has(id ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bySeq[id.Seg] != nil
}

// Stats returns the spool's counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Bytes, st.Segments, st.LastSyncError, st.Waiting = s.size, len(s.segs), s.syncErr, s.waiting
	for _, seg := range s.segs {
		st.Lines += seg.lines - seg.ackedLines
	}
	for _, seg := range s.segs {
		if seg.records > seg.acked {
			st.Oldest = seg.created
			break
		}
	}
	return st
}

// background deletes the files of removed segments and, in SyncInterval
// mode, fsyncs every SyncInterval.
func (s *Spool) background() {
	defer close(s.done)
	var tick <-chan time.Time
	if s.cfg.Sync == SyncInterval {
		t := time.NewTicker(s.cfg.SyncInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.stop:
			s.deleteTrash()
			return
		case <-s.sweep:
			s.deleteTrash()
		case <-tick:
			s.mu.Lock()
			if !s.syncing && !s.closed && !s.closing {
				_ = s.syncSealed()
			}
			if !s.syncing && !s.closed && !s.closing {
				_ = s.syncActive()
			}
			s.mu.Unlock()
		}
	}
}

// deleteTrash deletes the files of removed segments, without s.mu.
func (s *Spool) deleteTrash() {
	s.sweeping.Lock() // one sweep at a time: when it returns, what was trash is gone and uncounted
	defer s.sweeping.Unlock()
	s.mu.Lock()
	trash := s.trash
	s.trash = nil
	s.mu.Unlock()
	var freed int64
	for _, f := range trash {
		_ = os.Remove(f.path)
		freed += f.size
	}
	if freed > 0 {
		s.mu.Lock()
		s.size -= freed
		s.room.Broadcast()
		s.mu.Unlock()
	}
}

// cutAcked rewrites the file of seg, which holds records acknowledged and
// others, without the acknowledged ones, so that the next Open (a reload's
// replacement, an upgraded process) does not deliver them again. A crash
// before it finishes leaves the file whole (duplicates, as after any
// crash). s.mu is held; the spool is closed.
func (s *Spool) cutAcked(seg *segment) error {
	acked := make(map[int64]bool, len(seg.ackedOffs))
	for _, off := range seg.ackedOffs {
		acked[off] = true
	}
	f, err := os.OpenFile(seg.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	var spans []span
	var records, lines int
	_, damaged, err := scan(f, seg.size, seg.seq, func(r Record) error {
		off := r.ID.Off
		end := off + headerSize + int64(len(r.Data))
		switch {
		case acked[off]:
		case len(spans) > 0 && spans[len(spans)-1].end == off:
			spans[len(spans)-1].end = end
		default:
			spans = append(spans, span{off, end})
		}
		return nil
	}, &records, &lines)
	if err != nil {
		return fmt.Errorf("spool: reading %s: %w", seg.path, err)
	}
	if damaged > 0 {
		return nil // damage: left whole, for the next Open to cut and count
	}
	end, rewritten, err := compact(f, seg.path, spans)
	if err != nil {
		return fmt.Errorf("spool: cutting the delivered records out of %s: %w", seg.path, err)
	}
	if !rewritten && end > 0 && end < seg.size {
		if err := f.Truncate(end); err != nil {
			return fmt.Errorf("spool: cutting the delivered records off %s: %w", seg.path, err)
		}
	}
	if end > 0 {
		s.size -= seg.disk - end
		seg.size, seg.disk = end, end
	}
	return nil
}

// Close syncs and closes the spool; segments stay for the next Open,
// except those whose files are gone, which it forgets (loseVanished).
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed || s.closing {
		for !s.closed { // another Close is syncing
			s.synced.Wait()
		}
		s.mu.Unlock()
		return nil
	}
	for s.syncing {
		s.synced.Wait()
	}
	s.closing = true // no append from here on, nor a tick's fsync
	var err error
	if s.cfg.Sync != SyncNever {
		err = s.syncSealed()
		if aerr := s.syncActive(); err == nil {
			err = aerr
		}
	}
	s.closed = true
	last := s.segs[len(s.segs)-1]
	if s.active != nil {
		if last.disk > last.size && s.active.Truncate(last.size) == nil {
			// A reused file: cut what its earlier use left.
			s.size -= last.disk - last.size
			last.disk = last.size
		}
		if cerr := s.active.Close(); err == nil {
			err = cerr
		}
		s.active = nil
	}
	if s.rFile != nil {
		s.rFile.Close()
		s.rFile = nil
	}
	s.more.Broadcast()
	s.loseVanished()
	if last.acked >= last.records {
		s.remove(last, false) // nothing to replay: leave no file
	}
	for _, seg := range s.segs {
		if seg.acked > 0 && seg.acked < seg.records && seg.lost == nil {
			if cerr := s.cutAcked(seg); cerr != nil && err == nil {
				err = cerr
			}
		}
	}
	for _, sp := range s.spares {
		s.discard(sp.path, sp.size)
	}
	s.spares = nil
	s.room.Broadcast()
	s.synced.Broadcast()
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	s.lock.Close()
	return err
}
