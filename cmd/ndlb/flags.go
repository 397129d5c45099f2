package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/balance"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
	"github.com/ndlb/ndlb/pool"
	"github.com/ndlb/ndlb/telemetry"
	"github.com/ndlb/ndlb/tlsutil"
	"github.com/ndlb/ndlb/upstream"
)

func env(name string) []string {
	return []string{"NDLB_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

// Flag categories, as --help groups them.
const (
	catListen      = "Listener (both modes)"
	catTargets     = "Targets (both modes)"
	catTLS         = "TLS (both modes)"
	catNDJSON      = "NDJSON mode (the default)"
	catPassthrough = "Passthrough mode (--passthrough)"
	catLog         = "Logging"
	catAdmin       = "Admin API"
	catCheck       = "Health checks (both modes)"
)

// ndjsonOnly and passthroughOnly are the flags that mean nothing in the
// other mode; setting one there is a usage error rather than a silent no-op.
var (
	ndjsonOnly      = []string{"connections", "max-line-bytes", "buffer-bytes", "client-buffer-bytes", "line-timeout", "read-bytes", "failback", "write-timeout", "tcp-user-timeout", "deliver-timeout"}
	passthroughOnly = []string{"balance", "hash-key", "connect-retries", "max-fails", "fail-timeout", "idle-timeout", "send-proxy"}
)

// flags is the command-line contract of DESIGN.md. Every flag reads an
// NDLB_* environment variable; single- and double-dash spellings both work.
func flags() []cli.Flag {
	d := pool.DefaultConfig()
	p := passthrough.DefaultConfig()
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Category: catListen, Usage: "TOML file of settings: flag names as keys, one [[listener]] table per listener (flags override it); reloaded on SIGHUP and when it changes", EnvVars: env("config")},
		&cli.StringFlag{Name: "addr", Category: catListen, Value: "0.0.0.0", Usage: "address to listen on", EnvVars: env("addr")},
		&cli.IntFlag{Name: "port", Category: catListen, Value: 9000, Usage: "port to listen on (0 picks a free port, shown in the 'listening' log line)", EnvVars: env("port")},
		&cli.IntFlag{Name: "max-conns", Category: catListen, Value: 0, Usage: "most client connections served at once; beyond it new clients wait in the accept backlog (0: in NDJSON mode 90% of the open-file limit less 1024, at most 100000; in passthrough no limit)", EnvVars: env("max-conns")},
		&cli.BoolFlag{Name: "accept-proxy", Category: catListen, Usage: "require a PROXY protocol header (v1 or v2) from a front load balancer on every connection; its client address is used and logged", EnvVars: env("accept-proxy")},
		&cli.DurationFlag{Name: "proxy-header-timeout", Category: catListen, Value: listener.DefaultProxyHeaderTimeout, Usage: "with --accept-proxy, how long a connection may take to send its header", EnvVars: env("proxy-header-timeout")},
		&cli.DurationFlag{Name: "drain-timeout", Category: catListen, Value: ndjson.DefaultDrainTimeout, Usage: "on SIGTERM, how long clients may keep their connections before they are closed", EnvVars: env("drain-timeout")},
		&cli.BoolFlag{Name: "passthrough", Category: catListen, Usage: "L4 mode: proxy each client connection whole to one target, bytes unchanged", EnvVars: env("passthrough")},

		&cli.StringSliceFlag{Name: "target", Category: catTargets, Usage: "target HOST:PORT, or HOST:PORT=WEIGHT (1..256, default 1); comma-separated and/or repeated (required)", EnvVars: env("target")},
		&cli.StringSliceFlag{Name: "target-dns", Category: catTargets, Usage: "targets from DNS: NAME:PORT, re-resolved (A and AAAA) every --dns-interval; comma-separated and/or repeated", EnvVars: env("target-dns")},
		&cli.StringSliceFlag{Name: "target-srv", Category: catTargets, Usage: "targets from DNS SRV records: _service._proto.name (lowest priority value first); comma-separated and/or repeated", EnvVars: env("target-srv")},
		&cli.DurationFlag{Name: "dns-interval", Category: catTargets, Value: discovery.DefaultInterval, Usage: "how often --target-dns and --target-srv names are resolved again", EnvVars: env("dns-interval")},
		&cli.StringFlag{Name: "dns-resolver", Category: catTargets, Usage: "DNS server HOST:PORT for discovery (default: the system's)", EnvVars: env("dns-resolver")},
		&cli.DurationFlag{Name: "connect-timeout", Category: catTargets, Value: d.ConnectTimeout, Usage: "timeout of one target dial, TLS handshake included", EnvVars: env("connect-timeout")},
		&cli.DurationFlag{Name: "backoff-max", Category: catTargets, Value: d.BackoffMax, DefaultText: d.BackoffMax.String() + "; " + p.BackoffMax.String() + " with --passthrough", Usage: "longest wait between dial rounds when targets are down", EnvVars: env("backoff-max")},

		&cli.StringFlag{Name: "tls-cert", Category: catTLS, Usage: "listen with TLS: certificate file (PEM)", EnvVars: env("tls-cert")},
		&cli.StringFlag{Name: "tls-key", Category: catTLS, Usage: "listen with TLS: key file (PEM)", EnvVars: env("tls-key")},
		&cli.StringFlag{Name: "tls-client-ca", Category: catTLS, Usage: "require client certificates signed by this CA file (PEM)", EnvVars: env("tls-client-ca")},
		&cli.BoolFlag{Name: "tls-target", Category: catTLS, Usage: "connect to targets with TLS", EnvVars: env("tls-target")},
		&cli.StringFlag{Name: "tls-target-ca", Category: catTLS, Usage: "CA file to verify targets with (default: system roots)", EnvVars: env("tls-target-ca")},
		&cli.StringFlag{Name: "tls-target-server-name", Category: catTLS, Usage: "name to verify in target certificates (default: the target's host)", EnvVars: env("tls-target-server-name")},
		&cli.BoolFlag{Name: "tls-target-skip-verify", Category: catTLS, Usage: "accept any target certificate (insecure; for testing)", EnvVars: env("tls-target-skip-verify")},
		&cli.StringFlag{Name: "tls-target-cert", Category: catTLS, Usage: "client certificate file for targets that require one (mTLS)", EnvVars: env("tls-target-cert")},
		&cli.StringFlag{Name: "tls-target-key", Category: catTLS, Usage: "key file of --tls-target-cert", EnvVars: env("tls-target-key")},

		&cli.IntFlag{Name: "connections", Category: catNDJSON, Value: d.Connections, Usage: "worker connections per target", EnvVars: env("connections")},
		&cli.StringFlag{Name: "max-line-bytes", Category: catNDJSON, Value: "1MiB", Usage: "longest line forwarded; longer lines are dropped whole, counted and logged", EnvVars: env("max-line-bytes")},
		&cli.StringFlag{Name: "buffer-bytes", Category: catNDJSON, Value: "64MiB", Usage: "memory for lines read and not yet acknowledged; when full, clients are slowed (TCP backpressure)", EnvVars: env("buffer-bytes")},
		&cli.StringFlag{Name: "client-buffer-bytes", Category: catNDJSON, Value: "64MiB", Usage: "memory all clients together may hold before their lines are queued (read buffers, partial lines, TLS); when spent, clients wait and lines longer than one read are dropped after 1s", EnvVars: env("client-buffer-bytes")},
		&cli.DurationFlag{Name: "line-timeout", Category: catNDJSON, Value: ndjson.DefaultLineTimeout, Usage: "a client holding a partial line without sending for this long is closed and the fragment counted (0: no limit)", EnvVars: env("line-timeout")},
		&cli.StringFlag{Name: "read-bytes", Category: catNDJSON, Value: "16KiB", Usage: "size of each read from a client", EnvVars: env("read-bytes")},
		&cli.DurationFlag{Name: "failback", Category: catNDJSON, Value: d.Failback, Usage: "how often a worker that failed over tries its home target again (0: never)", EnvVars: env("failback")},
		&cli.DurationFlag{Name: "write-timeout", Category: catNDJSON, Value: d.WriteTimeout, Usage: "a target that accepts no data for this long is failed over", EnvVars: env("write-timeout")},
		&cli.DurationFlag{Name: "tcp-user-timeout", Category: catNDJSON, Value: d.UserTimeout, Usage: "TCP_USER_TIMEOUT: unacknowledged data this old fails a target connection (0: system default)", EnvVars: env("tcp-user-timeout")},
		&cli.DurationFlag{Name: "deliver-timeout", Category: catNDJSON, Value: ndjson.DefaultDeliverTimeout, Usage: "after the drain, how long ndlb keeps delivering before it drops (and counts) what is left", EnvVars: env("deliver-timeout")},

		&cli.StringFlag{Name: "balance", Category: catPassthrough, Value: p.Balance, Usage: "how a connection's target is chosen: " + strings.Join(balance.Names, ", "), EnvVars: env("balance")},
		&cli.StringFlag{Name: "hash-key", Category: catPassthrough, Value: string(p.HashKey), Usage: "what --balance hash hashes: ip (a client sticks to its target) or ip-port", EnvVars: env("hash-key")},
		&cli.IntFlag{Name: "connect-retries", Category: catPassthrough, Value: p.ConnectRetries, Usage: "when every target failed, how many more rounds are tried (with backoff) before the client is closed", EnvVars: env("connect-retries")},
		&cli.IntFlag{Name: "max-fails", Category: catPassthrough, Value: p.MaxFails, Usage: "a target whose last N attempts failed is skipped for --fail-timeout, unless all are (0: never skip)", EnvVars: env("max-fails")},
		&cli.DurationFlag{Name: "fail-timeout", Category: catPassthrough, Value: p.FailTimeout, Usage: "how long a failing target is skipped", EnvVars: env("fail-timeout")},
		&cli.DurationFlag{Name: "idle-timeout", Category: catPassthrough, Value: p.IdleTimeout, Usage: "close a connection with no traffic either way for this long (0: never)", EnvVars: env("idle-timeout")},
		&cli.StringFlag{Name: "send-proxy", Category: catPassthrough, Usage: "send a PROXY protocol header (v1 or v2) with the client's address to each target", EnvVars: env("send-proxy")},

		&cli.StringFlag{Name: "check", Category: catCheck, Usage: "active health checks of the targets: tcp (connect) or http (off by default)", EnvVars: env("check")},
		&cli.DurationFlag{Name: "check-interval", Category: catCheck, Value: health.DefaultInterval, Usage: "time between checks of a target", EnvVars: env("check-interval")},
		&cli.DurationFlag{Name: "check-timeout", Category: catCheck, Value: health.DefaultTimeout, Usage: "timeout of one check", EnvVars: env("check-timeout")},
		&cli.IntFlag{Name: "check-rise", Category: catCheck, Value: health.DefaultRise, Usage: "passing checks in a row that bring a down target up", EnvVars: env("check-rise")},
		&cli.IntFlag{Name: "check-fall", Category: catCheck, Value: health.DefaultFall, Usage: "failing checks in a row that take a target down", EnvVars: env("check-fall")},
		&cli.StringFlag{Name: "check-http-method", Category: catCheck, Value: "GET", Usage: "method of http checks", EnvVars: env("check-http-method")},
		&cli.StringFlag{Name: "check-http-path", Category: catCheck, Value: "/", Usage: "path of http checks", EnvVars: env("check-http-path")},
		&cli.IntFlag{Name: "check-http-status", Category: catCheck, Value: 200, Usage: "status an http check expects", EnvVars: env("check-http-status")},
		&cli.StringFlag{Name: "check-http-body", Category: catCheck, Usage: "text the answer to an http check must contain", EnvVars: env("check-http-body")},
		&cli.BoolFlag{Name: "check-tls", Category: catCheck, Usage: "make http checks over TLS: with the --tls-target settings when set, else without verifying the certificate", EnvVars: env("check-tls")},

		&cli.StringFlag{Name: "admin", Category: catAdmin, Usage: "serve the admin HTTP API (health, readiness, targets, drain) on HOST:PORT; bind it to loopback (off by default)", EnvVars: env("admin")},
		&cli.StringFlag{Name: "admin-token-file", Category: catAdmin, Usage: "file holding a bearer token that the admin API's POST routes require", EnvVars: env("admin-token-file")},

		&cli.StringFlag{Name: "log-format", Category: catLog, Value: "text", Usage: "log format: text or json", EnvVars: env("log-format")},
		&cli.StringFlag{Name: "log-level", Category: catLog, Value: "info", Usage: "log level: debug, info, warn or error (passthrough logs each connection at info)", EnvVars: env("log-level")},
	}
}

