package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
	"github.com/ndlb/ndlb/upstream"
)

// server is what runBalancer needs of either mode.
type server struct {
	start    func(net.Listener)
	err      func() <-chan error
	shutdown func() (clean bool)
	// lost describes, for the log, what a second signal abandons.
	lost func() []any
	// keepAlive is the client sockets' TCP keepalive (negative: off).
	keepAlive time.Duration
	// admin is what the admin API shows of the server, once it listens.
	admin func(name, addr string) admin.Listener
	// checks, if not nil, runs the active health checks.
	checks *health.Checker
	// discovery, if not nil, keeps the targets in step with DNS.
	discovery *discovery.Discoverer
}

// adminListener adapts a server to admin.Listener.
type adminListener struct {
	info func() admin.ListenerInfo
	set  *upstream.Set
}

func (a adminListener) Info() admin.ListenerInfo { return a.info() }
func (a adminListener) Targets() *upstream.Set   { return a.set }

// newServer builds the server of the mode the flags choose.
func newServer(c *cli.Context, log *slog.Logger) (*server, error) {
	if err := checkMode(c); err != nil {
		return nil, err
	}
	if c.Bool("passthrough") {
		cfg, err := passthroughConfig(c, log)
		if err != nil {
			return nil, err
		}
		dcfg, discover, err := discoveryConfig(c, log, cfg.Targets)
		if err != nil {
			return nil, err
		}
		cfg.Discovered = discover
		srv, err := passthrough.New(cfg)
		if err != nil {
			return nil, usageError("%v", err)
		}
		checks, err := newChecker(c, log, cfg.TLS, srv.Set())
		if err != nil {
			return nil, err
		}
		disc, err := newDiscoverer(dcfg, discover, srv.Set())
		if err != nil {
			return nil, err
		}
		return &server{
			checks: checks, discovery: disc,
			start: srv.Start, err: srv.Err,
			shutdown: func() bool { srv.Shutdown(); return true },
			lost:     func() []any { return []any{"open_connections", srv.Stats().Listener.Active} },
			// Off, as in HAProxy and nginx: --idle-timeout ends
			// connections of vanished clients.
			keepAlive: -1,
			admin: func(name, addr string) admin.Listener {
				return adminListener{set: srv.Set(), info: func() admin.ListenerInfo {
					st := srv.Stats().Listener
					return admin.ListenerInfo{Name: name, Addr: addr, Mode: "passthrough", Balance: cfg.Balance,
						TLS: cfg.Listener.TLS != nil, Active: st.Active, Accepted: st.Accepted}
				}}
			},
		}, nil
	}
	cfg, err := ndjsonConfig(c, log)
	if err != nil {
		return nil, err
	}
	dcfg, discover, err := discoveryConfig(c, log, cfg.Targets)
	if err != nil {
		return nil, err
	}
	cfg.Discovered = discover
	srv, err := ndjson.New(cfg)
	if err != nil {
		return nil, usageError("%v", err)
	}
	checks, err := newChecker(c, log, cfg.Pool.TLS, srv.Set())
	if err != nil {
		return nil, err
	}
	disc, err := newDiscoverer(dcfg, discover, srv.Set())
	if err != nil {
		return nil, err
	}
	return &server{
		checks: checks, discovery: disc,
		start: srv.Start, err: srv.Err,
		shutdown: func() bool { return srv.Shutdown().Clean },
		lost: func() []any {
			q := srv.Stats().Queue
			return []any{"undelivered_lines", q.LinesIn - q.LinesOut}
		},
		admin: func(name, addr string) admin.Listener {
			return adminListener{set: srv.Set(), info: func() admin.ListenerInfo {
				st := srv.Stats().Listener
				return admin.ListenerInfo{Name: name, Addr: addr, Mode: "ndjson",
					TLS: cfg.Listener.TLS != nil, Active: st.Active, Accepted: st.Accepted}
			}}
		},
	}, nil
}

