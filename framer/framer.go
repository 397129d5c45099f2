package framer

import (
	"bytes"
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/invalid"
)

// Defaults for Config.
const (
	// DefaultReadBytes is Config.ReadBytes: 64 KiB.
	DefaultReadBytes = 64 << 10
	// DefaultMaxLineBytes is Config.MaxLineBytes: 1 MiB.
	DefaultMaxLineBytes = 1 << 20
	// MaxMaxLineBytes is the largest MaxLineBytes Validate accepts.
	MaxMaxLineBytes = 1 << 30
	// MaxReadBytes is the largest ReadBytes Validate accepts.
	MaxReadBytes = 16 << 20
	// DefaultMemoryWait is Config.MemoryWait.
	DefaultMemoryWait = time.Second
)

// Reason says why a line was dropped.
type Reason string

// Reasons a framer drops a line.
const (
	// ReasonOversize: the line was longer than Config.MaxLineBytes.
	ReasonOversize Reason = "oversize"
	// ReasonIncomplete: the stream failed (reset, timeout, forced close)
	// in the middle of a line, so the fragment read so far is not a line.
	ReasonIncomplete Reason = "incomplete"
	// ReasonMemory: the line grew past one read while the memory Budget
	// had no room for it within Config.MemoryWait, or its framer waited
	// for room while every other byte of the Budget was held by waiters.
	ReasonMemory Reason = "memory"
)

// ErrConfig is returned by Config.Validate for a value out of range.
var ErrConfig = errors.New("framer: invalid config")

// Config sets the framer's limits. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	// ReadBytes is the least room offered to each Read, in bytes.
	ReadBytes int
	// MaxLineBytes is the longest line forwarded, not counting its '\n'.
	// Longer lines are dropped whole and reported as ReasonOversize.
	MaxLineBytes int
	// MemoryWait is how long a line longer than one read waits for room
	// in the Budget before it is dropped as ReasonMemory. Zero drops it at
	// once.
	MemoryWait time.Duration
}

// DefaultConfig returns 16 KiB reads, a 1 MiB line limit and a one-second
// memory wait.
func DefaultConfig() Config {
	return Config{ReadBytes: DefaultReadBytes, MaxLineBytes: DefaultMaxLineBytes, MemoryWait: DefaultMemoryWait}
}

// Validate reports the first value out of range as an *invalid.Error
// naming the field, wrapping ErrConfig.
func (c Config) Validate() error {
	switch {
	case c.ReadBytes < 1 || c.ReadBytes > MaxReadBytes:
		return invalid.Field(ErrConfig, "ReadBytes", "read size of %s: want 1 byte to 16MiB", invalid.Bytes(int64(c.ReadBytes)))
	case c.MaxLineBytes < 1 || c.MaxLineBytes > MaxMaxLineBytes:
		return invalid.Field(ErrConfig, "MaxLineBytes", "line limit of %s: want 1 byte to 1GiB", invalid.Bytes(int64(c.MaxLineBytes)))
	case c.MemoryWait < 0:
		return invalid.Field(ErrConfig, "MemoryWait", "memory wait %s must not be negative", c.MemoryWait)
	}
	return nil
}

// MaxBatchBytes is the largest Weight a batch of this config can have. Queues
// that bound memory must allow at least this much.
func (c Config) MaxBatchBytes() int {
	return 1 << (classOf(c.MaxLineBytes+1+c.ReadBytes) + minClassShift)
}

// Drop describes one dropped line.
type Drop struct {
	Reason Reason
	// Bytes is how many bytes of the line had been read when it was
	// dropped; an oversize line is dropped as soon as it passes the limit.
	Bytes int
}

// BufferReader is implemented by readers that can wait for data before they
// need a buffer: ReadBuffer calls get for the buffer to read into only when
// data may be ready, and put to give it back when the read would block. A
// framer reads through it, so an idle stream holds no read buffer while it
// waits (a partial line shorter than one read is moved to a buffer of its
// size). Otherwise it behaves as io.Reader's Read into the buffer from get.
//
// get returns nil when the framer's Budget has no room now; ReadBuffer must
// then return (0, nil) without reading, and the framer waits for room.
type BufferReader interface {
	ReadBuffer(get func() []byte, put func()) (int, error)
}

