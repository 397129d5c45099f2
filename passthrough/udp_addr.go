package passthrough

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// addrTTL is how long a UDP target's resolved address is used before it is
// looked up again (in the background: flows keep opening meanwhile).
const addrTTL = 30 * time.Second

// addrCache resolves UDP targets' host names, so that the one goroutine
// that opens flows waits for DNS only on a name's first flow.
type addrCache struct {
	timeout time.Duration // of a lookup
	mu      sync.Mutex
	m       map[string]*cachedAddr // guarded by mu
}

type cachedAddr struct {
	ap         netip.AddrPort
	at         time.Time
	refreshing bool
}

// lookup returns the address of HOST:PORT, an IP at once.
func (c *addrCache) lookup(hostport string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	c.mu.Lock()
	e := c.m[hostport]
	stale := e != nil && time.Since(e.at) > addrTTL && !e.refreshing
	if stale {
		e.refreshing = true
	}
	c.mu.Unlock()
	switch {
	case e == nil:
		return c.resolve(hostport)
	case stale:
		go func() { _, _ = c.resolve(hostport) }()
	}
	return e.ap, nil
}

// resolve looks hostport up and caches its first IPv4 address, or else its
// first address.
func (c *addrCache) resolve(hostport string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("target %s: bad port", hostport)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*cachedAddr{}
	}
	if err != nil || len(ips) == 0 {
		if e := c.m[hostport]; e != nil {
			e.refreshing, e.at = false, time.Now() // keep the last answer; try again later
			return e.ap, nil
		}
		if err == nil {
			err = fmt.Errorf("%s has no address", host)
		}
		return netip.AddrPort{}, err
	}
	ip := ips[0].Unmap()
	for _, a := range ips { // IPv4 first, as a target's listener most often has it
		if a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	ap := netip.AddrPortFrom(ip, uint16(p))
	c.m[hostport] = &cachedAddr{ap: ap, at: time.Now()}
	return ap, nil
}
