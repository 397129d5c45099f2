package passthrough

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/pires/go-proxyproto"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/internal/rawio"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// The event loops (Config.EventLoop) serve plain TCP connections the way
// HAProxy does: once the listener has accepted a connection (and read its
// PROXY header, if any), its socket leaves the Go runtime's poller, the
// target is dialled with a non-blocking connect, and from then on both
// sockets sit in one loop's epoll set, edge-triggered. The loop's goroutine
// runs every step inline when epoll reports a socket ready: the connect's
// completion or failure (and the next candidate), reads, writes, splices,
// half-closes and the end of the connection. A connection costs no
// goroutine, no hand-off between goroutines and none of the runtime's
// per-socket records, whatever it is doing.

// loopReadBytes is a loop's read buffer; a read that fills it makes the
// direction bulk (splice).
const loopReadBytes = 16 << 10

// smallSplice is the least a splice must move for the direction to go on
// splicing.
const smallSplice = 1 << 10

// loopTurnBytes bounds what one connection moves in one turn of its loop
// before the others get theirs.
const loopTurnBytes = 1 << 20

// loopRestAfter is how long a loop that waits in the kernel goes without
// an event before it waits as an ordinary system call, and loopRawWait the
// longest it waits as a raw one (runThread).
const (
	loopRestAfter = 50 * time.Millisecond
	loopRawWait   = 10 * time.Millisecond
)

// loopIdleWait is the longest a loop sleeps in epoll_wait when no connect
// or backoff deadline is due sooner.
const loopIdleWait = time.Second

// Loop connection phases.
const (
	phaseConnect uint8 = iota + 1 // a non-blocking connect is in progress
	phaseRetry                    // every candidate failed; waiting for the next round
	phaseProxy                    // connected: bytes move both ways
	phaseDone                     // ended; its slot is free
)

// evloop is one event loop: an epoll set and the goroutine that waits on
// it.
type evloop struct {
	s          *Server
	epfd, evfd int
	file       *os.File // a duplicate of epfd, in the runtime's poller; closed by run; nil for a loop started in the kernel
	wg         sync.WaitGroup
	buf        []byte   // the read buffer; owned by the loop's goroutine
	ready      []*lconn // connections whose turn ended before they would block; owned by the loop's goroutine
	due        []*lconn // scratch for the timers; owned by the loop's goroutine
	stopped    atomic.Bool
	kernel     atomic.Bool                       // the loop waits in the kernel (runThread)
	promote    atomic.Bool                       // it was given a processor: leave the poller for the kernel
	acc        atomic.Pointer[listener.Accepter] // accepts the listener's connections (acceptInLoops); used by the loop's goroutine
	conns      atomic.Int32                      // connections added and not removed (nearest)
	acceptMore bool                              // the last accept took a whole batch: look again at once; owned by the loop's goroutine
	ended      atomic.Bool                       // the loop's goroutine has ended (its connections stall): nearest gives it none
	held       bool                              // it holds a processor of its own; guarded by procsMu

	mu     sync.Mutex
	slots  []*lconn // guarded by mu; a connection's epoll id is its slot + 1 (0: the wake-up eventfd)
	free   []uint32 // guarded by mu
	timed  []*lconn // connecting or waiting for a round; guarded by mu
	wakeAt int64    // when the loop's current wait ends at the latest (mono); guarded by mu
	gen    uint32   // guarded by mu
}

// lconn is one connection served by a loop. Until it is added to its
// loop it belongs to the goroutine that dials; then to the loop's
// goroutine. Other goroutines only abort it (session.abort), under the
// session's lock.
type lconn struct {
	session
	l         *evloop
	slot, gen uint32
	fd        [2]int  // the client's socket (our duplicate) and the target's; -1 when there is none
	rd, wr    [2]bool // the sockets are readable, writable (edge-triggered: until EAGAIN)
	outOn     [2]bool // epoll reports the sockets' writability (watch, awaitWrite)
	hup       [2]bool // epoll reported the socket's end (RDHUP, HUP, ERR): read it until EOF or an error
	urg       [2]bool // epoll reported urgent data (EPOLLPRI), where a splice stops
	dir       [2]ldir // client to target, target to client
	phase     uint8
	timedIn   bool  // in l.timed; guarded by l.mu
	queued    bool  // in l.ready
	closed    bool  // the sockets are closed; guarded by session.mu
	linger0   bool  // close with RST
	connErr   bool  // epoll reported an error on the target's socket while connecting
	early     int   // bytes forwardFirst wrote to the target (then the connect is done)
	clientErr error // the client's read error forwardFirst took

	// Connecting.
	ctx       context.Context
	span      trace.Span // ndlb.passthrough.connect
	dialCtx   context.Context
	dialSpan  trace.Span
	dialStart time.Time
	target    *upstream.Target // being dialled
	key       []byte
	targets   []*upstream.Target
	order     []int
	next      int   // index in order of the next candidate
	round     int   // rounds over the targets after the first
	attempts  int   // attempts so far
	deadline  int64 // mono: the connect's or the backoff's end
	lastErr   error
	bo        backoff.BackOff
}

// ldir is one direction of a loop connection.
type ldir struct {
	pend     []byte // read and not yet written
	p        *pipe  // the splice pipe, held while bytes are in it
	inPipe   int
	bulk     bool // the last read filled the buffer: splice
	noSplice bool // the kernel cannot splice these sockets
	spliced  bool // a splice from the source worked
	eof      bool // the source ended
	done     bool // the source ended and everything was written, or the connection failed
}

// newLoops starts n event loops; nil if epoll is not available. With
// threads, each waits in the kernel itself (runThread) on a processor
// that GOMAXPROCS gains for it, as long as the process's loops that do
// number no more than twice its cores (GOMAXPROCS before them, at most
// the machine's CPUs); past that, a loop waits in the runtime's poller
// until another loop's processor is free (a reload's replacement
// listener, once the old one has drained), and never under GODEBUG's
// asyncpreemptoff=1 (see runThread). It returns how many wait in the
// kernel from the start.
func newLoops(s *Server, n int, threads bool) (loops []*evloop, kernel int, err error) {
	defer batchProcs()()
	loops = make([]*evloop, 0, n)
	for range n {
		l, err := newLoop(s, threads)
		if err != nil {
			stopLoops(loops)
			return nil, 0, err
		}
		if l.kernel.Load() {
			kernel++
		}
		loops = append(loops, l)
	}
	return loops, kernel, nil
}

