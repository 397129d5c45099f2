//go:build !linux

package listener

import (
	"net"
	"sync/atomic"
	"time"
)

// loopAccept is the state of accepting in event loops, which Linux alone
// has.
type loopAccept struct{ stop atomic.Bool }

func (lp *loopAccept) wakeAll() {}

func (lp *loopAccept) holdLoops(*Listener, time.Duration) {}

func (l *Listener) serveLoops() error { return nil }

func (l *Listener) handoverLoops() net.Listener { return nil }
