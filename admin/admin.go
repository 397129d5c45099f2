package admin

import (
	"context"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/upstream"
)

// Listener is what the API shows of one listener and lets operators change.
type Listener interface {
	// Info describes the listener and its counters now.
	Info() ListenerInfo
	// Targets is the listener's target set.
	Targets() *upstream.Set
}

// statser is a Listener whose target counts go on from the instances a
// reload replaced: the admin API shows them rather than the set's own.
type statser interface {
	TargetStats(t *upstream.Target) upstream.Stats
}

// ListenerInfo describes a listener.
type ListenerInfo struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	Mode     string `json:"mode"`              // "ndjson" or "passthrough"
	Proto    string `json:"proto"`             // "tcp" or "udp"
	Balance  string `json:"balance,omitempty"` // passthrough's policy
	TLS      bool   `json:"tls"`
	Active   int64  `json:"active_connections"`
	Accepted uint64 `json:"accepted_connections"`
	// Ledger is the NDJSON listener's account of its lines, replaced
	// and removed instances of the same name included.
	Ledger *LedgerInfo `json:"ledger,omitempty"`
	// Spool is the NDJSON listener's disk spool, when it has one.
	Spool *SpoolInfo `json:"spool,omitempty"`
}

// LedgerInfo is a listener's account of its lines: received = delivered +
// the sum of dropped + spooled + in flight.
type LedgerInfo struct {
	Received  uint64            `json:"received"`
	Delivered uint64            `json:"delivered"`
	InFlight  uint64            `json:"in_flight"`
	Dropped   map[string]uint64 `json:"dropped"` // by reason
	// Spooled is what stopped instances left in the spool (the one that
	// opens it next receives them again).
	Spooled uint64 `json:"spooled,omitempty"`
	// Replayed is what instances found in the spool at open, left by an
	// earlier one: part of Received.
	Replayed uint64 `json:"replayed,omitempty"`
}

// SpoolInfo is an NDJSON listener's disk spool (--spool-dir).
type SpoolInfo struct {
	Dir string `json:"dir"`
	// Open is false while the spool waits for the instance a reload
	// replaces to let it go (lines go to memory meanwhile).
	Open bool `json:"open"`
	// Accepting: the spool is open and takes lines without waiting: no
	// append failed in the last 10 s, and it has room (none waits for
	// it) or --spool-full drop-oldest makes room. The listener
	// then keeps what it reads while no target is up, and /readyz counts
	// it ready: a pod whose receivers are all down keeps its clients.
	Accepting        bool    `json:"accepting"`
	Bytes            int64   `json:"bytes"`
	MaxBytes         int64   `json:"max_bytes"`
	Batches          int     `json:"batches"` // not yet delivered
	Lines            int     `json:"lines"`   // in those batches
	Segments         int     `json:"segments"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"` // of the oldest segment held; 0 when none
	Appends          uint64  `json:"appends"`
	HandedOff        uint64  `json:"handed_off"` // appends queued from memory, not read back
	Fsyncs           uint64  `json:"fsyncs"`
	FsyncSeconds     float64 `json:"fsync_seconds"`
	Replayed         uint64  `json:"replayed"` // batches left by an earlier run, delivered by this one
	CorruptTails     uint64  `json:"corrupt_tails"`
	DroppedLines     uint64  `json:"dropped_lines"`   // by --spool-full drop-oldest
	LostLines        uint64  `json:"lost_lines"`      // could not be read back (damaged, removed)
	UnspooledLines   uint64  `json:"unspooled_lines"` // queued in memory while the spool was not open
	HeldBack         int64   `json:"held_back"`       // clients waiting for memory because the spool refused their lines
	Errors           uint64  `json:"errors"`          // failed appends and fsyncs
	LastError        string  `json:"last_error,omitempty"`
}

