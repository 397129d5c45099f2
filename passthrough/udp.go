package passthrough

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// Sizes and times of the UDP server.
const (
	// maxDatagram holds the largest UDP payload (65,507 bytes over IPv4),
	// so that no datagram is ever cut.
	maxDatagram = 64 << 10
	// udpBatch is how many datagrams one recvmmsg(2) or sendmmsg(2)
	// moves at most.
	udpBatch = 32
	// udpReadBuffer is the SO_RCVBUF asked for the listening socket
	// (the kernel caps it at net.core.rmem_max).
	udpReadBuffer = 4 << 20
	// udpDrainQuiet is how long a flow must have been quiet, once the
	// server drains, to be closed before the drain timeout: its answers
	// have come.
	udpDrainQuiet = 2 * time.Second
)

// ErrUDPUnsupported is NewUDP's error where UDP passthrough does not run
// (it needs Linux's epoll and recvmmsg).
var ErrUDPUnsupported = errors.New("passthrough: UDP needs Linux")

// UDPServer is passthrough mode for UDP: the datagrams from one client
// address and port form a flow, bound to one target chosen by the policy
// (hash hashes the client's address, and with HashFirst the first
// datagram's bytes), and sent from a socket of its own, connected to the
// target. Datagrams the target sends to that socket are relayed to the
// client from the listening address. A flow ends after UDPIdleTimeout
// without a datagram either way, or when the kernel reports an ICMP error
// for it (the target's port is closed, its host unreachable), which also
// counts against the target as a failed attempt (passive health): the
// client's next datagram opens a new flow.
//
// One goroutine runs it all as an event loop, as nginx's workers do: it
// waits in epoll_wait(2) on the listening socket and every flow's socket,
// reads clients' datagrams in batches (recvmmsg(2)), and sends targets'
// answers in batches (sendmmsg(2)). No datagram passes between goroutines,
// and a flow costs a socket and a few hundred bytes. Listener.MaxConns
// bounds the flows; a datagram that would open one more is dropped and
// counted, as are those no target can take.
type UDPServer struct {
	core
	pc       *listener.Packet
	rc       syscall.RawConn // pc's, for the loop's batched reads and writes
	maxFlows int
	addrs    addrCache
	loop     *udpLoop

	quiet       atomic.Int64 // how long a flow may idle, in ns
	activeFlows atomic.Int64

	handed atomic.Bool // Handover took the socket
	// dropsFinal: Handover or Shutdown took the socket's last drop
	// count that is this server's (a successor may share the socket).
	dropsFinal atomic.Bool
	serveErr   chan error
	shutdown   sync.Once
	summary    UDPSummary
	metrics    []metric.Registration
	warn       rate.Sometimes

	opened, idleClosed, icmpClosed, shutClosed, movedClosed atomic.Uint64
	dgIn, dgOut, bytesIn, bytesOut, dialFailed              atomic.Uint64
	noTarget, flowLimit, sendErrors, replyErrors            atomic.Uint64
	socketErrors, overflows                                 atomic.Uint64
	// dropsBefore is the socket's drop count its earlier servers counted
	// (listener.Packet.DropsBefore): overflows less that is this server's.
	dropsBefore uint64
}

// NewUDP returns a UDP server for a valid cfg with UDP set. Config.Dial is
// not used: flows' sockets are the loop's own.
func NewUDP(cfg Config) (*UDPServer, error) {
	if !cfg.UDP {
		return nil, fmt.Errorf("%w: NewUDP needs Config.UDP", ErrConfig)
	}
	if !udpSupported {
		return nil, ErrUDPUnsupported
	}
	s := &UDPServer{serveErr: make(chan error, 1), warn: rate.Sometimes{First: 1, Interval: 10 * time.Second}}
	if err := s.init(cfg); err != nil {
		return nil, err
	}
	s.maxFlows = cfg.Listener.MaxConns
	if s.maxFlows == 0 {
		s.maxFlows = listener.DefaultMaxConns()
	}
	s.quiet.Store(int64(cfg.UDPIdleTimeout))
	s.addrs.timeout = cfg.ConnectTimeout
	return s, nil
}