// healthcheckFlags are the healthcheck command's own: where to find ndlb,
// from the same environment variables the balancer reads.
func healthcheckFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "addr", Value: "0.0.0.0", Usage: "ndlb's listen address (0.0.0.0 means 127.0.0.1)", EnvVars: env("addr")},
		&cli.IntFlag{Name: "port", Value: 9000, Usage: "ndlb's listen port", EnvVars: env("port")},
		&cli.StringFlag{Name: "admin", Usage: "ndlb's admin API HOST:PORT: ask its /healthz instead", EnvVars: env("admin")},
	}
}

// checkMode rejects flags set for the other mode.
func checkMode(c *cli.Context) error {
	pass := c.Bool("passthrough")
	wrong, mode := ndjsonOnly, "--passthrough"
	if !pass {
		wrong, mode = passthroughOnly, "NDJSON mode (add --passthrough)"
	}
	for _, n := range wrong {
		if c.IsSet(n) {
			return usageError("--%s has no effect in %s", n, mode)
		}
	}
	return nil
}

// listenerConfig maps the flags both modes share onto the listener's config.
func listenerConfig(c *cli.Context) (listener.Config, error) {
	lc := listener.Config{AcceptProxy: c.Bool("accept-proxy"), ProxyHeaderTimeout: c.Duration("proxy-header-timeout"), MaxConns: c.Int("max-conns")}
	if lc.MaxConns < 0 {
		return lc, usageError("invalid value %d for --max-conns: must not be negative (0: no limit)", lc.MaxConns)
	}
	if err := positive(c, "proxy-header-timeout"); err != nil {
		return lc, err
	}
	if c.IsSet("proxy-header-timeout") && !lc.AcceptProxy {
		return lc, usageError("--proxy-header-timeout needs --accept-proxy")
	}
	return lc, nil
}

