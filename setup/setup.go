package setup

import (
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
	"github.com/ndlb/ndlb/route"
	"github.com/ndlb/ndlb/routekey"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/spool"
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
	udp, err := UDP(c)
	if err != nil {
		return l, err
	}
	if l.Addr, err = ListenAddr(c); err != nil {
		return l, err
	}
	var targetTLS func() (*tls.Config, error)
	if c.Bool("passthrough") {
		cfg, err := passthroughConfig(c, log, udp)
		if err != nil {
			return l, err
		}
		l.Mode, l.Targets, l.Balance, targetTLS = supervisor.Passthrough{Config: cfg}, cfg.Targets, cfg.Balance, cfg.TLS
	} else {
		cfg, err := ndjsonConfig(c, name, log, udp)
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

// tcpOnly are the settings of TCP connections, which a UDP listener
// refuses; passthroughTCPOnly are passthrough's.
var (
	tcpOnly = []string{"tls-cert", "tls-key", "tls-client-ca", "accept-proxy", "accept-proxy-from", "proxy-header-timeout",
		"max-conns-per-source", "max-conn-rate-per-source", "client-rate", "line-timeout", "read-bytes", "read-coalesce"}
	passthroughTCPOnly = []string{"tls-target", "tls-target-ca", "tls-target-server-name", "tls-target-skip-verify",
		"tls-target-cert", "tls-target-key", "send-proxy", "idle-timeout", "half-close-timeout", "connect-retries", "backoff-max", "hash-key-timeout", "event-loop", "event-loops", "event-loop-threads"}
)

// UDP reads --proto and --udp, and refuses the settings that do not fit
// the protocol.
func UDP(c Values) (udp bool, err error) {
	switch p := c.String("proto"); p {
	case "tcp", "":
		if c.IsSet("proto") && c.Bool("udp") {
			return false, settings.Errorf("udp", "--udp contradicts --proto %s", p)
		}
		udp = c.Bool("udp")
	case "udp":
		if c.IsSet("udp") && !c.Bool("udp") {
			return false, settings.Errorf("udp", "--udp=false contradicts --proto udp")
		}
		udp = true
	default:
		return false, settings.Errorf("proto", "invalid value %q for --proto: want tcp or udp", p)
	}
	if !udp {
		if c.IsSet("udp-idle-timeout") {
			return false, settings.Errorf("udp-idle-timeout", "--udp-idle-timeout needs --udp")
		}
		return false, nil
	}
	refuse := append(slices.Clone(tcpOnly), "max-conns") // NDJSON: no connections to bound
	if c.Bool("passthrough") {
		refuse = append(slices.Clone(tcpOnly), passthroughTCPOnly...) // max-conns bounds the flows
	}
	for _, n := range refuse {
		if c.IsSet(n) {
			return false, settings.Errorf(n, "--%s has no effect with --udp (it concerns TCP connections)", n)
		}
	}
	return true, nil
}

// listenerConfig maps the flags both modes share onto the listener's config.
func listenerConfig(c Values) (listener.Config, error) {
	lc := listener.Config{AcceptProxy: c.Bool("accept-proxy"), ProxyHeaderTimeout: c.Duration("proxy-header-timeout"), MaxConns: c.Int("max-conns"),
		MaxConnsPerSource: c.Int("max-conns-per-source"), ConnRatePerSource: c.Int("max-conn-rate-per-source")}
	for _, raw := range c.StringSlice("accept-proxy-from") {
		for _, v := range strings.Split(raw, ",") {
			if v = strings.TrimSpace(v); v == "" {
				continue
			}
			p, err := netip.ParsePrefix(v)
			if err != nil {
				a, aerr := netip.ParseAddr(v)
				if aerr != nil {
					return lc, settings.Errorf("accept-proxy-from", "invalid value %q for --accept-proxy-from: want a network (10.0.0.0/8) or an address", v)
				}
				p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			}
			lc.ProxyFrom, lc.AcceptProxy = append(lc.ProxyFrom, p.Masked()), true
		}
	}
	if len(lc.ProxyFrom) > 0 && c.IsSet("accept-proxy") && !c.Bool("accept-proxy") {
		return lc, settings.Errorf("accept-proxy-from", "--accept-proxy-from accepts PROXY headers, which --accept-proxy=false turns off: drop one")
	}
	if c.IsSet("proxy-header-timeout") && !lc.AcceptProxy {
		return lc, settings.Errorf("proxy-header-timeout", "--proxy-header-timeout needs --accept-proxy")
	}
	// The library reads 0 as its default; on the command line, where 0
	// means "no limit" for other timeouts, it would surprise: refuse it.
	// Negative values are the library's to refuse.
	if lc.ProxyHeaderTimeout == 0 {
		return lc, settings.Errorf("proxy-header-timeout", "invalid value 0s for --proxy-header-timeout: must be positive (a header must come in bounded time)")
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
	if addr == "" && c.IsSet("addr") {
		// Empty would listen on every address of both families, not
		// the default's IPv4 ones.
		return "", settings.Errorf("addr", "empty --addr: want an IP address or host name (0.0.0.0 for every IPv4 address, :: for every address)")
	}
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
			if !upstream.ValidHost(host) {
				return nil, settings.Errorf("target", "invalid value %q for --target: %q is neither an IP address nor a host name (letters, digits, hyphens and dots)", t, host)
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

// ndjsonConfig maps the flags onto ndjson.Config, validating each value and
// naming the flag when one is wrong.
func ndjsonConfig(c Values, name string, log *slog.Logger, udp bool) (ndjson.Config, error) {
	cfg := ndjson.DefaultConfig()
	cfg.Logger, cfg.UDP = log, udp
	var err error
	if cfg.Route, err = routeConfig(c); err != nil {
		return cfg, err
	}
	if len(cfg.Route.Groups) > 0 {
		for _, n := range []string{"target", "target-dns", "target-srv"} {
			if c.IsSet(n) {
				return cfg, settings.Errorf(n, "--%s and --group both set: with target groups, list every target in its group", n)
			}
		}
	} else if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
	cfg.Discovered = discovered(c)
	if cfg.Spool, err = spoolConfig(c, name); err != nil {
		return cfg, err
	}
	cfg.Pool.Connections = c.Int("connections")
	if cfg.Framer.MaxLineBytes, err = size(c, "max-line-bytes"); err != nil {
		return cfg, err
	}
	if cfg.Framer.ReadBytes, err = size(c, "read-bytes"); err != nil {
		return cfg, err
	}
	buf, err := size(c, "buffer-bytes")
	if err != nil {
		return cfg, err
	}
	cfg.Queue.MaxBytes = int64(buf)
	cb, err := size(c, "client-buffer-bytes")
	if err != nil {
		return cfg, err
	}
	cfg.ClientMemory = int64(cb)
	cfg.LineTimeout = c.Duration("line-timeout")
	cfg.ReadCoalesce = c.Duration("read-coalesce")
	cfg.Framing, cfg.TargetFraming = framer.Framing(c.String("framing")), framer.Framing(c.String("target-framing"))
	if r := c.String("client-rate"); r != "0" && r != "" {
		v, err := size(c, "client-rate")
		if err != nil {
			return cfg, err
		}
		cfg.ClientRate = int64(v)
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
	if cfg.Listener.MaxConns == 0 && !udp {
		// The workers' sockets to the targets take files too: what
		// they may hold comes off the default, so that clients cannot
		// leave the workers without files (a target then looks failed).
		cfg.Listener.MaxConns = max(64, listener.DefaultMaxConns()-cfg.Pool.Connections*upstreamCount(c, cfg))
	}
	if cfg.Listener.TLS, cfg.Pool.TLS, err = tlsConfig(c, log); err != nil {
		return cfg, err
	}
	return cfg, fieldError("ndjson", cfg.Validate())
}

// spoolConfig maps --spool-dir and its settings; nil without a spool.
// Each listener has its own subdirectory, named after it.
func spoolConfig(c Values, listener string) (*spool.Config, error) {
	dir := c.String("spool-dir")
	if dir == "" {
		for _, n := range []string{"spool-max-bytes", "spool-full", "spool-sync"} {
			if c.IsSet(n) {
				return nil, settings.Errorf(n, "--%s needs --spool-dir", n)
			}
		}
		return nil, nil
	}
	for _, n := range []string{"route-key", "group", "group-key"} {
		if c.IsSet(n) {
			return nil, settings.Errorf("spool-dir", "--spool-dir with --%s is not supported yet", n)
		}
	}
	cfg := spool.DefaultConfig(filepath.Join(dir, safeName(listener)))
	maxBytes, err := size(c, "spool-max-bytes")
	if err != nil {
		return nil, err
	}
	if maxBytes < 16<<20 {
		return nil, settings.Errorf("spool-max-bytes", "invalid value %q for --spool-max-bytes: want at least 16MiB", c.String("spool-max-bytes"))
	}
	cfg.MaxBytes = int64(maxBytes)
	cfg.SegmentBytes = min(cfg.SegmentBytes, cfg.MaxBytes/8) // at least 2 MiB: a batch fits
	switch v := c.String("spool-full"); v {
	case "block":
	case "drop-oldest":
		cfg.Full = spool.DropOldest
	default:
		return nil, settings.Errorf("spool-full", "invalid value %q for --spool-full: want block or drop-oldest", v)
	}
	switch v := strings.TrimSpace(c.String("spool-sync")); v {
	case "always":
		cfg.Sync = spool.SyncAlways
	case "never":
		cfg.Sync = spool.SyncNever
	default:
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, settings.Errorf("spool-sync", "invalid value %q for --spool-sync: want an interval such as 1s, always or never", v)
		}
		cfg.SyncInterval = d
	}
	return &cfg, nil
}

// upstreamCount is the most targets cfg's workers may connect to: the
// static ones, the groups', and as many as DNS may add.
func upstreamCount(c Values, cfg ndjson.Config) int {
	n := len(cfg.Targets)
	for _, g := range cfg.Route.Groups {
		n += len(g.Targets)
	}
	if cfg.Discovered {
		dns := c.Int("dns-max-targets")
		if dns <= 0 {
			dns = discovery.DefaultMaxTargets
		}
		n += dns
	}
	return n
}

// safeName is a listener's name as a directory name: '/', '\\', NUL and
// '%' escaped as %XX, and "." and ".." spelled out, so that two names
// never share a directory (with '_' for '/', "a/b" and "a_b" did, and the
// second listener ran without its spool).
func safeName(name string) string {
	switch name {
	case "":
		return "default"
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	var b strings.Builder
	for _, r := range name {
		switch r {
		case '/', '\\', 0, '%':
			fmt.Fprintf(&b, "%%%02X", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func routeConfig(c Values) (route.Config, error) {
	var cfg struct {
		route.Config
		Groups []group
	}
	var err error
	key := func(name string) (routekey.Extractor, error) {
		v := c.String(name)
		if v == "" {
			return nil, nil
		}
		ex, err := routekey.Parse(v)
		if err != nil {
			return nil, settings.Errorf(name, "invalid value %q for --%s: %s", v, name, strings.TrimPrefix(strings.TrimPrefix(err.Error(), routekey.ErrSpec.Error()), " "))
		}
		return ex, nil
	}
	if cfg.Key, err = key("route-key"); err != nil {
		return route.Config{}, err
	}
	if cfg.GroupKey, err = key("group-key"); err != nil {
		return route.Config{}, err
	}
	ml := strings.TrimSpace(c.String("route-max-load"))
	if cfg.MaxLoad, err = strconv.ParseFloat(ml, 64); err != nil {
		return route.Config{}, settings.Errorf("route-max-load", "invalid value %q for --route-max-load: want a number such as 1.25 (a target takes at most 25%% more than its share), or 0 for no bound", ml)
	}
	if c.IsSet("route-max-load") && cfg.Key == nil {
		return route.Config{}, settings.Errorf("route-max-load", "--route-max-load needs --route-key")
	}
	for _, raw := range rejoinGroups(c.StringSlice("group")) {
		g, err := parseGroup(raw)
		if err != nil {
			return route.Config{}, err
		}
		cfg.Groups = append(cfg.Groups, g)
	}
	switch {
	case cfg.GroupKey != nil && len(cfg.Groups) == 0:
		return route.Config{}, settings.Errorf("group-key", "--group-key needs target groups (--group, or [[listener.group]] tables)")
	case len(cfg.Groups) > 0 && cfg.Key == nil && cfg.GroupKey == nil:
		return route.Config{}, settings.Errorf("group", "target groups need a key whose value picks the group: set --group-key (or --route-key)")
	}
	for _, g := range cfg.Groups {
		if !g.Spread && cfg.Key == nil && g.balanceSet {
			return route.Config{}, settings.Errorf("group", "group %q: balance=key needs --route-key", g.Name)
		}
	}
	out := cfg.Config
	for _, g := range cfg.Groups {
		out.Groups = append(out.Groups, g.Group)
	}
	return out, nil
}

// rejoinGroups undoes the command line's splitting of list flags at
// commas (--group 'audit=a:1,b:2;values=x,y' arrives as "audit=a:1",
// "b:2;values=x", "y"). A piece continues the group before it when that
// group's last part is its target list and the piece begins with a target
// (HOST:PORT or HOST:PORT=WEIGHT), or when its last part is a values= list
// and the piece's first part holds no '=' (so on the command line a value
// cannot hold '=', ';' or ','; in a config file only ';' and ','). A
// config file's groups come whole.
func rejoinGroups(pieces []string) []string {
	var out []string
	for _, p := range pieces {
		if n := len(out); n > 0 {
			prev := out[n-1]
			first, _, _ := strings.Cut(p, ";")
			last := prev[strings.LastIndexByte(prev, ';')+1:]
			targets := !strings.Contains(prev, ";")
			if targets && isTarget(first) || strings.HasPrefix(last, "values=") && !strings.Contains(first, "=") {
				out[n-1] += "," + p
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// isTarget reports whether s is HOST:PORT or HOST:PORT=WEIGHT.
func isTarget(s string) bool {
	addr, _, err := upstream.ParseSpec(strings.TrimSpace(s))
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	p, perr := strconv.Atoi(port)
	return err == nil && upstream.ValidHost(host) && perr == nil && p >= 1 && p <= 65535
}

// group is one --group value.
type group struct {
	route.Group
	balanceSet bool // balance= was written
}

// parseGroup reads NAME=TARGET[,TARGET...][;values=V[,V...]][;default][;balance=key|spread].
func parseGroup(raw string) (group, error) {
	var g group
	fail := func(format string, a ...any) (group, error) {
		return group{}, settings.Errorf("group", "invalid value %q for --group: %s", raw, fmt.Sprintf(format, a...))
	}
	parts := strings.Split(raw, ";")
	name, list, ok := strings.Cut(parts[0], "=")
	g.Name = strings.TrimSpace(name)
	if !ok || g.Name == "" {
		return fail("want NAME=TARGET[,TARGET...][;values=V,...][;default][;balance=key|spread]")
	}
	for _, t := range strings.Split(list, ",") {
		if t = strings.TrimSpace(t); t == "" {
			continue
		}
		if !isTarget(t) {
			return fail("target %q: want HOST:PORT or HOST:PORT=WEIGHT (weight 1..%d)", t, upstream.MaxWeight)
		}
		g.Targets = append(g.Targets, t)
	}
	if len(g.Targets) == 0 {
		return fail("group %q has no targets", g.Name)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		switch k {
		case "values":
			for _, x := range strings.Split(v, ",") {
				if x = strings.TrimSpace(x); x != "" {
					g.Values = append(g.Values, x)
				}
			}
		case "default":
			g.Default = true
		case "balance":
			switch v {
			case "key":
			case "spread":
				g.Spread = true
			default:
				return fail("balance %q: want key (by --route-key) or spread", v)
			}
			g.balanceSet = true
		case "":
		default:
			return fail("unknown part %q: want values=, default or balance=", k)
		}
	}
	return g, nil
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
		// NDJSON clients are never written to: no session tickets.
		opts := tlsutil.ServerOptions{CertFile: cert, KeyFile: key, ClientCAFile: ca, OnReloadError: onErr, NoSessionTickets: !c.Bool("passthrough")}
		if server, err = tlsutil.Server(opts); err != nil {
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
func passthroughConfig(c Values, log *slog.Logger, udp bool) (passthrough.Config, error) {
	cfg := passthrough.DefaultConfig()
	cfg.Logger, cfg.UDP, cfg.UDPIdleTimeout = log, udp, c.Duration("udp-idle-timeout")
	var err error
	if cfg.Targets, err = targets(c); err != nil {
		return cfg, err
	}
	cfg.Discovered = discovered(c)
	cfg.Balance, cfg.HashKey, cfg.HashOn = c.String("balance"), passthrough.HashKey(c.String("hash-key")), c.String("hash-on")
	cfg.HashKeyTimeout = c.Duration("hash-key-timeout")
	if rng, ok := strings.CutPrefix(c.String("hash-key"), "ip+first:"); ok {
		from, to, _ := strings.Cut(rng, ":")
		a, errA := strconv.Atoi(from)
		b, errB := strconv.Atoi(to)
		if errA != nil || errB != nil || a < 0 || b <= a {
			return cfg, settings.Errorf("hash-key", "invalid value %q for --hash-key: want ip+first:START:END, such as ip+first:0:16", c.String("hash-key"))
		}
		cfg.HashKey, cfg.HashFirst = passthrough.HashIP, passthrough.ByteRange{Offset: a, Length: b - a}
	}
	cfg.EventLoop, cfg.EventLoops, cfg.EventLoopThreads = c.Bool("event-loop"), c.Int("event-loops"), c.Bool("event-loop-threads")
	cfg.ConnectRetries, cfg.MaxFails = c.Int("connect-retries"), c.Int("max-fails")
	cfg.FailTimeout, cfg.IdleTimeout = c.Duration("fail-timeout"), c.Duration("idle-timeout")
	cfg.HalfCloseTimeout = c.Duration("half-close-timeout")
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
	if err := fieldError("passthrough", cfg.Validate()); err != nil {
		return cfg, err
	}
	for _, n := range []string{"hash-key", "hash-on", "hash-key-timeout"} {
		if c.IsSet(n) && cfg.Balance != "hash" {
			return cfg, settings.Errorf(n, "--%s needs --balance hash", n)
		}
	}
	return cfg, nil
}

// checkConfig maps the --check flags; ok is false when checks are off.
func checkConfig(c Values, log *slog.Logger, targetTLS func() (*tls.Config, error)) (cfg health.Config, ok bool, err error) {
	kind := c.String("check")
	if kind == "" {
		for _, n := range []string{"check-interval", "check-timeout", "check-rise", "check-fall", "check-http-method",
			"check-http-path", "check-http-status", "check-http-body", "check-tls", "check-port", "check-udp-send", "check-udp-expect"} {
			if c.IsSet(n) {
				return cfg, false, settings.Errorf(n, "--%s needs --check", n)
			}
		}
		return cfg, false, nil
	}
	if kind == health.KindUDP && !c.Bool("passthrough") {
		return cfg, false, settings.Errorf("check", "--check udp needs --passthrough: NDJSON targets are TCP receivers (use tcp or http)")
	}
	cfg = health.DefaultConfig(kind)
	cfg.Logger = log
	cfg.Interval, cfg.Timeout = c.Duration("check-interval"), c.Duration("check-timeout")
	cfg.Rise, cfg.Fall = c.Int("check-rise"), c.Int("check-fall")
	cfg.HTTP.Method, cfg.HTTP.Path = c.String("check-http-method"), c.String("check-http-path")
	cfg.HTTP.Status, cfg.HTTP.Body = c.Int("check-http-status"), c.String("check-http-body")
	cfg.Port, cfg.UDP.Expect = c.Int("check-port"), c.String("check-udp-expect")
	if cfg.UDP.Send, err = datagram(c.String("check-udp-send")); err != nil {
		return cfg, false, settings.Errorf("check-udp-send", "invalid value %q for --check-udp-send: %v", c.String("check-udp-send"), err)
	}
	if kind != health.KindUDP {
		for _, n := range []string{"check-udp-send", "check-udp-expect"} {
			if c.IsSet(n) {
				return cfg, false, settings.Errorf(n, "--%s needs --check udp", n)
			}
		}
	}
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
	if err := fieldError("health", cfg.Validate()); err != nil {
		return cfg, false, err
	}
	return cfg, true, nil
}

// datagram decodes --check-udp-send: hex:HEX, or text with Go's escapes
// (\n, \t, \xHH...).
func datagram(v string) ([]byte, error) {
	if h, ok := strings.CutPrefix(v, "hex:"); ok {
		b, err := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
		if err != nil {
			return nil, errors.New("hex: want pairs of hex digits")
		}
		return b, nil
	}
	s, err := strconv.Unquote(`"` + strings.ReplaceAll(v, `"`, `\"`) + `"`)
	if err != nil {
		return nil, errors.New(`bad escape: use \n, \r, \t, \\ or \xHH`)
	}
	return []byte(s), nil
}

// fieldError turns an error of package pkg's Config.Validate into a
// *settings.Error naming the setting of the field at fault (see
// settings.Setting.Fields); nil stays nil. A field no setting fills (its
// value came from a library default, so this is a bug) names none.
func fieldError(pkg string, err error) error {
	if err == nil {
		return nil
	}
	var ie *invalid.Error
	if !errors.As(err, &ie) {
		return &settings.Error{Msg: "invalid settings: " + err.Error(), Err: err}
	}
	s, ok := settings.ByField(pkg + "." + ie.Field)
	if !ok {
		return &settings.Error{Msg: "invalid settings: " + ie.Field + ": " + ie.Msg, Err: err}
	}
	return &settings.Error{Setting: s.Name, Msg: "invalid value for --" + s.Name + ": " + ie.Msg, Err: err}
}

// discovered reports whether targets also come from DNS.
func discovered(c Values) bool {
	return len(c.StringSlice("target-dns"))+len(c.StringSlice("target-srv")) > 0
}

// discoveryConfig maps the DNS flags; ok is false when there are no names.
func discoveryConfig(c Values, log *slog.Logger, static []string) (cfg discovery.Config, ok bool, err error) {
	cfg = discovery.Config{Static: static, DNS: splitList(c.StringSlice("target-dns")), SRV: splitList(c.StringSlice("target-srv")), Interval: c.Duration("dns-interval"), MaxTargets: c.Int("dns-max-targets"), Logger: log}
	if len(cfg.DNS)+len(cfg.SRV) == 0 {
		for _, n := range []string{"dns-interval", "dns-max-targets", "dns-resolver"} {
			if c.IsSet(n) {
				return cfg, false, settings.Errorf(n, "--%s needs --target-dns or --target-srv", n)
			}
		}
		return cfg, false, nil
	}
	cfg.Server = c.String("dns-resolver")
	if err := fieldError("discovery", cfg.Validate()); err != nil {
		return cfg, false, err
	}
	return cfg, true, nil
}
