package passthrough

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/metric"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// Sizes of the UDP server's reads.
const (
	// maxDatagram holds the largest UDP payload (65,507 bytes over IPv4),
	// so that no datagram is ever cut.
	maxDatagram = 64 << 10
	// udpBatch is how many datagrams one recvmmsg(2) may return.
	udpBatch = 32
	// udpReadBuffer is the SO_RCVBUF asked for the listening socket
	// (the kernel caps it at net.core.rmem_max).
	udpReadBuffer = 4 << 20
	// udpDrainQuiet is how long a flow must have been quiet, once the
	// server drains, to be closed before the drain timeout: its answers
	// have come.
	udpDrainQuiet = 2 * time.Second
)

// UDPServer is passthrough mode for UDP: the datagrams from one client
// address and port form a flow, bound to one target chosen by the policy
// (hash hashes the client's address), and sent from a socket of its own,
// connected to the target. Datagrams the target sends to that socket are
// relayed to the client from the listening address. A flow ends after
// UDPIdleTimeout without a datagram either way, or when the kernel reports
// an ICMP error for it (the target's port is closed, its host unreachable),
// which also counts against the target as a failed attempt (passive
// health): the client's next datagram opens a new flow.
//
// The listening socket is read by one goroutine, up to udpBatch datagrams
// per recvmmsg(2); each flow's answers by a goroutine of its own, into a
// buffer taken only once an answer is waiting. Listener.MaxConns bounds the
// flows (each holds a socket); a datagram that would open one more is
// dropped and counted, as are those no target can take.
type UDPServer struct {
	core
	pc       *listener.Packet
	maxFlows int
	addrs    addrCache
	bufs     sync.Pool // *[]byte of maxDatagram, for answers

	mu       sync.Mutex
	flows    map[netip.AddrPort]*flow // guarded by mu
	draining bool                     // no new flows; guarded by mu
	quiet    atomic.Int64             // how long a flow may idle, in ns

	handed   atomic.Bool // Handover took the socket
	readDone chan struct{}
	serveErr chan error
	stop     context.Context // cancelled at the end of Shutdown
	cancel   context.CancelFunc
	sweep    sync.WaitGroup
	relays   sync.WaitGroup
	shutdown sync.Once
	summary  UDPSummary
	metrics  []metric.Registration
	warn     rate.Sometimes

	opened, idleClosed, icmpClosed, shutClosed         atomic.Uint64
	dgIn, dgOut, bytesIn, bytesOut, dialFailed         atomic.Uint64
	noTarget, flowLimit, sendErrors, replyErrors, shut atomic.Uint64
	overflows                                          atomic.Uint64
}

// flow is one client address's datagrams and its socket to a target.
type flow struct {
	s      *UDPServer
	client netip.AddrPort
	t      *upstream.Target
	conn   *net.UDPConn
	rc     syscall.RawConn
	start  time.Time
	last   atomic.Int64 // unix ns of the last datagram either way
	closed atomic.Bool
	// answered: the target has sent something (passive health: it
	// works).
	answered bool // the relay goroutine's
}

// NewUDP returns a UDP server for a valid cfg with UDP set.
func NewUDP(cfg Config) (*UDPServer, error) {
	if !cfg.UDP {
		return nil, fmt.Errorf("%w: NewUDP needs Config.UDP", ErrConfig)
	}
	s := &UDPServer{flows: map[netip.AddrPort]*flow{}, serveErr: make(chan error, 1),
		readDone: make(chan struct{}), warn: rate.Sometimes{First: 1, Interval: 10 * time.Second}}
	if err := s.init(cfg); err != nil {
		return nil, err
	}
	s.maxFlows = cfg.Listener.MaxConns
	if s.maxFlows == 0 {
		s.maxFlows = listener.DefaultMaxConns()
	}
	s.quiet.Store(int64(cfg.UDPIdleTimeout))
	s.stop, s.cancel = context.WithCancel(context.Background())
	s.bufs.New = func() any { b := make([]byte, maxDatagram); return &b }
	s.addrs.timeout = cfg.ConnectTimeout
	return s, nil
}

// Start serves ln, which must be a *listener.Packet, in the background.
// Call Shutdown to stop.
func (s *UDPServer) Start(ln net.Listener) {
	pc, ok := ln.(*listener.Packet)
	if !ok {
		close(s.readDone)
		s.serveErr <- fmt.Errorf("passthrough: a UDP listener needs a UDP socket, not %T", ln)
		return
	}
	s.pc = pc
	_ = pc.SetReadBuffer(udpReadBuffer)
	pc.CountOverflows()
	go func() {
		defer close(s.readDone)
		if err := s.read(); err != nil {
			s.serveErr <- err
		}
	}()
	s.sweep.Go(s.sweeper)
	s.metrics = s.observeUDP()
	args := []any{"addr", pc.Addr().String(), "mode", "passthrough", "proto", "udp", "targets", s.cfg.Targets,
		"balance", s.cfg.Balance, "max_flows", s.maxFlows, "udp_idle_timeout", s.cfg.UDPIdleTimeout.String()}
	if s.cfg.Balance == "hash" {
		args = append(args, "hash_key", string(s.cfg.HashKey))
	}
	s.log.Info("listening", args...)
}

