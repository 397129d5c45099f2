package gopool

import (
	"sync"
	"sync/atomic"
)

// Pool runs tasks on reused goroutines. Its methods are safe for
// concurrent use.
type Pool struct {
	maxIdle int32
	work    chan func()   // unbuffered: a send succeeds only to an idle goroutine
	trim    chan struct{} // unbuffered, like work: Trim's sends end idle goroutines
	idle    atomic.Int32
	wg      sync.WaitGroup
	once    sync.Once
	done    chan struct{}
}

// New returns a pool that keeps at most maxIdle goroutines waiting.
func New(maxIdle int) *Pool {
	return &Pool{maxIdle: int32(maxIdle), work: make(chan func()), trim: make(chan struct{}), done: make(chan struct{})}
}

// Go runs f on an idle goroutine, or on a new one.
func (p *Pool) Go(f func()) {
	select {
	case p.work <- f:
	default:
		p.wg.Add(1)
		go p.worker(f)
	}
}

// worker runs f, then waits for more work while fewer than maxIdle wait.
func (p *Pool) worker(f func()) {
	defer p.wg.Done()
	for {
		f()
		if p.idle.Add(1) > p.maxIdle {
			p.idle.Add(-1)
			return
		}
		select {
		case f = <-p.work:
			p.idle.Add(-1)
		case <-p.trim: // Trim counted it out
			return
		case <-p.done:
			p.idle.Add(-1)
			return
		}
	}
}

// Trim makes idle goroutines exit until at most keep wait, so that the
// stacks they grew can be freed (by the next garbage collection): for a
// server whose connections all went idle. It returns how many exited.
func (p *Pool) Trim(keep int) int {
	n := 0
	for p.idle.Load() > int32(keep) {
		select {
		case p.trim <- struct{}{}:
			p.idle.Add(-1)
			n++
		default:
			return n // none waits now (it counted itself idle first, or took work)
		}
	}
	return n
}

// Close makes idle goroutines exit, and those still running tasks exit when
// their task ends, then waits for all of them. Go must not be called after
// Close.
func (p *Pool) Close() {
	p.once.Do(func() { close(p.done) })
	p.wg.Wait()
}
