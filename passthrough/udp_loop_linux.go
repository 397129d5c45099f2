package passthrough

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

const udpSupported = true

// udpFlow is one client address's datagrams and its socket to a target.
// The loop owns it.
type udpFlow struct {
	fd     int
	key    flowKey
	client netip.AddrPort
	// oob is the control message that makes the kernel send answers from
	// the address the client sent to (IP_PKTINFO), on a wildcard
	// listener; nil otherwise.
	oob   []byte
	sa    unix.RawSockaddrInet6 // the client, as the listening socket's family writes it
	salen uint32
	t     *upstream.Target
	start time.Time
	last  int64 // when the last datagram came either way (internal/mono, on the server's clock)
	// answered: the target has sent something (passive health: it
	// works).
	answered bool
}

// flowKey tells flows apart: the client's address and port, and, on a
// wildcard listener, the local address it sent to.
type flowKey struct {
	client netip.AddrPort
	local  netip.Addr
}

// udpLoop is the UDPServer's event loop; only its goroutine touches its
// fields, but for the commands.
type udpLoop struct {
	s          *UDPServer
	epfd, evfd int
	// ep is epfd in the runtime's poller: the loop waits there, parked
	// like any goroutine on a socket, rather than in epoll_wait, which
	// would hold a thread and make the runtime hand its P to another.
	ep   *os.File
	epRC syscall.RawConn
	lfd  int  // the listening socket, in epfd until stopReading
	lfd6 bool // it is AF_INET6 (dual stack): clients' addresses are written as IPv6
	// pktinfo: the socket is bound to a wildcard address, so each
	// datagram's local address is read (IP_PKTINFO) and its answers are
	// sent from it.
	pktinfo bool

	byClient map[flowKey]*udpFlow
	byFD     map[int32]*udpFlow

	// Receive batch: names, buffers and control messages of udpBatch
	// datagrams.
	in      []unix.Mmsghdr
	inIov   []unix.Iovec
	inBuf   [][]byte
	inName  []unix.RawSockaddrInet6
	inOOB   [][]byte
	out     []unix.Mmsghdr // answers waiting for one sendmmsg
	rcv     []unix.Mmsghdr // the same slots, for a flow's recvmmsg
	outIov  []unix.Iovec
	outBuf  [][]byte
	outN    int
	order   []int
	now     int64 // the server's clock at this wake
	lastErr time.Time

	cmdMu       sync.Mutex
	stopRead    bool          // guarded by cmdMu
	quit        bool          // guarded by cmdMu
	readStopped chan struct{} // closed once the loop no longer reads the socket
	done        chan struct{} // closed when the loop has returned
	stoppedOnce sync.Once
}

