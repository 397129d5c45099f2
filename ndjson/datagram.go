package ndjson

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/route"
)

// Sizes of the UDP reads.
const (
	// maxDatagram holds the largest UDP payload, so none is cut.
	maxDatagram = 64 << 10
	// datagramBatch is how many datagrams one recvmmsg(2) may return.
	datagramBatch = 32
	// datagramReadBuffer is the SO_RCVBUF asked for the socket (the
	// kernel caps it at net.core.rmem_max).
	datagramReadBuffer = 4 << 20
	// finalReadWindow is how long, at shutdown, the reads of what the
	// kernel holds for the socket go on after the last that found some
	// (so a reader slowed by a full queue or a busy machine still reads
	// it all), up to finalReadMax in all.
	finalReadWindow = 100 * time.Millisecond
	finalReadMax    = 2 * time.Second
)

// datagrams is the state of a UDP listener (Config.UDP).
type datagrams struct {
	pc       *listener.Packet
	done     chan struct{} // closed when the reader has pushed its last batch
	stopping atomic.Bool   // Shutdown: read what the kernel holds, then stop
	handed   atomic.Bool   // Handover: stop at once, the socket lives on
	// dropsFinal: Handover took the socket's last drop count that is
	// this server's.
	dropsFinal atomic.Bool
	// reading is held around each read of the socket, so that Handover
	// waits for a read in progress, not for a push the queue holds up.
	reading sync.Mutex

	count, binary, overflows atomic.Uint64
	// dropsBefore is the socket's drop count its earlier servers counted
	// (listener.Packet.DropsBefore): overflows less that is this server's.
	dropsBefore uint64
}

// countDrops takes the kernel's drop count for the socket now.
func (d *datagrams) countDrops() {
	if !d.dropsFinal.Load() {
		d.pc.CountDrops(&d.overflows)
	}
}