// read forwards the listening socket's datagrams until it is closed or
// handed over.
func (s *UDPServer) read() error {
	pc := ipv4.NewPacketConn(s.pc.UDPConn)
	ms := make([]ipv4.Message, udpBatch)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, maxDatagram)}
		ms[i].OOB = make([]byte, listener.OverflowSpace)
	}
	for {
		n, err := pc.ReadBatch(ms, 0)
		if err != nil {
			switch {
			case s.handed.Load() || errors.Is(err, net.ErrClosed):
				return nil
			case transientRead(err):
				s.warn.Do(func() { s.log.Warn("UDP read failed; reading on", "err", err) })
				continue
			}
			return fmt.Errorf("UDP read: %w", err)
		}
		for i := range ms[:n] {
			m := &ms[i]
			if n, ok := listener.Overflows(m.OOB[:m.NN]); ok {
				s.overflows.Store(n)
			}
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			from := ua.AddrPort()
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			s.forward(from, m.Buffers[0][:m.N])
		}
	}
}

// transientRead reports a read error after which the socket still works:
// the kernel short of memory, or an ICMP error queued on the socket.
func transientRead(err error) bool {
	return errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) ||
		errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH)
}

// forward sends one datagram of client from to its flow's target.
func (s *UDPServer) forward(from netip.AddrPort, data []byte) {
	s.dgIn.Add(1)
	s.bytesIn.Add(uint64(len(data)))
	f := s.flowOf(from, data)
	if f == nil {
		return
	}
	if _, err := f.conn.Write(data); err != nil {
		s.sendErrors.Add(1)
		f.failed(err)
		return
	}
	f.t.Delivered(0, len(data))
	f.touch()
}

// flowOf returns the flow of client from, opening one (with data, the
// client's first datagram, for the hash key) if it has none. It returns nil,
// having counted why, when none can be opened. Only the reader opens flows.
func (s *UDPServer) flowOf(from netip.AddrPort, data []byte) *flow {
	s.mu.Lock()
	f, draining, n := s.flows[from], s.draining, len(s.flows)
	s.mu.Unlock()
	switch {
	case f != nil:
		return f
	case draining:
		s.shut.Add(1)
		return nil
	case n >= s.maxFlows:
		s.flowLimit.Add(1)
		s.warn.Do(func() {
			s.log.Warn("UDP flow table full: datagrams that would open a flow are dropped", "max_flows", s.maxFlows,
				"client", from.String())
		})
		return nil
	}
	f, err := s.open(from, data)
	if err != nil {
		s.noTarget.Add(1)
		s.warn.Do(func() {
			s.log.Warn("UDP datagram dropped: no target can take its flow", "client", from.String(), "err", err)
		})
		return nil
	}
	s.mu.Lock()
	s.flows[from] = f
	s.mu.Unlock()
	s.opened.Add(1)
	s.relays.Go(f.relay)
	return f
}

// open binds a new flow of client from to the first target, in the
// policy's order, whose socket can be opened.
func (s *UDPServer) open(from netip.AddrPort, first []byte) (*flow, error) {
	key := hashKeyOf(from, s.cfg.HashKey)
	if r := s.cfg.HashFirst; r.Length > 0 && s.policy.Load().name == "hash" && len(first) > r.Offset {
		key = append(key, first[r.Offset:min(len(first), r.Offset+r.Length)]...)
	}
	targets := s.set.Targets()
	order := s.candidates(make([]int, 0, len(targets)), targets, key)
	var lastErr error = errNoneAccepts
	for _, i := range order {
		t := targets[i]
		conn, err := s.dialUDP(t)
		if err != nil {
			s.dialFailed.Add(1)
			s.attemptFailed(t, err)
			lastErr = err
			continue
		}
		rc, err := conn.SyscallConn()
		if err != nil {
			conn.Close()
			return nil, err
		}
		now := s.clock.Now()
		f := &flow{s: s, client: from, t: t, conn: conn, rc: rc, start: now}
		f.last.Store(now.UnixNano())
		t.ConnOpened()
		s.log.Debug("UDP flow opened", "client", from.String(), "target", t.Addr)
		return f, nil
	}
	return nil, lastErr
}