// newLogger builds the logger from --log-format and --log-level. The level
// can be changed later through the returned LevelVar.
func newLogger(c *cli.Context) (*slog.Logger, *slog.LevelVar, error) {
	var level slog.LevelVar
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, nil, usageError("invalid value %q for --log-level: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: &level}
	switch c.String("log-format") {
	case "text":
		return slog.New(telemetry.LogHandler(slog.NewTextHandler(c.App.ErrWriter, opts))), &level, nil
	case "json":
		return slog.New(telemetry.LogHandler(slog.NewJSONHandler(c.App.ErrWriter, opts))), &level, nil
	}
	return nil, nil, usageError("invalid value %q for --log-format: want text or json", c.String("log-format"))
}

// listenAddr validates --addr and --port.
func listenAddr(c *cli.Context) (string, error) {
	port := c.Int("port")
	if port < 0 || port > 65535 {
		return "", usageError("invalid value %d for --port: want 0..65535", port)
	}
	addr := c.String("addr")
	if addr != "" && net.ParseIP(addr) == nil && strings.ContainsAny(addr, ":/ ") {
		return "", usageError("invalid value %q for --addr: want an IP address or host name", addr)
	}
	return net.JoinHostPort(addr, strconv.Itoa(port)), nil
}

// targets validates --target entries.
func targets(c *cli.Context) ([]string, error) {
	var out []string
	for _, raw := range c.StringSlice("target") {
		for _, t := range strings.Split(raw, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			addr, _, err := upstream.ParseSpec(t)
			if err != nil {
				return nil, usageError("invalid value %q for --target: weight must be 1..%d", t, upstream.MaxWeight)
			}
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host == "" {
				return nil, usageError("invalid value %q for --target: want HOST:PORT or HOST:PORT=WEIGHT", t)
			}
			if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
				return nil, usageError("invalid value %q for --target: port must be 1..65535", t)
			}
			if slices.ContainsFunc(out, func(o string) bool { a, _, _ := upstream.ParseSpec(o); return a == addr }) {
				return nil, usageError("invalid value for --target: %q is listed twice (use --connections for more connections per target, or a weight)", addr)
			}
			out = append(out, t)
		}
	}
	if len(out) == 0 && len(c.StringSlice("target-dns"))+len(c.StringSlice("target-srv")) == 0 {
		return nil, usageError("no target: set --target HOST:PORT (or NDLB_TARGET), --target-dns or --target-srv")
	}
	return out, nil
}