// Config configures the admin server.
type Config struct {
	// Addr is host:port to listen on. Bind it to loopback.
	Addr string
	// TokenFile, if set, holds the bearer token the POST routes require.
	// It is read at New and again when it changes; surrounding white
	// space is ignored. Without it, the POST routes accept only requests
	// from loopback peers that a web page cannot make.
	TokenFile string
	// TokenForReads makes every route but /healthz and /readyz require
	// the token too.
	TokenForReads bool
	// Hosts are the names, besides IP addresses, localhost and Addr's
	// host, that requests may carry in their Host header (a Service name
	// that Prometheus scrapes, say). A request with the token may carry
	// any.
	Hosts []string
	// TLS, if set, serves HTTPS with this config.
	TLS *tls.Config
	// IdleTimeout closes a keep-alive connection with no request for that
	// long; zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Listeners returns the listeners now (they may change on reload).
	Listeners func() []Listener
	// Reloads, if set, reports the config file's reloads.
	Reloads func() ReloadInfo
	// Metrics, if set, serves GET /metrics (Prometheus text format).
	Metrics http.Handler
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Listen opens the socket (nil: net.Listen). A process started by an
	// upgrade takes the old process's socket this way.
	Listen func(addr string) (net.Listener, error)
}

// ReloadInfo describes the config file's reloads.
type ReloadInfo struct {
	Path string `json:"path,omitempty"` // "" without a config file
	// Applied and Refused count reloads as the metric ndlb.config.reloads
	// does by ndlb.outcome; a refused one left the running config as it
	// was.
	Applied uint64 `json:"applied"`
	Refused uint64 `json:"refused"`
	// Last is when the last reload was tried; LastOutcome is "applied",
	// "partial" (applied, but listeners that could not listen kept their
	// old config or did not start: counted in Applied, its error in
	// LastError) or "refused".
	Last        time.Time `json:"last,omitzero"`
	LastOutcome string    `json:"last_outcome,omitempty"`
	// LastError is why the last refused (or partial) reload was, and
	// LastErrorAt when; they stay after later reloads are applied.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

var tracer = otel.Tracer("github.com/ndlb/ndlb/admin")

// Errors of New.
var (
	ErrConfig     = errors.New("admin: invalid config")
	ErrEmptyToken = errors.New("admin: token file is empty")
)

//go:embed openapi.json
var spec []byte

//go:embed status.html
var statusPage []byte

// Server is the admin HTTP server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	token    *token
	mux      *http.ServeMux
	http     *http.Server
	ln       net.Listener
	done     chan error
	stopping atomic.Bool // shutting down: not ready
}

// Stopping makes /readyz fail from now on: the process is shutting down, so
// orchestrators should send no new traffic.
func (s *Server) Stopping() { s.stopping.Store(true) }

// New checks cfg, reads the token file and listens on cfg.Addr.
func New(cfg Config) (*Server, error) {
	if cfg.Listeners == nil {
		return nil, fmt.Errorf("%w: listeners are required", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), done: make(chan error, 1)}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.TokenFile != "" {
		s.token = &token{path: cfg.TokenFile, log: s.log.Warn}
		if len(s.token.get()) == 0 {
			_, err := readToken(cfg.TokenFile)
			return nil, err
		}
	}
	if host, _, _ := net.SplitHostPort(cfg.Addr); s.token == nil && !isLoopback(host) {
		s.log.Warn("the admin API listens beyond loopback without --admin-token-file: anyone who reaches it can read the targets and config; changes are refused from other hosts", "addr", cfg.Addr)
	}
	for pattern, h := range s.routes() {
		s.mux.Handle(pattern, h)
	}
	listen := cfg.Listen
	if listen == nil {
		listen = func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	}
	ln, err := listen(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	s.ln = ln
	idle := cfg.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: readTimeout, WriteTimeout: writeTimeout,
		IdleTimeout: idle, MaxHeaderBytes: 64 << 10, TLSConfig: cfg.TLS, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	return s, nil
}

// isLoopback reports whether host is a loopback address or localhost.
func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return strings.EqualFold(host, "localhost") || ip != nil && ip.IsLoopback()
}

// Validate checks the address (HOST:PORT) and reads the token file, so
// that a bad one is reported before anything starts. Its errors are
// *invalid.Error naming the field, wrapping ErrConfig (ErrEmptyToken for
// an empty token file).
func (c Config) Validate() error {
	host, port, err := net.SplitHostPort(c.Addr)
	if p, perr := strconv.Atoi(port); err != nil || perr != nil || p < 0 || p > 65535 || strings.ContainsAny(host, " /") {
		return invalid.Field(ErrConfig, "Addr", "address %q: want HOST:PORT, such as 127.0.0.1:9900", c.Addr)
	}
	if c.TokenFile != "" {
		if _, err := readToken(c.TokenFile); err != nil {
			return err
		}
	}
	return nil
}

