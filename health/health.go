package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/tlsutil"
	"github.com/ndlb/ndlb/upstream"
)

// Defaults for Config.
const (
	DefaultInterval = 5 * time.Second
	DefaultTimeout  = 2 * time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	// MinInterval is the shortest Interval Validate accepts: a shorter
	// one would check without pause.
	MinInterval = 10 * time.Millisecond
)

// Kinds of check.
const (
	KindTCP  = "tcp"  // a TCP connection is accepted
	KindHTTP = "http" // an HTTP request gets the expected status (and body)
	KindUDP  = "udp"  // a UDP datagram gets an answer (holding the expected text)
)

// DefaultUDPSend is UDP.Send's default.
const DefaultUDPSend = "ping\n"

// MaxUDPSend bounds UDP.Send.
const MaxUDPSend = 1024

// Errors of the package.
var (
	// ErrConfig is wrapped by Validate's errors.
	ErrConfig = errors.New("health: invalid config")
	// ErrStatus is wrapped by an http check whose answer had another
	// status than the expected one.
	ErrStatus = errors.New("unexpected HTTP status")
	// ErrBody is wrapped by an http or udp check whose answer lacked the
	// expected text.
	ErrBody = errors.New("body lacks the expected text")
)

// HTTP configures an http check.
type HTTP struct {
	Method string // default GET
	Path   string // default /
	Status int    // expected status; default 200
	// Body, if set, must appear in the first 64 KiB of the response.
	Body string
	// TLS, if set, makes the check HTTPS with this config (its server
	// name defaults to the target's host).
	TLS func() (*tls.Config, error)
}

// UDP configures a udp check: a datagram is sent to the target and an
// answer must come within the timeout. A closed port fails at once when the
// kernel reports the ICMP error.
type UDP struct {
	// Send is the datagram's payload; empty means DefaultUDPSend.
	Send []byte
	// Expect, if set, must appear in the answer; otherwise any answer
	// passes.
	Expect string
}

// Config configures the checks of one target set.
type Config struct {
	Kind              string // KindTCP, KindHTTP or KindUDP
	Interval, Timeout time.Duration
	Rise, Fall        int
	HTTP              HTTP
	UDP               UDP
	// Port, if not 0, is checked on the target's host instead of the
	// target's own port: a side port, such as a TCP or HTTP health port
	// beside a UDP service.
	Port int
	// Name labels the checks' metrics (ndlb.listener); "" leaves the
	// label out.
	Name string
	// Dial opens check connections; nil means a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// Clock paces the checks and stamps their results; nil means the real
	// clock.
	Clock clockwork.Clock
}

// DefaultConfig returns the documented defaults for kind.
func DefaultConfig(kind string) Config {
	return Config{
		Kind: kind, Interval: DefaultInterval, Timeout: DefaultTimeout, Rise: DefaultRise, Fall: DefaultFall,
		HTTP: HTTP{Method: http.MethodGet, Path: "/", Status: http.StatusOK},
	}
}

// Validate reports the first problem as an *invalid.Error naming the field
// ("HTTP.Path" for one of HTTP's), wrapping ErrConfig.
func (c Config) Validate() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	switch {
	case c.Kind != KindTCP && c.Kind != KindHTTP && c.Kind != KindUDP:
		return bad("Kind", "check %q: want tcp, http or udp", c.Kind)
	case c.Port < 0 || c.Port > 65535:
		return bad("Port", "port %d: want 1..65535 (0: the target's own)", c.Port)
	case len(c.UDP.Send) > MaxUDPSend:
		return bad("UDP.Send", "a UDP check's datagram of %d bytes: want at most %d", len(c.UDP.Send), MaxUDPSend)
	case c.Interval < MinInterval:
		return bad("Interval", "interval %s: want at least %s", c.Interval, MinInterval)
	case c.Timeout <= 0:
		return bad("Timeout", "timeout %s must be positive", c.Timeout)
	case c.Timeout > c.Interval:
		return bad("Timeout", "timeout %s is longer than the interval %s", c.Timeout, c.Interval)
	case c.Rise < 1:
		return bad("Rise", "rise %d must be at least 1", c.Rise)
	case c.Fall < 1:
		return bad("Fall", "fall %d must be at least 1", c.Fall)
	}
	if c.Kind == KindHTTP {
		h := c.HTTP
		switch {
		case !strings.HasPrefix(h.Path, "/"):
			return bad("HTTP.Path", "HTTP path %q must start with /", h.Path)
		case strings.ContainsFunc(h.Path, func(r rune) bool { return r < ' ' || r == 0x7f || r == ' ' }):
			return bad("HTTP.Path", "HTTP path %q holds a space or a control character: escape it (%%20)", h.Path)
		case h.Status < 100 || h.Status > 599:
			return bad("HTTP.Status", "HTTP status %d: want 100..599", h.Status)
		case h.Method == "" || strings.ContainsFunc(h.Method, func(r rune) bool { return r <= ' ' || r == '/' || r >= 0x7f }):
			return bad("HTTP.Method", "HTTP method %q", h.Method)
		case h.Method == http.MethodHead && h.Body != "":
			return bad("HTTP.Body", "expected body text %q with the HEAD method, whose answers have no body: every check would fail", h.Body)
		}
	}
	return nil
}

var checkCounter = sync.OnceValue(func() metric.Int64Counter {
	c, _ := otel.Meter("github.com/ndlb/ndlb/health").Int64Counter("ndlb.health.checks", metric.WithUnit("{check}"),
		metric.WithDescription("Active health checks, by ndlb.listener, server.address and ndlb.outcome (ok or failed)."))
	return c
})

// Checker runs the checks of one target set.
type Checker struct {
	cfg    Config
	set    *upstream.Set
	log    *slog.Logger
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	client *http.Client
	clock  clockwork.Clock
}

