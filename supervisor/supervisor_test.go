package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/internal/logtest"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeMode makes fakeServers; fail, if set, is New's error; network is
// its Network ("" is tcp).
type fakeMode struct {
	fail    error
	network string
}

func (fakeMode) Name() string { return "fake" }

func (m fakeMode) New(name string, _ *dispatch.Book) (Server, error) {
	if m.fail != nil {
		return nil, m.fail
	}
	return &fakeServer{name: name, set: upstream.NewSet(nil), errs: make(chan error, 1)}, nil
}

func (m fakeMode) Info(srv Server, name, addr string, _ *dispatch.Book) admin.ListenerInfo {
	return admin.ListenerInfo{Name: name, Addr: addr, Mode: m.Name()}
}

func (fakeMode) Lost(Server) []any { return []any{"fake_lost", 1} }

func (fakeMode) KeepAlive() time.Duration { return -1 }

func (m fakeMode) Network() string {
	if m.network == "" {
		return "tcp"
	}
	return m.network
}

// fakeServer holds its socket and records what the supervisor does to it.
type fakeServer struct {
	name string
	set  *upstream.Set
	errs chan error

	mu                          sync.Mutex
	ln                          net.Listener
	started, drained, handedOff bool
	balance                     string
	unclean                     bool
}

func (f *fakeServer) Start(ln net.Listener) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ln, f.started = ln, true
}

func (f *fakeServer) Err() <-chan error { return f.errs }

func (f *fakeServer) Handover() net.Listener {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handedOff = true
	return f.ln
}

func (f *fakeServer) Set() *upstream.Set { return f.set }

func (f *fakeServer) Drain() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.handedOff && f.ln != nil {
		f.ln.Close()
	}
	f.drained = true // Err stays open, as the real servers' do: it reports failures only
	return !f.unclean
}

func (f *fakeServer) SetBalance(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.balance = name
	return nil
}

func (f *fakeServer) state() (started, drained, handedOff bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started, f.drained, f.handedOff
}

// fakeListener is a fake listener on a free loopback port, with one value for
// every listener setting.
func fakeListener(name string) Listener {
	l := Listener{Name: name, Addr: "127.0.0.1:0", Mode: fakeMode{}, Targets: []string{"192.0.2.1:1"},
		Balance: "roundrobin", Settings: map[string][]string{}}
	for _, s := range settings.All {
		if !s.Global && !s.CommandLine {
			l.Settings[s.Name] = []string{"a"}
		}
	}
	return l
}

// world is a started supervisor whose next reload loads *next.
type world struct {
	sup  *Supervisor
	next Spec
	logs *logtest.Buffer
	lvl  *slog.LevelVar
}

func newWorld(t *testing.T, spec Spec) *world {
	t.Helper()
	w := &world{next: spec, logs: &logtest.Buffer{}, lvl: &slog.LevelVar{}}
	sup, err := New(Config{
		Logger: slog.New(slog.NewTextHandler(w.logs, nil)), Level: w.lvl,
		Load: func() (Spec, error) { return w.next, nil }, PruneInterval: time.Hour,
	}, spec)
	if err != nil {
		t.Fatal(err)
	}
	w.sup = sup
	sup.Start()
	t.Cleanup(func() { sup.Shutdown() })
	return w
}

func (w *world) server(t *testing.T, name string) *fakeServer {
	t.Helper()
	for _, in := range w.sup.snapshot() {
		if in.spec.Name == name {
			return in.srv.(*fakeServer)
		}
	}
	t.Fatalf("no listener %q", name)
	return nil
}