func size(c *cli.Context, name string) (int, error) {
	v, err := humanize.ParseBytes(c.String(name))
	if err != nil || v == 0 || v > 1<<40 {
		return 0, usageError("invalid value %q for --%s: want a size such as 1MiB or 65536", c.String(name), name)
	}
	return int(v), nil
}

func nonNegative(c *cli.Context, names ...string) error {
	for _, n := range names {
		if c.Duration(n) < 0 {
			return usageError("invalid value %s for --%s: must not be negative", c.Duration(n), n)
		}
	}
	return nil
}

func positive(c *cli.Context, names ...string) error {
	for _, n := range names {
		if c.Duration(n) <= 0 {
			return usageError("invalid value %s for --%s: must be positive", c.Duration(n), n)
		}
	}
	return nil
}

// ndjsonConfig maps the flags onto ndjson.Config, validating each value and
// naming the flag when one is wrong.
func ndjsonConfig(c *cli.Context, log *slog.Logger) (ndjson.Config, error) {
	cfg := ndjson.DefaultConfig()
	cfg.Logger = log
	var err error
	if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
	cfg.Discovered = discovered(c)
	if n := c.Int("connections"); n < 1 || n > 1024 {
		return cfg, usageError("invalid value %d for --connections: want 1..1024", n)
	}
	cfg.Pool.Connections = c.Int("connections")
	if cfg.Framer.MaxLineBytes, err = size(c, "max-line-bytes"); err != nil {
		return cfg, err
	}
	if cfg.Framer.MaxLineBytes > framer.MaxMaxLineBytes {
		return cfg, usageError("invalid value %q for --max-line-bytes: at most 1GiB", c.String("max-line-bytes"))
	}
	if cfg.Framer.ReadBytes, err = size(c, "read-bytes"); err != nil {
		return cfg, err
	}
	if cfg.Framer.ReadBytes > 16<<20 {
		return cfg, usageError("invalid value %q for --read-bytes: at most 16MiB", c.String("read-bytes"))
	}
	buf, err := size(c, "buffer-bytes")
	if err != nil {
		return cfg, err
	}
	cfg.Queue.MaxBytes = int64(buf)
	if err := cfg.Queue.Validate(cfg.Framer); err != nil {
		return cfg, usageError("invalid value %q for --buffer-bytes: must hold at least one longest line plus one read (%s)",
			c.String("buffer-bytes"), humanize.IBytes(uint64(cfg.Framer.MaxBatchBytes())))
	}
	cb, err := size(c, "client-buffer-bytes")
	if err != nil {
		return cfg, err
	}
	cfg.ClientMemory = int64(cb)
	if min := 2 * cfg.Framer.MaxBatchBytes(); cb < min {
		return cfg, usageError("invalid value %q for --client-buffer-bytes: must hold at least two longest lines plus reads (%s)",
			c.String("client-buffer-bytes"), humanize.IBytes(uint64(min)))
	}
	if err := nonNegative(c, "failback", "tcp-user-timeout", "line-timeout"); err != nil {
		return cfg, err
	}
	cfg.LineTimeout = c.Duration("line-timeout")
	if err := positive(c, "connect-timeout", "write-timeout", "backoff-max", "drain-timeout", "deliver-timeout"); err != nil {
		return cfg, err
	}
	cfg.Pool.Failback = c.Duration("failback")
	cfg.Pool.ConnectTimeout = c.Duration("connect-timeout")
	cfg.Pool.WriteTimeout = c.Duration("write-timeout")
	cfg.Pool.UserTimeout = c.Duration("tcp-user-timeout")
	cfg.Pool.BackoffMax = c.Duration("backoff-max")
	cfg.Pool.BackoffInitial = min(cfg.Pool.BackoffInitial, cfg.Pool.BackoffMax)
	cfg.DrainTimeout = c.Duration("drain-timeout")
	cfg.DeliverTimeout = c.Duration("deliver-timeout")
	if cfg.Listener, err = listenerConfig(c); err != nil {
		return cfg, err
	}
	if cfg.Listener.MaxConns == 0 {
		cfg.Listener.MaxConns = ndjson.DefaultMaxConns()
	}
	if cfg.Listener.TLS, cfg.Pool.TLS, err = tlsConfig(c, log); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil { // a gap in the checks above
		return cfg, usageError("%v", err)
	}
	return cfg, nil
}