// runBalancer is the default action: balance until SIGTERM or SIGINT.
func runBalancer(c *cli.Context) error {
	if c.Args().Present() {
		return usageError("unexpected argument %q (flags start with - or --; see ndlb --help)", c.Args().First())
	}
	g, insts, err := loadSetup(c)
	if err != nil {
		return err
	}
	log, err := newLogger(g)
	if err != nil {
		return err
	}
	for _, in := range insts {
		if in.srv, err = newServer(in.c, in.logger(log)); err != nil {
			return in.wrap(err)
		}
	}
	// Signals are caught before the listeners open, so one that arrives as
	// soon as a port answers is never the default "die at once".
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	for i, in := range insts {
		if err := in.listen(); err != nil {
			for _, prev := range insts[:i] {
				prev.ln.Close()
			}
			return err
		}
	}
	adm, err := newAdmin(g, log, func() []admin.Listener {
		out := make([]admin.Listener, len(insts))
		for i, in := range insts {
			out[i] = in.shown
		}
		return out
	})
	if err != nil {
		for _, in := range insts {
			in.ln.Close()
		}
		return err
	}
	for _, in := range insts {
		in.start()
	}
	if adm != nil {
		adm.Start()
	}
	failed := make(chan error, len(insts))
	for _, in := range insts {
		go func() { failed <- <-in.srv.err() }()
	}
	select {
	case sig := <-sigs:
		log.Info("signal received; shutting down (a second signal exits at once)", "signal", sig.String())
	case err := <-failed:
		log.Error("listener failed", "err", err)
		shutdownAll(insts)
		return cli.Exit("", exitError)
	}
	if adm != nil {
		adm.Stopping()
		defer adm.Shutdown(context.Background())
	}
	go func() {
		sig := <-sigs
		var lost []any
		for _, in := range insts {
			lost = append(lost, in.srv.lost()...)
		}
		log.Error("second signal: exiting without finishing the shutdown", append([]any{"signal", sig.String()}, lost...)...)
		os.Exit(exitError)
	}()
	if !shutdownAll(insts) {
		return cli.Exit("", exitError)
	}
	return nil
}

// shutdownAll shuts every instance down at once and reports whether all
// were clean.
func shutdownAll(insts []*instance) bool {
	clean := make(chan bool, len(insts))
	for _, in := range insts {
		go func() { clean <- in.shutdown() }()
	}
	ok := true
	for range insts {
		ok = <-clean && ok
	}
	return ok
}

// instance is one listener: its flags, server, listener, and the checks and
// DNS discovery that run beside it.
type instance struct {
	name  string
	file  *config.File   // nil: flags only
	sec   config.Section // its table in file
	c     *cli.Context   // its flags
	srv   *server
	ln    net.Listener
	shown admin.Listener // what the admin API shows
	stop  []func()       // stops checks and discovery
}

// logger is log for this instance's server.
func (in *instance) logger(log *slog.Logger) *slog.Logger {
	if in.file == nil {
		return log
	}
	return log.With("listener", in.name)
}

// wrap places a usage error of a listener from the file at its line.
func (in *instance) wrap(err error) error {
	if in.file == nil {
		return err
	}
	var ec cli.ExitCoder
	if !errors.As(err, &ec) || ec.ExitCode() != exitUsage {
		return err
	}
	line := in.sec.Line
	if m := flagName.FindStringSubmatch(err.Error()); m != nil {
		line = in.sec.LineOf(m[1])
	}
	return usageError("%s", (&config.Error{Path: in.file.Path, Line: line, Msg: fmt.Sprintf("listener %q: %v", in.name, err)}).Error())
}

var flagName = regexp.MustCompile(`--([a-z][a-z-]*)`)