func newUDPLoop(s *UDPServer) (*udpLoop, error) {
	l := &udpLoop{s: s, byClient: map[flowKey]*udpFlow{}, byFD: map[int32]*udpFlow{},
		readStopped: make(chan struct{}), done: make(chan struct{}), lfd: -1}
	var err error
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err = unix.SetNonblock(l.epfd, true); err != nil {
		unix.Close(l.epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	if l.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(l.epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	var cerr error
	err = s.rc.Control(func(fd uintptr) {
		l.lfd = int(fd)
		switch sa, _ := unix.Getsockname(l.lfd); sa := sa.(type) {
		case *unix.SockaddrInet6:
			l.lfd6, l.pktinfo = true, sa.Addr == [16]byte{}
			if l.pktinfo {
				cerr = unix.SetsockoptInt(l.lfd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			}
		case *unix.SockaddrInet4:
			l.pktinfo = sa.Addr == [4]byte{}
			if l.pktinfo {
				cerr = unix.SetsockoptInt(l.lfd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
		}
		if cerr != nil {
			return
		}
		cerr = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.lfd)})
	})
	if err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.evfd)})
	}
	if err != nil {
		unix.Close(l.epfd)
		unix.Close(l.evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	l.in, l.inIov, l.inName = make([]unix.Mmsghdr, udpBatch), make([]unix.Iovec, udpBatch), make([]unix.RawSockaddrInet6, udpBatch)
	l.out, l.rcv, l.outIov = make([]unix.Mmsghdr, udpBatch), make([]unix.Mmsghdr, udpBatch), make([]unix.Iovec, udpBatch)
	for i := range udpBatch {
		l.inBuf = append(l.inBuf, make([]byte, maxDatagram))
		l.outBuf = append(l.outBuf, make([]byte, maxDatagram))
		l.inOOB = append(l.inOOB, make([]byte, 128)) // SO_RXQ_OVFL and IP(V6)_PKTINFO
		l.inIov[i].Base = &l.inBuf[i][0]
		l.in[i].Hdr.Iov = &l.inIov[i]
		l.in[i].Hdr.SetIovlen(1)
		l.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&l.inName[i]))
		l.in[i].Hdr.Control = &l.inOOB[i][0]
		l.outIov[i].Base = &l.outBuf[i][0]
		l.out[i].Hdr.Iov = &l.outIov[i]
		l.out[i].Hdr.SetIovlen(1)
		l.rcv[i].Hdr.Iov = &l.outIov[i]
		l.rcv[i].Hdr.SetIovlen(1)
	}
	l.ep = os.NewFile(uintptr(l.epfd), "udp-epoll") // non-blocking: the poller takes it
	if l.epRC, err = l.ep.SyscallConn(); err != nil {
		l.ep.Close()
		unix.Close(l.evfd)
		return nil, err
	}
	return l, nil
}

// The loop's reads and writes never block (MSG_DONTWAIT, non-blocking
// sockets), so they are raw system calls: the runtime need not know of
// them.

// run is the loop, until exit.
func (l *udpLoop) run() {
	defer close(l.done)
	s := l.s
	events := make([]unix.EpollEvent, 128)
	every := sweepEvery(s.cfg.UDPIdleTimeout)
	nextSweep := time.Now().Add(every)
	for {
		_ = l.ep.SetReadDeadline(nextSweep)
		var n int
		var werr error
		err := l.epRC.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			return n != 0 || werr != nil && werr != unix.EINTR
		})
		if err == nil && werr != nil {
			err = os.NewSyscallError("epoll_wait", werr)
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			s.serveErr <- err
			l.closeAll(&s.shutClosed)
			return
		}
		l.now = mono.Of(s.clock.Now())
		for _, ev := range events[:max(n, 0)] {
			switch fd := ev.Fd; {
			case fd == int32(l.evfd):
				if l.command() {
					l.closeAll(&s.shutClosed)
					return
				}
			case fd == int32(l.lfd):
				l.readClients()
			default:
				if f := l.byFD[fd]; f != nil {
					l.readTarget(f)
				}
			}
		}
		l.flush()
		if time.Now().After(nextSweep) {
			l.sweep()
			s.pruneAttrs()
			nextSweep = time.Now().Add(every)
		}
	}
}

// command handles what another goroutine asked; it reports true to end the
// loop.
func (l *udpLoop) command() (quit bool) {
	var buf [8]byte
	_, _ = unix.Read(l.evfd, buf[:])
	l.cmdMu.Lock()
	stop, quit := l.stopRead, l.quit
	l.cmdMu.Unlock()
	if stop && l.lfd >= 0 {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, l.lfd, nil)
		l.lfd = -1
		l.stoppedOnce.Do(func() { close(l.readStopped) })
	}
	return quit
}

func (l *udpLoop) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

// stopReading makes the loop leave the listening socket alone, and waits
// until it has (or has returned).
func (l *udpLoop) stopReading() {
	l.cmdMu.Lock()
	l.stopRead = true
	l.cmdMu.Unlock()
	l.wake()
	select {
	case <-l.readStopped:
	case <-l.done:
	}
}

// exit ends the loop, closing every flow as shut down, and its
// descriptors.
func (l *udpLoop) exit() {
	l.cmdMu.Lock()
	l.stopRead, l.quit = true, true
	l.cmdMu.Unlock()
	l.wake()
	<-l.done
	l.ep.Close()
	unix.Close(l.evfd)
}