// tlsConfig maps the TLS flags, reading the files now so that a bad path or
// PEM is reported at start.
func tlsConfig(c *cli.Context, log *slog.Logger) (server *tls.Config, client func() (*tls.Config, error), err error) {
	cert, key, ca := c.String("tls-cert"), c.String("tls-key"), c.String("tls-client-ca")
	switch {
	case cert != "" && key == "":
		return nil, nil, usageError("--tls-cert needs --tls-key")
	case key != "" && cert == "":
		return nil, nil, usageError("--tls-key needs --tls-cert")
	case ca != "" && cert == "":
		return nil, nil, usageError("--tls-client-ca needs --tls-cert and --tls-key")
	}
	onErr := func(err error) {
		log.Error("certificate files changed but cannot be loaded; keeping the previous ones", "err", err)
	}
	if cert != "" {
		if server, err = tlsutil.Server(tlsutil.ServerOptions{CertFile: cert, KeyFile: key, ClientCAFile: ca, OnReloadError: onErr}); err != nil {
			return nil, nil, usageError("invalid --tls-cert/--tls-key/--tls-client-ca: %v", err)
		}
	}
	tcert, tkey := c.String("tls-target-cert"), c.String("tls-target-key")
	if !c.Bool("tls-target") {
		for _, n := range []string{"tls-target-ca", "tls-target-server-name", "tls-target-cert", "tls-target-key"} {
			if c.String(n) != "" {
				return nil, nil, usageError("--%s needs --tls-target", n)
			}
		}
		if c.Bool("tls-target-skip-verify") {
			return nil, nil, usageError("--tls-target-skip-verify needs --tls-target")
		}
		return server, nil, nil
	}
	if (tcert == "") != (tkey == "") {
		return nil, nil, usageError("--tls-target-cert and --tls-target-key go together")
	}
	client, err = tlsutil.Client(tlsutil.ClientOptions{
		CAFile: c.String("tls-target-ca"), ServerName: c.String("tls-target-server-name"),
		SkipVerify: c.Bool("tls-target-skip-verify"), CertFile: tcert, KeyFile: tkey, OnReloadError: onErr,
	})
	if err != nil {
		return nil, nil, usageError("invalid --tls-target-ca/--tls-target-cert/--tls-target-key: %v", err)
	}
	return server, client, nil
}

