package passthrough

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Times of addrCache.
const (
	// addrTTL is how long a UDP target's resolved address is used before
	// it is looked up again (in the background: flows keep opening).
	addrTTL = 30 * time.Second
	// addrRetry is how long after a failed lookup the next is tried.
	addrRetry = 5 * time.Second
)

// errResolving is lookup's error for a name whose first lookup has not
// answered yet: the target is passed over, not held at fault.
var errResolving = errors.New("its address is being looked up")

// addrCache resolves UDP targets' host names in the background, so that the
// event loop never waits for DNS: a name is looked up when the server
// starts, when the loop first meets it, and again every addrTTL (the last
// answer serving meanwhile); a failed lookup is kept, and retried after
// addrRetry.
type addrCache struct {
	timeout time.Duration // of a lookup
	mu      sync.Mutex
	m       map[string]*cachedAddr // guarded by mu
}

type cachedAddr struct {
	ap      netip.AddrPort // valid once a lookup answered
	err     error          // of the last lookup, if it failed
	at      time.Time      // of the last lookup's end
	running bool           // a lookup is under way
}

// lookup returns the address of HOST:PORT at once: an IP's, a name's last
// answer, or errResolving (or the last lookup's error) while none came. It
// starts a lookup when one is due.
func (c *addrCache) lookup(hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.start(hostport)
	switch {
	case e.ap.IsValid():
		return e.ap, nil
	case e.err != nil:
		return netip.AddrPort{}, e.err
	}
	return netip.AddrPort{}, errResolving
}

// warm starts a lookup of hostport if one is due (nothing for an IP).
func (c *addrCache) warm(hostport string) {
	if _, err := netip.ParseAddrPort(hostport); err == nil {
		return
	}
	c.mu.Lock()
	c.start(hostport)
	c.mu.Unlock()
}

// start returns hostport's entry, starting a lookup if none ran yet, or the
// last is older than addrTTL (addrRetry if it failed). c.mu is held.
func (c *addrCache) start(hostport string) *cachedAddr {
	if c.m == nil {
		c.m = map[string]*cachedAddr{}
	}
	e := c.m[hostport]
	if e == nil {
		e = &cachedAddr{}
		c.m[hostport] = e
	}
	due := e.at.IsZero() || time.Since(e.at) > addrTTL || e.err != nil && time.Since(e.at) > addrRetry
	if due && !e.running {
		e.running = true
		go c.resolve(hostport, e)
	}
	return e
}

// resolve looks hostport up and keeps its first IPv4 address, or else its
// first address; a failure keeps the last answer, if any.
func (c *addrCache) resolve(hostport string, e *cachedAddr) {
	ap, err := resolveUDP(hostport, c.timeout)
	c.mu.Lock()
	defer c.mu.Unlock()
	e.running, e.at = false, time.Now()
	if err != nil {
		e.err = err
		return
	}
	e.ap, e.err = ap, nil
}

func resolveUDP(hostport string, timeout time.Duration) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("target %s: bad port", hostport)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s has no address", host)
	}
	ip := ips[0].Unmap()
	for _, a := range ips { // IPv4 first, as a target's listener most often has it
		if a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}