// Every listener setting, changed alone, is applied by its rule: a live
// setting changes the running server in place; any other replaces it on
// the same socket while the old one drains.
func TestEverySettingFollowsItsReloadRule(t *testing.T) {
	for _, s := range settings.All {
		if s.Global || s.CommandLine {
			continue
		}
		t.Run(s.Name, func(t *testing.T) {
			w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
			before := w.server(t, "x")
			addr := w.sup.Addrs()["x"].String()
			next := fakeListener("x")
			next.Settings[s.Name] = []string{"b"}
			w.next = Spec{Listeners: []Listener{next}}
			if err := w.sup.Reload("test"); err != nil {
				t.Fatal(err)
			}
			after := w.server(t, "x")
			if got := w.sup.Addrs()["x"].String(); got != addr {
				t.Fatalf("the listener moved from %s to %s", addr, got)
			}
			w.sup.draining.Wait()
			_, drained, handedOff := before.state()
			if s.Reload.Live() {
				if after != before || drained {
					t.Fatalf("live setting %s (%v) replaced the server", s.Name, s.Reload)
				}
				return
			}
			if after == before || !drained || !handedOff {
				t.Fatalf("%s (%v): replaced %v, old drained %v, socket handed over %v", s.Name, s.Reload, after != before, drained, handedOff)
			}
			if started, _, _ := after.state(); !started {
				t.Fatal("the replacement was not started")
			}
		})
	}
}

// The live rules do what they say: new static targets, a new policy, and
// checks turned off (every target then counts as passing).
func TestLiveChangesApply(t *testing.T) {
	w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	srv := w.server(t, "x")
	logUpdate(slog.New(slog.DiscardHandler), srv.set, []string{"192.0.2.1:1"})
	next := fakeListener("x")
	next.Targets = []string{"192.0.2.2:1"}
	next.Balance = "leastconn"
	next.Settings["target"] = []string{"192.0.2.2:1"}
	next.Settings["balance"] = []string{"leastconn"}
	next.Settings["check"] = []string{""}
	w.next = Spec{Listeners: []Listener{next}}
	if err := w.sup.Reload("test"); err != nil {
		t.Fatal(err)
	}
	if w.server(t, "x") != srv {
		t.Fatal("live changes replaced the server")
	}
	var live []string
	for _, tg := range srv.set.Targets() {
		if !tg.Removed() {
			live = append(live, tg.Addr)
		}
	}
	if len(live) != 1 || live[0] != "192.0.2.2:1" {
		t.Errorf("live targets %v", live)
	}
	if srv.balance != "leastconn" {
		t.Errorf("balance %q", srv.balance)
	}
	for _, want := range []string{"target added", "target removed; draining", "balancing policy changed", "health checks changed"} {
		if !strings.Contains(w.logs.String(), want) {
			t.Errorf("no %q in the log", want)
		}
	}
	// The pruner drops the removed target: it has no connection.
	w.sup.pruneOnce()
	if n := len(srv.set.Targets()); n != 1 {
		t.Errorf("%d targets after pruning, want 1", n)
	}
}

// A spec that is invalid or whose server cannot be made changes nothing,
// and the failure is recorded.
func TestBadSpecChangesNothing(t *testing.T) {
	w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	srv := w.server(t, "x")
	bad := []Spec{
		{},
		{Listeners: []Listener{fakeListener("x"), fakeListener("x")}},
		{Listeners: []Listener{{Name: "x", Addr: "127.0.0.1:0"}}},
		{Listeners: []Listener{{Name: "x", Mode: fakeMode{}}}},
		{Listeners: []Listener{{Mode: fakeMode{}, Addr: "127.0.0.1:0"}}},
		{Listeners: []Listener{func() Listener { l := fakeListener("x"); l.Mode = fakeMode{fail: errors.New("no")}; return l }()}},
		{Listeners: []Listener{fakeListener("x"), at(fakeListener("y"), "127.0.0.1:0"), at(fakeListener("z"), "0.0.0.0:9555"), at(fakeListener("w"), "127.0.0.2:9555")}},
	}
	for i, spec := range bad {
		// A change that alone would replace x.
		for j := range spec.Listeners {
			if spec.Listeners[j].Settings != nil {
				spec.Listeners[j].Settings["port"] = []string{"changed"}
			}
		}
		w.next = spec
		if err := w.sup.Reload("test"); err == nil {
			t.Fatalf("spec %d: reload accepted", i)
		}
		if got := w.server(t, "x"); got != srv {
			t.Fatalf("spec %d: the running server changed", i)
		}
		if _, drained, _ := srv.state(); drained {
			t.Fatalf("spec %d: the running server was drained", i)
		}
	}
	info := w.sup.ReloadInfo()
	if info.Refused != uint64(len(bad)) || info.Applied != 0 || info.LastError == "" || info.LastOutcome != "refused" {
		t.Fatalf("reload info %+v", info)
	}
	var se *Error
	w.next = bad[5]
	if err := w.sup.Reload("test"); !errors.As(err, &se) || se.Listener != "x" || se.Listen {
		t.Fatalf("error %v, want a *Error for x", err)
	}
	if err := Check(bad[1]); !errors.Is(err, ErrSpec) {
		t.Fatalf("Check of a duplicate name: %v", err)
	}
	if err := Check(Spec{Listeners: []Listener{fakeListener("y")}}); err != nil {
		t.Fatalf("Check of a good spec: %v", err)
	}
	if err := Check(bad[6]); !errors.Is(err, ErrSameAddr) || !errors.As(err, &se) || se.Listener != "w" {
		t.Fatalf("Check of two listeners on one port: %v", err)
	}
}