// Framer turns one stream into batches of whole lines. It is not safe for
// concurrent use: one goroutine calls Next until it returns an error.
type Framer struct {
	// OnDrop, if set, is called for every dropped line, from Next's goroutine.
	OnDrop func(Drop)
	// Budget, if set, bounds the memory the framer holds together with
	// every other framer sharing it. Set it before the first Next.
	Budget *Budget
	// Stop, if set, ends a wait for memory: Next then returns ErrStopped.
	Stop <-chan struct{}

	r    io.Reader
	br   BufferReader // r, when it is one
	get  func() []byte
	put  func()
	cfg  Config
	pool *Pool

	cur        *Batch // cur.buf[:n] is the carried partial line
	n          int
	discarding bool  // inside an oversize line: skip up to its newline
	err        error // the reader's error, returned after pending output
	res        int64 // bytes charged to Budget for cur and the next emit
	starved    bool  // get found no room in the budget

	idleSince atomic.Int64 // since when (mono) a partial line waits for data; 0 if none
	waited    int64        // idleSince when the stream was suspended (Waited)
}

// New returns a Framer reading r. cfg must be valid (see Config.Validate).
func New(r io.Reader, cfg Config, pool *Pool) *Framer {
	f := &Framer{r: r, cfg: cfg, pool: pool}
	if br, ok := r.(BufferReader); ok {
		f.br, f.get, f.put = br, f.getBuffer, f.putBuffer
	}
	return f
}

// getBuffer lends a BufferReader the room after the carried tail, or nil
// when the budget has none now. A partial line's wait for data goes on
// until the read returns bytes (Next): a TLS read can take bytes of a
// record and still return none, and those must not put off the line
// timeout. A wait for memory is not the client's: it does not count.
func (f *Framer) getBuffer() []byte {
	if !f.tryReserve() {
		f.idleSince.Store(0)
		f.starved = true
		return nil
	}
	f.ensureRoom()
	return f.readRoom()
}

// putBuffer is called when the read would block: the framer gives back the
// read buffer, keeping only the partial line (in a buffer of its size when
// it is shorter than one read), and what it reserved beyond that.
func (f *Framer) putBuffer() {
	switch {
	case f.n == 0 && !f.discarding:
		f.idleSince.Store(0)
	case f.idleSince.Load() == 0:
		f.idleSince.Store(max(mono.Now(), 1))
	}
	f.shrink()
}

// shrink releases what the framer holds beyond its partial line.
func (f *Framer) shrink() {
	switch {
	case f.cur == nil:
	case f.n == 0:
		f.cur.Release()
		f.cur = nil
	case f.n < f.cfg.ReadBytes && classSize(f.n) < len(f.cur.buf):
		small := f.pool.Get(f.n)
		copy(small.buf, f.cur.buf[:f.n])
		f.cur.Release()
		f.cur = small
	}
	f.setReserved(int64(f.held()))
}

// held is the weight of cur.
func (f *Framer) held() int {
	if f.cur == nil {
		return 0
	}
	return len(f.cur.buf)
}

// setReserved moves the framer's charge to n bytes, releasing the rest. It
// never waits: it is for giving back.
func (f *Framer) setReserved(n int64) {
	if n < f.res {
		f.Budget.release(f.res - n)
		f.res = n
	}
}