// maxTokenBytes bounds what readToken reads: a token is far shorter.
const maxTokenBytes = 64 << 10

// readToken reads the bearer token from path: one line of bytes an
// Authorization header can carry (no control characters but tabs),
// spaces and newlines around it trimmed.
func readToken(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, invalid.Field(ErrConfig, "TokenFile", "token file: %v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	switch {
	case err != nil:
		return nil, invalid.Field(ErrConfig, "TokenFile", "token file: %v", err)
	case len(b) > maxTokenBytes:
		return nil, invalid.Field(ErrConfig, "TokenFile", "token file %s is over 64KiB: is it the token?", path)
	}
	tok := []byte(strings.TrimSpace(string(b)))
	if len(tok) == 0 {
		return nil, invalid.Field(ErrEmptyToken, "TokenFile", "token file %s holds no token", path)
	}
	for _, c := range tok {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, invalid.Field(ErrConfig, "TokenFile",
				"token file %s holds more than one line, or a control character an HTTP header cannot carry (%q): the token is one line", path, c)
		}
	}
	return tok, nil
}

// routes maps each route pattern to its handler. The spec test checks this
// table against openapi.json.
func (s *Server) routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /healthz":                         http.HandlerFunc(s.healthz),
		"GET /readyz":                          http.HandlerFunc(s.readyz),
		"GET /api/v1/listeners":                s.guard(http.HandlerFunc(s.listeners)),
		"GET /api/v1/targets":                  s.guard(http.HandlerFunc(s.targets)),
		"POST /api/v1/targets/{addr}/{action}": s.authorized(http.HandlerFunc(s.setState)),
		"GET /openapi.json":                    s.guard(http.HandlerFunc(s.openapi)),
		"GET /api/v1/config":                   s.guard(http.HandlerFunc(s.config)),
		"GET /metrics":                         s.guard(http.HandlerFunc(s.metrics)),
		"GET /{$}":                             s.guard(http.HandlerFunc(s.status)),
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Socket is the listening socket, to pass on in an upgrade.
func (s *Server) Socket() net.Listener { return s.ln }

// Handler is the API's handler, for tests.
func (s *Server) Handler() http.Handler { return s.mux }

// Start serves in the background.
func (s *Server) Start() {
	ln := newConnLimit(newPeerLimit(s.ln, MaxConnsPerPeer), MaxConns)
	s.http.ConnState = ln.track
	go func() {
		if s.cfg.TLS != nil {
			s.done <- s.http.ServeTLS(ln, "", "")
		} else {
			s.done <- s.http.Serve(ln)
		}
	}()
	s.log.Info("admin API listening", "addr", s.ln.Addr().String(), "token", s.token != nil, "tls", s.cfg.TLS != nil)
}

// Shutdown stops the server, waiting for requests in flight until ctx is
// done.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	<-s.done
	return err
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readiness is /readyz's body.
type readiness struct {
	Ready        bool            `json:"ready"`
	ShuttingDown bool            `json:"shutting_down,omitempty"`
	Listeners    map[string]bool `json:"listeners"` // listener name: has a target up, or spools
	// Spooling names the listeners ready only because their spool
	// takes what they read: no target is up.
	Spooling []string `json:"spooling,omitempty"`
}

// readyz is ready when every listener has at least one target up, or a
// spool that takes lines (SpoolInfo.Accepting).
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	r := readiness{Ready: !s.stopping.Load(), ShuttingDown: s.stopping.Load(), Listeners: map[string]bool{}}
	for _, l := range s.cfg.Listeners() {
		up := false
		for _, t := range l.Targets().Targets() {
			if t.State() == upstream.StateUp {
				up = true
				break
			}
		}
		info := l.Info()
		if !up && info.Spool != nil && info.Spool.Accepting {
			up = true
			r.Spooling = append(r.Spooling, info.Name)
		}
		r.Listeners[info.Name] = up
		r.Ready = r.Ready && up
	}
	code := http.StatusOK
	if !r.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, r)
}

