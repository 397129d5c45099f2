package listener

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// ErrPacket is what Packet.Accept returns: a UDP socket has no
// connections.
var ErrPacket = errors.New("a UDP socket accepts no connections")

// Packet is a UDP socket dressed as a net.Listener, so that whatever opens,
// hands over, passes on to an upgrade and closes listening sockets (the
// supervisor) treats it as it treats a TCP one. The server that reads it
// uses UDPConn; Accept fails at once with ErrPacket.
//
// Servers that share the socket (the one a reload replaced, still relaying
// its flows' answers, and its successor) each Acquire it when they start
// and Drop it when they are done: the last Drop closes it.
type Packet struct {
	*net.UDPConn
	addr  net.Addr
	users atomic.Int32
	// handedDrops is the socket's drop count when its last server handed
	// it on (HandedOver): the drops that server counted.
	handedDrops atomic.Uint64
}

// HandedOver records n, the socket's drop count that the server handing it
// on counted as its own; the next server counts the drops after them
// (DropsBefore), so the two never count one drop twice.
func (p *Packet) HandedOver(n uint64) { StoreMax(&p.handedDrops, n) }

// DropsBefore is the socket's drop count that earlier servers counted
// (HandedOver): a server that takes the socket counts its drops from there.
func (p *Packet) DropsBefore() uint64 { return p.handedDrops.Load() }

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

// Interrupt stops the reads of the goroutines blocked in the socket
// without closing it: they return a timeout, as do later reads until
// Resume. A server calls it to hand the socket over.
func (p *Packet) Interrupt() {
	_ = p.SetReadDeadline(time.Unix(1, 0))
}

// Acquire notes one more server using the socket.
func (p *Packet) Acquire() { p.users.Add(1) }

// Drop notes that a server is done with the socket, and closes it if that
// was the last.
func (p *Packet) Drop() {
	if p.users.Add(-1) <= 0 {
		p.Close()
	}
}

// Resume clears what Release set, for the socket's next server.
func (p *Packet) Resume() { _ = p.SetReadDeadline(time.Time{}) }

// CountDrops raises *a to the socket's drop count now (Drops), when the
// kernel says: for the drops no datagram read after them reports.
func (p *Packet) CountDrops(a *atomic.Uint64) {
	if n, ok := p.Drops(); ok {
		StoreMax(a, n)
	}
}

// StoreMax stores n in a unless a holds more already. A socket's drop
// count only grows, and it is read two ways (from a datagram's control
// message, Overflows, and from the socket, Drops) that may race.
func StoreMax(a *atomic.Uint64, n uint64) {
	for {
		old := a.Load()
		if n <= old || a.CompareAndSwap(old, n) {
			return
		}
	}
}
