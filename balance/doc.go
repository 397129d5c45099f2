// Package balance owns the balancing policies of passthrough mode: given the
// targets and a client's hash key, a Policy returns the order in which to try
// the targets for one connection. The first is the choice; the rest are the
// fallbacks tried when a dial fails.
//
//	p, err := balance.New("hash")
//	order := p.Order(order[:0], set.Targets(), clientIP)
//
// Policies read each target's open-connection count (upstream.Target.Active)
// and nothing else; passive health (skipping failed targets) is applied by
// the caller on top of the order. The package does no I/O.
package balance