// dialUDP opens a socket connected to t.
func (s *UDPServer) dialUDP(t *upstream.Target) (*net.UDPConn, error) {
	ap, err := s.addrs.lookup(t.Addr)
	if err != nil {
		return nil, err
	}
	if s.cfg.Dial != nil { // tests inject faults here
		c, err := s.cfg.Dial(s.stop, "udp", ap.String())
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UDPConn)
		if !ok {
			c.Close()
			return nil, fmt.Errorf("dial udp %s: got a %T", ap, c)
		}
		return uc, nil
	}
	return net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ap))
}

// touch notes traffic on the flow.
func (f *flow) touch() { f.last.Store(f.s.clock.Now().UnixNano()) }

// relay sends the target's datagrams to the client until the flow closes.
func (f *flow) relay() {
	s := f.s
	for {
		var buf *[]byte
		var n int
		var rerr error
		err := f.rc.Read(func(fd uintptr) bool {
			buf = s.bufs.Get().(*[]byte)
			n, rerr = unix.Read(int(fd), *buf)
			if rerr == unix.EAGAIN {
				s.bufs.Put(buf)
				return false
			}
			return true
		})
		if err != nil { // closed
			return
		}
		if rerr != nil {
			s.bufs.Put(buf)
			if rerr == unix.EINTR {
				continue
			}
			f.failed(rerr)
			return
		}
		_, werr := s.pc.WriteToUDPAddrPort((*buf)[:n], f.client)
		s.bufs.Put(buf)
		if werr != nil {
			s.replyErrors.Add(1)
			s.warn.Do(func() {
				s.log.Warn("UDP answer could not be sent to the client", "client", f.client.String(), "err", werr)
			})
			continue
		}
		s.dgOut.Add(1)
		s.bytesOut.Add(uint64(n))
		f.t.Received(n)
		f.touch()
		if !f.answered {
			f.answered = true
			s.attemptSucceeded(f.t)
		}
	}
}

// failed ends the flow on an error of its socket: an ICMP error the
// kernel reported (the target's port is closed, or its host or network
// unreachable) counts as a failed attempt against the target.
func (f *flow) failed(err error) {
	s := f.s
	if f.closed.Load() {
		return
	}
	s.attemptFailed(f.t, err)
	s.warn.Do(func() {
		s.log.Warn("UDP flow ended: the target's socket reported an error", "client", f.client.String(), "target", f.t.Addr, "err", err)
	})
	f.close(&s.icmpClosed)
}

// close ends the flow once, counting it in reason.
func (f *flow) close(reason *atomic.Uint64) {
	if !f.closed.CompareAndSwap(false, true) {
		return
	}
	s := f.s
	s.mu.Lock()
	if s.flows[f.client] == f {
		delete(s.flows, f.client)
	}
	s.mu.Unlock()
	f.conn.Close()
	f.t.ConnClosed()
	reason.Add(1)
	s.recordDuration(s.clock.Since(f.start), f.t)
}

// sweeper closes flows idle for longer than s.quiet, until Shutdown ends.
func (s *UDPServer) sweeper() {
	tick := s.clock.NewTicker(sweepEvery(s.cfg.UDPIdleTimeout))
	defer tick.Stop()
	for {
		select {
		case <-s.stop.Done():
			return
		case <-tick.Chan():
		}
		s.closeIdle(time.Duration(s.quiet.Load()), &s.idleClosed)
		s.pruneAttrs()
	}
}

// sweepEvery is how often flows idle for d are looked for: a tenth of d,
// within 10ms..1s.
func sweepEvery(d time.Duration) time.Duration {
	return min(max(d/10, 10*time.Millisecond), time.Second)
}

// closeIdle closes the flows without traffic for d, counting them in
// reason.
func (s *UDPServer) closeIdle(d time.Duration, reason *atomic.Uint64) {
	cutoff := s.clock.Now().Add(-d).UnixNano()
	var idle []*flow
	s.mu.Lock()
	for _, f := range s.flows {
		if f.last.Load() <= cutoff {
			idle = append(idle, f)
		}
	}
	s.mu.Unlock()
	for _, f := range idle {
		f.close(reason)
	}
}

// Handover stops reading and returns the listening socket, open, for a
// replacement server: its datagrams are the replacement's from then on,
// while this server's flows still relay their targets' answers until
// Shutdown ends them.
func (s *UDPServer) Handover() net.Listener {
	if s.pc == nil || !s.handed.CompareAndSwap(false, true) {
		return nil
	}
	s.pc.Release()
	<-s.readDone
	s.pc.Resume()
	return s.pc
}

// Addr is the listening address.
func (s *UDPServer) Addr() net.Addr { return s.pc.Addr() }

// Err is signalled if the socket fails on its own (not by Shutdown).
func (s *UDPServer) Err() <-chan error { return s.serveErr }

