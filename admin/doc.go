// Package admin owns ndlb's admin HTTP API: liveness and readiness probes,
// the listeners and targets with their states and counters, the operator's
// drain, enable and disable of a target, and the API's OpenAPI spec.
//
//	srv, err := admin.New(admin.Config{Addr: "127.0.0.1:9900", Listeners: listeners})
//	srv.Start()
//	defer srv.Shutdown(ctx)
//
// It reads the data path only through the Listener interface and the
// upstream target set; it never touches connections. The POST routes can
// require a bearer token. The API is meant for loopback or a private
// network: it has no TLS of its own.
package admin
