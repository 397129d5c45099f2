package ndjson

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/rawio"
)

// coalescer lets a fast client's bytes gather in the kernel between reads.
// A shipper writing 16 KiB at a time wakes its reader for every write,
// and each wake is a read, a batch, a worker's wake-up and a write to a
// target. Once a client sends faster than mark bytes per wait, the
// coalescer raises its socket's receive low-water mark (SO_RCVLOWAT) to
// mark: epoll then reports it readable only when mark bytes are waiting,
// so each read takes several of the client's writes. When a wait lasts
// longer than wait (the client paused, or ended a burst below the mark),
// a timer lowers the mark to one byte, which wakes the reader at once
// (Linux signals readability when the mark is lowered), so
// no byte waits in the kernel much longer than wait. A slower client is
// never coalesced: its every byte is read as it comes.
//
// The reader's goroutine calls read and waiting; the timer's, lower.
type coalescer struct {
	rc   syscall.RawConn
	mark int
	wait time.Duration

	last  time.Time   // the previous read (the reader's goroutine only)
	timer *time.Timer // lowers the mark after a long wait; made at the first raise (the reader's goroutine only)

	// mu orders the changes of the mark, so that once stop returns the
	// socket's mark is low whatever the timer was doing; high says it is
	// raised, and is read without mu on the reader's path.
	mu   sync.Mutex
	high atomic.Bool
}

// newCoalescer returns a coalescer for the socket rc, or nil when wait is
// 0 (off) or the kernel is older than 5.11. mark is capped at maxMark.
func newCoalescer(rc syscall.RawConn, mark int, wait time.Duration) *coalescer {
	if wait <= 0 || mark <= 1 || !lowatWorks() {
		return nil
	}
	return &coalescer{rc: rc, mark: min(mark, maxMark), wait: wait}
}

// maxMark caps the mark: raising SO_RCVLOWAT grows the socket's receive
// buffer to hold twice the mark, kernel memory that --client-buffer-bytes
// does not count and that is never given back.
const maxMark = 256 << 10

// read is told of every read of n > 0 bytes. It raises the mark when the
// client sent faster than mark bytes per wait since the previous read.
func (co *coalescer) read(n int) {
	now := time.Now()
	first, dt := co.last.IsZero(), now.Sub(co.last)
	co.last = now
	if co.high.Load() || first || dt <= 0 || float64(n)*float64(co.wait) < float64(co.mark)*float64(dt) {
		return
	}
	if co.timer == nil {
		co.timer = time.AfterFunc(time.Hour, co.lower)
		co.timer.Stop()
	}
	co.mu.Lock()
	if co.set(co.mark) {
		co.high.Store(true)
		coalesceRaises.Add(1)
	}
	co.mu.Unlock()
}

// coalesceRaises counts the marks raised, in every server (for tests).
var coalesceRaises atomic.Uint64

// waiting is called as the reader starts to wait for data: while the mark
// is raised, the timer lowers it if the wait lasts longer than wait.
func (co *coalescer) waiting() {
	if co.high.Load() {
		co.timer.Reset(co.wait)
	}
}

// lower sets the mark back to one byte, waking a reader that waits with
// bytes below the mark in the kernel.
func (co *coalescer) lower() {
	co.mu.Lock()
	if co.high.Load() {
		co.high.Store(false) // first: setting the mark wakes the reader
		co.set(1)
	}
	co.mu.Unlock()
}

// stop lowers the mark and stops the timer: the reads are over, or the
// socket moves to another process, which must find it as it was accepted.
func (co *coalescer) stop() {
	if co.timer != nil {
		co.timer.Stop()
	}
	co.lower()
}

// set sets the socket's SO_RCVLOWAT and reports whether it could, with a
// raw system call: the timer's goroutine that lowers the mark often runs
// after the process was idle, where an ordinary one wakes the scheduler's
// monitor (see internal/rawio).
func (co *coalescer) set(v int) bool {
	var serr error
	err := co.rc.Control(func(fd uintptr) { serr = rawio.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, v) })
	return err == nil && serr == nil
}

// lowatWorks reports whether the kernel is Linux 5.11 or later. TCP wakes
// a reader when SO_RCVLOWAT is lowered below what is waiting since 4.18;
// until 5.11 a raised mark could also hold a sender back when the receive
// buffer filled with small segments before the mark was reached (fixed
// upstream in "tcp: fix SO_RCVLOWAT hangs with fat skbs" and its
// predecessors), which the timer would only cut to a millisecond.
var lowatWorks = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return kernelAtLeast(unix.ByteSliceToString(u.Release[:]), 5, 11)
})

// kernelAtLeast reports whether a kernel release ("6.1.0-13-amd64") is
// major.minor or later.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	digits := func(s string) string { // "18-rc1" → "18"
		if i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			return s[:i]
		}
		return s
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(digits(parts[1]))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}
