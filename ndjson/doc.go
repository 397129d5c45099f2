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
// Memory: every client of a server shares one framer.Budget
// (Config.ClientMemory); a client holding a partial line without sending for
// Config.LineTimeout is closed, its fragment counted as incomplete.
//
// Reads: a plain TCP client is read through the runtime's poller without
// holding a buffer while it waits; one that sends fast is read in bigger
// bites (Config.ReadCoalesce: its socket's SO_RCVLOWAT is raised to half a
// read while it keeps up the pace, and lowered when a wait runs long).
//
// Shutdown: the listener stops accepting; clients may keep sending until they
// close or Config.DrainTimeout passes (then their sockets are shut, what the
// kernel holds is read and framed, and a line cut short is dropped as
// incomplete); the queue's input closes; the pool delivers what is queued.
// Whatever is still undelivered Config.DeliverTimeout after the drain ended
// (at most DrainTimeout + DeliverTimeout after Shutdown began), including
// what clients had handed to the kernel and could not be queued, is
// dropped, counted and logged with the reason "shutdown", unless the
// server was retired by a reload (Server.Retire) and holds no spool: it
// then goes on delivering until the process stops. Every line is on the
// server's dispatch.Ledger.
//
// The package does not parse lines beyond the framer's newline cutting, and
// holds no socket of its own.
package ndjson
