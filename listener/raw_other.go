//go:build !linux

package listener

import (
	"net"
	"syscall"
	"time"
)

// rawAccept is the state of raw accepts, which Linux alone makes.
type rawAccept struct{}

// rawConn exists on Linux only; elsewhere Config.RawAccept is ignored.
type rawConn struct{ net.Conn }

func (r *rawConn) take() (int, bool) { return -1, false }

func (r *rawConn) materialize() (net.Conn, error) { return r.Conn, nil }

func (l *Listener) rawAccepting() bool { return false }

func (l *Listener) acceptRaw() (net.Conn, error) { return l.ln.Accept() }

func (l *Listener) rawDeadline(time.Time) {}

func (l *Listener) closeRawWait() {}

// Control is a net.ListenConfig.Control for the listening sockets ndlb
// opens; it does nothing where raw accepts are not made.
func Control(network, address string, c syscall.RawConn) error { return nil }