// UDPStats are the UDP server's counters.
type UDPStats struct {
	Flows          uint64 // flows opened
	ActiveFlows    int64  // flows open now
	IdleClosed     uint64 // flows ended by UDPIdleTimeout
	ICMPClosed     uint64 // flows ended by an error of their socket (ICMP: port closed, host unreachable)
	ShutdownClosed uint64 // flows ended by Shutdown
	DialFailures   uint64 // target sockets that could not be opened (another target was then tried)

	FromClients, ToClients           uint64 // datagrams
	BytesFromClients, BytesToClients uint64

	// Dropped datagrams, by reason.
	NoTarget    uint64 // no target could take the flow
	FlowLimit   uint64 // the flow table was full
	SendErrors  uint64 // the target's socket refused it (the flow then ended)
	ReplyErrors uint64 // answers that could not be sent to the client
	Shutdown    uint64 // arrived while draining
	// Overflows is the datagrams the kernel dropped because the listening
	// socket's buffer was full (SO_RXQ_OVFL), before ndlb could read them.
	Overflows uint64
}

// Dropped is the sum of the datagrams dropped from clients.
func (st UDPStats) Dropped() uint64 { return st.NoTarget + st.FlowLimit + st.SendErrors + st.Shutdown }

// Stats returns the server's counters.
func (s *UDPServer) Stats() UDPStats {
	s.mu.Lock()
	active := len(s.flows)
	s.mu.Unlock()
	return UDPStats{
		Flows: s.opened.Load(), ActiveFlows: int64(active), IdleClosed: s.idleClosed.Load(), ICMPClosed: s.icmpClosed.Load(),
		ShutdownClosed: s.shutClosed.Load(), DialFailures: s.dialFailed.Load(),
		FromClients: s.dgIn.Load(), ToClients: s.dgOut.Load(), BytesFromClients: s.bytesIn.Load(), BytesToClients: s.bytesOut.Load(),
		NoTarget: s.noTarget.Load(), FlowLimit: s.flowLimit.Load(), SendErrors: s.sendErrors.Load(), ReplyErrors: s.replyErrors.Load(),
		Shutdown: s.shut.Load(), Overflows: s.overflows.Load(),
	}
}

// UDPSummary is what Shutdown reports.
type UDPSummary struct {
	UDPStats
}

// Shutdown stops reading (closing the socket unless Handover took it),
// lets flows relay their answers until each has been quiet for a moment
// (udpDrainQuiet, or UDPIdleTimeout if shorter) or the drain timeout
// passes, then closes what is left, logs a summary line and returns it. It
// is safe to call more than once.
func (s *UDPServer) Shutdown() UDPSummary {
	s.shutdown.Do(func() {
		s.log.Info("shutting down: no new UDP flows; open ones relay their answers", "drain_timeout", s.cfg.DrainTimeout)
		s.mu.Lock()
		s.draining = true
		s.mu.Unlock()
		if s.pc != nil && !s.handed.Load() {
			s.pc.Close()
		}
		<-s.readDone
		s.quiet.Store(int64(min(udpDrainQuiet, s.cfg.UDPIdleTimeout)))
		deadline := time.NewTimer(s.cfg.DrainTimeout)
		poll := time.NewTicker(10 * time.Millisecond)
	wait:
		for s.activeFlows() > 0 {
			select {
			case <-deadline.C:
				break wait
			case <-poll.C:
			}
		}
		deadline.Stop()
		poll.Stop()
		s.closeIdle(-time.Hour, &s.shutClosed) // every flow left
		s.cancel()
		s.sweep.Wait()
		s.relays.Wait()
		for _, r := range s.metrics {
			_ = r.Unregister()
		}
		st := s.Stats()
		s.summary = UDPSummary{UDPStats: st}
		s.log.Info("summary", "proto", "udp", "flows", st.Flows, "idle_closed", st.IdleClosed, "icmp_closed", st.ICMPClosed,
			"shutdown_closed", st.ShutdownClosed, "datagrams_from_clients", st.FromClients, "datagrams_to_clients", st.ToClients,
			"bytes_from_clients", st.BytesFromClients, "bytes_to_clients", st.BytesToClients,
			"dropped_no_target", st.NoTarget, "dropped_flow_limit", st.FlowLimit, "dropped_send_error", st.SendErrors,
			"dropped_reply_error", st.ReplyErrors, "dropped_shutdown", st.Shutdown, "kernel_overflows", st.Overflows)
	})
	return s.summary
}

func (s *UDPServer) activeFlows() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.flows)
}

// Drain is Shutdown for a supervisor. UDP promises no delivery, so a drain
// is always clean: what was cut is counted in the summary.
func (s *UDPServer) Drain() (clean bool) {
	s.Shutdown()
	return true
}