// passthroughConfig maps the flags onto passthrough.Config.
func passthroughConfig(c *cli.Context, log *slog.Logger) (passthrough.Config, error) {
	cfg := passthrough.DefaultConfig()
	cfg.Logger = log
	var err error
	if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
	cfg.Discovered = discovered(c)
	if _, err := balance.New(c.String("balance")); err != nil {
		return cfg, usageError("invalid value %q for --balance: want %s", c.String("balance"), strings.Join(balance.Names, ", "))
	}
	cfg.Balance = c.String("balance")
	switch k := passthrough.HashKey(c.String("hash-key")); k {
	case passthrough.HashIP, passthrough.HashIPPort:
		cfg.HashKey = k
	default:
		return cfg, usageError("invalid value %q for --hash-key: want ip or ip-port", k)
	}
	if c.IsSet("hash-key") && cfg.Balance != "hash" {
		return cfg, usageError("--hash-key needs --balance hash")
	}
	for _, n := range []string{"connect-retries", "max-fails"} {
		if v := c.Int(n); v < 0 || v > 1000 {
			return cfg, usageError("invalid value %d for --%s: want 0..1000", v, n)
		}
	}
	cfg.ConnectRetries, cfg.MaxFails = c.Int("connect-retries"), c.Int("max-fails")
	if err := nonNegative(c, "fail-timeout", "idle-timeout"); err != nil {
		return cfg, err
	}
	if err := positive(c, "connect-timeout", "backoff-max", "drain-timeout"); err != nil {
		return cfg, err
	}
	cfg.FailTimeout, cfg.IdleTimeout = c.Duration("fail-timeout"), c.Duration("idle-timeout")
	cfg.ConnectTimeout, cfg.DrainTimeout = c.Duration("connect-timeout"), c.Duration("drain-timeout")
	if c.IsSet("backoff-max") {
		cfg.BackoffMax = c.Duration("backoff-max")
		cfg.BackoffInitial = min(cfg.BackoffInitial, cfg.BackoffMax)
	}
	switch v := c.String("send-proxy"); v {
	case "":
	case "v1", "1":
		cfg.SendProxy = 1
	case "v2", "2":
		cfg.SendProxy = 2
	default:
		return cfg, usageError("invalid value %q for --send-proxy: want v1 or v2", v)
	}
	if cfg.Listener, err = listenerConfig(c); err != nil {
		return cfg, err
	}
	if cfg.Listener.TLS, cfg.TLS, err = tlsConfig(c, log); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil { // a gap in the checks above
		return cfg, usageError("%v", err)
	}
	return cfg, nil
}