func (s *Server) listeners(w http.ResponseWriter, _ *http.Request) {
	out := []ListenerInfo{}
	for _, l := range s.cfg.Listeners() {
		out = append(out, l.Info())
	}
	writeJSON(w, http.StatusOK, out)
}

// targetInfo is one target in /api/v1/targets.
type targetInfo struct {
	Listener  string     `json:"listener"`
	Addr      string     `json:"addr"`
	Group     string     `json:"group,omitempty"`
	State     string     `json:"state"`
	Removed   bool       `json:"removed"`
	Weight    int        `json:"weight"`
	Active    int64      `json:"active_connections"`
	LinesOut  uint64     `json:"lines_out"`
	BytesOut  uint64     `json:"bytes_out"`
	BytesIn   uint64     `json:"bytes_in"`
	Failures  uint64     `json:"failures"`
	LastError string     `json:"last_error,omitempty"`
	LastCheck *checkInfo `json:"last_check,omitempty"`
}

type checkInfo struct {
	At    time.Time `json:"at"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
}

func (s *Server) targets(w http.ResponseWriter, _ *http.Request) {
	out := []targetInfo{}
	for _, l := range s.cfg.Listeners() {
		name := l.Info().Name
		sl, _ := l.(statser)
		for _, t := range l.Targets().Targets() {
			st := t.Stats()
			if sl != nil {
				st = sl.TargetStats(t)
			}
			ti := targetInfo{
				Listener: name, Addr: st.Addr, Group: st.Group, State: st.State.String(), Removed: st.Removed, Weight: st.Weight, Active: st.Conns,
				LinesOut: st.Lines, BytesOut: st.Bytes, BytesIn: st.BytesIn, Failures: st.Failures,
			}
			if err := t.LastErr(); err != nil {
				ti.LastError = err.Error()
			}
			if c := t.LastCheck(); !c.At.IsZero() {
				ti.LastCheck = &checkInfo{At: c.At, OK: c.Err == nil}
				if c.Err != nil {
					ti.LastCheck.Error = c.Err.Error()
				}
			}
			out = append(out, ti)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// stateChange is the body of a POST's answer.
type stateChange struct {
	Addr    string   `json:"addr"`
	Action  string   `json:"action"`
	Changed []string `json:"changed"` // listeners whose target changed
	State   string   `json:"state"`
}

// setState drains, enables or disables a target in every listener that has
// it, or in ?listener=NAME only.
func (s *Server) setState(w http.ResponseWriter, r *http.Request) {
	addr, action := r.PathValue("addr"), r.PathValue("action")
	only := r.URL.Query().Get("listener")
	res := stateChange{Addr: addr, Action: action, Changed: []string{}}
	found := false
	for _, l := range s.cfg.Listeners() {
		name := l.Info().Name
		if only != "" && name != only {
			continue
		}
		t, err := l.Targets().Lookup(addr)
		if err != nil {
			continue
		}
		found = true
		var changed bool
		switch action {
		case "drain":
			changed = t.Drain()
		case "enable":
			changed = t.Enable()
		case "disable":
			changed = t.Disable()
		default:
			writeError(w, http.StatusNotFound, fmt.Sprintf("unknown action %q: want drain, enable or disable", action))
			return
		}
		if changed {
			res.Changed = append(res.Changed, name)
			_, span := tracer.Start(r.Context(), "ndlb.admin.target_state")
			span.AddEvent(action, trace.WithAttributes(attribute.String("ndlb.listener", name), attribute.String("server.address", addr)))
			span.End()
			s.log.Info("target state set by operator", "listener", name, "target", addr, "action", action, "state", t.State().String())
		}
		res.State = t.State().String()
	}
	if !found {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no target %q", addr))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// status serves the status page: one self-contained HTML document.
func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	w.Write(statusPage)
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Metrics == nil {
		writeError(w, http.StatusNotFound, "metrics are off")
		return
	}
	s.cfg.Metrics.ServeHTTP(w, r)
}

func (s *Server) config(w http.ResponseWriter, _ *http.Request) {
	var info ReloadInfo
	if s.cfg.Reloads != nil {
		info = s.cfg.Reloads()
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(spec)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