// readClients reads one batch of clients' datagrams and sends each to its
// flow's target.
func (l *udpLoop) readClients() {
	s := l.s
	for i := range l.in {
		h := &l.in[i].Hdr
		h.Namelen = uint32(unsafe.Sizeof(l.inName[i]))
		h.SetControllen(len(l.inOOB[i]))
		h.Flags = 0
		l.inIov[i].SetLen(maxDatagram)
	}
	var n int
	var errno unix.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&l.in[0])), uintptr(len(l.in)), unix.MSG_DONTWAIT, 0, 0)
		n, errno = int(r), e
		return true
	})
	if err != nil || errno != 0 {
		if errno != unix.EAGAIN && errno != unix.EINTR {
			l.warnErr("UDP read failed; reading on", err, errno)
		}
		return
	}
	for i := range n {
		m := &l.in[i]
		local := l.control(l.inOOB[i][:m.Hdr.Controllen])
		from, ok := addrOf(&l.inName[i])
		if !ok {
			continue
		}
		l.forward(flowKey{client: from, local: local}, l.inBuf[i][:m.Len])
	}
}

// control reads a datagram's control messages: the kernel's drop count,
// and the local address the datagram was sent to (zero unless pktinfo).
func (l *udpLoop) control(oob []byte) (local netip.Addr) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && len(data) >= 4:
			listener.StoreMax(&l.s.overflows, uint64(binary.NativeEndian.Uint32(data)))
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			local = netip.AddrFrom4((*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0])).Addr)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			local = netip.AddrFrom16((*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0])).Addr)
		}
		oob = rest
	}
	return local
}

// pktinfoFor is the control message that sends from local, on the
// listening socket's family; nil when the socket is not a wildcard one.
func (l *udpLoop) pktinfoFor(local netip.Addr) []byte {
	if !l.pktinfo || !local.IsValid() {
		return nil
	}
	if l.lfd6 {
		b := make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
		(*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)])).Addr = local.As16()
		return b
	}
	b := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
	(*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)])).Spec_dst = local.Unmap().As4()
	return b
}

// addrOf is the address in a sockaddr, IPv4 unmapped.
func addrOf(sa *unix.RawSockaddrInet6) (netip.AddrPort, bool) {
	switch sa.Family {
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), true
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), true
	}
	return netip.AddrPort{}, false
}

// sockaddr writes ap as a sockaddr of the family af6 says (IPv4 mapped into
// IPv6 for a dual-stack socket).
func sockaddr(ap netip.AddrPort, af6 bool, sa *unix.RawSockaddrInet6) uint32 {
	*sa = unix.RawSockaddrInet6{}
	if !af6 && ap.Addr().Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		sa4.Addr = ap.Addr().As4()
		return unix.SizeofSockaddrInet4
	}
	sa.Family = unix.AF_INET6
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	sa.Addr = ap.Addr().As16()
	return unix.SizeofSockaddrInet6
}

// forward sends one datagram of a client to its flow's target.
func (l *udpLoop) forward(key flowKey, data []byte) {
	s := l.s
	s.dgIn.Add(1)
	s.bytesIn.Add(uint64(len(data)))
	f := l.byClient[key]
	if f == nil {
		if f = l.open(key, data); f == nil {
			return
		}
	}
	if _, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(f.fd), uintptr(unsafe.Pointer(unsafe.SliceData(data))), uintptr(len(data))); e != 0 {
		s.sendErrors.Add(1)
		if icmpError(e) {
			l.failed(f, e)
		} else if e != unix.EAGAIN && e != unix.EINTR {
			// Too long for the target's path (EMSGSIZE), out of
			// buffers: the datagram's fault or ours, not the
			// target's.
			l.warnErr("UDP datagram could not be sent to its target; dropped", nil, e)
		}
		return
	}
	f.t.Delivered(0, len(data))
	f.last = l.now
}

