package listener

import (
	"errors"
	"net"
	"time"
)

// ErrPacket is what Packet.Accept returns: a UDP socket has no
// connections.
var ErrPacket = errors.New("a UDP socket accepts no connections")

// Packet is a UDP socket dressed as a net.Listener, so that whatever opens,
// hands over, passes on to an upgrade and closes listening sockets (the
// supervisor) treats it as it treats a TCP one. The server that reads it
// uses UDPConn; Accept fails at once with ErrPacket.
type Packet struct {
	*net.UDPConn
	addr net.Addr
}

// NewPacket wraps c; Addr returns addr, or c's address when addr is nil.
func NewPacket(c *net.UDPConn, addr net.Addr) *Packet {
	if addr == nil {
		addr = c.LocalAddr()
	}
	return &Packet{UDPConn: c, addr: addr}
}

// Accept fails with ErrPacket.
func (p *Packet) Accept() (net.Conn, error) { return nil, ErrPacket }

// Addr is the socket's address, as configured.
func (p *Packet) Addr() net.Addr { return p.addr }

// Release stops the reads of the goroutines blocked in the socket without
// closing it: they return a timeout, and later reads block again. A server
// calls it to hand the socket over.
func (p *Packet) Release() {
	_ = p.SetReadDeadline(time.Unix(1, 0))
}

// Resume clears what Release set, for the socket's next server.
func (p *Packet) Resume() { _ = p.SetReadDeadline(time.Time{}) }
