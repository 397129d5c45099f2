//go:build !linux

package listener

import (
	"net"
	"sync/atomic"
)

// loopAccept is the state of accepting in event loops, which Linux alone
// has.
type loopAccept struct{ stop atomic.Bool }

func (lp *loopAccept) wakeAll() {}

func (l *Listener) serveLoops() error { return nil }

func (l *Listener) handoverLoops() net.Listener { return nil }
