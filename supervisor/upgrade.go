package supervisor

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/ksuid"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/ndjson"
)

// UpgradeEnv passes what a new process inherits (JSON of inheritance):
// ndlb's own variable, not a setting.
const UpgradeEnv = "NDLB_UPGRADE"

// inheritance is what Upgrade passes to the new process: the file
// descriptors of its channel and of the listening sockets.
type inheritance struct {
	Channel   int                 `json:"channel"`
	Listeners []inheritedListener `json:"listeners"`
}

type inheritedListener struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`              // as configured, e.g. 0.0.0.0:9000
	Network string `json:"network,omitempty"` // "udp", or empty for TCP
	FD      int    `json:"fd"`
}

// network is "tcp" or "udp".
func (l inheritedListener) network() string {
	if l.Network == "" {
		return "tcp"
	}
	return l.Network
}

// handOffer is a server that can move its client connections (NDJSON).
type handOffer interface {
	HandOff(ctx context.Context, give func(ndjson.Transfer) error) (moved, busy int)
}

// adopter is a server that can take moved client connections.
type adopter interface {
	Adopt(t ndjson.Transfer) bool
	DropCarried(t ndjson.Transfer) uint64
}

// Socket is a listening socket that Upgrade passes on besides the
// listeners': Addr is its address as configured, which the new process
// asks Inherited.Listen for.
type Socket struct {
	Name, Addr string
	Listener   net.Listener
}

// ErrUpgrading is returned by Upgrade while another upgrade runs.
var ErrUpgrading = errors.New("an upgrade is already in progress")

// Upgrade starts the binary at path (the running one when empty) with the
// same arguments, passing it every listening socket, so that no client is
// refused. Once it is ready, this process stops accepting, hands each
// NDJSON client connection over with the line it was carrying, and returns;
// the caller then shuts down, delivering what it queued. Passthrough
// connections stay here until they end or the drain timeout. If the new
// process exits or is not ready within timeout, it is stopped and this one
// serves on: Upgrade returns why. The hand-over waits at most timeout too
// for connections whose readers wait for room (every target down); those
// stay here. Once ctx is done, Upgrade stops waiting: before the new
// process is ready it is stopped (ctx's error), after it the connections
// not yet handed over stay here (nil).
//
// extra are other listening sockets of the process (the admin API's),
// passed on too; the new process takes them with Inherited.Listen.
func (s *Supervisor) Upgrade(ctx context.Context, path string, timeout time.Duration, extra ...Socket) (err error) {
	if !s.upgrading.CompareAndSwap(false, true) {
		return ErrUpgrading
	}
	defer s.upgrading.Store(false)
	// From the new process's start, it owns the state file: this one
	// writes it again only if the upgrade fails.
	s.stateHanded.Store(true)
	defer func() {
		if err != nil {
			s.stateHanded.Store(false)
		}
	}()
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		path = exe
	}
	// The child's files are passed as raw descriptors (syscall.StartProcess):
	// os/exec would call os.File.Fd, which puts a socket in blocking mode,
	// and with it this process's listening sockets, which share the flag.
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socketpair", err)
	}
	fds := []int{pair[1]}
	defer func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}()
	mine := os.NewFile(uintptr(pair[0]), "upgrade-channel")
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return err
	}
	ch := fc.(*net.UnixConn)
	defer ch.Close()

	insts := s.snapshot()
	inh := inheritance{Channel: 3}
	pass := func(name, addr string, ln net.Listener) error {
		sc, ok := ln.(syscall.Conn)
		if !ok {
			return fmt.Errorf("%s: its socket cannot be passed on", name)
		}
		dup, err := dupOf(sc)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fds = append(fds, dup)
		il := inheritedListener{Name: name, Addr: addr, FD: 2 + len(fds)}
		if _, ok := ln.(*listener.Packet); ok {
			il.Network = "udp"
		}
		inh.Listeners = append(inh.Listeners, il)
		return nil
	}
	for _, in := range insts {
		if err := pass(in.spec.Name, in.spec.Addr, in.ln); err != nil {
			return err
		}
	}
	for _, x := range extra {
		if err := pass(x.Name, x.Addr, x.Listener); err != nil {
			return err
		}
	}
	js, _ := json.Marshal(inh)
	files := []uintptr{0, 1, 2}
	for _, fd := range fds {
		files = append(files, uintptr(fd))
	}
	env := append(withoutEnv(os.Environ(), UpgradeEnv), UpgradeEnv+"="+string(js))
	s.log.Info("upgrade: starting the new process", "path", path)
	// In a process group of its own, so that a failed upgrade ends what
	// it started too (a wrapper script's ndlb, which would otherwise hold
	// the inherited sockets beside this process).
	pid, _, err := syscall.StartProcess(path, append([]string{path}, os.Args[1:]...),
		&syscall.ProcAttr{Env: env, Files: files, Sys: &syscall.SysProcAttr{Setpgid: true}})
	if err != nil {
		return fmt.Errorf("start %s: %w", path, err)
	}
	for _, fd := range fds {
		syscall.Close(fd)
	}
	fds = nil
	child, _ := os.FindProcess(pid) // never fails on Unix
	// kill ends the new process and every process in its group; once
	// it is ready it is never called. The new process is reaped only
	// after it (reap): until then its pid, and so its group's id, cannot
	// name another process's group.
	kill := func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = child.Kill()
	}
	reap := func() error {
		st, err := child.Wait()
		if err == nil {
			err = errors.New(st.String())
		}
		return err
	}
	exited := make(chan struct{}) // closed when it exited, not yet reaped
	go func() {
		var info unix.Siginfo
		for unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
		}
		close(exited)
	}()
	ready := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := io.ReadFull(ch, b[:])
		ready <- err
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-ready:
		if err != nil {
			select { // most often it exited: say how
			case <-exited:
				kill() // what it started
				return fmt.Errorf("the new process (pid %d) exited before it was ready: %v", pid, reap())
			case <-time.After(time.Second):
			}
			kill()
			go reap()
			return fmt.Errorf("the new process (pid %d) closed its channel before it was ready: %v", pid, err)
		}
	case <-exited:
		kill() // what it started
		return fmt.Errorf("the new process (pid %d) exited before it was ready: %v", pid, reap())
	case <-timer.C:
		kill()
		go reap()
		return fmt.Errorf("the new process (pid %d) was not ready within %s; it was killed, with the processes it started", pid, timeout)
	case <-ctx.Done():
		kill()
		go reap()
		s.log.Warn("upgrade: stopped before the new process was ready; it was killed, with the processes it started", "pid", pid)
		return ctx.Err()
	}
	s.log.Info("upgrade: the new process is ready; handing over", "pid", pid)
	for _, in := range insts {
		ln := in.srv.Handover()
		if _, udp := ln.(*listener.Packet); ln != nil && !udp {
			ln.Close() // the new process holds the socket and accepts
		}
		// A UDP server's flows still send their answers from the
		// socket until its drain ends: its Shutdown drops it.
	}
	// A client's reader moves when it next reads. One waiting for room
	// (every target down, the queue and spool full) may not for long: the
	// hand-over waits for it at most the upgrade timeout, then leaves it
	// to this process's drain.
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	handStart := time.Now()
	// Every listener hands over at once: one with a client held back
	// must not spend the others' time. Once the time is up, a transfer
	// the new process does not take stops (its connection stays here).
	stopSending := context.AfterFunc(hctx, func() { _ = ch.SetWriteDeadline(time.Unix(1, 0)) })
	defer stopSending()
	var mu sync.Mutex // one transfer at a time on the channel
	var wg sync.WaitGroup
	var moved, busy atomic.Int64
	for _, in := range insts {
		h, ok := in.srv.(handOffer)
		if !ok {
			continue
		}
		name := in.spec.Name
		wg.Go(func() {
			m, b := h.HandOff(hctx, func(t ndjson.Transfer) error {
				mu.Lock()
				defer mu.Unlock()
				return sendTransfer(ch, name, t)
			})
			moved.Add(int64(m))
			busy.Add(int64(b))
		})
	}
	wg.Wait()
	if busy.Load() > 0 {
		s.log.Warn("upgrade: client connections waiting for room in the queue were not handed over; this process drains them",
			"connections", busy.Load(), "waited", time.Since(handStart).Round(time.Millisecond).String(), "interrupted", ctx.Err() != nil)
	}
	s.log.Info("upgrade: client connections handed over; this process delivers what it read and exits",
		"connections", moved.Load(), "pid", pid)
	return nil
}

func withoutEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// transferMeta is a transfer's description on the channel.
type transferMeta struct {
	Listener string `json:"listener"`
	ID       string `json:"id"`
	Client   string `json:"client"`
	Local    string `json:"local"`
	Partial  int    `json:"partial"`
	Skipping bool   `json:"skipping,omitempty"`
	// Framing and SkipBytes: see ndjson.Transfer. An older process
	// sends neither (its octet-counted clients stayed with it).
	Framing   string `json:"framing,omitempty"`
	SkipBytes int    `json:"skip_bytes,omitempty"`
	IdleNS    int64  `json:"idle_ns,omitempty"` // Transfer.IdleFor
}

// maxMeta bounds a transfer's description.
const maxMeta = 64 << 10

// sendTransfer writes one transfer: a 4-byte length, the description and
// the partial line, with the socket attached (SCM_RIGHTS).
func sendTransfer(ch *net.UnixConn, listener string, t ndjson.Transfer) error {
	meta, _ := json.Marshal(transferMeta{Listener: listener, ID: t.ID.String(), Client: t.Client.String(),
		Local: t.Local.String(), Partial: len(t.Partial), Skipping: t.Skipping,
		Framing: string(t.Framing), SkipBytes: t.SkipBytes, IdleNS: int64(t.IdleFor)})
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(meta)))
	msg = append(append(msg, meta...), t.Partial...)
	rc, err := t.Conn.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		n, _, serr = ch.WriteMsgUnix(msg, syscall.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	if n < len(msg) {
		_, err = ch.Write(msg[n:])
	}
	return err
}

// receiveTransfer reads one transfer written by sendTransfer.
func receiveTransfer(ch *net.UnixConn) (listener string, t ndjson.Transfer, err error) {
	var hdr [4]byte
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := ch.ReadMsgUnix(hdr[:], oob)
	if errors.Is(err, io.EOF) {
		return "", t, io.EOF // the old process is done
	}
	if err != nil {
		return "", t, err
	}
	if n == 0 {
		return "", t, io.EOF
	}
	var fds []int
	if cmsgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range cmsgs {
			if got, err := syscall.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	closeFDs := func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
	if _, err := io.ReadFull(ch, hdr[n:]); err != nil {
		closeFDs()
		return "", t, err
	}
	if len(fds) != 1 {
		closeFDs()
		return "", t, fmt.Errorf("transfer with %d sockets, want 1", len(fds))
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > maxMeta {
		closeFDs()
		return "", t, fmt.Errorf("transfer description of %d bytes", size)
	}
	meta := make([]byte, size)
	var m transferMeta
	if _, err := io.ReadFull(ch, meta); err != nil {
		closeFDs()
		return "", t, err
	}
	if err := json.Unmarshal(meta, &m); err != nil || m.Partial < 0 || m.Partial > 1<<31 || m.SkipBytes < 0 || m.IdleNS < 0 {
		closeFDs()
		return "", t, fmt.Errorf("bad transfer description %q", meta)
	}
	t.Partial = make([]byte, m.Partial)
	if _, err := io.ReadFull(ch, t.Partial); err != nil {
		closeFDs()
		return "", t, err
	}
	f := os.NewFile(uintptr(fds[0]), "client")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return "", t, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return "", t, fmt.Errorf("transferred socket is %T, not TCP", c)
	}
	t.Conn, t.Skipping, t.Framing, t.SkipBytes = tc, m.Skipping, framer.Framing(m.Framing), m.SkipBytes
	t.IdleFor = time.Duration(m.IdleNS)
	t.ID, _ = ksuid.Parse(m.ID)
	t.Client, t.Local = addrOf(m.Client, tc.RemoteAddr()), addrOf(m.Local, tc.LocalAddr())
	return m.Listener, t, nil
}

// addrOf parses an IP:port address, or returns def.
func addrOf(s string, def net.Addr) net.Addr {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return def
	}
	return net.TCPAddrFromAddrPort(ap)
}

// Inherited is what a process that Upgrade started received from the old
// one: the listening sockets and the channel of client connections.
type Inherited struct {
	ch        *net.UnixConn
	listeners []inheritedListener
	mu        sync.Mutex
	used      map[int]bool
	log       *slog.Logger
}

// Inherit returns what the old process passed, or nil when this process
// was not started by Upgrade.
func Inherit(log *slog.Logger) (*Inherited, error) {
	v, ok := os.LookupEnv(UpgradeEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(UpgradeEnv) // not for this process's own upgrades
	var inh inheritance
	if err := json.Unmarshal([]byte(v), &inh); err != nil {
		return nil, fmt.Errorf("%s: %w", UpgradeEnv, err)
	}
	f := os.NewFile(uintptr(inh.Channel), "upgrade-channel")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: the channel: %w", UpgradeEnv, err)
	}
	ch, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("%s: the channel is %T", UpgradeEnv, c)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Inherited{ch: ch, listeners: inh.Listeners, used: map[int]bool{}, log: log}, nil
}

// Listen returns the inherited socket configured for network and addr, or
// a new one: it is Config.Listen for a process started by Upgrade.
func (in *Inherited) Listen(name, network, addr string, keepAlive time.Duration) (net.Listener, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	pick := -1
	for i, l := range in.listeners {
		if in.used[l.FD] || l.Addr != addr || l.network() != network {
			continue
		}
		if pick < 0 || l.Name == name {
			pick = i
		}
	}
	if pick < 0 {
		return listen(network, addr, keepAlive)
	}
	l := in.listeners[pick]
	in.used[l.FD] = true
	f := os.NewFile(uintptr(l.FD), "listener "+l.Name)
	defer f.Close()
	if network == "udp" {
		pc, err := net.FilePacketConn(f)
		if err != nil {
			return nil, err
		}
		uc, ok := pc.(*net.UDPConn)
		if !ok {
			pc.Close()
			return nil, fmt.Errorf("inherited socket of %s is not UDP", l.Name)
		}
		return listener.NewPacket(uc, nil), nil
	}
	return net.FileListener(f)
}

// Serve tells the old process that this one is ready, closes the
// inherited sockets no listener took, then gives every client connection
// the old process hands over to the listener of its name in sup, until the
// old process closes the channel.
func (in *Inherited) Serve(sup *Supervisor) {
	in.mu.Lock()
	for _, l := range in.listeners {
		if !in.used[l.FD] {
			in.used[l.FD] = true
			syscall.Close(l.FD)
		}
	}
	in.mu.Unlock()
	defer in.ch.Close()
	if _, err := in.ch.Write([]byte{'R'}); err != nil {
		in.log.Error("upgrade: cannot tell the old process this one is ready", "err", err)
		return
	}
	adopted := 0
	for {
		name, t, err := receiveTransfer(in.ch)
		if errors.Is(err, io.EOF) {
			in.log.Info("upgrade: the old process handed over its client connections", "connections", adopted)
			return
		}
		if err != nil {
			in.log.Error("upgrade: the channel from the old process failed", "err", err)
			return
		}
		if sup.adopt(name, t) {
			adopted++
		}
	}
}

// adopt gives t to the listener called name.
func (s *Supervisor) adopt(name string, t ndjson.Transfer) bool {
	for _, in := range s.snapshot() {
		if in.name != name {
			continue
		}
		a, ok := in.srv.(adopter)
		if ok && a.Adopt(t) {
			return true
		}
		var lines uint64
		if ok {
			lines = a.DropCarried(t)
		} else { // another mode now: no ledger counts it, the log does
			lines, _ = ndjson.CountHeld(t)
		}
		s.log.Warn("upgrade: a client connection from the old process was refused (this listener requires TLS, frames messages otherwise, or is stopping); what it held was read and dropped, and it was closed",
			"listener", name, "conn", t.ID.String(), "lines_dropped", lines)
		t.Conn.Close()
		return false
	}
	// No ledger here counts what it held: the log does.
	lines, fragment := ndjson.CountHeld(t)
	s.log.Error("upgrade: a client connection from the old process has no listener here; what it held was read and dropped, and it was closed",
		"listener", name, "conn", t.ID.String(), "lines_dropped", lines, "fragment_dropped", fragment)
	t.Conn.Close()
	return false
}

// listen opens a new listening socket on network, "tcp" or "udp" (a
// *listener.Packet).
func listen(network, addr string, keepAlive time.Duration) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: keepAlive, Control: listener.Control}
	if network == "udp" {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			return nil, err
		}
		return listener.NewPacket(pc.(*net.UDPConn), nil), nil
	}
	return lc.Listen(context.Background(), "tcp", addr)
}

// dupCloexec duplicates fd, close-on-exec (StartProcess places the copies
// it passes).
// dupOf duplicates sc's descriptor (close-on-exec), without touching the
// original's flags.
func dupOf(sc syscall.Conn) (int, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { dup, derr = dupCloexec(int(fd)) }); err != nil {
		return -1, err
	}
	return dup, derr
}

func dupCloexec(fd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return -1, os.NewSyscallError("fcntl", errno)
	}
	return int(r), nil
}