// stopLoops stops the loops newLoops started; each gives back the
// processor it held.
func stopLoops(loops []*evloop) {
	defer batchProcs()()
	for _, l := range loops {
		l.stop()
	}
}

// batchProcs holds back setProcs until the function it returns is called,
// so that starting or stopping a server's loops changes GOMAXPROCS (and
// stops the world) once, not once per loop.
func batchProcs() (done func()) {
	procsMu.Lock()
	batching++
	procsMu.Unlock()
	return func() {
		procsMu.Lock()
		defer procsMu.Unlock()
		batching--
		setProcs()
	}
}

// The processors held by loops that wait in the kernel: GOMAXPROCS is
// baseProcs + loopProcs while loopProcs > 0 (once batchProcs lets
// setProcs change it). They are at most maxLoopProcs times baseProcs (or
// the machine's CPUs, if fewer): the
// garbage collector gives a quarter of GOMAXPROCS to its workers, cores or
// not, and a process with many listeners would otherwise give it the
// whole machine while it marks. Loops that would wait in the kernel but
// found no processor free wait in the poller, in waiting, oldest first.
var (
	procsMu   sync.Mutex
	baseProcs int // GOMAXPROCS before the first such loop; 0 while there is none
	loopProcs int
	waiting   []*evloop
	batching  int // batchProcs calls under way
)

// maxLoopProcs bounds the processors loops that wait in the kernel hold,
// in processors the process had before them (or CPUs, if fewer).
const maxLoopProcs = 2

// takeProc gives l a processor of its own, if the cap leaves one and the
// garbage collector can stop a loop that waits in the kernel (not with
// GODEBUG's asyncpreemptoff=1, which keeps the signal that ends the wait
// from being sent). Called with procsMu held.
func takeProc(l *evloop) bool {
	if asyncPreemptOff() {
		return false
	}
	base := baseProcs // still set while setProcs has not yet taken back the last loop's processor
	if base == 0 {
		base = runtime.GOMAXPROCS(0)
	}
	if loopProcs+1 > maxLoopProcs*min(base, runtime.NumCPU()) {
		return false
	}
	baseProcs = base
	loopProcs++
	l.held = true
	return true
}

// setProcs makes GOMAXPROCS baseProcs + loopProcs, if it is not already,
// and forgets baseProcs once no loop holds a processor: GOMAXPROCS is then
// what it was before them. (Having been set, it no longer follows a change
// of the container's CPU limit while the process runs:
// runtime.SetDefaultGOMAXPROCS would also undo a value someone else had
// set.) Called with procsMu held.
func setProcs() {
	if baseProcs == 0 || batching > 0 {
		return
	}
	if want := baseProcs + loopProcs; runtime.GOMAXPROCS(0) != want {
		runtime.GOMAXPROCS(want)
	}
	if loopProcs == 0 {
		baseProcs = 0
	}
}

// exited, once l's goroutine has ended, gives back its processor, or its
// place in waiting, and gives the processor to the oldest loop waiting in
// the poller for one, which then moves to the kernel.
func (l *evloop) exited() {
	procsMu.Lock()
	defer procsMu.Unlock()
	if i := slices.Index(waiting, l); i >= 0 {
		waiting = slices.Delete(waiting, i, i+1)
	}
	if !l.held {
		return
	}
	l.held = false
	loopProcs--
	for len(waiting) > 0 {
		w := waiting[0]
		if !takeProc(w) {
			break
		}
		waiting = slices.Delete(waiting, 0, 1)
		w.promote.Store(true)
		w.wake()
	}
	setProcs()
}

// cores is GOMAXPROCS without the processors loops that wait in the
// kernel hold: the default number of loops.
func cores() int {
	procsMu.Lock()
	defer procsMu.Unlock()
	if loopProcs > 0 {
		return baseProcs
	}
	return runtime.GOMAXPROCS(0)
}

// asyncPreemptOff reports whether GODEBUG turns off the scheduler's
// preemption signals.
func asyncPreemptOff() bool {
	off := false
	for kv := range strings.SplitSeq(os.Getenv("GODEBUG"), ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(kv), "="); ok && k == "asyncpreemptoff" {
			off = v == "1" // the last setting wins
		}
	}
	return off
}