// Start serves ln, which must be a *listener.Packet, in the background.
// Call Shutdown to stop.
func (s *UDPServer) Start(ln net.Listener) {
	pc, ok := ln.(*listener.Packet)
	if !ok {
		s.serveErr <- fmt.Errorf("passthrough: a UDP listener needs a UDP socket, not %T", ln)
		return
	}
	s.pc = pc
	s.dropsBefore = pc.DropsBefore()
	pc.Acquire()
	_ = pc.SetReadBuffer(udpReadBuffer)
	pc.CountOverflows()
	rc, err := pc.SyscallConn()
	if err == nil {
		s.rc = rc
		s.loop, err = newUDPLoop(s)
	}
	if err != nil {
		s.serveErr <- fmt.Errorf("passthrough: UDP: %w", err)
		return
	}
	for _, t := range s.set.Targets() {
		s.addrs.warm(t.Addr) // names: looked up before their first flow
	}
	go s.loop.run()
	s.metrics = s.observeUDP()
	args := []any{"addr", pc.Addr().String(), "mode", "passthrough", "proto", "udp", "targets", s.cfg.Targets,
		"balance", s.cfg.Balance, "max_flows", s.maxFlows, "udp_idle_timeout", s.cfg.UDPIdleTimeout.String()}
	if s.cfg.Balance == "hash" {
		args = append(args, "hash_key", string(s.cfg.HashKey))
	}
	s.log.Info("listening", args...)
}

// choose returns the targets to try for a new flow of client from, whose
// first datagram is first, in the policy's order.
func (s *UDPServer) choose(from netip.AddrPort, first []byte, dst []int) ([]*upstream.Target, []int) {
	key := hashKeyOf(from, s.cfg.HashKey)
	if r := s.cfg.HashFirst; r.Length > 0 && s.policy.Load().name == "hash" && len(first) > r.Offset {
		key = append(key, first[r.Offset:min(len(first), r.Offset+r.Length)]...)
	}
	targets := s.set.Targets()
	return targets, s.candidates(dst[:0], targets, key)
}

// sweepEvery is how often flows idle for d are looked for: a tenth of d,
// within 10ms..1s.
func sweepEvery(d time.Duration) time.Duration {
	return min(max(d/10, 10*time.Millisecond), time.Second)
}

// Handover stops reading and returns the listening socket, open, for a
// replacement server: its datagrams are the replacement's from then on,
// while this server's flows still relay their targets' answers until
// Shutdown ends them.
func (s *UDPServer) Handover() net.Listener {
	if s.loop == nil || !s.handed.CompareAndSwap(false, true) {
		return nil
	}
	s.loop.stopReading()
	// The drops from now on are the successor's.
	s.pc.CountDrops(&s.overflows)
	s.dropsFinal.Store(true)
	s.pc.HandedOver(s.overflows.Load())
	return s.pc
}

// Addr is the listening address.
func (s *UDPServer) Addr() net.Addr { return s.pc.Addr() }

// Err is signalled if the socket fails on its own (not by Shutdown).
func (s *UDPServer) Err() <-chan error { return s.serveErr }

// UDPStats are the UDP server's counters.
type UDPStats struct {
	Flows       uint64 // flows opened
	ActiveFlows int64  // flows open now
	IdleClosed  uint64 // flows ended by UDPIdleTimeout
	ICMPClosed  uint64 // flows ended by an ICMP error the kernel reported (port closed, host unreachable)
	// MovedClosed counts flows ended because their target took no new
	// work any more (drained, disabled, down, removed): the client's
	// next datagram opens a flow on one that does.
	MovedClosed    uint64
	ShutdownClosed uint64 // flows ended by Shutdown
	DialFailures   uint64 // target sockets that could not be opened (another target was then tried)

	FromClients, ToClients           uint64 // datagrams
	BytesFromClients, BytesToClients uint64

	// Dropped datagrams, by reason.
	NoTarget     uint64 // no target could take the flow
	FlowLimit    uint64 // the flow table was full
	SocketErrors uint64 // no socket could be opened for a new flow (out of descriptors or ports)
	SendErrors   uint64 // the target's socket refused it (on an ICMP error, the flow then ended)
	ReplyErrors  uint64 // answers that could not be sent to the client
	// Overflows is the datagrams the kernel dropped because the listening
	// socket's buffer was full (SO_RXQ_OVFL), before ndlb could read them.
	Overflows uint64
}

