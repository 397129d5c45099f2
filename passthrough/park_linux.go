package passthrough

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// parker holds idle spliced streams without goroutines. A parked stream's
// source socket is armed, one-shot, in the parker's own epoll instance (the
// runtime's poller keeps its registration too); when it becomes readable,
// or is shut down, one goroutine waiting in epoll_wait starts a new
// goroutine for the stream. An idle connection then costs its sockets and
// a few hundred bytes of state, not two goroutine stacks.
type parker struct {
	epfd, evfd int
	wg         sync.WaitGroup

	parks atomic.Uint64 // streams parked so far

	// The parked streams, by slot; a stream's epoll id is its slot + 1
	// (0 is the stop event). A slot is taken when a stream parks and
	// freed when it resumes: armed one-shot, a stream's registration
	// reports once, so an id is never seen after its slot was freed.
	mu     sync.Mutex
	slots  []*stream // guarded by mu
	free   []uint32  // slots not in use; guarded by mu
	parked int       // streams in slots; guarded by mu
}

// newParker starts a parker; Stop stops it.
func newParker() (*parker, error) {
	epfd, evfd, err := newEpollWake(false) // id 0: stop
	if err != nil {
		return nil, err
	}
	p := &parker{epfd: epfd, evfd: evfd}
	p.wg.Go(p.run)
	return p, nil
}

// park arms st's source and lets its goroutine go. It returns false if the
// source cannot be armed; st then keeps its goroutine.
func (p *parker) park(st *stream) bool {
	// Everything the stream's next goroutine reads is written before the
	// stream takes its slot, under the lock that goroutine's start
	// passes through.
	p.mu.Lock()
	// The request that brought the stream here is answered: it and its
	// deadline go together (see ask), and a resumed stream waits without
	// one.
	_ = st.src().SetReadDeadline(time.Time{})
	st.parkReq.Store(false)
	slot := p.take(st)
	op := unix.EPOLL_CTL_ADD
	if st.armed {
		op = unix.EPOLL_CTL_MOD
	}
	wasArmed := st.armed
	st.armed = true
	st.state.Store(parked)
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(slot + 1)}
	var err error
	cerr := st.rawSrc().Control(func(fd uintptr) { err = unix.EpollCtl(p.epfd, op, int(fd), &ev) })
	if cerr == nil && err == nil {
		p.parks.Add(1)
		return true
	}
	// Not armed, so not resumed: take it back.
	p.mu.Lock()
	p.release(slot)
	st.armed = wasArmed
	st.state.Store(running)
	p.mu.Unlock()
	return false
}

// ask sets st's park request and a read deadline in the past, which cuts
// its wait short. Both are set under p.mu, and park clears both under it
// after the stream has stopped reading, so they always go together: a
// stream never parks with a request left standing (the sweeper would
// never ask it again, and it would keep its goroutine for good) and never
// runs with a past deadline no request explains (its next read would fail
// the connection).
func (p *parker) ask(st *stream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !st.canSplice.Load() || st.state.Load() != running || st.parkReq.Load() {
		return
	}
	st.parkReq.Store(true)
	_ = st.src().SetReadDeadline(time.Unix(1, 0))
}

// withdraw stops st from splicing, and so from parking: a request standing
// is taken back with its deadline, under the lock ask sets them under.
func (p *parker) withdraw(st *stream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st.canSplice.Store(false)
	if st.parkReq.Load() {
		_ = st.src().SetReadDeadline(time.Time{})
		st.parkReq.Store(false)
	}
}

// run resumes streams whose sources are ready, until Stop.
func (p *parker) run() {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			id := uint32(ev.Fd)
			if id == 0 {
				return
			}
			p.mu.Lock()
			st := p.release(id - 1)
			p.mu.Unlock()
			if st != nil {
				st.ss.s.streams.Go(st.run)
			}
		}
	}
}

// take puts st in a free slot and returns it. p.mu is held.
func (p *parker) take(st *stream) uint32 {
	var slot uint32
	if n := len(p.free); n > 0 {
		slot = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		slot = uint32(len(p.slots))
		p.slots = append(p.slots, nil)
	}
	p.slots[slot] = st
	p.parked++
	return slot
}

// release empties slot and returns the stream it held (nil if none).
// p.mu is held.
func (p *parker) release(slot uint32) *stream {
	if int(slot) >= len(p.slots) || p.slots[slot] == nil {
		return nil
	}
	st := p.slots[slot]
	p.slots[slot] = nil
	p.free = append(p.free, slot)
	p.parked--
	return st
}

// Parked is the number of parked streams.
func (p *parker) Parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.parked
}

// Parks is the number of times a stream was parked.
func (p *parker) Parks() uint64 { return p.parks.Load() }

// Stop ends the parker's goroutine and closes its descriptors. No stream
// may be parked.
func (p *parker) Stop() {
	var one = [8]byte{1}
	_, _ = unix.Write(p.evfd, one[:])
	p.wg.Wait()
	unix.Close(p.epfd)
	unix.Close(p.evfd)
}
