package main

import (
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/pool"
	"github.com/ndlb/ndlb/tlsutil"
)

func env(name string) []string {
	return []string{"NDLB_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

// flags is the command-line contract of DESIGN.md. Every flag reads an
// NDLB_* environment variable; single- and double-dash spellings both work.
func flags() []cli.Flag {
	d := pool.DefaultConfig()
	return []cli.Flag{
		&cli.StringFlag{Name: "addr", Value: "0.0.0.0", Usage: "address to listen on", EnvVars: env("addr")},
		&cli.IntFlag{Name: "port", Value: 9000, Usage: "port to listen on (0 picks a free port, shown in the 'listening' log line)", EnvVars: env("port")},
		&cli.StringSliceFlag{Name: "target", Usage: "target HOST:PORT; comma-separated and/or repeated (required)", EnvVars: env("target")},
		&cli.IntFlag{Name: "connections", Value: d.Connections, Usage: "worker connections per target", EnvVars: env("connections")},

		&cli.StringFlag{Name: "tls-cert", Usage: "listen with TLS: certificate file (PEM)", EnvVars: env("tls-cert")},
		&cli.StringFlag{Name: "tls-key", Usage: "listen with TLS: key file (PEM)", EnvVars: env("tls-key")},
		&cli.StringFlag{Name: "tls-client-ca", Usage: "require client certificates signed by this CA file (PEM)", EnvVars: env("tls-client-ca")},
		&cli.BoolFlag{Name: "tls-target", Usage: "connect to targets with TLS", EnvVars: env("tls-target")},
		&cli.StringFlag{Name: "tls-target-ca", Usage: "CA file to verify targets with (default: system roots)", EnvVars: env("tls-target-ca")},
		&cli.StringFlag{Name: "tls-target-server-name", Usage: "name to verify in target certificates (default: the target's host)", EnvVars: env("tls-target-server-name")},
		&cli.BoolFlag{Name: "tls-target-skip-verify", Usage: "accept any target certificate (insecure; for testing)", EnvVars: env("tls-target-skip-verify")},
		&cli.StringFlag{Name: "tls-target-cert", Usage: "client certificate file for targets that require one (mTLS)", EnvVars: env("tls-target-cert")},
		&cli.StringFlag{Name: "tls-target-key", Usage: "key file of --tls-target-cert", EnvVars: env("tls-target-key")},

		&cli.StringFlag{Name: "max-line-bytes", Value: "1MiB", Usage: "longest line forwarded; longer lines are dropped whole, counted and logged", EnvVars: env("max-line-bytes")},
		&cli.StringFlag{Name: "buffer-bytes", Value: "64MiB", Usage: "memory for lines read and not yet acknowledged; when full, clients are slowed (TCP backpressure)", EnvVars: env("buffer-bytes")},
		&cli.StringFlag{Name: "read-bytes", Value: "16KiB", Usage: "size of each read from a client", EnvVars: env("read-bytes")},
		&cli.DurationFlag{Name: "failback", Value: d.Failback, Usage: "how often a worker that failed over tries its home target again (0: never)", EnvVars: env("failback")},
		&cli.DurationFlag{Name: "connect-timeout", Value: d.ConnectTimeout, Usage: "timeout of one target dial, TLS handshake included", EnvVars: env("connect-timeout")},
		&cli.DurationFlag{Name: "write-timeout", Value: d.WriteTimeout, Usage: "a target that accepts no data for this long is failed over", EnvVars: env("write-timeout")},
		&cli.DurationFlag{Name: "tcp-user-timeout", Value: d.UserTimeout, Usage: "TCP_USER_TIMEOUT: unacknowledged data this old fails a target connection (0: system default)", EnvVars: env("tcp-user-timeout")},
		&cli.DurationFlag{Name: "backoff-max", Value: d.BackoffMax, Usage: "longest wait between dial rounds when targets are down", EnvVars: env("backoff-max")},
		&cli.DurationFlag{Name: "drain-timeout", Value: ndjson.DefaultDrainTimeout, Usage: "on SIGTERM, how long clients may keep sending before their connections are closed", EnvVars: env("drain-timeout")},
		&cli.DurationFlag{Name: "deliver-timeout", Value: ndjson.DefaultDeliverTimeout, Usage: "after the drain, how long ndlb keeps delivering before it drops (and counts) what is left", EnvVars: env("deliver-timeout")},

		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: env("log-format")},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn or error", EnvVars: env("log-level")},
	}
}

// newLogger builds the logger from --log-format and --log-level.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usageError("invalid value %q for --log-level: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.String("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(c.App.ErrWriter, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(c.App.ErrWriter, opts)), nil
	}
	return nil, usageError("invalid value %q for --log-format: want text or json", c.String("log-format"))
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
			host, port, err := net.SplitHostPort(t)
			if err != nil || host == "" {
				return nil, usageError("invalid value %q for --target: want HOST:PORT", t)
			}
			if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
				return nil, usageError("invalid value %q for --target: port must be 1..65535", t)
			}
			if slices.Contains(out, t) {
				return nil, usageError("invalid value for --target: %q is listed twice (use --connections for more connections per target)", t)
			}
			out = append(out, t)
		}
	}
	if len(out) == 0 {
		return nil, usageError("no target: set --target HOST:PORT (or NDLB_TARGET)")
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

// config maps the flags onto ndjson.Config, validating each value and
// naming the flag when one is wrong.
func config(c *cli.Context, log *slog.Logger) (ndjson.Config, error) {
	cfg := ndjson.DefaultConfig()
	cfg.Logger = log
	var err error
	if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
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
	if err := nonNegative(c, "failback", "tcp-user-timeout"); err != nil {
		return cfg, err
	}
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
	if err := tlsConfig(c, &cfg, log); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil { // a gap in the checks above
		return cfg, usageError("%v", err)
	}
	return cfg, nil
}

// tlsConfig maps the TLS flags, reading the files now so that a bad path or
// PEM is reported at start.
func tlsConfig(c *cli.Context, cfg *ndjson.Config, log *slog.Logger) error {
	cert, key, ca := c.String("tls-cert"), c.String("tls-key"), c.String("tls-client-ca")
	switch {
	case cert != "" && key == "":
		return usageError("--tls-cert needs --tls-key")
	case key != "" && cert == "":
		return usageError("--tls-key needs --tls-cert")
	case ca != "" && cert == "":
		return usageError("--tls-client-ca needs --tls-cert and --tls-key")
	}
	onErr := func(err error) {
		log.Error("certificate files changed but cannot be loaded; keeping the previous ones", "err", err)
	}
	if cert != "" {
		srv, err := tlsutil.Server(tlsutil.ServerOptions{CertFile: cert, KeyFile: key, ClientCAFile: ca, OnReloadError: onErr})
		if err != nil {
			return usageError("invalid --tls-cert/--tls-key/--tls-client-ca: %v", err)
		}
		cfg.Listener.TLS = srv
	}
	tcert, tkey := c.String("tls-target-cert"), c.String("tls-target-key")
	if !c.Bool("tls-target") {
		for _, n := range []string{"tls-target-ca", "tls-target-server-name", "tls-target-cert", "tls-target-key"} {
			if c.String(n) != "" {
				return usageError("--%s needs --tls-target", n)
			}
		}
		if c.Bool("tls-target-skip-verify") {
			return usageError("--tls-target-skip-verify needs --tls-target")
		}
		return nil
	}
	if (tcert == "") != (tkey == "") {
		return usageError("--tls-target-cert and --tls-target-key go together")
	}
	get, err := tlsutil.Client(tlsutil.ClientOptions{
		CAFile: c.String("tls-target-ca"), ServerName: c.String("tls-target-server-name"),
		SkipVerify: c.Bool("tls-target-skip-verify"), CertFile: tcert, KeyFile: tkey, OnReloadError: onErr,
	})
	if err != nil {
		return usageError("invalid --tls-target-ca/--tls-target-cert/--tls-target-key: %v", err)
	}
	cfg.Pool.TLS = get
	return nil
}
