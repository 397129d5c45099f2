package admin

import (
	"crypto/subtle"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Limits of the admin server: it shares the process's file limit with the
// data path, so it holds few connections and none for long.
const (
	// MaxConns bounds the admin API's connections at once. At the bound, a
	// new connection takes the place of one that holds no request (see
	// connLimit); when every one is busy, new ones wait.
	MaxConns = 64
	// MaxConnsPerPeer bounds those of one peer address; beyond it its new
	// connections are closed at once, so that one peer holding idle
	// connections cannot keep the probes out.
	MaxConnsPerPeer = 16
	// DefaultIdleTimeout closes a keep-alive connection with no request.
	DefaultIdleTimeout = 30 * time.Second
	readTimeout        = 10 * time.Second
	writeTimeout       = 30 * time.Second
)

// token is the bearer token, read again when its file changes.
type token struct {
	path string
	log  func(msg string, args ...any)

	mu   sync.Mutex
	val  []byte    // guarded by mu
	seen tokenFile // the file val came from, or that last failed; guarded by mu
}

// tokenFile identifies a version of the token file: a new one put in
// place by rename, or rewritten with its old size and time, differs in its
// inode or change time.
type tokenFile struct {
	size         int64
	mtime, ctime time.Time
	ino          uint64
}

func statToken(fi os.FileInfo) tokenFile {
	v := tokenFile{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		v.ino, v.ctime = st.Ino, time.Unix(st.Ctim.Unix())
	}
	return v
}

// get returns the token, reading the file again first if it changed. A
// file that cannot be read, or is empty, keeps the previous token.
func (t *token) get() []byte {
	if t == nil {
		return nil
	}
	fi, err := os.Stat(t.path)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		return t.val
	}
	now := statToken(fi)
	if now == t.seen {
		return t.val
	}
	t.seen = now
	v, err := readToken(t.path)
	if err != nil {
		t.log("admin token file changed but cannot be used; keeping the previous token", "path", t.path, "err", err)
		return t.val
	}
	if t.val != nil && subtle.ConstantTimeCompare(v, t.val) != 1 {
		t.log("admin token rotated", "path", t.path)
	}
	t.val = v
	return v
}

// checkHost refuses a request whose Host header names neither an IP
// address, nor localhost, nor the configured admin host, nor one of
// Config.Hosts: a page that rebinds its own DNS name to the admin address
// cannot read the API.
func (s *Server) checkHost(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	cfgHost, _, _ := net.SplitHostPort(s.cfg.Addr)
	if net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") || host != "" && strings.EqualFold(host, cfgHost) {
		return true
	}
	for _, h := range s.cfg.Hosts {
		if strings.EqualFold(host, h) {
			return true
		}
	}
	return false
}

// crossSite reports a request that a browser made for another site: an
// Origin other than the admin API's own, or Sec-Fetch-Site saying so.
func crossSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return true
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	u, err := url.Parse(origin)
	return err != nil || !strings.EqualFold(u.Host, r.Host)
}

// simpleRequest reports a request a plain HTML form (or a no-preflight
// fetch) can send: without a JSON body or a header such as
// X-Requested-By, which only scripts of the same origin, or non-browser
// clients, can add.
func simpleRequest(r *http.Request) bool {
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	return !strings.EqualFold(strings.TrimSpace(ct), "application/json") && r.Header.Get("X-Requested-By") == ""
}

// loopback reports a request from this host.
func loopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// bearer reports whether r carries tok (the scheme is case-insensitive, RFC
// 9110 section 11.1).
func bearer(r *http.Request, tok []byte) bool {
	scheme, got, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	return strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), tok) == 1
}

// guard is the checks every route but /healthz and /readyz passes: the
// Host header, and the token for reads when Config.TokenForReads.
func (s *Server) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := s.token.get()
		// A page that rebinds a name cannot send the token: with it, any
		// name will do.
		if !s.checkHost(r) && (len(tok) == 0 || !bearer(r, tok)) {
			writeError(w, http.StatusForbidden, "the Host header names neither an IP address, localhost, the admin address nor one of --admin-hosts")
			return
		}
		if s.cfg.TokenForReads && len(tok) > 0 && !bearer(r, tok) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ndlb"`)
			writeError(w, http.StatusUnauthorized, "a valid bearer token is required")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// authorized guards a state-changing route: it requires the token when one