// readNeed is what the next read must have reserved: the buffer it reads
// into, and room for the one buffer that cutting what it reads may add (a
// small batch copied out, or the new tail, at most what the read takes).
// A read takes the buffer's whole room after the tail (readRoom), so that
// batches fill their buffers, but while the framer grows a line longer
// than one read it takes ReadBytes at most: reserving the room after a
// long line instead (up to the line's size again) made a long line ask
// for twice its buffer, more than a small budget's long-line share, and it
// was dropped as memory with no other client (octet-counted messages of
// 200 KB, a 1 MiB budget).
func (f *Framer) readNeed() int64 {
	c := classSize(f.n + f.cfg.ReadBytes)
	if f.cur != nil && len(f.cur.buf)-f.n >= f.cfg.ReadBytes {
		c = len(f.cur.buf)
	}
	if f.long() {
		return int64(c + classSize(f.cfg.ReadBytes))
	}
	return int64(c + classSize(c-f.n))
}

// readRoom is where the next read goes: after the carried tail, and at
// most ReadBytes of it while the framer grows a long line (see readNeed).
func (f *Framer) readRoom() []byte {
	if f.long() {
		return f.cur.buf[f.n : f.n+f.cfg.ReadBytes]
	}
	return f.cur.buf[f.n:]
}

// long reports whether the framer grows a line longer than one read.
func (f *Framer) long() bool { return f.n >= f.cfg.ReadBytes }

// tryReserve reserves what the next read needs if the budget has room now.
func (f *Framer) tryReserve() bool {
	need := f.readNeed()
	if f.res >= need {
		return true
	}
	if !f.Budget.tryAcquire(need-f.res, f.long()) {
		return false
	}
	f.res = need
	return true
}

// waitMemory waits for what the next read needs. A line longer than one
// read waits at most MemoryWait, and a partial line does not wait when its
// wait would stall the budget; then it is dropped as ReasonMemory and the
// framer skips to its newline without buffering it.
func (f *Framer) waitMemory() error {
	if f.tryReserve() {
		return nil
	}
	long := f.long()
	wait := time.Duration(-1) // forever
	if long {
		wait = f.cfg.MemoryWait
	}
	if f.n == 0 {
		f.shrink() // a buffer with no line in it is not kept while waiting
	}
	need := f.readNeed()
	var err error
	if wait == 0 {
		err = errNoRoom
	} else {
		// What the framer holds counts only when it is a line it can
		// drop and it would wait for good (see Budget: a stalled
		// budget); a long line's wait ends by itself.
		var held int64
		if f.n > 0 && !long {
			held = f.res
		}
		err = f.Budget.acquire(need-f.res, long, max(wait, 0), held, f.Stop)
	}
	switch {
	case err == nil:
		f.res = need
		return nil
	case errors.Is(err, errNoRoom):
		f.drop(ReasonMemory, f.n)
		f.discarding, f.n = true, 0
		f.shrink()
		return f.waitMemory() // an ordinary read now: waits as long as it takes
	}
	return err
}

// IdleSince returns when the framer began waiting for the rest of a
// partial line (one it holds, or one it is skipping after a drop), or the
// zero time when it is not waiting or is between lines. It
// is safe to call from any goroutine (for a timeout on idle clients).
func (f *Framer) IdleSince() time.Time {
	if ns := f.idleSince.Load(); ns != 0 {
		return mono.Time(ns)
	}
	return time.Time{}
}

// Next returns the next batch of whole lines. It returns io.EOF after the last
// batch of a stream that ended cleanly, and the reader's error otherwise. After
// an error the framer holds no buffers.
func (f *Framer) Next() (*Batch, error) {
	for f.err == nil {
		var n int
		var err error
		if f.br != nil {
			n, err = f.br.ReadBuffer(f.get, f.put)
			if n > 0 {
				f.idleSince.Store(0)
			}
			if f.starved {
				f.starved = false
				if n == 0 && err == nil {
					f.err = f.waitMemory()
					continue
				}
			}
		} else {
			if err := f.waitMemory(); err != nil {
				f.err = err
				break
			}
			f.ensureRoom()
			if f.n > 0 || f.discarding {
				f.idleSince.Store(max(mono.Now(), 1))
			}
			n, err = f.r.Read(f.readRoom())
			f.idleSince.Store(0)
		}
		f.err = err
		if n > 0 {
			if b := f.consume(f.n, f.n+n); b != nil {
				return b, nil
			}
		}
	}
	if errors.Is(f.err, ErrSuspend) {
		f.waited = f.idleSince.Swap(0)
		return nil, f.err // the partial line stays for Carry
	}
	return f.finish()
}