// at is l listening on addr.
func at(l Listener, addr string) Listener {
	l.Addr = addr
	return l
}

// Two listeners share clients when they listen on one port of one host, or
// one of them on a wildcard address; port 0 picks a free port each.
func TestSameAddr(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"127.0.0.1:9000", "127.0.0.1:9000", true},
		{"0.0.0.0:9000", "127.0.0.1:9000", true},
		{"[::]:9000", "10.0.0.1:9000", true},
		{":9000", "[::1]:9000", true},
		{"[::1]:9000", "[0:0:0:0:0:0:0:1]:9000", true},
		{"logs.internal:9000", "logs.internal:9000", true},
		{"Logs.Internal:9000", "logs.internal:9000", true},
		{"localhost:9000", "127.0.0.1:9000", true},
		{"[::1]:9000", "LOCALHOST:9000", true},
		{"localhost:9000", "10.0.0.1:9000", false},
		{"127.0.0.1:9000", "127.0.0.2:9000", false},
		{"127.0.0.1:9000", "127.0.0.1:9001", false},
		{"0.0.0.0:0", "0.0.0.0:0", false},
		{"nonsense", "nonsense", false},
	} {
		if got := SameAddr(tc.a, tc.b); got != tc.same {
			t.Errorf("sameAddr(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// Listeners added, removed and renamed on the same address.
func TestListenersComeAndGo(t *testing.T) {
	la, lb := fakeListener("a"), fakeListener("b")
	lb.Addr = "127.0.0.2:0"
	w := newWorld(t, Spec{Listeners: []Listener{la, lb}})
	a, b := w.server(t, "a"), w.server(t, "b")
	// b renamed to c on its address: c takes b's socket; a is removed; d
	// is new, on an address nobody had.
	c := fakeListener("c")
	c.Addr = lb.Addr
	d := fakeListener("d")
	d.Addr = "127.0.0.3:0"
	w.next = Spec{Listeners: []Listener{c, d}}
	if err := w.sup.Reload("test"); err != nil {
		t.Fatal(err)
	}
	w.sup.draining.Wait()
	if _, drained, _ := a.state(); !drained {
		t.Error("removed listener a not drained")
	}
	if _, drained, handedOff := b.state(); !drained || !handedOff {
		t.Error("renamed listener b did not hand its socket over and drain")
	}
	names := map[string]bool{}
	for _, l := range w.sup.Listeners() {
		names[l.Info().Name] = true
	}
	if len(names) != 2 || !names["c"] || !names["d"] {
		t.Fatalf("listeners %v", names)
	}
	for _, want := range []string{"listener removed; draining", "listener added on the socket of a removed one", "listener added"} {
		if !strings.Contains(w.logs.String(), want) {
			t.Errorf("no %q in the log", want)
		}
	}
}

// A listener a reload removes leaves no goroutine behind once it has
// drained: a process reloaded for months must not keep every server it
// replaced.
func TestRemovedListenerLeavesNothing(t *testing.T) {
	la, lb := fakeListener("a"), fakeListener("b")
	lb.Addr = "127.0.0.2:0"
	w := newWorld(t, Spec{Listeners: []Listener{la, lb}})
	before := goleak.IgnoreCurrent()
	w.next = Spec{Listeners: []Listener{lb}}
	if err := w.sup.Reload("test"); err != nil {
		t.Fatal(err)
	}
	w.sup.draining.Wait()
	goleak.VerifyNone(t, before)
}

// A reload whose changed listener cannot listen (its new address is
// taken) keeps the old one and says so: the outcome is partial, with the
// reason, not applied.
func TestReloadThatCannotListenIsPartial(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	la := fakeListener("a")
	w := newWorld(t, Spec{Listeners: []Listener{la}})
	moved := la
	moved.Addr = taken.Addr().String()
	moved.Settings = maps.Clone(la.Settings)
	moved.Settings["port"] = []string{"b"}
	w.next = Spec{Listeners: []Listener{moved}}
	if err := w.sup.Reload("test"); err == nil || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("Reload = %v, want the listener that cannot listen named; logs:\n%s", err, w.logs.String())
	}
	info := w.sup.ReloadInfo()
	if info.LastOutcome != "partial" || info.Applied != 1 || info.Refused != 0 || !strings.Contains(info.LastError, "address already in use") {
		t.Fatalf("reload info %+v", info)
	}
	if _, drained, _ := w.server(t, "a").state(); drained {
		t.Fatal("the old listener was drained though its replacement could not listen")
	}
}

// A TCP and a UDP listener on one port, both renamed: each new one takes
// the socket of its own network, and neither fails to listen.
func TestTCPAndUDPOnOnePortRenamed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	tcp, udp := fakeListener("a"), fakeListener("b")
	tcp.Addr, udp.Addr, udp.Mode = addr, addr, fakeMode{network: "udp"}
	w := newWorld(t, Spec{Listeners: []Listener{tcp, udp}})
	tcp2, udp2 := tcp, udp
	tcp2.Name, udp2.Name = "a2", "b2"
	w.next = Spec{Listeners: []Listener{udp2, tcp2}} // the UDP one first
	if err := w.sup.Reload("test"); err != nil {
		t.Fatal(err)
	}
	w.sup.draining.Wait()
	if names := w.sup.Addrs(); len(names) != 2 || names["a2"] == nil || names["b2"] == nil {
		t.Fatalf("listeners %v", names)
	}
	if logs := w.logs.String(); strings.Contains(logs, "cannot listen") || strings.Count(logs, "listener added on the socket of a removed one") != 2 {
		t.Errorf("logs:\n%s", logs)
	}
}

// Process-wide settings: the level applies at once; a setting read only at
// start says so.
func TestProcessSettings(t *testing.T) {
	spec := Spec{Listeners: []Listener{fakeListener("x")}, Process: map[string][]string{"admin": {""}, "log-level": {"info"}}}
	w := newWorld(t, spec)
	spec.LogLevel = slog.LevelDebug
	spec.Process = map[string][]string{"admin": {"127.0.0.1:1"}, "log-level": {"debug"}}
	w.next = spec
	if err := w.sup.Reload("test"); err != nil {
		t.Fatal(err)
	}
	if w.lvl.Level() != slog.LevelDebug {
		t.Errorf("level %v", w.lvl.Level())
	}
	logs := w.logs.String()
	if !strings.Contains(logs, "log level changed") || !strings.Contains(logs, "setting=admin") ||
		strings.Contains(logs, "setting=log-level") {
		t.Errorf("logs:\n%s", logs)
	}
}

// Without Load there is nothing to reload; a listener failing on its own is
// reported; an unclean drain makes Shutdown unclean.
func TestFailuresAndShutdown(t *testing.T) {
	sup, err := New(Config{Logger: slog.New(slog.DiscardHandler)}, Spec{Listeners: []Listener{fakeListener("x")}})
	if err != nil {
		t.Fatal(err)
	}
	sup.Start()
	if err := sup.Reload("test"); !errors.Is(err, ErrNoReload) {
		t.Fatalf("reload without Load: %v", err)
	}
	srv := sup.snapshot()[0].srv.(*fakeServer)
	srv.errs <- errors.New("accept: broken")
	select {
	case err := <-sup.Failed():
		if !strings.Contains(err.Error(), `listener "x"`) {
			t.Fatalf("failure %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("failure not reported")
	}
	if lost := sup.Lost(); len(lost) != 2 {
		t.Fatalf("lost %v", lost)
	}
	srv.unclean = true
	if sup.Shutdown() {
		t.Fatal("an unclean drain made a clean shutdown")
	}
	// A socket in use: New fails with a listen error and leaves no socket
	// open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l1, l2 := fakeListener("ok"), fakeListener("taken")
	l2.Addr = ln.Addr().String()
	_, err = New(Config{}, Spec{Listeners: []Listener{l1, l2}})
	var se *Error
	if !errors.As(err, &se) || !se.Listen || se.Listener != "taken" {
		t.Fatalf("New on a taken port: %v", err)
	}
}

// The admin API and the signal handler read the listeners while reloads
// change them in place (run with -race).
func TestReadersDuringLiveReloads(t *testing.T) {
	w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, l := range w.sup.Listeners() {
				_ = l.Info()
				_ = l.Targets()
			}
			_ = w.sup.Lost()
			w.sup.pruneOnce()
		}
	}()
	for i := range 20 {
		next := fakeListener("x")
		next.Settings["target"] = []string{fmt.Sprint(i)}
		w.next = Spec{Listeners: []Listener{next}}
		if err := w.sup.Reload("test"); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
}

// A listener asked for 0.0.0.0 shows 0.0.0.0, not Go's [::], and can still
// be handed to a new process. (It binds the wildcard address for a moment;
// nothing connects.)
func TestWildcardShownAsConfigured(t *testing.T) {
	for _, network := range []string{"tcp", "udp"} {
		ln, err := listen(network, "0.0.0.0:0", 0)
		if err != nil {
			t.Fatal(err)
		}
		shown := asConfigured(ln, "0.0.0.0:0")
		defer shown.Close()
		if got := shown.Addr().String(); !strings.HasPrefix(got, "0.0.0.0:") || strings.HasSuffix(got, ":0") {
			t.Fatalf("%s shown as %s", network, got)
		}
		if _, ok := shown.(syscall.Conn); !ok {
			t.Fatalf("the shown %s listener lost its file descriptor", network)
		}
	}
	lo, err := listen("tcp", "127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	if asConfigured(lo, "127.0.0.1:0") != lo {
		t.Fatal("a loopback listener was wrapped")
	}
}

// The state file keeps operators' drains and disables and failed health
// verdicts, and gives them back to the targets still configured; a corrupt
// file is logged and ignored.
func TestStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	set := w.server(t, "x").set
	set.Update([]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"})
	tg := func(s *upstream.Set, addr string) *upstream.Target { x, _ := s.Lookup(addr); return x }
	tg(set, "127.0.0.1:1").Disable()
	tg(set, "127.0.0.1:2").Drain()
	tg(set, "127.0.0.1:3").SetChecked(upstream.CheckResult{At: time.Now(), Err: errors.New("refused")}, false, true)
	w.sup.cfg.StateFile = path
	w.sup.saveState()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil || len(st.Listeners["x"]) != 3 ||
		st.Listeners["x"]["127.0.0.1:1"].Admin != "disabled" || st.Listeners["x"]["127.0.0.1:2"].Admin != "draining" ||
		!st.Listeners["x"]["127.0.0.1:3"].FailsChecks {
		t.Fatalf("state file %s: %v", b, err)
	}
	// A new process: the same targets but one, and a listener gone.
	os.WriteFile(path, []byte(strings.Replace(string(b), `"listeners": {`, `"listeners": {"gone": {"127.0.0.1:9": {"admin": "disabled"}},`, 1)), 0o600)
	w2 := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	set2 := w2.server(t, "x").set
	set2.Update([]string{"127.0.0.1:2", "127.0.0.1:4", "127.0.0.1:5"})
	w2.sup.cfg.StateFile = path
	w2.sup.restoreState()
	if s := tg(set2, "127.0.0.1:2").State(); s != upstream.StateDraining {
		t.Errorf("the drained target came back %s", s)
	}
	if s := tg(set2, "127.0.0.1:4").State(); s != upstream.StateUp {
		t.Errorf("an untouched target came back %s", s)
	}
	// A target DNS finds later gets its state then; until then the file
	// keeps it.
	w2.sup.saveState()
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), `"127.0.0.1:1"`) || strings.Contains(string(b), `"gone"`) {
		t.Errorf("the state file after the restart: %s", b)
	}
	set2.Update([]string{"127.0.0.1:2", "127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:1"})
	w2.sup.saveState()
	if s := tg(set2, "127.0.0.1:1").State(); s != upstream.StateDisabled {
		t.Errorf("a target found later came back %s", s)
	}
	// A corrupt file: logged, and every target as configured.
	os.WriteFile(path, []byte("{not json"), 0o600)
	w3 := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	w3.server(t, "x").set.Update([]string{"127.0.0.1:2"})
	w3.sup.cfg.StateFile = path
	w3.sup.restoreState()
	if s := tg(w3.server(t, "x").set, "127.0.0.1:2").State(); s != upstream.StateUp || !strings.Contains(w3.logs.String(), "state file cannot be used") {
		t.Errorf("after a corrupt state file: %s; logs %s", s, w3.logs.String())
	}
	if b, err := os.ReadFile(path + ".corrupt"); err != nil || string(b) != "{not json" {
		t.Errorf("the corrupt file was not kept aside: %q %v", b, err)
	}
	// A replacing listener keeps the state of the one it replaces.
	from := upstream.NewSet([]string{"127.0.0.1:1", "127.0.0.1:2"})
	to := upstream.NewSet([]string{"127.0.0.1:1", "127.0.0.1:2"})
	tg(from, "127.0.0.1:1").Drain()
	tg(from, "127.0.0.1:2").SetChecked(upstream.CheckResult{At: time.Now(), Err: errors.New("refused")}, false, true)
	carryState(from, to, true)
	if tg(to, "127.0.0.1:1").State() != upstream.StateDraining || !tg(to, "127.0.0.1:2").FailsChecks() {
		t.Error("the replacement lost the drain or the verdict")
	}
	// Without checks in the replacement, no verdict holds: nothing would
	// ever bring the target back.
	unchecked := upstream.NewSet([]string{"127.0.0.1:1", "127.0.0.1:2"})
	carryState(from, unchecked, false)
	if tg(unchecked, "127.0.0.1:1").State() != upstream.StateDraining || tg(unchecked, "127.0.0.1:2").FailsChecks() {
		t.Error("a replacement without checks: the drain lost, or the verdict kept")
	}
}