// checkConfig maps the --check flags; ok is false when checks are off.
func checkConfig(c *cli.Context, log *slog.Logger, targetTLS func() (*tls.Config, error)) (cfg health.Config, ok bool, err error) {
	kind := c.String("check")
	if kind == "" {
		for _, n := range []string{"check-interval", "check-timeout", "check-rise", "check-fall", "check-http-method",
			"check-http-path", "check-http-status", "check-http-body", "check-tls"} {
			if c.IsSet(n) {
				return cfg, false, usageError("--%s needs --check", n)
			}
		}
		return cfg, false, nil
	}
	cfg = health.DefaultConfig(kind)
	cfg.Logger = log
	cfg.Interval, cfg.Timeout = c.Duration("check-interval"), c.Duration("check-timeout")
	cfg.Rise, cfg.Fall = c.Int("check-rise"), c.Int("check-fall")
	cfg.HTTP.Method, cfg.HTTP.Path = c.String("check-http-method"), c.String("check-http-path")
	cfg.HTTP.Status, cfg.HTTP.Body = c.Int("check-http-status"), c.String("check-http-body")
	if c.Bool("check-tls") {
		cfg.HTTP.TLS = targetTLS
		if cfg.HTTP.TLS == nil {
			// A check proves the target answers, not who it is.
			cfg.HTTP.TLS = func() (*tls.Config, error) {
				return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
			}
		}
	}
	if kind != health.KindHTTP {
		for _, n := range []string{"check-http-method", "check-http-path", "check-http-status", "check-http-body", "check-tls"} {
			if c.IsSet(n) {
				return cfg, false, usageError("--%s needs --check http", n)
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		msg := strings.TrimPrefix(err.Error(), health.ErrConfig.Error()+": ")
		return cfg, false, usageError("invalid health check (--check*): %s", msg)
	}
	return cfg, true, nil
}

// discovered reports whether targets also come from DNS.
func discovered(c *cli.Context) bool {
	return len(c.StringSlice("target-dns"))+len(c.StringSlice("target-srv")) > 0
}

// discoveryConfig maps the DNS flags; ok is false when there are no names.
func discoveryConfig(c *cli.Context, log *slog.Logger, static []string) (cfg discovery.Config, ok bool, err error) {
	split := func(name string) []string {
		var out []string
		for _, raw := range c.StringSlice(name) {
			for _, v := range strings.Split(raw, ",") {
				if v = strings.TrimSpace(v); v != "" {
					out = append(out, v)
				}
			}
		}
		return out
	}
	cfg = discovery.Config{Static: static, DNS: split("target-dns"), SRV: split("target-srv"), Interval: c.Duration("dns-interval"), Logger: log}
	if len(cfg.DNS)+len(cfg.SRV) == 0 {
		for _, n := range []string{"dns-interval", "dns-resolver"} {
			if c.IsSet(n) {
				return cfg, false, usageError("--%s needs --target-dns or --target-srv", n)
			}
		}
		return cfg, false, nil
	}
	if r := c.String("dns-resolver"); r != "" {
		if _, _, err := net.SplitHostPort(r); err != nil {
			return cfg, false, usageError("invalid value %q for --dns-resolver: want HOST:PORT", r)
		}
		cfg.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, r)
		}}
	}
	if err := cfg.Validate(); err != nil {
		msg := strings.TrimPrefix(err.Error(), discovery.ErrConfig.Error()+": ")
		name := "--target-dns/--target-srv"
		if strings.HasPrefix(msg, "interval") {
			name = "--dns-interval"
		}
		return cfg, false, usageError("invalid %s: %s", name, msg)
	}
	return cfg, true, nil
}