// ErrSuspend is what a reader returns to stop the framer without ending
// its stream: Next returns it (after any batch of whole lines read with
// it) and keeps the partial line, for Carry to give to whoever reads the
// stream next (another process, after an upgrade).
var ErrSuspend = errors.New("framer: stream suspended to move it elsewhere")

// Carry returns a copy of the unfinished line the framer holds and whether
// it was skipping the rest of a dropped line, and releases its buffers.
// Call it after Next returned ErrSuspend; the stream's next reader resumes
// with Resume.
func (f *Framer) Carry() (partial []byte, skipping bool) {
	if f.cur != nil && f.n > 0 && !f.discarding {
		partial = append([]byte(nil), f.cur.buf[:f.n]...)
	}
	skipping = f.discarding
	f.Close()
	f.discarding = false
	return partial, skipping
}

// Waited is when the line the framer held at a suspension (Next returned
// ErrSuspend), or the dropped one it was skipping, began to wait for the
// client's next bytes: the zero time if it was between lines. The stream's
// next reader goes on timing that wait.
func (f *Framer) Waited() time.Time {
	if f.waited == 0 {
		return time.Time{}
	}
	return mono.Time(f.waited)
}

// Resume makes a new framer continue a stream that another framer carried:
// skipping says the stream starts inside a dropped line (already counted),
// whose rest is skipped up to its newline. The partial line itself goes
// ahead of the stream's bytes (the reader returns it first). Call it before
// the first Next.
func (f *Framer) Resume(skipping bool) { f.discarding = skipping }

// finish handles the carried tail once the reader has failed. It leaves
// the framer holding nothing.
func (f *Framer) finish() (*Batch, error) {
	f.idleSince.Store(0)
	if f.cur == nil {
		f.setReserved(0)
		return nil, f.err
	}
	cur, n := f.cur, f.n
	f.cur, f.n = nil, 0
	switch {
	case f.discarding || n == 0:
		cur.Release()
		f.setReserved(0)
		return nil, f.err
	case !errors.Is(f.err, io.EOF):
		f.drop(ReasonIncomplete, n)
		cur.Release()
		f.setReserved(0)
		return nil, f.err
	}
	// A clean EOF: terminate the tail so it stays a line of its own.
	if n == len(cur.buf) {
		grown := f.pool.Get(n + 1)
		f.force(int64(len(grown.buf))) // a one-off, at most one buffer
		copy(grown.buf, cur.buf[:n])
		cur.Release()
		cur = grown
	}
	cur.buf[n] = '\n'
	cur.Data, cur.Lines = cur.buf[:n+1], 1
	f.charge(cur)
	f.setReserved(0)
	return cur, nil
}

// force charges n bytes beyond the reservation without waiting.
func (f *Framer) force(n int64) {
	if f.Budget != nil {
		f.Budget.mu.Lock()
		f.Budget.used += n
		f.Budget.inUse.Store(f.Budget.used)
		f.Budget.mu.Unlock()
	}
	f.res += n
}

// charge moves b's weight from the framer's reservation to b: the batch
// carries it until Batch.Uncharge or Release.
func (f *Framer) charge(b *Batch) {
	if f.Budget == nil {
		return
	}
	w := int64(len(b.buf))
	b.budget, b.charge = f.Budget, w
	f.res -= w
	if f.res < 0 { // cannot happen while reservations cover every buffer
		f.Budget.release(-f.res) // keep the budget's count honest anyway
		f.res = 0
	}
}