// New returns a checker for set; cfg must be valid.
func New(cfg Config, set *upstream.Set) (*Checker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Checker{cfg: cfg, set: set, log: cfg.Logger, dial: cfg.Dial, clock: cfg.Clock}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.clock == nil {
		c.clock = clockwork.NewRealClock()
	}
	if c.dial == nil {
		d := &net.Dialer{KeepAlive: -1}
		c.dial = d.DialContext
	}
	if cfg.Kind == KindHTTP {
		c.client = &http.Client{
			Transport: &http.Transport{DialContext: c.dial, DisableKeepAlives: true, Proxy: nil},
			// A check judges the target's own answer.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c, nil
}

// Run checks every target of the set until ctx is done, following the
// set's membership.
func (c *Checker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	running := map[*upstream.Target]context.CancelFunc{}
	defer func() {
		for _, cancel := range running {
			cancel()
		}
	}()
	for {
		watch := c.set.Watch()
		seen := map[*upstream.Target]bool{}
		for _, t := range c.set.Targets() {
			seen[t] = true
			if _, ok := running[t]; ok || t.Removed() {
				continue
			}
			tctx, cancel := context.WithCancel(ctx)
			running[t] = cancel
			wg.Go(func() { c.watch(tctx, t) })
		}
		for t, cancel := range running {
			if !seen[t] || t.Removed() {
				cancel()
				delete(running, t)
			}
		}
		select {
		case <-watch:
		case <-ctx.Done():
			return
		}
	}
}

// watch checks t every interval and applies rise and fall.
func (c *Checker) watch(ctx context.Context, t *upstream.Target) {
	// Spread the first checks over an interval, so that many targets are
	// not all checked at once.
	timer := c.clock.NewTimer(rand.N(c.cfg.Interval))
	defer timer.Stop()
	ok, fail := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.Chan():
		}
		err := c.Check(ctx, t.Addr)
		if ctx.Err() != nil {
			return
		}
		outcome := "ok"
		if err != nil {
			outcome = "failed"
		}
		if cnt := checkCounter(); cnt != nil {
			attrs := []attribute.KeyValue{upstream.AttrServer.String(t.Addr), attribute.String("ndlb.outcome", outcome)}
			if c.cfg.Name != "" {
				attrs = append(attrs, upstream.AttrListener.String(c.cfg.Name))
			}
			cnt.Add(ctx, 1, metric.WithAttributes(attrs...))
		}
		if err == nil {
			ok, fail = ok+1, 0
		} else {
			ok, fail = 0, fail+1
		}
		decided := ok >= c.cfg.Rise || fail >= c.cfg.Fall
		if t.SetChecked(upstream.CheckResult{At: c.clock.Now(), Err: err}, err == nil, decided) {
			if err == nil {
				c.log.Info("target up: health checks pass", "target", t.Addr, "check", c.cfg.Kind, "rise", c.cfg.Rise)
			} else {
				c.log.Warn("target down: health checks fail", "target", t.Addr, "check", c.cfg.Kind, "fall", c.cfg.Fall, "err", err)
			}
		}
		timer.Reset(c.cfg.Interval)
	}
}

// Check runs one check of addr (of its host on Config.Port, if set).
func (c *Checker) Check(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if c.cfg.Port != 0 {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			addr = net.JoinHostPort(host, strconv.Itoa(c.cfg.Port))
		}
	}
	switch c.cfg.Kind {
	case KindTCP:
		conn, err := c.dial(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	case KindUDP:
		return c.checkUDP(ctx, addr)
	}
	return c.checkHTTP(ctx, addr)
}

// ErrNoAnswer is wrapped by a udp check that got no answer in time.
var ErrNoAnswer = errors.New("no answer")

// checkUDP sends the check's datagram and waits for an answer.
func (c *Checker) checkUDP(ctx context.Context, addr string) error {
	conn, err := c.dial(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	send := c.cfg.UDP.Send
	if len(send) == 0 {
		send = []byte(DefaultUDPSend)
	}
	if _, err := conn.Write(send); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("udp %s: %w within %s", addr, ErrNoAnswer, c.cfg.Timeout)
	case err != nil:
		return err
	case c.cfg.UDP.Expect != "" && !strings.Contains(string(buf[:n]), c.cfg.UDP.Expect):
		return fmt.Errorf("udp %s: %w %q", addr, ErrBody, c.cfg.UDP.Expect)
	}
	return nil
}

func (c *Checker) checkHTTP(ctx context.Context, addr string) error {
	h := c.cfg.HTTP
	scheme := "http"
	req, err := http.NewRequestWithContext(ctx, h.Method, "http://"+addr+h.Path, nil)
	if err != nil {
		return err
	}
	client := c.client
	if h.TLS != nil {
		cfg, err := tlsutil.ForTarget(h.TLS, addr)
		if err != nil {
			return err
		}
		scheme = "https"
		req.URL.Scheme = scheme
		tr := c.client.Transport.(*http.Transport).Clone()
		tr.TLSClientConfig = cfg
		client = &http.Client{Transport: tr, CheckRedirect: c.client.CheckRedirect}
		defer tr.CloseIdleConnections()
	}
	req.Header.Set("User-Agent", "ndlb-health-check")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != h.Status {
		return fmt.Errorf("%s %s://%s%s: %w %d, want %d", h.Method, scheme, addr, h.Path, ErrStatus, resp.StatusCode, h.Status)
	}
	if h.Body != "" {
		if err != nil {
			return err
		}
		if !strings.Contains(string(body), h.Body) {
			return fmt.Errorf("%s %s://%s%s: %w %q", h.Method, scheme, addr, h.Path, ErrBody, h.Body)
		}
	}
	return nil
}
