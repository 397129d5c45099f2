package setup

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ndlb/ndlb/balance"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/supervisor"
	"github.com/ndlb/ndlb/tlsutil"
	"github.com/ndlb/ndlb/upstream"
)

// Values are the settings as set: a urfave/cli context has these methods.
type Values interface {
	String(name string) string
	Int(name string) int
	Bool(name string) bool
	Duration(name string) time.Duration
	StringSlice(name string) []string
	IsSet(name string) bool
}

// Listener turns the settings of one listener into the supervisor's
// Listener, checking every value. settings, if not nil, are its values as
// set (name: values), for a reload to compare; log is its logger. A bad
// value is a *settings.Error naming the setting.
func Listener(name string, c Values, set map[string][]string, log *slog.Logger) (supervisor.Listener, error) {
	l := supervisor.Listener{Name: name, Settings: set, Logger: log}
	if err := checkMode(c); err != nil {
		return l, err
	}
	var err error
	if l.Addr, err = ListenAddr(c); err != nil {
		return l, err
	}
	var targetTLS func() (*tls.Config, error)
	if c.Bool("passthrough") {
		cfg, err := passthroughConfig(c, log)
		if err != nil {
			return l, err
		}
		l.Mode, l.Targets, l.Balance, targetTLS = supervisor.Passthrough{Config: cfg}, cfg.Targets, cfg.Balance, cfg.TLS
	} else {
		cfg, err := ndjsonConfig(c, log)
		if err != nil {
			return l, err
		}
		l.Mode, l.Targets, targetTLS = supervisor.NDJSON{Config: cfg}, cfg.Targets, cfg.Pool.TLS
	}
	dcfg, discover, err := discoveryConfig(c, log, l.Targets)
	if err != nil {
		return l, err
	}
	if discover {
		l.Discovery = &dcfg
	}
	hcfg, check, err := checkConfig(c, log, targetTLS)
	if err != nil {
		return l, err
	}
	if check {
		l.Health = &hcfg
	}
	return l, nil
}

// checkMode rejects flags set for the other mode.
func checkMode(c Values) error {
	wrong, mode := settings.OnlyIn(settings.NDJSON), "--passthrough"
	if !c.Bool("passthrough") {
		wrong, mode = settings.OnlyIn(settings.Passthrough), "NDJSON mode (add --passthrough)"
	}
	for _, n := range wrong {
		if c.IsSet(n) {
			return settings.Errorf(n, "--%s has no effect in %s", n, mode)
		}
	}
	return nil
}

// listenerConfig maps the flags both modes share onto the listener's config.
func listenerConfig(c Values) (listener.Config, error) {
	lc := listener.Config{AcceptProxy: c.Bool("accept-proxy"), ProxyHeaderTimeout: c.Duration("proxy-header-timeout"), MaxConns: c.Int("max-conns")}
	if lc.MaxConns < 0 {
		return lc, settings.Errorf("max-conns", "invalid value %d for --max-conns: must not be negative (0: no limit)", lc.MaxConns)
	}
	if err := positive(c, "proxy-header-timeout"); err != nil {
		return lc, err
	}
	if c.IsSet("proxy-header-timeout") && !lc.AcceptProxy {
		return lc, settings.Errorf("proxy-header-timeout", "--proxy-header-timeout needs --accept-proxy")
	}
	return lc, nil
}

// ListenAddr validates --addr and --port and returns HOST:PORT.
func ListenAddr(c Values) (string, error) {
	port := c.Int("port")
	if port < 0 || port > 65535 {
		return "", settings.Errorf("port", "invalid value %d for --port: want 0..65535", port)
	}
	addr := c.String("addr")
	if addr != "" && net.ParseIP(addr) == nil && strings.ContainsAny(addr, ":/ ") {
		return "", settings.Errorf("addr", "invalid value %q for --addr: want an IP address or host name", addr)
	}
	return net.JoinHostPort(addr, strconv.Itoa(port)), nil
}

// targets validates --target entries.
func targets(c Values) ([]string, error) {
	var out []string
	for _, raw := range c.StringSlice("target") {
		for _, t := range strings.Split(raw, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			addr, _, err := upstream.ParseSpec(t)
			if err != nil {
				return nil, settings.Errorf("target", "invalid value %q for --target: weight must be 1..%d", t, upstream.MaxWeight)
			}
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host == "" {
				return nil, settings.Errorf("target", "invalid value %q for --target: want HOST:PORT or HOST:PORT=WEIGHT", t)
			}
			if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
				return nil, settings.Errorf("target", "invalid value %q for --target: port must be 1..65535", t)
			}
			if slices.ContainsFunc(out, func(o string) bool { a, _, _ := upstream.ParseSpec(o); return a == addr }) {
				return nil, settings.Errorf("target", "invalid value for --target: %q is listed twice (use --connections for more connections per target, or a weight)", addr)
			}
			out = append(out, t)
		}
	}
	if len(out) == 0 && len(c.StringSlice("target-dns"))+len(c.StringSlice("target-srv")) == 0 {
		return nil, settings.Errorf("target", "no target: set --target HOST:PORT (or NDLB_TARGET), --target-dns or --target-srv")
	}
	return out, nil
}