// newLoop starts a loop: waiting in the kernel if threads and takeProc
// gives it a processor, else in the runtime's poller (and, with threads,
// in waiting for a processor).
func newLoop(s *Server, threads bool) (*evloop, error) {
	// Non-blocking, so that os.NewFile puts a duplicate in the runtime's
	// poller; epoll_wait itself waits for its timeout either way.
	epfd, evfd, err := newEpollWake(true)
	if err != nil {
		return nil, err
	}
	l := &evloop{s: s, epfd: epfd, evfd: evfd, buf: make([]byte, loopReadBytes)}
	procsMu.Lock()
	defer procsMu.Unlock()
	if threads && takeProc(l) {
		setProcs()
		l.kernel.Store(true)
		l.wg.Go(func() { defer l.exited(); defer l.leaveAccepting(); l.runThread() })
		return l, nil
	}
	// The poller has a duplicate, so that closing it (to move to the
	// kernel) leaves the epoll set open.
	dup, err := unix.FcntlInt(uintptr(epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	l.file = os.NewFile(uintptr(dup), "epoll")
	// The loop waits in the runtime's poller with deadlines: an epoll
	// descriptor the poller did not take cannot have one, and the server
	// serves with goroutines instead.
	if err := l.file.SetReadDeadline(time.Time{}); err != nil {
		l.file.Close()
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("event loop: epoll descriptor not pollable: %w", err)
	}
	if threads && !asyncPreemptOff() {
		waiting = append(waiting, l)
	}
	l.wg.Go(func() { defer l.exited(); defer l.leaveAccepting(); l.run() })
	return l, nil
}

// leaveAccepting, as the loop's goroutine ends, stops its accepts and
// marks the loop ended.
func (l *evloop) leaveAccepting() {
	l.ended.Store(true)
	if a := l.acc.Swap(noAccepter); a != nil && a != noAccepter {
		a.Close()
	}
}

// wake cuts the loop's wait short.
func (l *evloop) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

// stop ends the loop's goroutine and closes its descriptors. No connection
// may be left in it.
func (l *evloop) stop() {
	l.stopped.Store(true)
	l.wake()
	l.wg.Wait()
	unix.Close(l.evfd)
}

// run waits for ready sockets and due deadlines and serves them, until
// stop. It waits in the runtime's poller, on the epoll descriptor itself
// (an epoll set is readable when its sockets have events), and takes the
// events with non-blocking epoll_waits: a goroutine blocked in epoll_wait
// would make the scheduler hand its processor to another thread, and back,
// at every wait.
//
// The events are served inside the poller's read callback, which returns
// false to wait once a harvest left fewer events than it could take: every
// event that comes after a harvest makes the epoll descriptor readable
// again, and the runtime keeps that readiness within one RawConn.Read (it
// forgets it only when a new Read begins, which is why each begins with a
// harvest). So a wake-up usually costs one epoll_wait (the runtime may
// report an edge whose events a harvest already took), not a second one
// to find the set empty, and the read deadline is set only when the
// earliest timer moves closer.
func (l *evloop) run() {
	rc, err := l.file.SyscallConn()
	if err != nil {
		l.file.Close()
		unix.Close(l.epfd)
		l.s.log.Error("event loop failed; its connections stall", "err", err)
		return
	}
	events := make([]unix.EpollEvent, 256)
	var werr error
	var stopped, promoted bool
	var deadline int64 // the epoll descriptor's read deadline (mono); 0: none
	harvest := func(fd uintptr) bool {
		for {
			if l.promote.Load() { // a processor is ours: wait in the kernel
				promoted = true
				return true
			}
			n, err := rawio.EpollPoll(int(fd), events)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				werr = err
				return true
			}
			stop, until, now := l.serve(events[:n], deadline)
			if stop {
				stopped = true
				return true
			}
			if until <= now || n == len(events) {
				continue // work now, or more events than one harvest takes
			}
			if deadline == 0 || until < deadline {
				deadline = until
				_ = l.file.SetReadDeadline(mono.Time(until))
			}
			return false
		}
	}
	defer func() {
		if !promoted {
			l.file.Close()
			unix.Close(l.epfd)
		}
	}()
	for {
		err := rc.Read(harvest)
		switch {
		case promoted:
			l.file.Close() // the duplicate: the set stays open
			l.kernel.Store(true)
			l.runThread()
			return
		case stopped:
			return
		case werr != nil:
			l.s.log.Error("event loop failed; its connections stall", "err", os.NewSyscallError("epoll_wait", werr))
			return
		case errors.Is(err, os.ErrDeadlineExceeded): // timers are due (serve runs them)
			deadline = 0
			_ = l.file.SetReadDeadline(time.Time{})
		case err != nil: // not in the runtime's poller, or closed: it would spin
			l.s.log.Error("event loop failed; its connections stall", "err", err)
			return
		}
	}
}

// runThread is run for a loop that waits in the kernel
// (Config.EventLoopThreads): it waits in epoll_wait as a raw system call
// on the thread it runs on, so that the scheduler neither hands its
// processor to another thread at each wait nor wakes its monitor, and an
// event wakes this thread directly. The scheduler counts the goroutine as
// running; its monitor preempts it after 10 to 20 ms with a signal, as a
// garbage collection's stop does, which ends the wait (EINTR): the loop
// then yields (Gosched), so that the scheduler can stop it or run another
// goroutine on its processor, before it waits again. Goroutines the loop
// wakes (a connection slot freed) or timers it starts are queued on its
// processor and wait for that, unless another processor is idle to take
// them, as one usually is. A raw wait lasts at most loopRawWait, so a stop
// is not held up for long even without the signal. A loop that has had no
// event for loopRestAfter waits as an ordinary system call instead, which
// the scheduler sees, so that an idle process takes no signals and its
// monitor can sleep.
func (l *evloop) runThread() {
	defer unix.Close(l.epfd)
	events := make([]unix.EpollEvent, 256)
	wait := 0 // milliseconds
	rest := false
	last := mono.Now() // the last event
	for {
		var n int
		var err error
		if rest {
			n, err = unix.EpollWait(l.epfd, events, wait)
		} else {
			n, err = rawio.EpollWait(l.epfd, events, wait)
		}
		switch {
		case err == unix.EINTR:
			runtime.Gosched()
			n = 0
		case err != nil:
			l.s.log.Error("event loop failed; its connections stall", "err", os.NewSyscallError("epoll_wait", err))
			return
		}
		stopped, until, now := l.serve(events[:n], 0)
		if stopped {
			return
		}
		if n > 0 {
			last = now
		}
		rest = now-last >= int64(loopRestAfter)
		switch {
		case until <= now || n == len(events):
			wait = 0 // work now, or more events than one harvest takes
		case !rest:
			until = min(until, now+int64(loopRawWait))
			fallthrough
		default:
			wait = int((until - now + int64(time.Millisecond) - 1) / int64(time.Millisecond))
		}
	}
}

// serve runs one harvest of events, the timers and the connections
// waiting for another turn, and returns whether the loop was stopped, and
// plan's when the loop must act next (deadline: the read deadline set, if
// any) and now.
func (l *evloop) serve(events []unix.EpollEvent, deadline int64) (stopped bool, until, now int64) {
	if l.dispatch(events) {
		return true, 0, 0
	}
	if a := l.acc.Load(); a != nil {
		a.Sync()
	}
	l.timers()
	l.turn()
	until, now = l.plan(deadline)
	return false, until, now
}

// dispatch hands each event to its connection, and reports whether the
// loop was stopped.
func (l *evloop) dispatch(events []unix.EpollEvent) (stopped bool) {
	for _, ev := range events {
		if ev.Fd == acceptTag {
			if a := l.acc.Load(); a != nil && a.Accept() {
				l.acceptMore = true
			}
			continue
		}
		if ev.Fd == 0 {
			var b [8]byte
			_, _ = unix.Read(l.evfd, b[:])
			if l.stopped.Load() {
				return true
			}
			continue
		}
		slot, gen, side := uint32(ev.Fd-1), uint32(ev.Pad)>>1, int(ev.Pad&1)
		l.mu.Lock()
		var lc *lconn
		if int(slot) < len(l.slots) {
			lc = l.slots[slot]
		}
		l.mu.Unlock()
		if lc != nil && lc.gen == gen {
			lc.event(side, ev.Events)
		}
	}
	return false
}

// plan returns when the loop must act next (internal/mono), and now:
// at once when connections wait for another turn or for an accept,
// else at the earliest
// deadline, at most loopIdleWait from now. deadline is the read deadline
// set (0: none), which the wait keeps when it is earlier. It publishes
// when the wait ends (wakeAt) under the lock add takes, so that a
// connection added meanwhile is either seen here or wakes the loop.
func (l *evloop) plan(deadline int64) (until, now int64) {
	now = mono.Now()
	if len(l.ready) > 0 || l.acceptMore {
		l.acceptMore = false
		return now, now
	}
	until = now + int64(loopIdleWait)
	l.mu.Lock()
	for _, lc := range l.timed {
		until = min(until, lc.deadline)
	}
	l.wakeAt = until
	if deadline != 0 && deadline < until {
		l.wakeAt = deadline
	}
	l.mu.Unlock()
	return until, now
}

// turn gives the connections whose last turn ended early another one.
func (l *evloop) turn() {
	ready := l.ready
	l.ready = nil
	for i, lc := range ready {
		lc.queued = false
		if lc.phase == phaseProxy {
			lc.pump()
		}
		ready[i] = nil
	}
	if l.ready == nil {
		l.ready = ready[:0]
	}
}

// timers fails the connects that took too long and starts the rounds
// whose backoff is over, and, once the server is stopping, ends every
// connection still connecting.
func (l *evloop) timers() {
	now := mono.Now()
	stopping := l.s.stop.Err() != nil
	l.mu.Lock()
	keep := l.timed[:0]
	for _, lc := range l.timed {
		switch {
		case lc.phase != phaseConnect && lc.phase != phaseRetry:
			lc.timedIn = false
		case stopping || lc.deadline <= now:
			lc.timedIn = false
			l.due = append(l.due, lc)
		default:
			keep = append(keep, lc)
		}
	}
	clear(l.timed[len(keep):])
	l.timed = keep
	l.mu.Unlock()
	for i, lc := range l.due {
		l.due[i] = nil
		switch {
		case stopping:
			lc.abandon(lc.s.stop.Err())
		case lc.phase == phaseConnect:
			err := &net.OpError{Op: "dial", Net: "tcp", Addr: targetNetAddr(lc.target), Err: os.ErrDeadlineExceeded}
			lc.attemptFailed(err)
			lc.dialOn()
		default:
			lc.startRound()
			lc.dialOn()
		}
	}
	l.due = l.due[:0]
}

// add registers lc, whose dial is under way, waiting for a round or
// done (forwardFirst), with the loop. After it, only the loop's goroutine
// touches lc.
func (l *evloop) add(lc *lconn) error {
	l.mu.Lock()
	l.gen++
	lc.gen = l.gen & (1<<31 - 1)
	if n := len(l.free); n > 0 {
		lc.slot = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		lc.slot = uint32(len(l.slots))
		l.slots = append(l.slots, nil)
	}
	l.slots[lc.slot] = lc
	l.conns.Add(1)
	lc.l = l
	// Under the lock, which the loop takes to find lc, so that it sees
	// lc only once it is watched.
	var err error
	if lc.fd[1] >= 0 {
		err = l.watch(lc, 1)
	}
	if err == nil {
		err = l.watch(lc, 0)
	}
	if err != nil {
		l.slots[lc.slot] = nil
		l.free = append(l.free, lc.slot)
		l.conns.Add(-1)
		lc.l = nil
		l.mu.Unlock()
		return err
	}
	wake := false
	if lc.phase != phaseProxy { // a connect or a round's backoff has a deadline
		lc.timedIn = true
		l.timed = append(l.timed, lc)
		wake = lc.deadline < l.wakeAt
	}
	l.mu.Unlock()
	if wake {
		l.wake()
	}
	return nil
}

// watch adds lc's socket on side to the epoll set, edge-triggered. It
// asks for writability (EPOLLOUT) only when the loop waits for it: a
// connect's completion, or bytes in hand for the socket. A connected
// socket with nothing to write is taken as writable, so that adding it
// raises no event (and no turn of the loop) until it has something to
// read; the first write that would block asks for EPOLLOUT (awaitWrite).
func (l *evloop) watch(lc *lconn, side int) error {
	lc.outOn[side] = side == 1 && lc.phase == phaseConnect || len(lc.dir[1-side].pend) > 0
	if !lc.outOn[side] {
		lc.wr[side] = true
	}
	ev := lc.epollEvent(side, lc.outOn[side])
	ctl := unix.EpollCtl
	if f := epollCtlFault.Load(); f != nil {
		ctl = *f
	}
	if err := ctl(l.epfd, unix.EPOLL_CTL_ADD, lc.fd[side], &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// epollCtlFault, when set (by tests), adds sockets to the loops' epoll
// sets instead of epoll_ctl, to make it fail.
var epollCtlFault atomic.Pointer[func(epfd, op, fd int, ev *unix.EpollEvent) error]

// awaitWrite records that side's socket would block a write, and asks
// epoll to report when it takes bytes again, if it does not yet. Asked
// after the write failed, epoll reports a socket that drained meanwhile
// at once.
func (lc *lconn) awaitWrite(side int) error {
	lc.wr[side] = false
	if lc.outOn[side] {
		return nil
	}
	ev := lc.epollEvent(side, true)
	if err := unix.EpollCtl(lc.l.epfd, unix.EPOLL_CTL_MOD, lc.fd[side], &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	lc.outOn[side] = true
	return nil
}

// epollEvent is what lc's socket on side asks of the epoll set:
// edge-triggered readability, its end and urgent data, and with out
// writability; the event carries the slot, generation and side.
func (lc *lconn) epollEvent(side int, out bool) unix.EpollEvent {
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLPRI | unix.EPOLLET,
		Fd:     int32(lc.slot + 1), Pad: int32(lc.gen<<1 | uint32(side)),
	}
	if out {
		ev.Events |= unix.EPOLLOUT
	}
	return ev
}

// timeAgain puts lc, which has a new deadline, back among the timed ones.
// Called by the loop's goroutine, whose next wait takes it into account.
func (l *evloop) timeAgain(lc *lconn) {
	l.mu.Lock()
	if !lc.timedIn {
		lc.timedIn = true
		l.timed = append(l.timed, lc)
	}
	l.mu.Unlock()
}

// remove frees lc's slot: events still queued for it are dropped.
func (l *evloop) remove(lc *lconn) {
	l.mu.Lock()
	if int(lc.slot) < len(l.slots) && l.slots[lc.slot] == lc {
		l.slots[lc.slot] = nil
		l.free = append(l.free, lc.slot)
		l.conns.Add(-1)
	}
	l.mu.Unlock()
}

// acceptTag marks the listening socket's events in a loop's epoll set
// (a connection's are its slot + 1, the wake-up eventfd's 0).
const acceptTag = -1

// acceptInLoops makes the loops accept the listener's connections
// (listener.AcceptInLoops), each serving those it accepts; it reports
// whether they do. Called before the listener serves.
func (s *Server) acceptInLoops() bool {
	al := make([]listener.AcceptLoop, len(s.loops))
	for i, l := range s.loops {
		al[i] = listener.AcceptLoop{EpollFD: l.epfd, Event: unix.EpollEvent{Fd: acceptTag}, Wake: l.wake, Handler: loopHandler{l}}
	}
	accs, err := s.ln.AcceptInLoops(al)
	if err != nil {
		s.log.Info("connections are accepted on a goroutine, not in the event loops", "reason", err)
		return false
	}
	for i, l := range s.loops {
		if !l.acc.CompareAndSwap(nil, accs[i]) { // the loop's goroutine has ended
			accs[i].Close()
			continue
		}
		l.wake() // it starts watching the listening socket (Sync)
	}
	return true
}

// noAccepter marks a loop whose goroutine has ended (leaveAccepting).
var noAccepter = new(listener.Accepter)

// nearest is the loop a new connection joins: the one that accepted it,
// on, whose thread has just run its set-up and whose epoll set is warm,
// unless another serves at least two connections fewer. Connections that
// arrive together (a client's pool) would otherwise all go to the loop
// that woke first, and one thread would serve them all. Without on (the
// listener's goroutine accepted), the loops take turns.
func (s *Server) nearest(on *evloop) *evloop {
	if on == nil {
		return s.loops[s.nextLoop.Add(1)%uint32(len(s.loops))]
	}
	best, least := on, on.conns.Load()-1
	for _, l := range s.loops {
		if n := l.conns.Load(); n < least && !l.ended.Load() {
			best, least = l, n
		}
	}
	return best
}

// loopHandler serves the connections its loop accepted.
type loopHandler struct{ l *evloop }

// ServeConn implements listener.Handler.
func (h loopHandler) ServeConn(c *listener.Conn) { h.l.s.serveConnOn(c, h.l) }

// serveInLoop serves c in an event loop, if it can: c is plain TCP and
// every target is an IP address and port. The loop is nearest's. It
// returns false, leaving c untouched, otherwise.
func (s *Server) serveInLoop(c *listener.Conn, on *evloop) bool {
	targets := s.set.Targets()
	for _, t := range targets {
		if _, ok := targetAddrPort(t); !ok {
			return false
		}
	}
	key := hashKey(c.Client, s.cfg.HashKey)
	if s.cfg.HashFirst.Length > 0 && s.policy.Load().name == "hash" {
		key = append(key, s.firstBytes(c)...)
	}
	fd, pending, ok := s.takeSocket(c)
	if !ok {
		return false
	}
	lc := &lconn{fd: [2]int{fd, -1}, key: key}
	ss := &lc.session
	ss.s, ss.c, ss.client, ss.pending, ss.lc = s, c, c.Conn, pending, lc
	ss.done = c.Detach()
	s.looped.Add(1)
	lc.ctx, lc.span = startSpan(s.stop, "ndlb.passthrough.connect", trace.SpanKindServer, func() []attribute.KeyValue {
		return connAttrs(s, c)
	})
	lc.startRound()
	if !lc.dialNext() {
		lc.fail()
		return true
	}
	for lc.phase == phaseConnect && !lc.forwardFirst() {
		if !lc.dialNext() {
			lc.fail()
			return true
		}
	}
	if lc.early > 0 {
		// The target took the first bytes: the loop has nothing to do
		// until one side has something to read.
		lc.established()
	}
	l := s.nearest(on)
	if err := l.add(lc); err != nil {
		if lc.phase == phaseProxy {
			// Connected already (forwardFirst): it ends as a proxied
			// connection ndlb could not serve, with a reset both ways.
			ss.mu.Lock()
			if ss.closedBy == "" {
				ss.closedBy, ss.err = byError, err
			}
			ss.mu.Unlock()
			c.Log.Warn("resetting the connection: its event loop could not take it", "target", lc.target.Addr, "err", err)
			lc.linger0 = true
			lc.end()
			return true
		}
		lc.lastErr = err
		lc.fail()
	}
	return true
}

// takeSocket takes c's socket out of the listener's hands (and out of the
// runtime's poller), with the bytes the listener read past a PROXY header.
// ok is false, c untouched, when it cannot.
func (s *Server) takeSocket(c *listener.Conn) (fd int, pending []byte, ok bool) {
	if fd, ok := c.TakeFD(); ok { // accepted raw
		return fd, nil, true
	}
	tcp, pending, ok := c.Raw()
	if !ok {
		return -1, nil, false
	}
	fd, err := dupSocket(tcp)
	if err != nil {
		if pending != nil {
			c.Unread(pending)
		}
		c.Log.Debug("served without the event loop", "err", err)
		return -1, nil, false
	}
	// The duplicate keeps the socket open; closing Go's descriptor takes
	// it out of the runtime's poller, which would otherwise wake for it
	// too. The listener's own close of it later does nothing.
	tcp.Close()
	return fd, pending, true
}

// earlyBytes is the most forwardFirst reads.
const earlyBytes = 2 << 10

// forwardFirst does on the accepting goroutine, before lc joins a loop,
// what the loop would do first: it reads what the client has sent so far
// and writes it to the target whose connect is under way. A connect to a
// target on the same host (or a fast network) completes within the
// connect call, so the write goes through, the target has the client's
// first bytes without waiting for the loop's turn, and the connect is
// known to be done (no later error can send those bytes elsewhere). A
// write that would block keeps the bytes for the loop, which writes them
// once the connect completes. It returns false when the write showed that
// the connect failed (recorded; the bytes are kept for the next
// candidate).
func (lc *lconn) forwardFirst() bool {
	ss := &lc.session
	if lc.s.cfg.SendProxy != 0 {
		return true // the header goes first
	}
	b := ss.pending
	if len(b) == 0 {
		var buf [earlyBytes]byte
		n, err := rawio.Read(uintptr(lc.fd[0]), buf[:])
		switch {
		case err == unix.EAGAIN || err == unix.EINTR || err == nil && n == 0:
			return true // nothing yet, or the end: the loop reads it
		case err != nil:
			// The client reset: the read took the error, which the
			// loop's would not see again; it is the direction's end
			// once the target is connected.
			lc.clientErr = os.NewSyscallError("read", err)
			return true
		}
		b = buf[:n]
	}
	m, err := writeAll(lc.fd[1], b)
	lc.early = m
	switch {
	case m == len(b):
		ss.pending = nil
	case len(ss.pending) > 0:
		ss.pending = ss.pending[m:]
	default:
		ss.pending = append([]byte(nil), b[m:]...)
	}
	if err != nil && err != unix.EAGAIN && m == 0 {
		lc.attemptFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: targetNetAddr(lc.target), Err: os.NewSyscallError("connect", err)})
		return false
	}
	return true
}

// dupSocket returns a duplicate of tcp's descriptor (non-blocking, like
// the original).
func dupSocket(tcp *net.TCPConn) (int, error) {
	rc, err := tcp.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	return nfd, nil
}

// targetAddrs caches targets' parsed addresses (netip.AddrPort, or false
// for a name).
var targetAddrs sync.Map

// targetAddrPort is t's address, if it is an IP address and port.
func targetAddrPort(t *upstream.Target) (netip.AddrPort, bool) {
	if v, ok := targetAddrs.Load(t); ok {
		ap, ok := v.(netip.AddrPort)
		return ap, ok
	}
	ap, err := netip.ParseAddrPort(t.Addr)
	if err != nil || ap.Addr().Zone() != "" {
		targetAddrs.Store(t, false)
		return netip.AddrPort{}, false
	}
	targetAddrs.Store(t, ap)
	return ap, true
}

// targetNetAddr is t's address for errors.
func targetNetAddr(t *upstream.Target) net.Addr {
	if ap, ok := targetAddrPort(t); ok {
		return net.TCPAddrFromAddrPort(ap)
	}
	return nil
}

// startRound takes the candidates of a new round over the targets.
func (lc *lconn) startRound() {
	s := lc.s
	lc.targets = s.set.Targets()
	lc.order = s.candidates(lc.order[:0], lc.targets, lc.key)
	lc.next = 0
	if len(lc.order) == 0 {
		lc.lastErr = errNoneAccepts
	}
}

// dialOn is dialNext in the loop: a connection that cannot go on ends.
func (lc *lconn) dialOn() {
	if !lc.dialNext() {
		lc.fail()
		return
	}
	if lc.phase == phaseConnect {
		if err := lc.l.watch(lc, 1); err != nil {
			unix.Close(lc.fd[1])
			lc.fd[1] = -1
			lc.attemptFailed(err)
			lc.dialOn()
			return
		}
	}
	lc.l.timeAgain(lc)
}

// dialNext starts a connect to the next candidate that does not fail at
// once (phaseConnect), or, when the round is over, waits for the next
// (phaseRetry). It returns false when no round is left.
func (lc *lconn) dialNext() bool {
	s := lc.s
	for lc.next < len(lc.order) {
		t := lc.targets[lc.order[lc.next]]
		lc.next++
		lc.attempts++
		if lc.connect(t) {
			return true
		}
	}
	if lc.round == s.cfg.ConnectRetries {
		lc.lastErr = fmt.Errorf("%w after %d attempts: %w", ErrNoTarget, lc.attempts, lc.lastErr)
		return false
	}
	if lc.bo == nil {
		lc.bo = backoff.NewExponentialBackOff(
			backoff.WithInitialInterval(s.cfg.BackoffInitial),
			backoff.WithMaxInterval(s.cfg.BackoffMax),
			backoff.WithMaxElapsedTime(0),
		)
	}
	lc.round++
	lc.phase = phaseRetry
	lc.deadline = mono.Now() + int64(lc.bo.NextBackOff())
	return true
}

// connect starts a non-blocking connect to t. It returns false when the
// attempt failed at once (recorded).
func (lc *lconn) connect(t *upstream.Target) bool {
	s := lc.s
	lc.target, lc.dialStart = t, time.Now()
	lc.dialCtx, lc.dialSpan = startSpan(lc.ctx, "ndlb.upstream.dial", trace.SpanKindClient, func() []attribute.KeyValue {
		return dialAttrs(t, lc.attempts)
	})
	ap, ok := targetAddrPort(t)
	if !ok {
		// The set changed under the connection: not the target's fault.
		lc.dialSpan.End()
		lc.lastErr = fmt.Errorf("target %q: the event loop dials IP addresses only", t.Addr)
		return false
	}
	fd, err := dialSocket(ap, s.cfg.KeepAlive)
	if err != nil {
		lc.attemptFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err})
		return false
	}
	lc.fd[1], lc.phase = fd, phaseConnect
	lc.rd[1], lc.wr[1], lc.hup[1], lc.urg[1] = false, false, false, false
	lc.deadline = mono.Of(lc.dialStart) + int64(s.cfg.ConnectTimeout)
	return true
}

