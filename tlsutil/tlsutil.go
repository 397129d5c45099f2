package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Errors wrapped by the constructors.
var (
	// ErrConfig: options that do not make a configuration, such as a
	// certificate without its key.
	ErrConfig = errors.New("tlsutil: invalid options")
	// ErrNoCerts: a CA file that holds no PEM certificate.
	ErrNoCerts = errors.New("tlsutil: no certificates found")
)

// ServerOptions configure the listener side.
type ServerOptions struct {
	CertFile, KeyFile string
	// ClientCAFile, when set, requires clients to present a certificate
	// signed by one of its CAs.
	ClientCAFile string
	// OnReloadError, if set, is called when changed files fail to load; the
	// previous configuration stays in use.
	OnReloadError func(error)
	// NoSessionTickets sends clients no TLS 1.3 session tickets: for a
	// listener that never writes to its clients (NDJSON), the tickets
	// would be the only bytes they are sent, and a client that closes
	// without reading them resets its connection, which discards what it
	// sent that ndlb had not read yet.
	NoSessionTickets bool
}

// ClientOptions configure upstream connections.
type ClientOptions struct {
	// CAFile holds the CAs trusted for targets; empty means the system pool.
	CAFile string
	// ServerName overrides the name verified in the target's certificate.
	ServerName string
	// SkipVerify accepts any target certificate. For tests only.
	SkipVerify bool
	// CertFile and KeyFile are an optional client certificate (mTLS).
	CertFile, KeyFile string
	// OnReloadError is as in ServerOptions.
	OnReloadError func(error)
}

// Server returns the listener configuration. It fails if the files cannot be
// read now.
func Server(o ServerOptions) (*tls.Config, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, fmt.Errorf("%w: a listener certificate needs both a certificate and a key file", ErrConfig)
	}
	r := &reloader{files: []string{o.CertFile, o.KeyFile, o.ClientCAFile}, onErr: o.OnReloadError}
	r.load = func() (*tls.Config, error) {
		cert, err := loadPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, SessionTicketsDisabled: o.NoSessionTickets}
		if o.ClientCAFile != "" {
			if cfg.ClientCAs, err = loadPool(o.ClientCAFile); err != nil {
				return nil, err
			}
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return cfg, nil
	}
	if _, err := r.current(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.current()
		},
	}, nil
}

// Client returns a function that gives the upstream configuration for each
// new connection, reloaded when its files change. It fails if the files
// cannot be read now.
func Client(o ClientOptions) (func() (*tls.Config, error), error) {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, fmt.Errorf("%w: a client certificate needs both a certificate and a key file", ErrConfig)
	}
	r := &reloader{files: []string{o.CAFile, o.CertFile, o.KeyFile}, onErr: o.OnReloadError}
	r.load = func() (*tls.Config, error) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName, InsecureSkipVerify: o.SkipVerify}
		var err error
		if o.CAFile != "" {
			if cfg.RootCAs, err = loadPool(o.CAFile); err != nil {
				return nil, err
			}
		}
		if o.CertFile != "" {
			cert, err := loadPair(o.CertFile, o.KeyFile)
			if err != nil {
				return nil, err
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		return cfg, nil
	}
	if _, err := r.current(); err != nil {
		return nil, err
	}
	return r.current, nil
}

func loadPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return cert, fmt.Errorf("loading certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w in CA file %s", ErrNoCerts, file)
	}
	return pool, nil
}

// fingerprint identifies a version of a file.
type fingerprint struct {
	ino, size int64
	mtime     time.Time
}

func stat(path string) fingerprint {
	fi, err := os.Stat(path)
	if err != nil {
		return fingerprint{}
	}
	fp := fingerprint{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fp.ino = int64(st.Ino)
	}
	return fp
}

// reloader keeps a configuration built from files, rebuilt when they change.
type reloader struct {
	files []string // empty names are skipped
	load  func() (*tls.Config, error)
	onErr func(error)

	mu     sync.Mutex
	fps    []fingerprint // of the files cfg came from; guarded by mu
	cfg    *tls.Config   // the last good one; guarded by mu
	bad    []fingerprint // of the files that last failed to load; guarded by mu
	badErr error         // that failure; guarded by mu
}

// current returns the configuration, reloading it first if a file changed.
func (r *reloader) current() (*tls.Config, error) {
	fps := make([]fingerprint, len(r.files))
	for i, f := range r.files {
		if f != "" {
			fps[i] = stat(f)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.cfg != nil && equal(fps, r.fps):
		return r.cfg, nil
	case r.badErr != nil && equal(fps, r.bad):
		// Failed as they are: not parsed again (under this lock, on every
		// handshake) until a file changes.
		if r.cfg == nil {
			return nil, r.badErr
		}
		return r.cfg, nil
	}
	cfg, err := r.load()
	if err != nil {
		r.bad, r.badErr = fps, err
		if r.cfg == nil {
			return nil, err
		}
		if r.onErr != nil {
			r.onErr(err)
		}
		return r.cfg, nil
	}
	r.cfg, r.fps, r.bad, r.badErr = cfg, fps, nil, nil
	return cfg, nil
}

func equal(a, b []fingerprint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ForTarget returns get's config for a connection to addr (host:port): the
// config itself, or a copy whose ServerName is addr's host when the config
// names no server.
func ForTarget(get func() (*tls.Config, error), addr string) (*tls.Config, error) {
	cfg, err := get()
	if err != nil || cfg.ServerName != "" {
		return cfg, err
	}
	cfg = cfg.Clone()
	cfg.ServerName, _, _ = net.SplitHostPort(addr)
	return cfg, nil
}
