//go:build !linux

package listener

import "net"

// rawConn exists on Linux only; elsewhere Config.RawAccept is ignored.
type rawConn struct{ net.Conn }

func (r *rawConn) take() (int, bool) { return -1, false }

func (r *rawConn) materialize() (net.Conn, error) { return r.Conn, nil }

func (l *Listener) rawAccepting() bool { return false }

func (l *Listener) acceptRaw() (net.Conn, bool) { return nil, false }
