//go:build !linux

package passthrough

import (
	"net"
	"sync/atomic"
	"syscall"
)

// splicer is Linux only; elsewhere bytes are copied through a buffer.
type splicer struct{ src syscall.RawConn }

func newSplicer(src, dst *net.TCPConn, moved func(int), spliced *atomic.Uint64) *splicer { return nil }

func (sp *splicer) copy(parkReq *atomic.Bool) (handled, parkNow bool, err error) {
	return false, false, nil
}