// dialSocket opens a non-blocking TCP socket and starts its connect to ap.
func dialSocket(ap netip.AddrPort, keepAlive time.Duration) (int, error) {
	family := unix.AF_INET
	if ip := ap.Addr(); !ip.Is4() && !ip.Is4In6() {
		family = unix.AF_INET6
	}
	// Raw system calls, as the listener's accepts (listener.acceptRaw):
	// none of them waits.
	fd, err := rawio.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	// As Go's dialer does: no Nagle delay on small writes.
	_ = rawio.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if keepAlive > 0 {
		secs := max(int(keepAlive/time.Second), 1)
		_ = rawio.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		_ = rawio.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
		_ = rawio.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs)
	}
	for {
		err = rawio.Connect(fd, ap)
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil, unix.EINPROGRESS, unix.EALREADY:
		return fd, nil
	}
	unix.Close(fd)
	return -1, os.NewSyscallError("connect", err)
}

// attemptFailed records a failed attempt on lc.target, as connect does.
func (lc *lconn) attemptFailed(err error) {
	s := lc.s
	if lc.fd[1] >= 0 {
		unix.Close(lc.fd[1])
		lc.fd[1] = -1
	}
	s.recordDial(lc.dialCtx, lc.target, time.Since(lc.dialStart), err)
	lc.dialSpan.RecordError(err)
	lc.dialSpan.SetStatus(codes.Error, err.Error())
	lc.dialSpan.End()
	lc.lastErr = err
	s.dialFailed.Add(1)
	lc.c.Log.Debug("target attempt failed; trying the next", "target", lc.target.Addr, "err", err)
	s.attemptFailed(lc.target, err)
}