// A state path that cannot be read (a FIFO, which must not block the
// start, or a directory) is left as it is, logged, and not written this
// run; a file too large to be a state file is read no further than the
// bound and kept aside as corrupt.
func TestStateFileThatCannotBeRead(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, sub} {
		w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
		set := w.server(t, "x").set
		set.Update([]string{"127.0.0.1:1"})
		w.sup.cfg.StateFile = path
		done := make(chan struct{})
		go func() { w.sup.restoreState(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: restoring the state blocks", path)
		}
		if !strings.Contains(w.logs.String(), "state file cannot be read") {
			t.Errorf("%s: logs %s", path, w.logs.String())
		}
		x, _ := set.Lookup("127.0.0.1:1")
		x.Drain()
		w.sup.saveState()
		if !strings.Contains(w.logs.String(), "state file not written") {
			t.Errorf("%s: a drain not kept, silently: %s", path, w.logs.String())
		}
		st, err := os.Lstat(path)
		if err != nil || st.Mode().IsRegular() {
			t.Errorf("%s: replaced: %v, %v", path, st, err)
		}
		if _, err := os.Lstat(path + ".corrupt"); err == nil {
			t.Errorf("%s was moved aside", path)
		}
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, []byte(`{"version": 1, "listeners": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, maxStateBytes+10); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, Spec{Listeners: []Listener{fakeListener("x")}})
	w.sup.cfg.StateFile = big
	w.sup.restoreState()
	if !strings.Contains(w.logs.String(), "is this the state file?") {
		t.Errorf("logs %s", w.logs.String())
	}
	if _, err := os.Stat(big + ".corrupt"); err != nil {
		t.Errorf("the oversize file was not kept aside: %v", err)
	}
}

// The settings that keep a reload from handing clients over are settings.
func TestConnectionShapeNamesSettings(t *testing.T) {
	for _, name := range connectionShape {
		if _, ok := settings.Lookup(name); !ok {
			t.Errorf("%q is not a setting", name)
		}
	}
}