// ensureRoom makes sure at least ReadBytes are free after the carried tail.
func (f *Framer) ensureRoom() {
	if f.cur == nil {
		f.cur = f.pool.Get(f.cfg.ReadBytes)
		return
	}
	if len(f.cur.buf)-f.n >= f.cfg.ReadBytes {
		return
	}
	grown := f.pool.Get(f.n + f.cfg.ReadBytes)
	copy(grown.buf, f.cur.buf[:f.n])
	f.cur.Release()
	f.cur = grown
}

// consume processes the bytes read into cur.buf[start:end] and returns a
// batch when they completed at least one line.
func (f *Framer) consume(start, end int) *Batch {
	buf := f.cur.buf
	if f.discarding {
		i := bytes.IndexByte(buf[start:end], '\n')
		if i < 0 {
			f.n = 0
			return nil
		}
		f.discarding = false
		end = copy(buf, buf[start+i+1:end])
		start = 0
	}
	last := bytes.LastIndexByte(buf[start:end], '\n')
	if last < 0 {
		f.n = end
		if f.n > f.cfg.MaxLineBytes {
			f.drop(ReasonOversize, f.n)
			f.discarding, f.n = true, 0
		}
		return nil
	}
	cut := start + last + 1
	data := buf[:cut]
	if cut > f.cfg.MaxLineBytes+1 {
		data = f.dropOversize(data)
	}
	tail := end - cut
	if tail > f.cfg.MaxLineBytes {
		f.drop(ReasonOversize, tail)
		f.discarding, tail = true, 0
	}
	if len(data) == 0 {
		f.n = copy(buf, buf[cut:cut+tail])
		return nil
	}
	return f.emit(data, cut, tail)
}

// emit hands out data (a prefix of cur.buf holding whole lines) and carries
// the tail cur.buf[cut:cut+tail] into the next read. Small batches are copied
// into a right-sized buffer so that a trickle of short writes cannot pin a
// full read buffer per line in the queue.
//
// The tail goes into a buffer of its own size (the next read grows it), so
// that what one read can add to the framer's memory is bounded by the
// reservation readNeed made for it.
func (f *Framer) emit(data []byte, cut, tail int) *Batch {
	lines := bytes.Count(data, nl)
	if len(data) <= len(f.cur.buf)/4 {
		b := f.pool.NewBatch(data, lines)
		f.n = copy(f.cur.buf, f.cur.buf[cut:cut+tail])
		f.charge(b)
		return b
	}
	b := f.cur
	f.cur = nil
	if tail > 0 {
		f.cur = f.pool.Get(tail)
		copy(f.cur.buf, b.buf[cut:cut+tail])
	}
	f.n = tail
	b.Data, b.Lines = data, lines
	f.charge(b)
	return b
}

var nl = []byte{'\n'}

// dropOversize removes the lines longer than MaxLineBytes from data, in
// place, and returns what is left. It runs only when data is long enough to
// hold such a line.
func (f *Framer) dropOversize(data []byte) []byte {
	out := 0
	for rest := 0; rest < len(data); {
		i := bytes.IndexByte(data[rest:], '\n')
		line := data[rest : rest+i+1]
		rest += i + 1
		if i > f.cfg.MaxLineBytes {
			f.drop(ReasonOversize, i)
			continue
		}
		out += copy(data[out:], line)
	}
	return data[:out]
}

func (f *Framer) drop(r Reason, n int) {
	if f.OnDrop != nil {
		f.OnDrop(Drop{Reason: r, Bytes: n})
	}
}

// Close releases the framer's buffers. It is needed only when the caller
// stops calling Next before Next has returned an error.
func (f *Framer) Close() {
	if f.cur != nil {
		f.cur.Release()
		f.cur, f.n = nil, 0
	}
	f.setReserved(0)
	f.idleSince.Store(0)
}

// Partial returns how many bytes of an unfinished line the framer carries.
// Call it from Next's goroutine only.
func (f *Framer) Partial() int {
	if f.discarding {
		return 0
	}
	return f.n
}

// Discarding reports whether the framer is skipping the rest of a dropped
// line. Call it from Next's goroutine only.
func (f *Framer) Discarding() bool { return f.discarding }