func size(c Values, name string) (int, error) {
	v, err := humanize.ParseBytes(c.String(name))
	if err != nil || v == 0 || v > 1<<40 {
		return 0, settings.Errorf(name, "invalid value %q for --%s: want a size such as 1MiB or 65536", c.String(name), name)
	}
	return int(v), nil
}

func nonNegative(c Values, names ...string) error {
	for _, n := range names {
		if c.Duration(n) < 0 {
			return settings.Errorf(n, "invalid value %s for --%s: must not be negative", c.Duration(n), n)
		}
	}
	return nil
}

func positive(c Values, names ...string) error {
	for _, n := range names {
		if c.Duration(n) <= 0 {
			return settings.Errorf(n, "invalid value %s for --%s: must be positive", c.Duration(n), n)
		}
	}
	return nil
}

// ndjsonConfig maps the flags onto ndjson.Config, validating each value and
// naming the flag when one is wrong.
func ndjsonConfig(c Values, log *slog.Logger) (ndjson.Config, error) {
	cfg := ndjson.DefaultConfig()
	cfg.Logger = log
	var err error
	if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
	cfg.Discovered = discovered(c)
	if n := c.Int("connections"); n < 1 || n > 1024 {
		return cfg, settings.Errorf("connections", "invalid value %d for --connections: want 1..1024", n)
	}
	cfg.Pool.Connections = c.Int("connections")
	if cfg.Framer.MaxLineBytes, err = size(c, "max-line-bytes"); err != nil {
		return cfg, err
	}
	if cfg.Framer.MaxLineBytes > framer.MaxMaxLineBytes {
		return cfg, settings.Errorf("max-line-bytes", "invalid value %q for --max-line-bytes: at most 1GiB", c.String("max-line-bytes"))
	}
	if cfg.Framer.ReadBytes, err = size(c, "read-bytes"); err != nil {
		return cfg, err
	}
	if cfg.Framer.ReadBytes > 16<<20 {
		return cfg, settings.Errorf("read-bytes", "invalid value %q for --read-bytes: at most 16MiB", c.String("read-bytes"))
	}
	buf, err := size(c, "buffer-bytes")
	if err != nil {
		return cfg, err
	}
	cfg.Queue.MaxBytes = int64(buf)
	if err := cfg.Queue.Validate(cfg.Framer); err != nil {
		return cfg, settings.Errorf("buffer-bytes", "invalid value %q for --buffer-bytes: must hold at least one longest line plus one read (%s)",
			c.String("buffer-bytes"), humanize.IBytes(uint64(cfg.Framer.MaxBatchBytes())))
	}
	cb, err := size(c, "client-buffer-bytes")
	if err != nil {
		return cfg, err
	}
	cfg.ClientMemory = int64(cb)
	if min := 2 * cfg.Framer.MaxBatchBytes(); cb < min {
		return cfg, settings.Errorf("client-buffer-bytes", "invalid value %q for --client-buffer-bytes: must hold at least two longest lines plus reads (%s)",
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
		return cfg, settings.Errorf("", "%v", err)
	}
	return cfg, nil
}

// tlsConfig maps the TLS flags, reading the files now so that a bad path or
// PEM is reported at start.
func tlsConfig(c Values, log *slog.Logger) (server *tls.Config, client func() (*tls.Config, error), err error) {
	cert, key, ca := c.String("tls-cert"), c.String("tls-key"), c.String("tls-client-ca")
	switch {
	case cert != "" && key == "":
		return nil, nil, settings.Errorf("tls-cert", "--tls-cert needs --tls-key")
	case key != "" && cert == "":
		return nil, nil, settings.Errorf("tls-key", "--tls-key needs --tls-cert")
	case ca != "" && cert == "":
		return nil, nil, settings.Errorf("tls-client-ca", "--tls-client-ca needs --tls-cert and --tls-key")
	}
	onErr := func(err error) {
		log.Error("certificate files changed but cannot be loaded; keeping the previous ones", "err", err)
	}
	if cert != "" {
		if server, err = tlsutil.Server(tlsutil.ServerOptions{CertFile: cert, KeyFile: key, ClientCAFile: ca, OnReloadError: onErr}); err != nil {
			return nil, nil, settings.Errorf("tls-cert", "invalid --tls-cert/--tls-key/--tls-client-ca: %v", err)
		}
	}
	tcert, tkey := c.String("tls-target-cert"), c.String("tls-target-key")
	if !c.Bool("tls-target") {
		for _, n := range []string{"tls-target-ca", "tls-target-server-name", "tls-target-cert", "tls-target-key"} {
			if c.String(n) != "" {
				return nil, nil, settings.Errorf(n, "--%s needs --tls-target", n)
			}
		}
		if c.Bool("tls-target-skip-verify") {
			return nil, nil, settings.Errorf("tls-target-skip-verify", "--tls-target-skip-verify needs --tls-target")
		}
		return server, nil, nil
	}
	if (tcert == "") != (tkey == "") {
		return nil, nil, settings.Errorf("tls-target-cert", "--tls-target-cert and --tls-target-key go together")
	}
	client, err = tlsutil.Client(tlsutil.ClientOptions{
		CAFile: c.String("tls-target-ca"), ServerName: c.String("tls-target-server-name"),
		SkipVerify: c.Bool("tls-target-skip-verify"), CertFile: tcert, KeyFile: tkey, OnReloadError: onErr,
	})
	if err != nil {
		return nil, nil, settings.Errorf("tls-target-ca", "invalid --tls-target-ca/--tls-target-cert/--tls-target-key: %v", err)
	}
	return server, client, nil
}

// passthroughConfig maps the flags onto passthrough.Config.
func passthroughConfig(c Values, log *slog.Logger) (passthrough.Config, error) {
	cfg := passthrough.DefaultConfig()
	cfg.Logger = log
	var err error
	if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
	cfg.Discovered = discovered(c)
	if _, err := balance.New(c.String("balance")); err != nil {
		return cfg, settings.Errorf("balance", "invalid value %q for --balance: want %s", c.String("balance"), strings.Join(balance.Names, ", "))
	}
	cfg.Balance = c.String("balance")
	switch k := passthrough.HashKey(c.String("hash-key")); k {
	case passthrough.HashIP, passthrough.HashIPPort:
		cfg.HashKey = k
	default:
		return cfg, settings.Errorf("hash-key", "invalid value %q for --hash-key: want ip or ip-port", k)
	}
	if c.IsSet("hash-key") && cfg.Balance != "hash" {
		return cfg, settings.Errorf("hash-key", "--hash-key needs --balance hash")
	}
	for _, n := range []string{"connect-retries", "max-fails"} {
		if v := c.Int(n); v < 0 || v > passthrough.MaxRetries {
			return cfg, settings.Errorf(n, "invalid value %d for --%s: want 0..%d", v, n, passthrough.MaxRetries)
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
		return cfg, settings.Errorf("send-proxy", "invalid value %q for --send-proxy: want v1 or v2", v)
	}
	if cfg.Listener, err = listenerConfig(c); err != nil {
		return cfg, err
	}
	if cfg.Listener.TLS, cfg.TLS, err = tlsConfig(c, log); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil { // a gap in the checks above
		return cfg, settings.Errorf("", "%v", err)
	}
	return cfg, nil
}

// checkConfig maps the --check flags; ok is false when checks are off.
func checkConfig(c Values, log *slog.Logger, targetTLS func() (*tls.Config, error)) (cfg health.Config, ok bool, err error) {
	kind := c.String("check")
	if kind == "" {
		for _, n := range []string{"check-interval", "check-timeout", "check-rise", "check-fall", "check-http-method",
			"check-http-path", "check-http-status", "check-http-body", "check-tls"} {
			if c.IsSet(n) {
				return cfg, false, settings.Errorf(n, "--%s needs --check", n)
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
				return cfg, false, settings.Errorf(n, "--%s needs --check http", n)
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		var fe *health.FieldError
		if errors.As(err, &fe) {
			return cfg, false, fieldError("health."+fe.Field, fe.Msg)
		}
		return cfg, false, settings.Errorf("check", "invalid health check: %v", err)
	}
	return cfg, true, nil
}

// fieldError names the setting of a library's config field (see
// settings.Setting.Field) in a usage error.
func fieldError(field, msg string) error {
	s, ok := settings.ByField(field)
	if !ok {
		return settings.Errorf("", "invalid settings: %s", msg)
	}
	return settings.Errorf(s.Name, "invalid value for --%s: %s", s.Name, msg)
}

// discovered reports whether targets also come from DNS.
func discovered(c Values) bool {
	return len(c.StringSlice("target-dns"))+len(c.StringSlice("target-srv")) > 0
}

// discoveryConfig maps the DNS flags; ok is false when there are no names.
func discoveryConfig(c Values, log *slog.Logger, static []string) (cfg discovery.Config, ok bool, err error) {
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
				return cfg, false, settings.Errorf(n, "--%s needs --target-dns or --target-srv", n)
			}
		}
		return cfg, false, nil
	}
	if r := c.String("dns-resolver"); r != "" {
		if _, _, err := net.SplitHostPort(r); err != nil {
			return cfg, false, settings.Errorf("dns-resolver", "invalid value %q for --dns-resolver: want HOST:PORT", r)
		}
		cfg.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, r)
		}}
	}
	if err := cfg.Validate(); err != nil {
		var fe *discovery.FieldError
		if errors.As(err, &fe) {
			return cfg, false, fieldError("discovery."+fe.Field, fe.Msg)
		}
		return cfg, false, settings.Errorf("target-dns", "invalid DNS discovery: %v", err)
	}
	return cfg, true, nil
}