// icmpError reports whether errno, from a flow's socket, is an ICMP error
// the kernel reported for the target: its port is closed, or its host or
// network unreachable. Only these count against the target.
func icmpError(errno unix.Errno) bool {
	return errno == unix.ECONNREFUSED || errno == unix.EHOSTUNREACH || errno == unix.ENETUNREACH || errno == unix.EHOSTDOWN
}

// errLocal marks a dial error that is ndlb's, not the target's (out of
// descriptors or ports): it is not held against any target.
type errLocal struct{ error }

// open opens a flow for a client, whose first datagram is first, to the
// first target, in the policy's order, whose socket can be opened; nil,
// counted, when there is none.
func (l *udpLoop) open(key flowKey, first []byte) *udpFlow {
	s := l.s
	from := key.client
	if len(l.byClient) >= s.maxFlows {
		s.flowLimit.Add(1)
		s.warn.Do(func() {
			s.log.Warn("UDP flow table full: datagrams that would open a flow are dropped", "max_flows", s.maxFlows,
				"client", from.String())
		})
		return nil
	}
	var targets []*upstream.Target
	targets, l.order = s.choose(from, first, l.order)
	var lastErr error = errNoneAccepts
	for _, i := range l.order {
		t := targets[i]
		fd, err := l.dial(t)
		if _, local := err.(errLocal); local {
			s.socketErrors.Add(1)
			s.warn.Do(func() {
				s.log.Warn("UDP datagram dropped: no socket for a new flow (raise the open-file limit, or lower --max-conns)", "err", err)
			})
			return nil
		}
		if errors.Is(err, errResolving) {
			lastErr = err // the name's address comes in the background
			continue
		}
		if err != nil {
			s.dialFailed.Add(1)
			s.attemptFailed(t, err)
			lastErr = err
			continue
		}
		f := &udpFlow{fd: fd, key: key, client: from, t: t, start: s.clock.Now(), last: l.now, oob: l.pktinfoFor(key.local)}
		f.salen = sockaddr(from, l.lfd6, &f.sa)
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			unix.Close(fd)
			lastErr = os.NewSyscallError("epoll_ctl", err)
			break
		}
		l.byClient[key], l.byFD[int32(fd)] = f, f
		t.ConnOpened()
		s.opened.Add(1)
		s.activeFlows.Add(1)
		s.log.Debug("UDP flow opened", "client", from.String(), "target", t.Addr)
		return f
	}
	s.noTarget.Add(1)
	s.warn.Do(func() {
		s.log.Warn("UDP datagram dropped: no target can take its flow", "client", from.String(), "err", lastErr)
	})
	return nil
}

