package framer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Defaults for Config.
const (
	// DefaultReadBytes is Config.ReadBytes: 16 KiB.
	DefaultReadBytes = 16 << 10
	// DefaultMaxLineBytes is Config.MaxLineBytes: 1 MiB.
	DefaultMaxLineBytes = 1 << 20
	// MaxMaxLineBytes is the largest MaxLineBytes Validate accepts.
	MaxMaxLineBytes = 1 << 30
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
}

// DefaultConfig returns 16 KiB reads and a 1 MiB line limit.
func DefaultConfig() Config {
	return Config{ReadBytes: DefaultReadBytes, MaxLineBytes: DefaultMaxLineBytes}
}

// Validate reports a value out of range, wrapping ErrConfig.
func (c Config) Validate() error {
	switch {
	case c.ReadBytes < 1 || c.ReadBytes > 1<<24:
		return fmt.Errorf("%w: read size %d outside 1..16MiB", ErrConfig, c.ReadBytes)
	case c.MaxLineBytes < 1 || c.MaxLineBytes > MaxMaxLineBytes:
		return fmt.Errorf("%w: max line bytes %d outside 1..1GiB", ErrConfig, c.MaxLineBytes)
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
// framer that carries no partial line reads through it, so an idle stream
// holds no buffer while it waits. Otherwise it behaves as io.Reader's Read
// into the buffer from get.
type BufferReader interface {
	ReadBuffer(get func() []byte, put func()) (int, error)
}

// Framer turns one stream into batches of whole lines. It is not safe for
// concurrent use: one goroutine calls Next until it returns an error.
type Framer struct {
	// OnDrop, if set, is called for every dropped line, from Next's goroutine.
	OnDrop func(Drop)

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
}

// New returns a Framer reading r. cfg must be valid (see Config.Validate).
func New(r io.Reader, cfg Config, pool *Pool) *Framer {
	f := &Framer{r: r, cfg: cfg, pool: pool}
	if br, ok := r.(BufferReader); ok {
		f.br, f.get, f.put = br, f.getBuffer, f.putBuffer
	}
	return f
}

// getBuffer and putBuffer lend cur to a BufferReader while no partial line
// is carried.
func (f *Framer) getBuffer() []byte {
	f.ensureRoom()
	return f.cur.buf[f.n:]
}

func (f *Framer) putBuffer() {
	if f.n == 0 && f.cur != nil {
		f.cur.Release()
		f.cur = nil
	}
}

// Next returns the next batch of whole lines. It returns io.EOF after the last
// batch of a stream that ended cleanly, and the reader's error otherwise. After
// an error the framer holds no buffers.
func (f *Framer) Next() (*Batch, error) {
	for f.err == nil {
		var n int
		var err error
		if f.br != nil && f.n == 0 {
			n, err = f.br.ReadBuffer(f.get, f.put)
		} else {
			f.ensureRoom()
			n, err = f.r.Read(f.cur.buf[f.n:])
		}
		f.err = err
		if n > 0 {
			if b := f.consume(f.n, f.n+n); b != nil {
				return b, nil
			}
		}
	}
	return f.finish()
}

// finish handles the carried tail once the reader has failed.
func (f *Framer) finish() (*Batch, error) {
	if f.cur == nil {
		return nil, f.err
	}
	cur, n := f.cur, f.n
	f.cur, f.n = nil, 0
	switch {
	case f.discarding || n == 0:
		cur.Release()
		return nil, f.err
	case !errors.Is(f.err, io.EOF):
		f.drop(ReasonIncomplete, n)
		cur.Release()
		return nil, f.err
	}
	// A clean EOF: terminate the tail so it stays a line of its own.
	if n == len(cur.buf) {
		grown := f.pool.Get(n + 1)
		copy(grown.buf, cur.buf[:n])
		cur.Release()
		cur = grown
	}
	cur.buf[n] = '\n'
	cur.Data, cur.Lines = cur.buf[:n+1], 1
	return cur, nil
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
func (f *Framer) emit(data []byte, cut, tail int) *Batch {
	lines := bytes.Count(data, nl)
	if len(data) <= len(f.cur.buf)/4 {
		b := f.pool.NewBatch(data, lines)
		f.n = copy(f.cur.buf, f.cur.buf[cut:cut+tail])
		return b
	}
	b := f.cur
	f.cur = f.pool.Get(tail + f.cfg.ReadBytes)
	f.n = copy(f.cur.buf, b.buf[cut:cut+tail])
	b.Data, b.Lines = data, lines
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
}
