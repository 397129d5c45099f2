package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/dispatch"
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
	// set is the server's targets; targetTLS its client TLS, if any.
	set       *upstream.Set
	targetTLS func() (*tls.Config, error)
	// setBalance switches the policy (passthrough only; nil otherwise).
	setBalance func(string) error
	// handover stops accepting and returns the open listening socket for
	// a replacement (nil if it cannot).
	handover func() net.Listener
}

// adminListener adapts a server to admin.Listener.
type adminListener struct {
	info func() admin.ListenerInfo
	set  *upstream.Set
}

func (a adminListener) Info() admin.ListenerInfo { return a.info() }
func (a adminListener) Targets() *upstream.Set   { return a.set }

// newServer builds the server of the mode the flags choose; name labels its
// metrics.
func newServer(c *cli.Context, log *slog.Logger, name string, book *dispatch.Book) (*server, error) {
	if err := checkMode(c); err != nil {
		return nil, err
	}
	if c.Bool("passthrough") {
		cfg, err := passthroughConfig(c, log)
		if err != nil {
			return nil, err
		}
		cfg.Name = name
		srv, err := passthrough.New(cfg)
		if err != nil {
			return nil, usageError("%v", err)
		}
		checks, disc, err := sidecars(c, log, cfg.TLS, srv.Set(), cfg.Targets)
		if err != nil {
			return nil, err
		}
		return &server{
			checks: checks, discovery: disc, set: srv.Set(), targetTLS: cfg.TLS, setBalance: srv.SetBalance,
			start: srv.Start, err: srv.Err, handover: srv.Handover,
			shutdown: func() bool { srv.Shutdown(); return true },
			lost:     func() []any { return []any{"open_connections", srv.Stats().Listener.Active} },
			// Off, as in HAProxy and nginx: --idle-timeout ends
			// connections of vanished clients.
			keepAlive: -1,
			admin: func(name, addr string) admin.Listener {
				return adminListener{set: srv.Set(), info: func() admin.ListenerInfo {
					st := srv.Stats().Listener
					return admin.ListenerInfo{Name: name, Addr: addr, Mode: "passthrough", Balance: srv.Balance(),
						TLS: cfg.Listener.TLS != nil, Active: st.Active, Accepted: st.Accepted}
				}}
			},
		}, nil
	}
	cfg, err := ndjsonConfig(c, log)
	if err != nil {
		return nil, err
	}
	cfg.Name, cfg.Book = name, book
	srv, err := ndjson.New(cfg)
	if err != nil {
		return nil, usageError("%v", err)
	}
	checks, disc, err := sidecars(c, log, cfg.Pool.TLS, srv.Set(), cfg.Targets)
	if err != nil {
		return nil, err
	}
	return &server{
		checks: checks, discovery: disc, set: srv.Set(), targetTLS: cfg.Pool.TLS,
		start: srv.Start, err: srv.Err, handover: srv.Handover,
		shutdown: func() bool { return srv.Shutdown().Clean },
		lost: func() []any {
			q := srv.Stats().Queue
			return []any{"undelivered_lines", q.LinesIn - q.LinesOut}
		},
		admin: func(name, addr string) admin.Listener {
			return adminListener{set: srv.Set(), info: func() admin.ListenerInfo {
				st := srv.Stats().Listener
				l := book.Stats(name)
				return admin.ListenerInfo{Name: name, Addr: addr, Mode: "ndjson",
					TLS: cfg.Listener.TLS != nil, Active: st.Active, Accepted: st.Accepted,
					Ledger: &admin.LedgerInfo{Received: l.Received, Delivered: l.Delivered, InFlight: l.InFlight, Dropped: l.Dropped}}
			}}
		},
	}, nil
}

// sidecars makes what runs beside a server: its health checker and DNS
// discoverer, which merges static with what DNS gives (each nil when not
// configured).
func sidecars(c *cli.Context, log *slog.Logger, targetTLS func() (*tls.Config, error), set *upstream.Set,
	static []string) (*health.Checker, *discovery.Discoverer, error) {
	dcfg, discover, err := discoveryConfig(c, log, static)
	if err != nil {
		return nil, nil, err
	}
	checks, err := newChecker(c, log, targetTLS, set)
	if err != nil {
		return nil, nil, err
	}
	disc, err := newDiscoverer(dcfg, discover, set)
	return checks, disc, err
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
func newAdmin(c *cli.Context, log *slog.Logger, listeners func() []admin.Listener, reloads func() admin.ReloadInfo, metrics http.Handler) (*admin.Server, error) {
	addr := c.String("admin")
	if addr == "" {
		if c.String("admin-token-file") != "" {
			return nil, usageError("--admin-token-file needs --admin")
		}
		return nil, nil
	}
	adm, err := admin.New(admin.Config{
		Addr: addr, TokenFile: c.String("admin-token-file"), Logger: log, Listeners: listeners, Reloads: reloads, Metrics: metrics,
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