// Dropped is the sum of the datagrams dropped from clients.
func (st UDPStats) Dropped() uint64 {
	return st.NoTarget + st.FlowLimit + st.SocketErrors + st.SendErrors
}

// Stats returns the server's counters. The kernel's drop count is asked
// again, for the drops no datagram read after them reports.
func (s *UDPServer) Stats() UDPStats {
	if s.pc != nil && !s.dropsFinal.Load() {
		s.pc.CountDrops(&s.overflows)
	}
	overflows := s.overflows.Load()
	return UDPStats{
		Flows: s.opened.Load(), ActiveFlows: s.activeFlows.Load(), IdleClosed: s.idleClosed.Load(), ICMPClosed: s.icmpClosed.Load(),
		ShutdownClosed: s.shutClosed.Load(), MovedClosed: s.movedClosed.Load(), DialFailures: s.dialFailed.Load(),
		SocketErrors: s.socketErrors.Load(),
		FromClients:  s.dgIn.Load(), ToClients: s.dgOut.Load(), BytesFromClients: s.bytesIn.Load(), BytesToClients: s.bytesOut.Load(),
		NoTarget: s.noTarget.Load(), FlowLimit: s.flowLimit.Load(), SendErrors: s.sendErrors.Load(), ReplyErrors: s.replyErrors.Load(),
		Overflows: overflows - min(overflows, s.dropsBefore),
	}
}

// UDPSummary is what Shutdown reports.
type UDPSummary struct {
	UDPStats
}

// Shutdown stops reading, lets flows relay their answers until each has
// been quiet for a moment (udpDrainQuiet, or UDPIdleTimeout if shorter) or
// the drain timeout passes, then closes what is left and drops the socket
// (closed unless a successor shares it), logs a summary line and returns
// it. It is safe to call more than once.
func (s *UDPServer) Shutdown() UDPSummary {
	s.shutdown.Do(func() {
		s.log.Info("shutting down: no new UDP flows; open ones relay their answers", "drain_timeout", s.cfg.DrainTimeout)
		if s.loop != nil {
			s.loop.stopReading()
			s.quiet.Store(int64(min(udpDrainQuiet, s.cfg.UDPIdleTimeout)))
			deadline := time.NewTimer(s.cfg.DrainTimeout)
			poll := time.NewTicker(10 * time.Millisecond)
		wait:
			for s.activeFlows.Load() > 0 {
				select {
				case <-deadline.C:
					break wait
				case <-poll.C:
				}
			}
			deadline.Stop()
			poll.Stop()
			s.loop.exit() // closes what is left
			if !s.dropsFinal.Load() {
				s.pc.CountDrops(&s.overflows)
				s.dropsFinal.Store(true)
			}
			s.pc.Drop() // after the drain: answers leave from it
		}
		for _, r := range s.metrics {
			_ = r.Unregister()
		}
		st := s.Stats()
		s.summary = UDPSummary{UDPStats: st}
		s.log.Info("summary", "proto", "udp", "flows", st.Flows, "idle_closed", st.IdleClosed, "icmp_closed", st.ICMPClosed,
			"moved_closed", st.MovedClosed, "dropped_socket_error", st.SocketErrors,
			"shutdown_closed", st.ShutdownClosed, "datagrams_from_clients", st.FromClients, "datagrams_to_clients", st.ToClients,
			"bytes_from_clients", st.BytesFromClients, "bytes_to_clients", st.BytesToClients,
			"dropped_no_target", st.NoTarget, "dropped_flow_limit", st.FlowLimit, "dropped_send_error", st.SendErrors,
			"dropped_reply_error", st.ReplyErrors, "kernel_overflows", st.Overflows)
	})
	return s.summary
}

// Drain is Shutdown for a supervisor. UDP promises no delivery, so a drain
// is always clean: what was cut is counted in the summary.
func (s *UDPServer) Drain() (clean bool) {
	s.Shutdown()
	return true
}