// listen opens the instance's port.
func (in *instance) listen() error {
	addr, err := listenAddr(in.c)
	if err != nil {
		return in.wrap(err)
	}
	lc := net.ListenConfig{KeepAlive: in.srv.keepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return cli.Exit(fmt.Sprintf("listen on %s: %v", addr, err), exitError)
	}
	in.ln = ln
	in.shown = in.srv.admin(in.name, ln.Addr().String())
	return nil
}

// start resolves DNS targets once, then serves, checks and resolves in the
// background.
func (in *instance) start() {
	if d := in.srv.discovery; d != nil {
		ctx, cancel := context.WithCancel(context.Background())
		d.Refresh(ctx)
		in.stop = append(in.stop, background(cancel, d.Run, ctx))
	}
	in.srv.start(in.ln)
	if ch := in.srv.checks; ch != nil {
		ctx, cancel := context.WithCancel(context.Background())
		in.stop = append(in.stop, background(cancel, ch.Run, ctx))
	}
}

// background runs run(ctx) and returns a function that stops it and waits.
func background(cancel context.CancelFunc, run func(context.Context), ctx context.Context) func() {
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	return func() { cancel(); <-done }
}

// shutdown drains the server, then stops checks and discovery.
func (in *instance) shutdown() bool {
	clean := in.srv.shutdown()
	for _, stop := range in.stop {
		stop()
	}
	return clean
}

// newDiscoverer returns the DNS discoverer of set, if discover.
func newDiscoverer(cfg discovery.Config, discover bool, set *upstream.Set) (*discovery.Discoverer, error) {
	if !discover {
		return nil, nil
	}
	d, err := discovery.New(cfg, set)
	if err != nil {
		return nil, usageError("%v", err)
	}
	return d, nil
}

// newChecker returns the health checker the --check flags ask for, or nil.
func newChecker(c *cli.Context, log *slog.Logger, targetTLS func() (*tls.Config, error), set *upstream.Set) (*health.Checker, error) {
	cfg, ok, err := checkConfig(c, log, targetTLS)
	if err != nil || !ok {
		return nil, err
	}
	checks, err := health.New(cfg, set)
	if err != nil {
		return nil, usageError("%v", err)
	}
	return checks, nil
}

// listenerName names the one listener the flags configure.
const listenerName = "default"

// newAdmin makes the admin API server if --admin is set: it listens, and a
// bad address or token file is reported before any traffic.
func newAdmin(c *cli.Context, log *slog.Logger, listeners func() []admin.Listener) (*admin.Server, error) {
	addr := c.String("admin")
	if addr == "" {
		if c.String("admin-token-file") != "" {
			return nil, usageError("--admin-token-file needs --admin")
		}
		return nil, nil
	}
	adm, err := admin.New(admin.Config{
		Addr: addr, TokenFile: c.String("admin-token-file"), Logger: log, Listeners: listeners,
	})
	if err != nil {
		return nil, usageError("invalid --admin or --admin-token-file: %v", err)
	}
	return adm, nil
}

// runHealthcheck exits 0 when ndlb's admin API answers /healthz (with
// --admin), or else when ndlb accepts a TCP connection on its port.
func runHealthcheck(c *cli.Context) error {
	if a := c.String("admin"); a != "" {
		return healthz(c, a)
	}
	port := c.Int("port")
	if port < 1 || port > 65535 {
		return usageError("invalid value %d for --port: want 1..65535", port)
	}
	host := c.String("addr")
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return cli.Exit(fmt.Sprintf("unhealthy: %v", err), exitError)
	}
	conn.Close()
	fmt.Fprintln(c.App.Writer, "ok:", addr, "accepts connections")
	return nil
}

// healthz asks the admin API at addr for /healthz.
func healthz(c *cli.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return usageError("invalid value %q for --admin: want HOST:PORT", addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/healthz"
	client := http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return cli.Exit(fmt.Sprintf("unhealthy: %v", err), exitError)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cli.Exit(fmt.Sprintf("unhealthy: %s answered %s", url, resp.Status), exitError)
	}
	fmt.Fprintln(c.App.Writer, "ok:", url)
	return nil
}
