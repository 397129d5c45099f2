// Package discovery owns DNS discovery of targets: names whose A/AAAA
// records (--target-dns name:port) or SRV records (--target-srv
// _service._proto.name) are re-resolved every interval and merged with the
// static targets into the upstream set. A target that disappears from DNS
// is drained, not cut: it leaves the set once its last connection has
// closed, when the set's owner prunes it (the supervisor does, once a
// second, for every listener). A failed lookup keeps the name's last answer, so a DNS outage
// changes nothing. Kubernetes headless services work this way. A
// discoverer that replaces another on a reload is seeded with its answers
// (Seed), so that the reload neither waits for DNS nor drains targets when
// DNS does not answer.
//
//	d, err := discovery.New(cfg, set)
//	d.Refresh(ctx)  // once, before traffic
//	go d.Run(ctx)   // then every cfg.Interval
//
// The resolver is injected (net.Resolver satisfies it), so tests can run an
// in-process DNS server.
package discovery
