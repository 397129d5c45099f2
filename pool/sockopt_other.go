//go:build !linux

package pool

import (
	"errors"
	"syscall"
	"time"
)

// outq is unknown off Linux: batches count as delivered once written.
type outq struct{}

func newOutq(syscall.RawConn) *outq { return &outq{} }

func (*outq) unacked() (int, error) { return 0, errors.ErrUnsupported }

// userTimeoutControl is a no-op off Linux.
func userTimeoutControl(time.Duration) func(string, string, syscall.RawConn) error {
	return nil
}