// fail closes a client that no target accepted.
func (lc *lconn) fail() {
	s := lc.s
	if lc.phase == phaseConnect && lc.fd[1] >= 0 {
		// A connect under way when the connection ends (the server
		// stops, or the loop would not take it).
		lc.dialSpan.RecordError(lc.lastErr)
		lc.dialSpan.End()
	}
	if lc.span.IsRecording() {
		lc.span.SetAttributes(attribute.Int("ndlb.attempts", lc.attempts))
	}
	lc.span.RecordError(lc.lastErr)
	lc.span.SetStatus(codes.Error, lc.lastErr.Error())
	lc.span.End()
	s.failed.Add(1)
	lc.c.Log.WarnContext(lc.ctx, "closing the client: no target accepted its connection", "attempts", lc.attempts, "err", lc.lastErr)
	lc.close()
	lc.done()
}

// abandon ends a connection still connecting when the server stops. As
// with goroutines, the dial given up is not held against its target.
func (lc *lconn) abandon(err error) {
	lc.lastErr = err
	lc.fail()
}

// event records what epoll reported for side's socket and serves it.
func (lc *lconn) event(side int, events uint32) {
	if side == 1 && lc.phase == phaseConnect {
		lc.connErr = events&unix.EPOLLERR != 0
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		lc.rd[side] = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		lc.hup[side] = true
		if side == 1 && lc.phase == phaseProxy && events&(unix.EPOLLHUP|unix.EPOLLERR) == 0 {
			// The target's FIN, seen before a write to it fails on
			// the reset its kernel answers to later bytes: a silent
			// close still (session.judge).
			lc.targetClosed()
		}
	}
	if events&unix.EPOLLPRI != 0 {
		lc.urg[side] = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		lc.wr[side] = true
	}
	switch {
	case lc.phase == phaseConnect:
		if side == 1 && lc.wr[1] {
			lc.connectDone()
		}
	case lc.phase == phaseProxy && lc.cut.Load():
		lc.linger0 = true
		lc.end()
	case lc.phase == phaseProxy:
		lc.pump()
	}
}

