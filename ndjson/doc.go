// Package ndjson is the NDJSON balancing mode: it joins a listener, one
// framer per client connection, the dispatch queue and the upstream pool into
// a Server, and owns the order of a graceful shutdown.
//
//	srv, err := ndjson.New(cfg)
//	...
//	srv.Start(ln)
//	<-sigterm
//	sum := srv.Shutdown() // stop accepting, drain clients, deliver, report
//
// Shutdown: the listener stops accepting; clients may keep sending until they
// close or Config.DrainTimeout passes (then reads stop, and a line cut short
// is dropped as incomplete); the queue's input closes; the pool delivers what
// is queued. Whatever is still undelivered Config.DrainTimeout +
// Config.DeliverTimeout after Shutdown began is dropped, counted and logged
// with the reason "shutdown".
//
// The package does not parse lines beyond the framer's newline cutting, and
// holds no socket of its own.
package ndjson
