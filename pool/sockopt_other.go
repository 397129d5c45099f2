//go:build !linux

package pool

import (
	"errors"
	"syscall"
	"time"
)

// unackedBytes is unknown off Linux: batches count as delivered once written.
func unackedBytes(syscall.RawConn) (int, error) {
	return 0, errors.ErrUnsupported
}

// userTimeoutControl is a no-op off Linux.
func userTimeoutControl(time.Duration) func(string, string, syscall.RawConn) error {
	return nil
}