// serveDatagrams reads the socket's datagrams into the queue until the
// socket closes, is handed over, or the shutdown's final read ends. Each
// datagram is one or more lines (a newline is added to one that lacks it),
// framed like a connection's reads: a line over MaxLineBytes is dropped
// and counted as oversize. A datagram holding a NUL byte is binary,
// dropped whole and counted as one line (dispatch.DropBinary).
func (s *Server) serveDatagrams() error {
	d := s.udp
	defer close(d.done)
	defer d.countDrops() // the last drops, which no datagram read after them reports
	r := &datagramReader{s: s, d: d, pc: ipv4.NewPacketConn(d.pc.UDPConn), ms: make([]ipv4.Message, datagramBatch)}
	for i := range r.ms {
		r.ms[i].Buffers = [][]byte{make([]byte, maxDatagram)}
		r.ms[i].OOB = make([]byte, listener.OverflowSpace)
	}
	f := framer.New(r, s.cfg.Framer, s.bufs)
	f.Budget, f.Stop, f.OnDrop = s.budget, s.hard.Done(), s.datagramDropped
	defer f.Close()
	for {
		b, err := f.Next()
		if err != nil {
			if errors.Is(err, framer.ErrStopped) {
				r.dropRest(0, f.Partial() > 0)
				return nil
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if n, err := s.push(b, &r.route); err != nil {
			r.dropRest(uint64(n), f.Partial() > 0)
			return nil
		}
	}
}

// dropRest counts as dropped at shutdown the lines of a batch that could
// not be queued (n) and those read and not framed yet: the framer's
// partial line (finished in rest) and the datagrams not yet handed to it.
func (r *datagramReader) dropRest(n uint64, partial bool) {
	s := r.s
	lines := n + uint64(bytes.Count(r.rest, []byte{'\n'}))
	if partial && len(r.rest) == 0 {
		lines++ // cannot happen: a datagram's lines are whole
	}
	r.rest = nil
	for r.i < r.n {
		if data := r.next(); data != nil {
			lines += uint64(bytes.Count(data, []byte{'\n'}))
		}
	}
	if lines > 0 {
		s.dropShutdown.Add(lines)
		s.ledger.DropRead(dispatch.DropShutdown, lines)
		s.log.Error("shutdown deadline passed: lines read from datagrams but not queued were dropped", "lines", lines)
	}
}

// datagramDropped counts a line the framer dropped from a datagram.
func (s *Server) datagramDropped(d framer.Drop) {
	switch d.Reason {
	case framer.ReasonOversize:
		s.oversize.Add(1)
		s.ledger.DropRead(dispatch.DropOversize, 1)
		s.udpWarn.Do(func() {
			s.log.Warn("line in a UDP datagram longer than --max-line-bytes dropped", "limit", s.cfg.Framer.MaxLineBytes)
		})
	case framer.ReasonMemory:
		s.memory.Add(1)
		s.ledger.DropRead(dispatch.DropMemory, 1)
	case framer.ReasonIncomplete: // cannot happen: every datagram ends its line
		s.incomplete.Add(1)
		s.ledger.DropRead(dispatch.DropIncomplete, 1)
	}
}

// datagramReader is the socket as a stream of lines for a framer: each
// datagram ends with a newline, and a read returns whole datagrams while
// they fit (so that a batch of small datagrams becomes one batch of lines).
type datagramReader struct {
	s    *Server
	d    *datagrams
	pc   *ipv4.PacketConn
	ms   []ipv4.Message
	n, i int    // datagrams in ms, and the next to copy
	rest []byte // what is left of datagram i-1
	eof  bool
	// route is the reader's routing memory.
	route *route.Scratch
	// final is when the shutdown's last reads began (zero before), and
	// finalEnd when they end at the latest.
	final, finalEnd time.Time
}

// Read implements io.Reader.
func (r *datagramReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(r.rest) > 0 {
			c := copy(p[n:], r.rest)
			n += c
			r.rest = r.rest[c:]
			continue
		}
		if r.i < r.n {
			data := r.next()
			if data == nil {
				continue
			}
			if n > 0 && len(data) > len(p)-n { // whole datagrams only, after the first
				r.rest = data
				return n, nil
			}
			r.rest = data
			continue
		}
		if n > 0 || r.eof {
			break
		}
		if err := r.fill(); err != nil {
			return n, err
		}
	}
	if n == 0 && r.eof {
		return 0, io.EOF
	}
	return n, nil
}

// next returns datagram i with its newline, and moves on; nil for a
// binary one, which it counts.
func (r *datagramReader) next() []byte {
	m := &r.ms[r.i]
	r.i++
	if n, ok := listener.Overflows(m.OOB[:m.NN]); ok {
		listener.StoreMax(&r.d.overflows, n) // (countDrops may have taken a higher one)
	}
	r.d.count.Add(1)
	buf := m.Buffers[0]
	data := buf[:m.N]
	if bytes.IndexByte(data, 0) >= 0 {
		r.d.binary.Add(1)
		r.s.ledger.DropRead(dispatch.DropBinary, 1)
		r.s.udpWarn.Do(func() {
			r.s.log.Warn("binary UDP datagram dropped (it holds a NUL byte; lines of text do not)", "bytes", m.N)
		})
		return nil
	}
	if len(data) == 0 {
		return nil // an empty datagram holds no line
	}
	if data[len(data)-1] != '\n' {
		if m.N < len(buf) {
			data = buf[:m.N+1]
			data[m.N] = '\n'
		} else {
			data = append(data[:m.N:m.N], '\n') // a 64 KiB datagram: rare
		}
	}
	return data
}

// fill reads the next batch of datagrams, blocking; at the end it sets
// eof.
func (r *datagramReader) fill() error {
	r.i, r.n = 0, 0
	for {
		r.d.reading.Lock()
		if r.d.handed.Load() {
			r.d.reading.Unlock()
			r.eof = true
			return nil
		}
		n, err := r.pc.ReadBatch(r.ms, 0)
		r.d.reading.Unlock()
		if err == nil {
			r.n = n
			if !r.final.IsZero() { // more may wait: the window starts again
				dl := time.Now().Add(finalReadWindow)
				if dl.After(r.finalEnd) {
					dl = r.finalEnd
				}
				_ = r.d.pc.SetReadDeadline(dl)
			}
			return nil
		}
		switch d := r.d; {
		case errors.Is(err, net.ErrClosed):
			r.eof = true
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded) && d.handed.Load():
			r.eof = true
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded) && d.stopping.Load():
			if !r.final.IsZero() { // the final reads are over
				r.eof = true
				return nil
			}
			r.final = time.Now()
			r.finalEnd = r.final.Add(finalReadMax)
			_ = d.pc.SetReadDeadline(r.final.Add(finalReadWindow))
		case errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR):
			continue
		default:
			return fmt.Errorf("UDP read: %w", err)
		}
	}
}

// startDatagrams serves pc.
func (s *Server) startDatagrams(pc *listener.Packet) {
	pc.Acquire()
	s.udp = &datagrams{pc: pc, done: make(chan struct{}), dropsBefore: pc.DropsBefore()}
	_ = pc.SetReadBuffer(datagramReadBuffer)
	pc.CountOverflows()
	go func() {
		if err := s.serveDatagrams(); err != nil {
			s.serveErr <- err
		}
	}()
}

// stopDatagrams ends the reads: unless Handover took the socket, what the
// kernel holds is read (until finalReadWindow passes without a datagram).
// Then the server drops
// the socket (closed if no successor shares it).
func (s *Server) stopDatagrams() {
	d := s.udp
	if !d.handed.Load() {
		d.stopping.Store(true)
		d.pc.Interrupt()
	}
	<-d.done
	d.pc.Drop()
}

// handOverDatagrams stops the reads and returns the open socket. It waits
// for a read in progress, not for the reader, which may be waiting for room
// in the queue with a batch: that batch is queued during the drain.
func (s *Server) handOverDatagrams() net.Listener {
	d := s.udp
	if d.stopping.Load() || !d.handed.CompareAndSwap(false, true) {
		return nil
	}
	d.pc.Interrupt()
	d.reading.Lock() // no read in progress; none starts again
	d.pc.Resume()
	// The drops from now on are the successor's: the socket's count
	// goes on for both.
	d.countDrops()
	d.dropsFinal.Store(true)
	d.pc.HandedOver(d.overflows.Load())
	d.reading.Unlock()
	return d.pc
}
