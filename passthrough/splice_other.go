//go:build !linux

package passthrough

import (
	"errors"
	"net"
	"syscall"
)

// rawPair is Linux only; elsewhere bytes are copied through a buffer (a
// stream's canSplice stays false, so the methods below are never called).
type rawPair struct{}

func (ss *session) rawConns() bool { return false }

func (st *stream) rawSrc() syscall.RawConn { return nil }

func (st *stream) copySmall() (parkNow bool, err error) { return false, errors.ErrUnsupported }

func (st *stream) splice() (handled, parkNow bool, err error) { return false, false, nil }

// cutIfInFlight is Linux only (it asks the sockets' queues).
func (ss *session) cutIfInFlight() bool { return false }

var errTargetReset = errors.ErrUnsupported

// wasReset is Linux only.
func wasReset(*net.TCPConn) bool { return false }