// is set; without one, it accepts only requests from loopback peers that a
// web page cannot forge (see simpleRequest). Requests a browser marks as
// cross-site are refused either way.
func (s *Server) authorized(h http.Handler) http.Handler {
	return s.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := s.token.get()
		switch {
		case crossSite(r):
			writeError(w, http.StatusForbidden, "cross-site requests are refused")
		case len(tok) > 0 && !bearer(r, tok):
			w.Header().Set("WWW-Authenticate", `Bearer realm="ndlb"`)
			writeError(w, http.StatusUnauthorized, "a valid bearer token is required")
		case len(tok) == 0 && !loopback(r):
			writeError(w, http.StatusForbidden, "without --admin-token-file, changes are accepted only from this host")
		case len(tok) == 0 && simpleRequest(r):
			writeError(w, http.StatusForbidden, "send Content-Type: application/json or an X-Requested-By header (a web page cannot)")
		default:
			h.ServeHTTP(w, r)
		}
	}))
}

// peerLimit is a listener that closes a new connection from a peer address
// that already holds max.
type peerLimit struct {
	net.Listener
	max int

	mu    sync.Mutex
	conns map[string]int // by peer address; guarded by mu
}

func newPeerLimit(ln net.Listener, max int) *peerLimit {
	return &peerLimit{Listener: ln, max: max, conns: map[string]int{}}
}

// Accept returns the next connection whose peer is under its limit.
func (l *peerLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.mu.Lock()
		over := l.conns[peer] >= l.max
		if !over {
			l.conns[peer]++
		}
		l.mu.Unlock()
		if over {
			c.Close()
			continue
		}
		return &peerConn{Conn: c, l: l, peer: peer}, nil
	}
}

// peerConn gives its peer's place back when closed.
type peerConn struct {
	net.Conn
	l    *peerLimit
	peer string
	once sync.Once
}

func (c *peerConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.conns[c.peer]--; c.l.conns[c.peer] <= 0 {
			delete(c.l.conns, c.peer)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// quietFor is how long a connection must have been connected without
// sending a request before connLimit closes it to make room (an idle
// keep-alive connection may be closed at once).
const quietFor = time.Second

// connLimit bounds the connections at once. At the bound, the next
// connection accepted takes the place of one that holds no request: idle
// between keep-alive requests (first), or connected for quietFor without
// sending one, which is closed, as a browser or Prometheus reconnects. So
// a few peers holding idle connections cannot keep the probes out. When
// every connection is busy with a request, the new one waits for a place.
type connLimit struct {
	net.Listener
	places chan struct{}
	done   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	quiet map[net.Conn]quietConn // guarded by mu
}

type quietConn struct {
	idle  bool // between requests, not yet sent one
	since time.Time
}

func newConnLimit(ln net.Listener, max int) *connLimit {
	return &connLimit{Listener: ln, places: make(chan struct{}, max), done: make(chan struct{}), quiet: map[net.Conn]quietConn{}}
}

// Accept returns the next connection once it has a place.
func (l *connLimit) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	select {
	case l.places <- struct{}{}:
	default:
		l.evict()
		select {
		case l.places <- struct{}{}:
		case <-l.done:
			c.Close()
			return nil, net.ErrClosed
		}
	}
	return &placedConn{Conn: c, l: l}, nil
}

// Close closes the listening socket and ends an Accept waiting for a place.
func (l *connLimit) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// track is the http.Server's ConnState: it keeps the connections that hold
// no request.
func (l *connLimit) track(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateNew:
		l.quiet[c] = quietConn{since: time.Now()}
	case http.StateIdle:
		l.quiet[c] = quietConn{idle: true, since: time.Now()}
	default:
		delete(l.quiet, c)
	}
}

// evict closes a connection that holds no request, if there is one: the
// longest idle, else the longest connected for quietFor without a request.
func (l *connLimit) evict() {
	l.mu.Lock()
	var victim net.Conn
	var best quietConn
	now := time.Now()
	for c, q := range l.quiet {
		if !q.idle && now.Sub(q.since) < quietFor {
			continue
		}
		if victim == nil || q.idle && !best.idle || q.idle == best.idle && q.since.Before(best.since) {
			victim, best = c, q
		}
	}
	if victim != nil {
		delete(l.quiet, victim)
	}
	l.mu.Unlock()
	if victim != nil {
		victim.Close()
	}
}

// placedConn gives its place back when closed.
type placedConn struct {
	net.Conn
	l    *connLimit
	once sync.Once
}

func (c *placedConn) Close() error {
	c.once.Do(func() { <-c.l.places })
	return c.Conn.Close()
}
