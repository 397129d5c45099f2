package ndjson

import (
	"math/bits"
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
// target. Each time the reader starts to wait, the coalescer looks at what
// the client sent since the previous wait began. Once three quarters of
// the client's bytes per wait come to base or more, it raises the socket's
// receive low-water mark (SO_RCVLOWAT) to that (see markFor), so that epoll
// reports the socket readable a few times per wait at most, with
// everything that gathered read together. The mark stays within what the
// socket's receive buffer holds already (see fit). When a wait lasts
// longer than wait (the client paused, or ended a burst below the mark),
// a timer lowers the mark to one byte, which wakes the reader at once
// (Linux signals readability when the mark is lowered), so no byte waits
// in the kernel much longer than wait. A slower client is never
// coalesced: its every byte is read as it comes.
//
// The reader's goroutine calls read and waiting; the timer's, lower.
type coalescer struct {
	rc   syscall.RawConn
	base int // the least mark: a client sending less per wait is not coalesced
	wait time.Duration
	now  func() time.Time // the clock (tests set it)

	// The reader's goroutine only:
	burst   int         // bytes read since the last wait began
	last    time.Time   // when the last wait began
	mark    int         // the mark while raised
	room    int         // the largest mark the receive buffer held when last asked (0: not asked)
	recheck int         // waits until room is asked again, while it holds a mark back
	timer   *time.Timer // lowers the mark after a long wait; made at the first raise
	armed   bool        // timer runs for the current wait

	// mu orders the changes of the mark, so that once stop returns the
	// socket's mark is low whatever the timer was doing; high says it is
	// raised, and is read without mu on the reader's path.
	mu   sync.Mutex
	high atomic.Bool
}

// newCoalescer returns a coalescer for the socket rc, or nil when wait is
// 0 (off) or the kernel is older than 5.11. base is capped at maxMark.
func newCoalescer(rc syscall.RawConn, base int, wait time.Duration) *coalescer {
	if wait <= 0 || base <= 1 || !lowatWorks() {
		return nil
	}
	return &coalescer{rc: rc, base: min(base, maxMark), wait: wait, now: time.Now}
}

// maxMark caps the mark: a wake-up per 256 KiB is already few, and the
// receive buffer that holds the mark is kernel memory --client-buffer-bytes
// does not count.
const maxMark = 256 << 10

// recheckWaits is how many waits pass before the receive buffer's size is
// asked again while it holds the mark below what the client's pace calls
// for (the kernel grows the buffer of a fast connection as it goes).
const recheckWaits = 16

// read is told of every read of n > 0 bytes. The first after a wait stops
// the timer: a burst that takes longer to read than wait must not have its
// mark lowered meanwhile, to be raised again at the next wait.
func (co *coalescer) read(n int) {
	co.burst += n
	if co.armed {
		co.armed = false
		co.timer.Stop()
	}
}

// waiting is called as the reader starts to wait for data. It sets the
// mark from what the client sent since the previous wait began; while the
// mark is raised, the timer lowers it if this wait lasts longer than wait.
func (co *coalescer) waiting() {
	now := co.now()
	burst, dt, first := co.burst, now.Sub(co.last), co.last.IsZero()
	co.burst, co.last = 0, now
	if !first && dt > 0 {
		if m := co.fit(co.markFor(float64(burst) * float64(co.wait) / float64(dt))); m > 0 && (m != co.mark || !co.high.Load()) {
			co.raise(m)
		}
	}
	if co.high.Load() {
		co.timer.Reset(co.wait)
		co.armed = true
	}
}

// markFor is the mark for a client sending perWait bytes per wait: three
// quarters of it, rounded down to a power of two, at most maxMark; 0 when
// that is less than base (the client is not coalesced). The quarter and
// the rounding leave room for the client's pace to vary before the timer
// would cut a wait short: the mark fills in 3/8 to 3/4 of a wait.
func (co *coalescer) markFor(perWait float64) int {
	m := int(min(perWait*3/4, maxMark))
	if m < co.base {
		return 0
	}
	return max(1<<(bits.Len(uint(m))-1), co.base)
}

// fit bounds a mark m > 0 by what the socket's receive buffer holds now
// (half of SO_RCVBUF, rounded down to a power of two; at least base).
// Linux grows the buffer for a mark it cannot hold, and then clamps the
// window the connection advertises to the mark until its own tuning grows
// the buffer on: a throughput limit for a client far away. Within the
// buffer, the mark leaves flow control as the kernel has it. The size is
// asked when m passes the last answer, then every recheckWaits waits while
// it holds m back.
func (co *coalescer) fit(m int) int {
	if m <= co.room || m <= co.base {
		return m
	}
	if co.recheck > 0 {
		co.recheck--
	} else {
		co.room, co.recheck = co.roomNow(), recheckWaits
	}
	return max(min(m, co.room), co.base)
}

// roomNow is the largest power of two within half the socket's receive
// buffer; 0 when it cannot be asked.
func (co *coalescer) roomNow() int {
	var v int
	var serr error
	if err := co.rc.Control(func(fd uintptr) { v, serr = rawio.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) }); err != nil || serr != nil || v < 2 {
		return 0
	}
	return 1 << (bits.Len(uint(v/2)) - 1)
}

// raise sets the mark to m.
func (co *coalescer) raise(m int) {
	if co.timer == nil {
		co.timer = time.AfterFunc(time.Hour, co.lower)
		co.timer.Stop()
	}
	co.mu.Lock()
	if co.set(m) {
		co.mark = m
		if !co.high.Swap(true) {
			coalesceRaises.Add(1)
		}
	}
	co.mu.Unlock()
}

// coalesceRaises counts the marks raised from one byte, in every server
// (for tests).
var coalesceRaises atomic.Uint64

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
