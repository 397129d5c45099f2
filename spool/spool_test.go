package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, dir string, edit func(*Config)) *Spool {
	t.Helper()
	cfg := DefaultConfig(dir)
	cfg.SegmentBytes = 4 << 10
	cfg.Sync = SyncNever
	if edit != nil {
		edit(&cfg)
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// record i's data: whole lines, of varying length.
func data(i int) []byte {
	n := 1 + i%5
	var b []byte
	for j := range n {
		b = fmt.Appendf(b, `{"batch":%d,"line":%d,"pad":"%s"}`+"\n", i, j, bytes.Repeat([]byte{'a' + byte(i%26)}, i%97))
	}
	return b
}

// replayAll reads every record with Next, the spool's input ended.
func replayAll(t testing.TB, s *Spool) (recs []Record) {
	t.Helper()
	s.EndInput()
	for {
		r, err := s.Next()
		if errors.Is(err, io.EOF) {
			return recs
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Data = slices.Clone(r.Data)
		recs = append(recs, r)
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+suffix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Records survive a reopen in order; acknowledged out of order, a sealed
// segment is deleted once all of its records are; what was acknowledged
// in a segment that remains is cut out of it by Close, so that it does not
// come again (a reload or an upgrade during an outage would deliver it
// twice); only a crash leaves it (at-least-once).
func TestAppendAckReplay(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	var ids []ID
	for i := range 200 {
		id, err := s.Append(data(i), 1+i%5)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if n := len(segFiles(t, dir)); n < 5 {
		t.Fatalf("%d segments for 200 records of 4 KiB segments", n)
	}
	// Acknowledge the first 100 in a shuffled order, and every third
	// one after them.
	first := slices.Clone(ids[:100])
	rand.Shuffle(len(first), func(i, j int) { first[i], first[j] = first[j], first[i] })
	var want []int
	for i := 100; i < 200; i++ {
		if i%3 == 0 {
			first = append(first, ids[i])
		} else {
			want = append(want, i)
		}
	}
	for _, id := range first {
		s.Ack(id, 1)
	}
	st := s.Stats()
	if st.Records != len(want) || st.Acked != uint64(len(first)) || st.Appends != 200 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, nil)
	defer s.Close()
	recs := replayAll(t, s)
	// Every unacknowledged record comes back, in order, whole, and no
	// acknowledged one.
	var got []int
	for _, r := range recs {
		var i int
		fmt.Sscanf(string(r.Data), `{"batch":%d`, &i)
		if !bytes.Equal(r.Data, data(i)) || r.Lines != 1+i%5 {
			t.Fatalf("record %d came back different", i)
		}
		got = append(got, i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("replayed %v, want %v", got, want)
	}
	// Acknowledging the replayed records empties the spool.
	for _, r := range recs {
		s.Ack(r.ID, r.Lines)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if f := segFiles(t, dir); len(f) != 0 {
		t.Fatalf("segments left: %v", f)
	}
}

// The crash test: records are appended, then the files are cut at a random
// offset (a crash in the middle of an append) or a byte of the last segment
// is changed, and the spool is opened again. A record returned is always
// one that was written, whole; every record written whole before the cut is
// returned.
func TestCrashConsistency(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		dir := t.TempDir()
		s := open(t, dir, func(c *Config) { c.SegmentBytes = 2 << 10 })
		n := 1 + rng.IntN(60)
		for i := range n {
			if _, err := s.Append(data(i), 1+i%5); err != nil {
				t.Fatal(err)
			}
		}
		// The crash: no Close. The last segment is cut or damaged.
		files := segFiles(t, dir)
		last := files[len(files)-1]
		info, _ := os.Stat(last)
		size := info.Size()
		cut := size
		corrupt := int64(-1)
		switch rng.IntN(3) {
		case 0:
			cut = rng.Int64N(size + 1)
			if err := os.Truncate(last, cut); err != nil {
				t.Fatal(err)
			}
		case 1:
			if size > int64(len(magic)) {
				corrupt = int64(len(magic)) + rng.Int64N(size-int64(len(magic)))
				b, _ := os.ReadFile(last)
				b[corrupt] ^= byte(1 + rng.IntN(255))
				if err := os.WriteFile(last, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		s.abandon()
		s2 := open(t, dir, nil)
		recs := replayAll(t, s2)
		// What must be there: every record of the earlier segments,
		// and those of the last that end before the cut and the damage.
		var want []int
		limit := cut
		if corrupt >= 0 {
			limit = min(limit, corrupt)
		}
		seg, pos := 0, int64(len(magic))
		for i := range n {
			need := int64(headerSize + len(data(i)))
			if pos+need > 2<<10 && pos > int64(len(magic)) {
				seg, pos = seg+1, int64(len(magic))
			}
			pos += need
			if seg < len(files)-1 || pos <= limit {
				want = append(want, i)
			}
		}
		var got []int
		for _, r := range recs {
			var i int
			fmt.Sscanf(string(r.Data), `{"batch":%d`, &i)
			if i >= n || !bytes.Equal(r.Data, data(i)) {
				t.Fatalf("trial %d: a record that was not written came back: %q", trial, r.Data)
			}
			got = append(got, i)
		}
		for _, i := range want {
			if !slices.Contains(got, i) {
				t.Fatalf("trial %d: record %d (whole, before the cut at %d, damage at %d) lost; got %v", trial, i, cut, corrupt, got)
			}
		}
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("trial %d: replay %v", trial, got)
		}
		s2.Close()
	}
}

// abandon stops the spool's goroutine without syncing or closing files,
// as a crash would leave them.
func (s *Spool) abandon() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	s.active.Close()
	s.lock.Close() // a dead process's lock goes with it
}

// Full, Block: Append waits until acknowledgements free a segment.
func TestFullBlocks(t *testing.T) {
	s := open(t, t.TempDir(), func(c *Config) { c.MaxBytes = 16 << 10 })
	defer s.Close()
	var ids []ID
	for {
		if s.Stats().Bytes+int64(headerSize+len(data(0))) > 16<<10 {
			break
		}
		id, err := s.Append(data(0), 1)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	done := make(chan error, 1)
	go func() { _, err := s.Append(data(0), 1); done <- err }()
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Waiting != 1; time.Sleep(time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("Append did not wait on a full spool: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("Append neither waits for room nor returns")
		}
	}
	for _, id := range ids { // everything acknowledged: sealed segments go
		s.Ack(id, 1)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Append still waits after the acknowledgements")
	}
	if w := s.Stats().Waiting; w != 0 {
		t.Fatalf("%d appends waiting after the last returned", w)
	}
}

// Full, DropOldest: the oldest segments go, their records counted.
func TestFullDropsOldest(t *testing.T) {
	var dropped, droppedLines int
	s := open(t, t.TempDir(), func(c *Config) {
		c.MaxBytes, c.Full = 16<<10, DropOldest
		c.OnDrop = func(r, l int) { dropped += r; droppedLines += l }
	})
	defer s.Close()
	for i := range 300 {
		if _, err := s.Append(data(i), 1+i%5); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Bytes > 16<<10 || dropped == 0 || uint64(dropped) != st.Dropped || int(st.DroppedLines) != droppedLines {
		t.Fatalf("stats %+v, OnDrop %d records %d lines", st, dropped, droppedLines)
	}
	if st.Records+dropped != 300 {
		t.Fatalf("%d held + %d dropped != 300 appended", st.Records, dropped)
	}
}

// SyncAlways: concurrent appends share fsyncs (group commit), and each
// returns after one that covers it.
func TestSyncAlwaysGroupCommit(t *testing.T) {
	for _, seg := range []int64{1 << 20, 4 << 10} { // one segment; segments rolled under the appends
		t.Run(fmt.Sprint(seg), func(t *testing.T) { groupCommit(t, seg) })
	}
}

func groupCommit(t *testing.T, segBytes int64) {
	s := open(t, t.TempDir(), func(c *Config) { c.Sync, c.SegmentBytes = SyncAlways, segBytes })
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 50 {
				if _, err := s.Append(data(g*50+i), 1); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.Appends != 400 || st.Syncs == 0 || st.Syncs > 400 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("400 appends, %d fsyncs", st.Syncs)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// A directory that cannot be made is a clear error at Open.
func TestBadDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(DefaultConfig(filepath.Join(file, "spool"))); err == nil {
		t.Fatal("Open under a file succeeded")
	}
	if _, err := Open(Config{Dir: t.TempDir()}); err == nil {
		t.Fatal("Open with zero sizes succeeded")
	}
	if _, err := Open(Config{Dir: t.TempDir(), MaxBytes: 1 << 10, SegmentBytes: 4 << 10, Sync: SyncNever}); err == nil {
		t.Fatal("Open with a spool smaller than two segments succeeded")
	}
	s := open(t, t.TempDir(), func(c *Config) { c.MaxBytes, c.SegmentBytes = 1<<10, 512 })
	defer s.Close()
	if _, err := s.Append(make([]byte, 2<<10), 1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a record larger than the spool: %v", err)
	}
}

// FuzzScan: any bytes as a segment: no panic, and every record returned
// checks and lies within the file.
func FuzzScan(f *testing.F) {
	var seg bytes.Buffer
	seg.WriteString(magic)
	for i := range 3 {
		d := data(i)
		var h [headerSize]byte
		putHeader(h[:], d, 1+i%5, 7)
		seg.Write(h[:])
		seg.Write(d)
	}
	f.Add(seg.Bytes())
	f.Add([]byte(magic))
	f.Add(append([]byte(magic), 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		var n, nl int
		spans, damaged, err := scan(bytes.NewReader(b), int64(len(b)), 7, func(r Record) error {
			if r.ID.Off+int64(headerSize+len(r.Data)) > int64(len(b)) {
				t.Fatalf("record past the end")
			}
			return nil
		}, &n, &nl)
		if err != nil || damaged < 0 || damaged > int64(len(b)) {
			t.Fatalf("%d bytes damaged of %d, %v", damaged, len(b), err)
		}
		last := int64(len(magic))
		for _, sp := range spans {
			if sp.start < last || sp.end <= sp.start || sp.end > int64(len(b)) {
				t.Fatalf("spans %v out of order or past the end (%d)", spans, len(b))
			}
			last = sp.end
		}
	})
}

// Next returns what a previous process left, then what is appended, in
// order, waiting in between; after EndInput it ends with io.EOF.
// DropOldest then counts only records Next has not returned.
func TestNext(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	for i := range 30 {
		if _, err := s.Append(data(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = open(t, dir, nil)
	defer s.Close()
	got := make(chan int, 100)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := s.Next()
			if err != nil {
				errc <- err
				return
			}
			var i int
			fmt.Sscanf(string(r.Data), `{"batch":%d`, &i)
			if !bytes.Equal(r.Data, data(i)) || r.Replayed != (i < 30) {
				errc <- fmt.Errorf("record %d: replayed %v, %q", i, r.Replayed, r.Data)
				return
			}
			got <- i
			s.Ack(r.ID, r.Lines)
		}
	}()
	for i := range 30 {
		if g := <-got; g != i {
			t.Fatalf("got %d, want %d", g, i)
		}
	}
	for i := 30; i < 60; i++ {
		if _, err := s.Append(data(i), 1); err != nil {
			t.Fatal(err)
		}
		if g := <-got; g != i {
			t.Fatalf("got %d, want %d", g, i)
		}
	}
	s.EndInput()
	if err := <-errc; !errors.Is(err, io.EOF) {
		t.Fatalf("after EndInput: %v", err)
	}
	if st := s.Stats(); st.Records != 0 || st.Replayed != 30 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStopReading(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	defer s.Close()
	errc := make(chan error, 1)
	go func() { _, err := s.Next(); errc <- err }()
	s.StopReading()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("%v", err)
	}
}

// A second spool on the same directory (another listener, another
// process) is refused while the first is open.
func TestInUse(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	if _, err := Open(DefaultConfig(dir)); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v", err)
	}
	s.Close()
	s2 := open(t, dir, nil)
	s2.Close()
}

// Full with everything acknowledged in the segment being written: it is
// sealed (and so deleted), and the append goes on.
func TestFullActiveSegmentAcked(t *testing.T) {
	for _, full := range []Full{Block, DropOldest} {
		s := open(t, t.TempDir(), func(c *Config) { c.MaxBytes, c.SegmentBytes, c.Full = 8<<10, 4<<10, full })
		var ids []ID
		for i := 0; s.Stats().Bytes+int64(headerSize+len(data(i))) <= 4<<10; i++ {
			id, err := s.Append(data(i), 1)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		for _, id := range ids {
			s.Ack(id, 1)
		}
		done := make(chan error, 1)
		go func() {
			for i := range 20 {
				if _, err := s.Append(data(i), 1); err != nil {
					done <- err
					return
				}
				s.Ack(ID{Seg: 0}, 0) // no such record: ignored
			}
			done <- nil
		}()
		select {
		case err := <-done:
			if err != nil && !(full == DropOldest && errors.Is(err, ErrFull)) {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("policy %d: Append hangs on a spool whose records are all acknowledged", full)
		}
		s.Close()
	}
}

// batchOf parses the batch number of a record made by data.
func batchOf(r Record) int {
	var i int
	fmt.Sscanf(string(r.Data), `{"batch":%d`, &i)
	return i
}

// reader runs Next in a goroutine, acknowledging and sending each record
// it returns; parked reports whether it waits for the next.
type reader struct {
	s    *Spool
	recs chan Record
	done chan error
}

func startReader(s *Spool) *reader {
	r := &reader{s: s, recs: make(chan Record, 1000), done: make(chan error, 1)}
	go func() {
		for {
			rec, err := s.Next()
			if err != nil {
				r.done <- err
				return
			}
			rec.Data = slices.Clone(rec.Data)
			s.Ack(rec.ID, rec.Lines)
			r.recs <- rec
		}
	}()
	return r
}

// waitParked waits until the reader waits for a record.
func (r *reader) waitParked(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		r.s.mu.Lock()
		parked := r.s.readerParked
		r.s.mu.Unlock()
		if parked {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the reader does not wait")
		}
	}
}

// next is the next record the reader returned.
func (r *reader) next(t *testing.T) int {
	t.Helper()
	select {
	case rec := <-r.recs:
		return batchOf(rec)
	case err := <-r.done:
		t.Fatalf("Next: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no record")
	}
	return -1
}

func yes() bool { return true }
func no() bool  { return false }

// AppendHandOff hands a record to its caller only when the reader has
// returned every record before it and waits, and the caller takes it;
// the others are read back, in order, and none is returned twice.
// Handed-off records are spooled until acknowledged: unacknowledged,
// they come back after a reopen.
func TestAppendHandOff(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	// A record from a previous process waits to be read: no hand-off.
	if _, err := s.Append(data(0), 1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, nil)
	if _, handed, err := s.AppendHandOff(data(1), 1, yes); err != nil || handed {
		t.Fatalf("handed %v (%v) with a replayed record unread", handed, err)
	}
	rd := startReader(s)
	for _, want := range []int{0, 1} {
		if got := rd.next(t); got != want {
			t.Fatalf("Next = %d; want %d", got, want)
		}
	}
	// Caught up: records are handed off, across segment rolls, except
	// those the caller declines, which Next returns.
	var handedIDs []ID
	declined := 0
	for i := 2; i < 300; i++ {
		rd.waitParked(t)
		take := yes
		if i%7 == 0 {
			take = no
		}
		id, handed, err := s.AppendHandOff(data(i), 1, take)
		if err != nil {
			t.Fatal(err)
		}
		if !handed {
			declined++
			if got := rd.next(t); got != i {
				t.Fatalf("Next = %d; want %d", got, i)
			}
			continue
		}
		if i%7 == 0 {
			t.Fatalf("record %d handed off though declined", i)
		}
		handedIDs = append(handedIDs, id)
	}
	if declined != 42 || len(segFiles(t, dir)) < 5 {
		t.Fatalf("declined %d, %d segments", declined, len(segFiles(t, dir)))
	}
	// Without a reader waiting, nothing is handed off.
	s.StopReading()
	if err := <-rd.done; !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if _, handed, _ := s.AppendHandOff(data(300), 1, yes); handed {
		t.Fatal("handed off with no reader")
	}
	// Acknowledge all but the last 10 handed-off records; close; the
	// 10 come back (with their segment's acknowledged neighbours).
	for _, id := range handedIDs[:len(handedIDs)-10] {
		s.Ack(id, 1)
	}
	if st := s.Stats(); st.Records != 11 || st.HandedOff != uint64(len(handedIDs)) {
		t.Fatalf("stats %+v: want 11 records unacknowledged, %d handed off", st, len(handedIDs))
	}
	s.Close()
	s = open(t, dir, nil)
	defer s.Close()
	got := map[int]bool{}
	for _, r := range replayAll(t, s) {
		got[batchOf(r)] = true
	}
	for i := 300 - 10; i <= 300; i++ {
		if i%7 != 0 && !got[i] {
			t.Fatalf("record %d, never acknowledged, lost at reopen (got %v)", i, got)
		}
	}
}

// A record ahead of the reader (written while the reader was busy) stops
// the hand-offs until it is read: a client's batches keep their order.
func TestHandOffWaitsForTheReader(t *testing.T) {
	s := open(t, t.TempDir(), nil)
	defer s.Close()
	if _, handed, _ := s.AppendHandOff(data(0), 1, yes); handed {
		t.Fatal("handed off with no reader waiting")
	}
	if _, handed, _ := s.AppendHandOff(data(1), 1, yes); handed {
		t.Fatal("handed off with a record before it unread")
	}
	rd := startReader(s)
	for _, want := range []int{0, 1} {
		if got := rd.next(t); got != want {
			t.Fatalf("Next = %d; want %d", got, want)
		}
	}
	rd.waitParked(t)
	if _, handed, _ := s.AppendHandOff(data(2), 1, yes); !handed {
		t.Fatal("not handed off with the reader caught up and waiting")
	}
	s.StopReading()
	<-rd.done
}

// With the interval policy, sealing a segment does not wait for its
// fsync: the next tick (or Close) syncs it, and a segment acknowledged
// and deleted before then is never synced.
func TestIntervalSealsWithoutWaiting(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, func(c *Config) { c.Sync, c.SyncInterval = SyncInterval, time.Hour })
	var ids []ID
	for i := range 200 {
		id, err := s.Append(data(i), 1)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	segs := len(segFiles(t, dir))
	if st := s.Stats(); segs < 5 || st.Syncs != 0 {
		t.Fatalf("%d segments, %d fsyncs before any tick", segs, st.Syncs)
	}
	// The first half acknowledged: their segments go, unsynced.
	for _, id := range ids[:100] {
		s.Ack(id, 1)
	}
	left := s.Stats().Segments // their files are deleted in the background
	if left >= segs {
		t.Fatalf("no segment deleted: %d of %d left", left, segs)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close synced each sealed segment left and the active one, once.
	if st := s.Stats(); st.Syncs != uint64(left) {
		t.Fatalf("%d fsyncs at Close, want %d (the segments left)", st.Syncs, left)
	}
	s = open(t, dir, nil)
	defer s.Close()
	n := 0
	for _, r := range replayAll(t, s) {
		if batchOf(r) >= 100 {
			n++
		}
	}
	if n != 100 {
		t.Fatalf("%d of the 100 unacknowledged records came back", n)
	}
}

// Segment files are reused: once their records are acknowledged they are
// kept as spares and written over by new segments. A crash then leaves
// records of the file's earlier use after the new ones; they are never
// returned (their tag is another segment's), nor counted as damage, and
// every record written whole before the crash (and the cut) comes back
// under its own ID.
func TestReusedSegmentsAfterCrash(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 100 {
		dir := t.TempDir()
		s := open(t, dir, func(c *Config) { c.SegmentBytes = 2 << 10 })
		var ids []ID
		k1 := 20 + rng.IntN(40)
		for i := range k1 {
			id, err := s.Append(data(i), 1+i%5)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		for i := range k1 {
			s.Ack(ids[i], 1+i%5)
		}
		if len(s.spares) == 0 {
			t.Fatalf("trial %d: no spare kept", trial)
		}
		k2 := 1 + rng.IntN(30)
		for i := k1; i < k1+k2; i++ {
			id, err := s.Append(data(i), 1+i%5)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		// The crash, and perhaps a cut of the last segment.
		lastSeg := ids[len(ids)-1].Seg
		cut := int64(-1)
		if rng.IntN(2) == 0 {
			info, err := os.Stat(s.path(lastSeg))
			if err != nil {
				t.Fatal(err)
			}
			cut = rng.Int64N(info.Size() + 1)
			if err := os.Truncate(s.path(lastSeg), cut); err != nil {
				t.Fatal(err)
			}
		}
		s.abandon()
		s2 := open(t, dir, nil)
		if m, _ := filepath.Glob(filepath.Join(dir, "*"+spareSuffix)); len(m) != 0 {
			t.Fatalf("trial %d: spares left after Open: %v", trial, m)
		}
		if cut < 0 && s2.Stats().CorruptTails != 0 {
			t.Fatalf("trial %d: a reused file's old records counted as damage", trial)
		}
		got := map[int]bool{}
		for _, r := range replayAll(t, s2) {
			i := batchOf(r)
			if i >= len(ids) || r.ID != ids[i] || !bytes.Equal(r.Data, data(i)) {
				t.Fatalf("trial %d: record %d returned at %+v, written at %+v", trial, i, r.ID, ids[min(i, len(ids)-1)])
			}
			got[i] = true
		}
		for i := k1; i < k1+k2; i++ {
			whole := cut < 0 || ids[i].Seg != lastSeg || ids[i].Off+int64(headerSize+len(data(i))) <= cut
			if whole && !got[i] {
				t.Fatalf("trial %d: record %d (%+v) lost (cut %d)", trial, i, ids[i], cut)
			}
		}
		s2.Close()
	}
}

// The spool's size counts what its files take, spares included, so the
// bound holds with files reused: checked against the files on disk
// through rounds of appends and out-of-order acknowledgements.
func TestSizeCountsReusedFiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	dir := t.TempDir()
	const maxBytes = 24 << 10
	s := open(t, dir, func(c *Config) { c.MaxBytes = maxBytes; c.Full = DropOldest })
	defer s.Close()
	var pending []ID
	sawSpare := false
	onDisk := func() int64 {
		s.deleteTrash()
		var n int64
		for _, pat := range []string{"*" + suffix, "*" + spareSuffix} {
			m, _ := filepath.Glob(filepath.Join(dir, pat))
			for _, p := range m {
				info, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				n += info.Size()
			}
		}
		return n
	}
	for i := range 2000 {
		id, err := s.Append(data(i), 1)
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, id)
		if rng.IntN(10) < 9 && len(pending) > 0 {
			k := rng.IntN(min(len(pending), 8)) // out of order, near the front
			s.Ack(pending[k], 1)
			pending = slices.Delete(pending, k, k+1)
		}
		sawSpare = sawSpare || len(s.spares) > 0
		if i%50 == 0 {
			disk := onDisk() // deletes the trash first
			if st := s.Stats(); st.Bytes != disk || st.Bytes > maxBytes {
				t.Fatalf("after %d appends: size %d, files %d, bound %d", i+1, st.Bytes, disk, maxBytes)
			}
		}
	}
	if !sawSpare {
		t.Fatal("no file was kept for reuse")
	}
}

// A segment of another version of the format is refused, not cut away.
func TestOtherFormatRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, fmt.Sprintf("%016x%s", 3, suffix))
	if err := os.WriteFile(path, append([]byte("NDLBSPL1"), make([]byte, 40)...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(DefaultConfig(dir)); err == nil || !strings.Contains(err.Error(), "another format") {
		t.Fatalf("Open = %v, want the other format named", err)
	}
	if info, err := os.Stat(path); err != nil || info.Size() != 48 {
		t.Fatalf("the segment was changed: %v, %v", info, err)
	}
}

// A spare file that cannot be opened (here a dangling link) is skipped:
// the new segment is made afresh, and nothing deletes it later.
func TestSpareThatFailsToOpen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, nil)
	defer s.Close()
	bad := filepath.Join(dir, "0000000000000099"+spareSuffix)
	if err := os.Symlink(filepath.Join(dir, "nowhere"), bad); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.spares = append(s.spares, spare{path: bad, size: 100})
	s.size += 100
	s.mu.Unlock()
	for i := range 40 { // several rolls
		if _, err := s.Append(data(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	s.deleteTrash()
	got := replayAll(t, s)
	if len(got) != 40 {
		t.Fatalf("%d of 40 records read back", len(got))
	}
	for i, r := range got {
		if batchOf(r) != i {
			t.Fatalf("record %d is %d", i, batchOf(r))
		}
	}
}

// Damage in the middle of a segment is cut out, counted in bytes, and
// costs only the records it touched: those after it are replayed, in
// order, and the file is left with whole records only (a second Open
// finds nothing to cut). Damage at the end cuts the tail, as a torn
// append does.
func TestDamagedRecordsAreCutOut(t *testing.T) {
	for _, tc := range []struct {
		name string
		// damage changes the file; it returns the indexes of the records
		// it spoiled and the bytes that are damage.
		damage func(f *os.File, recs []span) (spoiled []int, bytes int64)
	}{
		{"a byte of data", func(f *os.File, recs []span) ([]int, int64) {
			f.WriteAt([]byte{0xff, 0xff}, recs[5].start+headerSize+1)
			return []int{5}, recs[5].end - recs[5].start
		}},
		{"a record's length", func(f *os.File, recs []span) ([]int, int64) {
			f.WriteAt([]byte{0x01}, recs[3].start+1)
			return []int{3}, recs[3].end - recs[3].start
		}},
		{"the first record's tag", func(f *os.File, recs []span) ([]int, int64) {
			f.WriteAt([]byte{0, 0, 0, 0}, recs[0].start+8)
			return []int{0}, recs[0].end - recs[0].start
		}},
		{"pages never written", func(f *os.File, recs []span) ([]int, int64) {
			// A power loss can keep later pages of the file and lose
			// earlier ones: zeros across records 2 to 6.
			from, to := recs[2].start+7, recs[6].start+3
			f.WriteAt(make([]byte, to-from), from)
			return []int{2, 3, 4, 5, 6}, recs[7].start - recs[2].start
		}},
		{"two stretches", func(f *os.File, recs []span) ([]int, int64) {
			f.WriteAt([]byte{0xaa}, recs[1].end-1)
			f.WriteAt([]byte{0xaa}, recs[8].start+12)
			return []int{1, 8}, recs[1].end - recs[1].start + recs[8].end - recs[8].start
		}},
		{"the last record", func(f *os.File, recs []span) ([]int, int64) {
			f.WriteAt([]byte{0xaa}, recs[9].end-1)
			return []int{9}, recs[9].end - recs[9].start
		}},
		{"a torn append", func(f *os.File, recs []span) ([]int, int64) {
			f.Truncate(recs[9].end - 3)
			return []int{9}, recs[9].end - 3 - recs[9].start
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, nil)
			var recs []span
			lines := 0
			for i := range 10 {
				id, err := s.Append(data(i), 1+i%5)
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) > 0 && id.Seg != s.segs[0].seq {
					t.Fatalf("the records span segments")
				}
				recs = append(recs, span{id.Off, id.Off + headerSize + int64(len(data(i)))})
				lines += 1 + i%5
			}
			seg := s.segs[0].seq
			s.abandon()
			f, err := os.OpenFile(s.path(seg), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			spoiled, cut := tc.damage(f, recs)
			f.Close()
			s2 := open(t, dir, nil)
			st := s2.Stats()
			var want []int
			for i := range 10 {
				if !slices.Contains(spoiled, i) {
					want = append(want, i)
				} else {
					lines -= 1 + i%5
				}
			}
			if st.CorruptTails != 1 || st.CorruptBytes != uint64(cut) || st.Records != len(want) || st.Lines != lines {
				t.Fatalf("stats %+v; want one segment with %d bytes cut, %d records of %d lines", st, cut, len(want), lines)
			}
			var got []int
			for _, r := range replayAll(t, s2) {
				got = append(got, batchOf(r))
			}
			if !slices.Equal(got, want) {
				t.Fatalf("replayed %v, want %v", got, want)
			}
			s2.abandon()
			s3 := open(t, dir, nil)
			defer s3.Close()
			if st := s3.Stats(); st.CorruptTails != 0 || st.Records != len(want) {
				t.Fatalf("after the cut, a second open: %+v", st)
			}
		})
	}
}

// countLost is an edit of a spool's Config that adds what OnLost reports
// to records and lines, and fails the test for a loss without a reason.
func countLost(t *testing.T, records, lines *int) func(*Config) {
	return func(c *Config) {
		c.OnLost = func(n, l int, err error) {
			if err == nil {
				t.Error("OnLost without a reason")
			}
			*records += n
			*lines += l
		}
	}
}

// appended is a record Append took, and its lines.
type appended struct {
	id    ID
	lines int
}

// appendRecords appends data(0) to data(n-1), of 1 to 5 lines, and
// returns them and the segments they went to, in order; the test fails
// unless they span at least minSegs.
func appendRecords(t *testing.T, s *Spool, n, minSegs int) ([]appended, []uint64) {
	t.Helper()
	var recs []appended
	var segs []uint64
	for i := range n {
		id, err := s.Append(data(i), 1+i%5)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, appended{id, 1 + i%5})
		if len(segs) == 0 || segs[len(segs)-1] != id.Seg {
			segs = append(segs, id.Seg)
		}
	}
	if len(segs) < minSegs {
		t.Fatalf("%d segments; the test needs %d", len(segs), minSegs)
	}
	return recs, segs
}

// While the spool runs, a record damaged on disk, a huge length in a
// header, and a sealed segment's file removed: Next skips what it cannot
// read, goes on with the records after it, and counts what it missed
// (OnLost) as it leaves each segment; a segment whose name is gone is
// still read while it is the one written. Every record appended is
// returned or counted lost.
func TestNextSkipsWhatItCannotReadBack(t *testing.T) {
	dir := t.TempDir()
	var lost, lostLines int
	s := open(t, dir, countLost(t, &lost, &lostLines))
	defer s.Close()
	recs, segs := appendRecords(t, s, 150, 4)
	spoil := func(i int, off int64, b []byte) {
		f, err := os.OpenFile(s.path(recs[i].id.Seg), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt(b, recs[i].id.Off+off)
		f.Close()
	}
	var want, wantLost []int
	inSeg := func(seg uint64) (is []int) {
		for i, r := range recs {
			if r.id.Seg == seg {
				is = append(is, i)
			}
		}
		return is
	}
	first := inSeg(segs[0])
	spoil(first[1], headerSize+2, []byte{0xfe}) // a byte of data
	second := inSeg(segs[1])
	spoil(second[0], 0, []byte{0xff, 0xff, 0xff, 0x3f}) // a gigabyte long, says its header
	if err := os.Remove(s.path(segs[2])); err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		switch {
		case i == first[1], i == second[0], recs[i].id.Seg == segs[2]:
			wantLost = append(wantLost, i)
		default:
			want = append(want, i)
		}
	}
	// The directory goes: the segment being written is still read.
	last := segs[len(segs)-1]
	if a := s.segs[len(s.segs)-1].seq; a != last {
		t.Fatalf("segment %d is written, not %d", a, last)
	}
	if err := os.Remove(s.path(last)); err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, r := range replayAll(t, s) {
		got = append(got, batchOf(r))
		s.Ack(r.ID, r.Lines)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("returned %v, want %v", got, want)
	}
	wl := 0
	for _, i := range wantLost {
		wl += recs[i].lines
	}
	if lost != len(wantLost) || lostLines != wl {
		t.Fatalf("lost %d records of %d lines, want %d of %d", lost, lostLines, len(wantLost), wl)
	}
	if st := s.Stats(); st.Lost != uint64(lost) || st.LostLines != uint64(lostLines) || st.Records != 0 || st.Segments != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A disk that fills before the spool does: the files kept for reuse take
// the room the appends need. They are deleted and the append goes on.
func TestDiskFullFreesSpares(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=640k"); err != nil {
		t.Skipf("cannot mount a small tmpfs (%v): needs root", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	s := open(t, dir, func(c *Config) { c.SegmentBytes, c.MaxBytes = 256<<10, 16<<20 })
	defer s.Close()
	rec := bytes.Repeat([]byte("x"), 16000)
	rec[len(rec)-1] = '\n'
	var ids []ID
	for s.Stats().Segments < 3 {
		id, err := s.Append(rec, 1)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids[:len(ids)-1] {
		s.Ack(id, 1)
	}
	s.mu.Lock()
	n := len(s.spares)
	s.mu.Unlock()
	if n == 0 {
		t.Fatal("no spare files kept")
	}
	for i := range 20 {
		if _, err := s.Append(rec, 1); err != nil {
			t.Fatalf("append %d with the spares taking the disk: %v", i, err)
		}
	}
}

// Damage in the segment being written: the reader skips it and seals the
// segment, so that it counts what it missed at once (not when the segment
// fills), the segment is deleted once the rest is acknowledged, and the
// hand-off of new appends to a waiting reader resumes.
func TestDamageInTheActiveSegment(t *testing.T) {
	dir := t.TempDir()
	var lost int
	s := open(t, dir, func(c *Config) {
		c.SegmentBytes = 1 << 20
		c.OnLost = func(records, _ int, _ error) { lost += records }
	})
	var ids []ID
	for i := range 5 {
		id, err := s.Append(data(i), 1)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	f, err := os.OpenFile(s.path(ids[2].Seg), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xee}, ids[2].Off+headerSize+3)
	f.Close()
	r := startReader(s)
	for _, want := range []int{0, 1, 3, 4} {
		if got := r.next(t); got != want {
			t.Fatalf("record %d, want %d", got, want)
		}
	}
	r.waitParked(t)
	s.mu.Lock()
	lostNow, segs := lost, len(s.segs)
	s.mu.Unlock()
	if lostNow != 1 || segs != 1 {
		t.Fatalf("%d lost, %d segments, want 1 and 1 (the damaged one sealed and deleted)", lostNow, segs)
	}
	if _, handed, err := s.AppendHandOff(data(5), 1, yes); err != nil || !handed {
		t.Fatalf("hand-off after the damage: handed %v, %v", handed, err)
	}
	if st := s.Stats(); st.Records != 1 || st.Lost != 1 {
		t.Fatalf("stats %+v", st)
	}
	s.Close()
	if err := <-r.done; !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
}

// A read error that is not damage (here the segment's name is a directory
// for a while: EISDIR; in life EMFILE or EIO) may pass: Next returns it,
// counts nothing lost, and once the segment reads again (opened anew: the
// error may have been the descriptor's) returns every record.
func TestReadErrorThatMayPassKeepsTheRecords(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, func(c *Config) {
		c.OnLost = func(records, lines int, err error) { t.Errorf("%d records lost: %v", records, err) }
	})
	defer s.Close()
	var ids []ID
	for i := range 60 {
		id, err := s.Append(data(i), 1+i%5)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if ids[0].Seg == ids[len(ids)-1].Seg {
		t.Fatal("one segment; the test needs a sealed one")
	}
	path := s.path(ids[0].Seg)
	if err := os.Rename(path, path+".aside"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Next(); err == nil || errors.Is(err, errDamaged) || errors.Is(err, io.EOF) {
			t.Fatalf("Next on a directory: %v, want a read error that may pass", err)
		}
	}
	if st := s.Stats(); st.Lost != 0 || st.CorruptBytes != 0 {
		t.Fatalf("stats %+v after errors that may pass", st)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".aside", path); err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, r := range replayAll(t, s) {
		got = append(got, batchOf(r))
	}
	if len(got) != 60 {
		t.Fatalf("after the error passed: %d records, %v…", len(got), got[:min(len(got), 5)])
	}
	for i, b := range got {
		if b != i {
			t.Fatalf("record %d is batch %d", i, b)
		}
	}
	if st := s.Stats(); st.Lost != 0 || st.CorruptBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Segment files removed while the spool is open cannot be replayed: Close
// counts the records Next had not returned as lost, forgets those it had
// (Has is false: their holders count them), and reports only what is
// still on disk as spooled. The next Open replays exactly that.
func TestCloseForgetsVanishedSegments(t *testing.T) {
	dir := t.TempDir()
	var lost, lostLines int
	s := open(t, dir, countLost(t, &lost, &lostLines))
	recs, segs := appendRecords(t, s, 150, 4)
	// Next returns the first segment and part of the second, of which
	// the first record is acknowledged.
	var fed []Record
	for {
		r, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		fed = append(fed, r)
		if r.ID.Seg == segs[1] && len(fed) > 1 && fed[len(fed)-2].ID.Seg == segs[1] {
			break
		}
	}
	firstOf1 := fed[len(fed)-2]
	s.Ack(firstOf1.ID, firstOf1.Lines)
	held := fed[len(fed)-1] // returned, not acknowledged: in a queue
	// The second segment and the one being written go.
	gone := map[uint64]bool{segs[1]: true, segs[len(segs)-1]: true}
	for seg := range gone {
		if err := os.Remove(s.path(seg)); err != nil {
			t.Fatal(err)
		}
	}
	wantLost, wantLostLines, wantKept := 0, 0, 0
	for _, r := range recs {
		switch {
		case r.id.Seg == segs[1] && r.id.Off > held.ID.Off, r.id.Seg == segs[len(segs)-1]:
			wantLost++ // not returned by Next
			wantLostLines += r.lines
		case !gone[r.id.Seg]:
			wantKept += r.lines
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if lost != wantLost || lostLines != wantLostLines {
		t.Fatalf("lost %d records of %d lines, want %d of %d", lost, lostLines, wantLost, wantLostLines)
	}
	if s.Has(held.ID) {
		t.Fatal("a record returned from a vanished segment is still Has")
	}
	if !s.Has(fed[0].ID) {
		t.Fatal("a record of a segment still on disk is not Has")
	}
	st := s.Stats()
	if st.Lines != wantKept || st.Lost != uint64(wantLost) || st.LostLines != uint64(wantLostLines) {
		t.Fatalf("stats %+v, want %d lines kept", st, wantKept)
	}
	s2 := open(t, dir, nil)
	defer s2.Close()
	n := 0
	for _, r := range replayAll(t, s2) {
		if gone[r.ID.Seg] {
			t.Fatalf("replayed a record of vanished segment %d", r.ID.Seg)
		}
		n += r.Lines
	}
	if n != wantKept {
		t.Fatalf("replayed %d lines, want %d", n, wantKept)
	}
}

// Check makes nothing: a directory still to be made stays unmade, and a
// path under a file is refused.
func TestCheckMakesNothing(t *testing.T) {
	base := t.TempDir()
	if err := Check(filepath.Join(base, "a", "b", "spool")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, "a")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check made a directory: %v", err)
	}
	if err := Check(base); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(base); len(left) != 0 {
		t.Errorf("Check left %v", left)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{file, filepath.Join(file, "spool"), filepath.Join(file, "a", "spool")} {
		if err := Check(dir); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("Check(%s): %v", dir, err)
		}
	}
}

// After EndInput, Append is refused and Keep appends, without waiting for
// room: when there is none it fails with ErrFull and drops nothing. The
// records kept come back at the next Open.
func TestKeepAfterEndInput(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, func(c *Config) { c.MaxBytes = 8 << 10 })
	s.EndInput()
	if _, err := s.Append(data(0), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after EndInput: %v", err)
	}
	kept := 0
	for i := 0; ; i++ {
		if _, err := s.Keep(data(i), 1+i%5); errors.Is(err, ErrFull) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kept++
	}
	if kept == 0 || s.Stats().Records != kept {
		t.Fatalf("kept %d, stats %+v", kept, s.Stats())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, func(c *Config) { c.MaxBytes = 8 << 10 })
	defer s.Close()
	if recs := replayAll(t, s); len(recs) != kept {
		t.Fatalf("%d records replayed, %d kept", len(recs), kept)
	}
}

// With DropOldest, Keep makes room as Append does: the oldest segments go
// (counted as dropped), and the newest records stay.
func TestKeepDropsOldestWhenSoConfigured(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, func(c *Config) { c.MaxBytes, c.Full = 8<<10, DropOldest })
	defer s.Close()
	s.EndInput()
	for i := range 100 {
		if _, err := s.Keep(data(i), 1+i%5); err != nil {
			t.Fatalf("keep %d: %v", i, err)
		}
	}
	if st := s.Stats(); st.Dropped == 0 || st.Records == 0 {
		t.Fatalf("stats %+v", st)
	}
}
