// Package health owns active health checks: one goroutine per target of a
// set that connects (tcp) or makes an HTTP request (http) every interval,
// and after `fall` failures in a row marks the target down, after `rise`
// successes in a row up again (upstream.Target.SetChecked). Both modes then
// steer new work away from a down target.
//
//	c, err := health.New(cfg, set)
//	go c.Run(ctx)
//
// Checks follow the set: targets added get a checker, removed ones lose
// theirs. The package does not touch the data path's connections.
package health