// connectDone is the end of a connect: it worked, or the next candidate
// is tried.
func (lc *lconn) connectDone() {
	// Writable without an error (EPOLLERR is sk_err): connected. Only a
	// failed connect needs its error.
	var err error
	if lc.connErr {
		soErr, gerr := unix.GetsockoptInt(lc.fd[1], unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case gerr != nil:
			err = gerr
		case soErr != 0:
			err = unix.Errno(soErr)
		}
	}
	if err != nil {
		lc.attemptFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: targetNetAddr(lc.target), Err: os.NewSyscallError("connect", err)})
		lc.dialOn()
		return
	}
	lc.established()
	if err := lc.clientErr; err != nil {
		lc.clientErr = nil
		lc.ended(0, err)
		return
	}
	lc.pump()
}

// established records that lc's connect to its target is done, and makes
// it a proxied connection. It does no I/O.
func (lc *lconn) established() {
	s, t, ss := lc.s, lc.target, &lc.session
	s.recordDial(lc.dialCtx, t, time.Since(lc.dialStart), nil)
	lc.dialSpan.End()
	if lc.span.IsRecording() {
		lc.span.SetAttributes(attribute.Int("ndlb.attempts", lc.attempts), upstream.AttrServer.String(t.Addr))
	}
	lc.span.End()
	// The flags are epoll's: what the client's socket reported while the
	// connect went on, and the target's from the connect on.
	lc.phase = phaseProxy
	ss.t, ss.start = t, s.clock.Now()
	ss.last.Store(mono.Of(ss.start))
	lc.targets, lc.order, lc.key, lc.bo = nil, nil, nil, nil
	lc.dir[0].pend = ss.pending
	ss.pending = nil
	if lc.early > 0 {
		lc.moved(0, lc.early)
	}
	if s.cfg.SendProxy != 0 {
		h := proxyproto.HeaderProxyFromAddrs(byte(s.cfg.SendProxy), lc.c.Client, lc.c.Local)
		if b, err := h.Format(); err == nil {
			lc.dir[0].pend = append(b, lc.dir[0].pend...)
		}
	}
	t.ConnOpened()
	s.proxied.Add(1)
	if !s.track(ss) {
		ss.abort(byShutdown)
	}
	if lc.c.Log.Enabled(lc.ctx, slog.LevelInfo) {
		lc.c.Log.InfoContext(lc.ctx, "proxying", "target", t.Addr, "attempts", lc.attempts)
	}
	lc.ctx, lc.dialCtx, lc.span, lc.dialSpan = nil, nil, nil, nil
}

