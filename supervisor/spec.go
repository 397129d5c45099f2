package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/upstream"
)

// Server is a listener's data path. ndjson.Server and passthrough.Server
// implement it.
type Server interface {
	// Start serves ln in the background.
	Start(ln net.Listener)
	// Err reports the listener failing on its own.
	Err() <-chan error
	// Handover stops accepting and returns the open listening socket for
	// a replacement, or nil when it cannot.
	Handover() net.Listener
	// Set is the server's targets.
	Set() *upstream.Set
	// Drain shuts the server down and reports whether it lost nothing.
	Drain() (clean bool)
}

// Mode makes a listener's Server from its mode's config, and describes it.
type Mode interface {
	// Name is the mode's name in the admin API: "ndjson" or
	// "passthrough".
	Name() string
	// New makes the server of the listener called name; book, if not
	// nil, keeps its ledger across reloads.
	New(name string, book *dispatch.Book) (Server, error)
	// Info is what the admin API shows of srv, which New made.
	Info(srv Server, name, addr string, book *dispatch.Book) admin.ListenerInfo
	// Lost describes, for the log, what exiting now would abandon.
	Lost(srv Server) []any
	// KeepAlive is the client sockets' TCP keepalive (negative: off).
	KeepAlive() time.Duration
	// Network is what the listener listens on: "tcp", or "udp" (its
	// socket is then a *listener.Packet).
	Network() string
}

// Spec is what the process runs.
type Spec struct {
	// LogLevel is applied by a reload at once.
	LogLevel slog.Level
	// Process is every process-wide setting as set (name: values), so
	// that a reload can tell which changed (see settings.Restart).
	Process map[string][]string
	// Listeners run side by side; their names are unique.
	Listeners []Listener
}

// Listener is one listener of a Spec.
type Listener struct {
	Name string
	Addr string // HOST:PORT to listen on
	Mode Mode
	// Targets are the static targets; Discovery, if not nil, adds those
	// of DNS names (its Static must be Targets).
	Targets   []string
	Discovery *discovery.Config
	// Health, if not nil, runs active health checks.
	Health *health.Config
	// Balance is the policy a reload switches to live (passthrough).
	Balance string
	// Settings is every setting of the listener as set (name: values).
	// A reload compares them and applies each change by its rule.
	Settings map[string][]string
	// Logger logs what concerns this listener (nil: the supervisor's).
	Logger *slog.Logger
}

// Validate checks what the supervisor relies on; each library checks its
// own config.
func (s Spec) Validate() error {
	if len(s.Listeners) == 0 {
		return fmt.Errorf("%w: no listener", ErrSpec)
	}
	seen := map[string]bool{}
	for _, l := range s.Listeners {
		switch {
		case l.Name == "":
			return fmt.Errorf("%w: a listener has no name", ErrSpec)
		case seen[l.Name]:
			return fmt.Errorf("%w: listener name %q is used twice", ErrSpec, l.Name)
		case l.Mode == nil:
			return &Error{Listener: l.Name, Err: fmt.Errorf("%w: no mode", ErrSpec)}
		case l.Addr == "":
			return &Error{Listener: l.Name, Err: fmt.Errorf("%w: no address", ErrSpec)}
		}
		for _, o := range s.Listeners {
			if o.Name == l.Name {
				break
			}
			if o.Mode.Network() == l.Mode.Network() && SameAddr(o.Addr, l.Addr) {
				return &Error{Listener: l.Name, Err: &sameAddrError{addr: l.Addr, other: o.Name}}
			}
		}
		seen[l.Name] = true
	}
	return nil
}

// SameAddr reports whether listening on a and on b (HOST:PORT) would
// collide: the same port (not 0, which picks a free one) on the same host,
// or on a wildcard address and any host. Host names are compared as
// written, but for localhost, which is loopback.
func SameAddr(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { ip := net.ParseIP(h); return h == "" || ip != nil && ip.IsUnspecified() }
	if wild(ha) || wild(hb) {
		return true
	}
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	return strings.EqualFold(ha, hb) || ia != nil && ia.Equal(ib) ||
		strings.EqualFold(ha, "localhost") && ib != nil && ib.IsLoopback() || strings.EqualFold(hb, "localhost") && ia != nil && ia.IsLoopback()
}

// Errors of Spec.Validate. ErrSpec is wrapped by all of them.
var (
	ErrSpec = errors.New("invalid spec")
	// ErrSameAddr: two listeners on one address and port (the second is
	// named by the Error).
	ErrSameAddr = errors.New("two listeners on one address")
)

// sameAddrError is ErrSameAddr, said with the addresses.
type sameAddrError struct{ addr, other string }

func (e *sameAddrError) Error() string {
	return fmt.Sprintf("%s is also the address of listener %q: two listeners on one port would split the clients between them", e.addr, e.other)
}

func (e *sameAddrError) Is(target error) bool { return target == ErrSameAddr || target == ErrSpec }

// Error is a problem with one listener.
type Error struct {
	Listener string
	// Listen is true when the listener's socket could not be opened;
	// otherwise its server could not be made.
	Listen bool
	Err    error
}

func (e *Error) Error() string { return fmt.Sprintf("listener %q: %v", e.Listener, e.Err) }

func (e *Error) Unwrap() error { return e.Err }
