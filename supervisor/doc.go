// Package supervisor owns the running process: the listeners a Spec
// describes, each with its server (NDJSON or passthrough), its health
// checks and its DNS discovery; the one pruner that drops drained targets;
// config reloads, which diff the running Spec with a new one and apply the
// rule of each changed setting (see settings.Reload): live settings change
// the running listener, others replace it on the same socket while the old
// instance drains; reload metrics and spans; upgrades (Upgrade starts the
// binary again with the listening sockets, then hands each NDJSON client
// connection over a Unix socket with the line it was carrying; the new
// process takes them with Inherit and Inherited.Serve); and the shutdown,
// which drains every listener (replaced ones included) and logs each
// listener's ledger.
//
// cmd/ndlb turns flags, environment and config files into a Spec, and
// handles signals, the file watch and exit codes. A Mode makes a
// listener's Server: NDJSON and Passthrough wrap the two libraries, whose
// servers implement Server directly; tests use their own modes.
package supervisor