// pump moves bytes both ways until each would block, or the turn's bytes
// are used up (the connection then gets another turn after the others).
func (lc *lconn) pump() {
	more := false
	for i := range lc.dir {
		// Each direction has its own share, so that a steady upload
		// does not hold the replies back.
		budget := loopTurnBytes / 2
		if err := lc.move(i, &budget); err != nil {
			lc.ended(i, err)
		}
		if lc.phase != phaseProxy {
			return
		}
		more = more || budget <= 0
	}
	if more && !lc.queued {
		lc.queued = true
		lc.l.ready = append(lc.l.ready, lc)
	}
}

// move runs direction i (0: client to target) until it would block, ends
// or uses up the budget.
func (lc *lconn) move(i int, budget *int) error {
	d := &lc.dir[i]
	src, dst := lc.fd[i], lc.fd[1-i]
	for !d.done && lc.phase == phaseProxy {
		switch {
		case d.inPipe > 0 || len(d.pend) > 0:
			// Bytes in hand (in the pipe, or read and not written)
			// go first.
			if !lc.wr[1-i] {
				return nil
			}
			var n int
			var err error
			op := "write"
			if d.inPipe > 0 {
				op = "splice"
				n, err = rawio.Splice(d.p.r, dst, d.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if err == nil && n == 0 {
					// The pipe holds bytes but gives none: never loop on it.
					err = unix.EIO
				}
			} else {
				n, err = rawio.Write(dst, d.pend)
			}
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return lc.awaitWrite(1 - i)
			case err != nil:
				return writeError{os.NewSyscallError(op, err)}
			}
			lc.moved(i, n)
			if d.inPipe > 0 {
				d.inPipe -= n // charged to the budget when spliced in
				lc.s.spliced.Add(uint64(n))
				if d.inPipe == 0 {
					putPipe(d.p)
					d.p = nil
				}
			} else if d.pend = d.pend[n:]; len(d.pend) == 0 {
				d.pend = nil
			}
		case d.eof:
			d.done = true
			lc.ended(i, nil)
			return nil
		case !lc.rd[i] || !lc.wr[1-i]:
			return nil
		case *budget <= 0:
			return nil
		case d.bulk && !d.noSplice:
			if err := lc.fill(i, d, src, budget); err != nil {
				return err
			}
		default:
			n, err := rawio.Read(uintptr(src), lc.l.buf)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				lc.rd[i] = false
				return nil
			case err != nil:
				return os.NewSyscallError("read", err)
			case n == 0:
				d.eof = true
				continue
			}
			*budget -= n
			d.bulk = n == len(lc.l.buf)
			switch {
			case d.bulk:
			case lc.urg[i]:
				// A read stops short at the urgent mark, with
				// the bytes behind it still queued and no new
				// edge to come for them: the next read skips the
				// urgent byte and takes them (or finds nothing).
				lc.urg[i] = false
			case !lc.hup[i]:
				// A short read took all the socket held; epoll
				// reports the next bytes (or the end) as a new edge.
				// Not once the end was reported: the peer's FIN or
				// reset may have come in the same edge as the bytes
				// just read, and the read that returns it raises no
				// new one.
				lc.rd[i] = false
			}
			m, err := writeAll(dst, lc.l.buf[:n])
			lc.moved(i, m)
			if err == unix.EAGAIN {
				d.pend = append([]byte(nil), lc.l.buf[m:n]...)
				if err := lc.awaitWrite(1 - i); err != nil {
					return err
				}
			} else if err != nil {
				return writeError{os.NewSyscallError("write", err)}
			}
		}
	}
	return nil
}

