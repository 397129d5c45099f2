package dnstest

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// Server answers DNS over UDP on 127.0.0.1.
type Server struct {
	conn net.PacketConn
	wg   sync.WaitGroup

	mu   sync.Mutex
	ips  map[string][]netip.Addr // by lower-case FQDN; guarded by mu
	srv  map[string][]net.SRV    // guarded by mu
	mute bool                    // queries go unanswered; guarded by mu
}

// New starts a server. Close stops it.
func New() (*Server, error) {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{conn: conn, ips: map[string][]netip.Addr{}, srv: map[string][]net.SRV{}}
	s.wg.Go(s.serve)
	return s, nil
}

// Addr is the server's address.
func (s *Server) Addr() string { return s.conn.LocalAddr().String() }

// Resolver returns a resolver that asks only this server.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.Addr())
	}}
}

func fqdn(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) + "." }

// SetIPs makes name resolve to ips (A and AAAA records); no ips removes it.
func (s *Server) SetIPs(name string, ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var addrs []netip.Addr
	for _, ip := range ips {
		addrs = append(addrs, netip.MustParseAddr(ip))
	}
	s.ips[fqdn(name)] = addrs
}

// SetSRV makes name (_service._proto.domain) answer recs.
func (s *Server) SetSRV(name string, recs ...net.SRV) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srv[fqdn(name)] = recs
}

// Remove forgets name: queries for it get NXDOMAIN.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ips, fqdn(name))
	delete(s.srv, fqdn(name))
}

// Mute makes the server take queries and answer none (a resolver that
// hangs: lookups time out), or answer again.
func (s *Server) Mute(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mute = on
}

// Close stops the server.
func (s *Server) Close() {
	s.conn.Close()
	s.wg.Wait()
}

func (s *Server) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		s.mu.Lock()
		mute := s.mute
		s.mu.Unlock()
		if mute {
			continue
		}
		if resp, err := s.answer(buf[:n]); err == nil {
			s.conn.WriteTo(resp, from)
		}
	}
}

// answer builds the reply to one query.
func (s *Server) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())
	s.mu.Lock()
	ips, knownIP := s.ips[name]
	srvs, knownSRV := s.srv[name]
	s.mu.Unlock()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	if !knownIP && !knownSRV {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	hdr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
	switch q.Type {
	case dnsmessage.TypeA:
		for _, ip := range ips {
			if ip.Is4() {
				if err := b.AResource(hdr, dnsmessage.AResource{A: ip.As4()}); err != nil {
					return nil, err
				}
			}
		}
	case dnsmessage.TypeAAAA:
		for _, ip := range ips {
			if ip.Is6() {
				if err := b.AAAAResource(hdr, dnsmessage.AAAAResource{AAAA: ip.As16()}); err != nil {
					return nil, err
				}
			}
		}
	case dnsmessage.TypeSRV:
		for _, r := range srvs {
			target, err := dnsmessage.NewName(fqdn(r.Target))
			if err != nil {
				return nil, err
			}
			if err := b.SRVResource(hdr, dnsmessage.SRVResource{Priority: r.Priority, Weight: r.Weight, Port: r.Port, Target: target}); err != nil {
				return nil, err
			}
		}
	}
	return b.Finish()
}