// dial opens a non-blocking socket connected to t.
func (l *udpLoop) dial(t *upstream.Target) (int, error) {
	ap, err := l.s.addrs.lookup(t.Addr)
	if err != nil {
		return -1, err
	}
	af := unix.AF_INET6
	if ap.Addr().Is4() {
		af = unix.AF_INET
	}
	fd, err := unix.Socket(af, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, errLocal{os.NewSyscallError("socket", err)}
	}
	var sa unix.Sockaddr
	if af == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		if err == unix.EADDRNOTAVAIL || err == unix.ENOBUFS || err == unix.ENOMEM {
			return -1, errLocal{os.NewSyscallError("connect", err)}
		}
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// readTarget reads what f's target sent, in one recvmmsg into the free
// answer slots, and queues it for the client. What does not fit waits: the
// socket stays readable, and the next wake goes on.
func (l *udpLoop) readTarget(f *udpFlow) {
	s := l.s
	if l.outN == len(l.out) {
		l.flush()
	}
	k := l.outN
	for i := k; i < len(l.out); i++ {
		l.outIov[i].SetLen(maxDatagram)
		l.rcv[i].Hdr.Flags = 0
	}
	r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(f.fd), uintptr(unsafe.Pointer(&l.rcv[k])), uintptr(len(l.out)-k), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		if icmpError(errno) {
			l.failed(f, errno)
		} else if errno != unix.EAGAIN && errno != unix.EINTR {
			l.warnErr("UDP read from a target failed", nil, errno)
		}
		return
	}
	for i := k; i < k+int(r); i++ {
		n := int(l.rcv[i].Len)
		h := &l.out[i].Hdr
		h.Name, h.Namelen = (*byte)(unsafe.Pointer(&f.sa)), f.salen
		if f.oob != nil {
			h.Control = &f.oob[0]
			h.SetControllen(len(f.oob))
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		l.outIov[i].SetLen(n)
		f.t.Received(n)
	}
	l.outN += int(r)
	f.last = l.now
	if !f.answered {
		f.answered = true
		s.attemptSucceeded(f.t)
	}
}

// flush sends the queued answers to their clients.
func (l *udpLoop) flush() {
	s := l.s
	for sent := 0; sent < l.outN; {
		var n int
		var errno unix.Errno
		err := s.rc.Write(func(fd uintptr) bool {
			r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&l.out[sent])), uintptr(l.outN-sent), unix.MSG_DONTWAIT, 0, 0)
			n, errno = int(r), e
			return true
		})
		if err != nil || errno != 0 {
			if errno == unix.EINTR {
				continue
			}
			// The first answer could not be sent: drop it, go on.
			s.replyErrors.Add(1)
			l.warnErr("UDP answer could not be sent to its client", err, errno)
			sent++
			continue
		}
		for i := sent; i < sent+n; i++ {
			s.bytesOut.Add(uint64(l.outIov[i].Len))
		}
		s.dgOut.Add(uint64(n))
		sent += n
	}
	for i := range l.outN {
		l.out[i].Hdr.Name, l.out[i].Hdr.Control = nil, nil // no flow is kept alive by a stale pointer
	}
	l.outN = 0
}

func (l *udpLoop) warnErr(msg string, err error, errno unix.Errno) {
	if err == nil {
		err = errno
	}
	l.s.warn.Do(func() { l.s.log.Warn(msg, "err", err) })
}

// failed ends f on an ICMP error the kernel reported for its socket (the
// target's port is closed, or its host or network unreachable), which
// counts as a failed attempt against the target.
func (l *udpLoop) failed(f *udpFlow, err error) {
	s := l.s
	l.flush() // answers queued for f point at it
	s.attemptFailed(f.t, err)
	s.warn.Do(func() {
		s.log.Warn("UDP flow ended: the kernel reported an ICMP error from its target", "client", f.client.String(), "target", f.t.Addr, "err", err)
	})
	l.close(f, &s.icmpClosed)
}

// close ends f, counting it in reason.
func (l *udpLoop) close(f *udpFlow, reason *atomic.Uint64) {
	s := l.s
	delete(l.byClient, f.key)
	delete(l.byFD, int32(f.fd))
	unix.Close(f.fd) // leaves epfd with it
	f.t.ConnClosed()
	reason.Add(1)
	s.activeFlows.Add(-1)
	s.recordDuration(s.clock.Since(f.start), f.t)
}

// sweep closes the flows quiet for longer than the server's quiet, and
// those whose target takes no new work (drained, disabled, down, removed):
// their clients' next datagrams open flows on targets that do. It has the
// addresses of targets named by host looked up ahead of need.
func (l *udpLoop) sweep() {
	s := l.s
	l.flush()
	cutoff := mono.Of(s.clock.Now()) - s.quiet.Load()
	for _, f := range l.byClient {
		switch {
		case f.last <= cutoff && l.lfd < 0:
			l.close(f, &s.shutClosed) // the drain: quiet for udpDrainQuiet
		case f.last <= cutoff:
			l.close(f, &s.idleClosed)
		case !f.t.Accepts() || f.t.Removed():
			l.close(f, &s.movedClosed)
		}
	}
	for _, t := range s.set.Targets() {
		s.addrs.warm(t.Addr)
	}
}

// closeAll closes every flow, counting them in reason.
func (l *udpLoop) closeAll(reason *atomic.Uint64) {
	l.flush()
	for _, f := range l.byClient {
		l.close(f, reason)
	}
	l.stoppedOnce.Do(func() { close(l.readStopped) })
}