// fill splices what src (side i) holds into d's empty pipe. After urgent
// data, or at the end, the direction reads next.
func (lc *lconn) fill(i int, d *ldir, src int, budget *int) error {
	if d.p == nil {
		p, err := getPipe()
		if err != nil {
			// No pipe to be had (descriptors run out): copy.
			d.noSplice = true
			return nil
		}
		d.p = p
	}
	for {
		n, err := rawio.Splice(src, d.p.w, maxSplice, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN && !lc.urg[i]:
			putPipe(d.p)
			d.p = nil
			lc.rd[i] = false
			return nil
		case err == unix.EAGAIN, err == nil && n == 0:
			// Urgent (out-of-band) data, or the end: a read says
			// which. A splice stops at the urgent mark, answering
			// EAGAIN (or 0 once the FIN is in) with bytes still
			// queued behind it; a read skips the urgent byte and
			// takes them.
			putPipe(d.p)
			d.p, d.bulk, lc.urg[i] = nil, false, false
			return nil
		case err == unix.EINVAL && !d.spliced:
			// The kernel cannot splice these sockets: copy.
			putPipe(d.p)
			d.p, d.noSplice = nil, true
			return nil
		case err != nil:
			return os.NewSyscallError("splice", err)
		}
		d.spliced = true
		// Bulk until a splice moves little: small messages are copied.
		d.bulk = n >= smallSplice
		d.inPipe = int(n)
		*budget -= int(n)
		return nil
	}
}

// writeAll writes b to fd until it is written or fd would block.
func writeAll(fd int, b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := rawio.Write(fd, b[done:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return done, err
		}
		done += n
	}
	return done, nil
}

// moved records n bytes moved by direction i.
func (lc *lconn) moved(i, n int) {
	if i == 0 {
		lc.movedFromClient(n)
	} else {
		lc.movedFromTarget(n)
	}
}

// ended records that direction i ended with err, as session.ended does: at
// EOF the other side is half-closed and its direction goes on; on an
// error the connection ends with a reset.
func (lc *lconn) ended(i int, err error) {
	aborted := lc.recordEnd(i == 0, err)
	lc.dir[i].done = true
	switch {
	case lc.cut.Load(): // no FIN: both end with a reset
		lc.linger0 = true
		lc.end()
	case err != nil:
		lc.linger0 = !aborted
		lc.end()
	case lc.dir[1-i].done:
		lc.end()
	default:
		_ = rawio.Shutdown(lc.fd[1-i], unix.SHUT_WR)
	}
}

// end finishes a proxied connection.
func (lc *lconn) end() {
	lc.phase = phaseDone
	for i := range lc.dir {
		d := &lc.dir[i]
		if d.p != nil {
			if d.inPipe > 0 {
				d.p.close()
			} else {
				putPipe(d.p)
			}
			d.p = nil
		}
		d.pend = nil
	}
	lc.finish()
}

// close removes lc from its loop and closes its sockets (with RST after a
// failure); abort then leaves them alone.
func (lc *lconn) close() {
	lc.phase = phaseDone
	if lc.l != nil {
		lc.l.remove(lc)
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	lc.closed = true
	for i, fd := range lc.fd {
		if fd < 0 {
			continue
		}
		if lc.linger0 {
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		_ = rawio.Close(fd)
		lc.fd[i] = -1
	}
}

// cutIfInFlight cuts lc when either socket holds bytes on their way (see
// session.abort): both will close with a reset (SO_LINGER 0), and reads
// end (SHUT_RD, which sends nothing), which wakes the loop, and it ends
// lc at its next event. It reports whether it cut them.
func (lc *lconn) cutIfInFlight() bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closed || lc.fd[0] < 0 || lc.fd[1] < 0 || !inFlight(uintptr(lc.fd[0])) && !inFlight(uintptr(lc.fd[1])) {
		return false
	}
	lc.cut.Store(true)
	for _, fd := range lc.fd {
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	for _, fd := range lc.fd { // (under lc.mu, the loop cannot close them meanwhile)
		_ = unix.Shutdown(fd, unix.SHUT_RD)
	}
	return true
}

// shutdownSockets shuts both sockets down both ways (abort): the loop
// then sees both directions end.
func (lc *lconn) shutdownSockets() {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closed {
		return
	}
	for _, fd := range lc.fd {
		if fd >= 0 {
			_ = unix.Shutdown(fd, unix.SHUT_RDWR)
		}
	}
}

// WantsRaw tells the listener whether the loops would take a connection's
// socket as it is (listener.RawWanter): while every target is an IP
// address and port. Otherwise the connection goes to goroutines, and is
// better accepted the usual way.
func (s *Server) WantsRaw() bool {
	for _, t := range s.set.Targets() {
		if _, ok := targetAddrPort(t); !ok {
			return false
		}
	}
	return true
}
