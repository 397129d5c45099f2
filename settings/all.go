package settings

import (
	"strings"
	"time"

	"github.com/ndlb/ndlb/balance"
	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
	"github.com/ndlb/ndlb/pool"
)

// The --help groups.
const (
	groupListen      = "Listener (both modes)"
	groupTargets     = "Targets (both modes)"
	groupTLS         = "TLS (both modes)"
	groupNDJSON      = "NDJSON mode (the default)"
	groupPassthrough = "Passthrough mode (--passthrough)"
	groupLog         = "Logging"
	groupAdmin       = "Admin API"
	groupCheck       = "Health checks (both modes)"
	groupProcess     = "Process (upgrades)"
)

// The libraries' defaults, shown as the flags' defaults.
var (
	poolDefaults = pool.DefaultConfig()
	passDefaults = passthrough.DefaultConfig()
)

// All is every setting, in --help order. A setting's reload rule sits
// beside it: unless it says otherwise, a change replaces the listener.
var All = []Setting{
	{Name: "config", Kind: config.String, Group: groupListen, CommandLine: true, Usage: "TOML file of settings: flag names as keys, one [[listener]] table per listener (flags override it); reloaded on SIGHUP and when it changes"},
	{Name: "addr", Kind: config.String, Default: "0.0.0.0", Group: groupListen, Usage: "address to listen on"},
	{Name: "port", Kind: config.Int, Default: 9000, Group: groupListen, Usage: "port to listen on (0 picks a free port, shown in the 'listening' log line)"},
	{Name: "max-conns", Fields: []string{"ndjson.Listener.MaxConns", "passthrough.Listener.MaxConns"}, Kind: config.Int, Default: 0, Group: groupListen, Usage: "most client connections served at once; beyond it new clients wait in the accept backlog (0: in NDJSON mode 90% of the open-file limit less 1024, at most 100000; in passthrough no limit)"},
	{Name: "max-conns-per-source", Fields: []string{"ndjson.Listener.MaxConnsPerSource", "passthrough.Listener.MaxConnsPerSource"}, Kind: config.Int, Default: 0, Group: groupListen, Usage: "most connections one client address (the PROXY header's, with --accept-proxy) holds at once; more are closed and counted (0: no limit)"},
	{Name: "max-conn-rate-per-source", Fields: []string{"ndjson.Listener.ConnRatePerSource", "passthrough.Listener.ConnRatePerSource"}, Kind: config.Int, Default: 0, Group: groupListen, Usage: "most new connections per second from one client address, in bursts of as many; more are closed and counted (0: no limit)"},
	{Name: "accept-proxy", Kind: config.Bool, Group: groupListen, Usage: "require a PROXY protocol header (v1 or v2) from a front load balancer on every connection; its client address is used and logged"},
	{Name: "accept-proxy-from", Kind: config.Strings, Group: groupListen, Usage: "networks allowed to send PROXY headers, as CIDRs or addresses (comma-separated and/or repeated); a connection from anywhere else is refused before it is read. Implies --accept-proxy"},
	{Name: "proxy-header-timeout", Fields: []string{"ndjson.Listener.ProxyHeaderTimeout", "passthrough.Listener.ProxyHeaderTimeout"}, Kind: config.Duration, Default: listener.DefaultProxyHeaderTimeout, Group: groupListen, Usage: "with --accept-proxy, how long a connection may take to send its header"},
	{Name: "drain-timeout", Fields: []string{"ndjson.DrainTimeout", "passthrough.DrainTimeout"}, Kind: config.Duration, Default: ndjson.DefaultDrainTimeout, Group: groupListen, Usage: "on SIGTERM, how long clients may keep their connections before they are closed"},
	{Name: "passthrough", Kind: config.Bool, Group: groupListen, Usage: "L4 mode: proxy each client connection whole to one target, bytes unchanged"},
	{Name: "proto", Kind: config.String, Default: "tcp", Group: groupListen, Usage: "what the listener takes: tcp, or udp (see --udp)"},
	{Name: "udp", Kind: config.Bool, Group: groupListen, Usage: "listen for UDP datagrams (--proto udp): with --passthrough, the datagrams of each client address form a flow relayed to one target and back; in NDJSON mode, each datagram holds lines, queued like a connection's. TLS and PROXY settings do not apply"},

	{Name: "target", Fields: []string{"ndjson.Targets", "passthrough.Targets"}, Kind: config.Strings, Group: groupTargets, Reload: LiveTargets, Usage: "target HOST:PORT, or HOST:PORT=WEIGHT (1..256, default 1); comma-separated and/or repeated (required)"},
	{Name: "target-dns", Fields: []string{"discovery.DNS"}, Kind: config.Strings, Group: groupTargets, Reload: LiveTargets, Usage: "targets from DNS: NAME:PORT, re-resolved (A and AAAA) every --dns-interval; comma-separated and/or repeated"},
	{Name: "target-srv", Fields: []string{"discovery.SRV"}, Kind: config.Strings, Group: groupTargets, Reload: LiveTargets, Usage: "targets from DNS SRV records: _service._proto.name (lowest priority value first); comma-separated and/or repeated"},
	{Name: "dns-interval", Fields: []string{"discovery.Interval"}, Kind: config.Duration, Default: discovery.DefaultInterval, Group: groupTargets, Reload: LiveTargets, Usage: "how often --target-dns and --target-srv names are resolved again"},
	{Name: "dns-max-targets", Fields: []string{"discovery.MaxTargets"}, Kind: config.Int, Default: discovery.DefaultMaxTargets, Group: groupTargets, Reload: LiveTargets, Usage: "most targets --target-dns and --target-srv add, over all names (the first in the order of the names and of their sorted answers; 0: 64)"},
	{Name: "dns-resolver", Fields: []string{"discovery.Server"}, Kind: config.String, Group: groupTargets, Reload: LiveTargets, Usage: "DNS server HOST:PORT for discovery (default: the system's)"},
	{Name: "connect-timeout", Fields: []string{"ndjson.Pool.ConnectTimeout", "passthrough.ConnectTimeout"}, Kind: config.Duration, Default: poolDefaults.ConnectTimeout, Group: groupTargets, Usage: "timeout of one target dial, TLS handshake included"},
	{Name: "backoff-max", Fields: []string{"ndjson.Pool.BackoffMax", "passthrough.BackoffMax", "ndjson.Pool.BackoffInitial", "passthrough.BackoffInitial"}, Kind: config.Duration, Default: poolDefaults.BackoffMax, DefaultText: poolDefaults.BackoffMax.String() + "; " + passDefaults.BackoffMax.String() + " with --passthrough", Group: groupTargets, Usage: "longest wait between dial rounds when targets are down (at least 1ms)"},

	{Name: "tls-cert", Kind: config.String, Group: groupTLS, Usage: "listen with TLS: certificate file (PEM)"},
	{Name: "tls-key", Kind: config.String, Group: groupTLS, Usage: "listen with TLS: key file (PEM)"},
	{Name: "tls-client-ca", Kind: config.String, Group: groupTLS, Usage: "require client certificates signed by this CA file (PEM)"},
	{Name: "tls-target", Kind: config.Bool, Group: groupTLS, Usage: "connect to targets with TLS"},
	{Name: "tls-target-ca", Kind: config.String, Group: groupTLS, Usage: "CA file to verify targets with (default: system roots)"},
	{Name: "tls-target-server-name", Kind: config.String, Group: groupTLS, Usage: "name to verify in target certificates (default: the target's host)"},
	{Name: "tls-target-skip-verify", Kind: config.Bool, Group: groupTLS, Usage: "accept any target certificate (insecure; for testing)"},
	{Name: "tls-target-cert", Kind: config.String, Group: groupTLS, Usage: "client certificate file for targets that require one (mTLS)"},
	{Name: "tls-target-key", Kind: config.String, Group: groupTLS, Usage: "key file of --tls-target-cert"},

	{Name: "connections", Fields: []string{"ndjson.Pool.Connections"}, Kind: config.Int, Default: poolDefaults.Connections, Group: groupNDJSON, Mode: NDJSON, Usage: "worker connections per target"},
	{Name: "max-line-bytes", Fields: []string{"ndjson.Framer.MaxLineBytes"}, Kind: config.String, Default: "1MiB", Group: groupNDJSON, Mode: NDJSON, Usage: "longest line forwarded; longer lines are dropped whole, counted and logged"},
	{Name: "buffer-bytes", Fields: []string{"ndjson.Queue.MaxBytes"}, Kind: config.String, Default: "64MiB", Group: groupNDJSON, Mode: NDJSON, Usage: "memory for lines read and not yet acknowledged; when full, clients are slowed (TCP backpressure)"},
	{Name: "client-buffer-bytes", Fields: []string{"ndjson.ClientMemory"}, Kind: config.String, Default: "64MiB", Group: groupNDJSON, Mode: NDJSON, Usage: "memory all clients together may hold before their lines are queued (read buffers, partial lines, TLS); when spent, clients wait and lines longer than one read are dropped after 1s"},
	{Name: "line-timeout", Fields: []string{"ndjson.LineTimeout"}, Kind: config.Duration, Default: ndjson.DefaultLineTimeout, Group: groupNDJSON, Mode: NDJSON, Usage: "a client holding a partial line without sending for this long is closed and the fragment counted (0: no limit)"},
	{Name: "client-rate", Kind: config.String, Default: "0", Group: groupNDJSON, Mode: NDJSON, Usage: "most bytes per second one client connection may send (a size, such as 1MiB); past it ndlb reads more slowly, so the client is slowed through TCP and nothing is dropped; a burst of up to one batch (about 2 MiB with the defaults) passes first (0: no limit)"},
	{Name: "framing", Fields: []string{"ndjson.Framing"}, Kind: config.String, Default: "newline", Group: groupNDJSON, Mode: NDJSON, Usage: "how clients delimit messages: newline, or octet-counted (RFC 6587 \"LEN MSG\", syslog over TCP: messages may hold newlines; a bad length prefix closes the client)"},
	{Name: "target-framing", Fields: []string{"ndjson.TargetFraming"}, Kind: config.String, Group: groupNDJSON, Mode: NDJSON, DefaultText: "as --framing", Usage: "how messages are written to targets: newline or octet-counted (octet-counted to newline writes a message's newlines as #012)"},
	{Name: "spool-dir", Kind: config.String, Group: groupNDJSON, Mode: NDJSON, Usage: "write-ahead spool: every batch read is written to DIR/LISTENER before it is queued and removed once a target acknowledged it, so nothing read is lost when targets are down for long or ndlb itself dies (off by default)"},
	{Name: "spool-max-bytes", Kind: config.String, Default: "4GiB", Group: groupNDJSON, Mode: NDJSON, Usage: "with --spool-dir, the most disk the listener's spool uses"},
	{Name: "spool-full", Kind: config.String, Default: "block", Group: groupNDJSON, Mode: NDJSON, Usage: "with --spool-dir, what happens when the spool is full: block (clients are slowed, as without a spool) or drop-oldest (the oldest lines not yet queued are dropped and counted as spool_full)"},
	{Name: "spool-sync", Kind: config.String, Default: "1s", Group: groupNDJSON, Mode: NDJSON, Usage: "with --spool-dir, when spooled lines are fsynced: an interval, always (a batch counts as spooled once an fsync covers it), or never. A crash of ndlb loses nothing either way; this is about power loss"},
	{Name: "route-key", Kind: config.String, Group: groupNDJSON, Mode: NDJSON, Usage: "send every message with the same key to the same target: json:FIELD (a top-level string or number, or a dotted path such as json:kubernetes.namespace), bytes:START:END, or regex:EXPR (its first group). Targets are chosen by weighted rendezvous hashing over those that are up, so instances with the same targets agree; messages without the key are spread as usual (off by default)"},
	{Name: "route-max-load", Fields: []string{"ndjson.Route.MaxLoad"}, Kind: config.String, Default: "1.25", Group: groupNDJSON, Mode: NDJSON, Usage: "with --route-key, the most keyed messages a target takes, as a multiple of its share: a hot key's overflow goes to its next choice (0: no bound, a key never leaves its target while it is up)"},
	{Name: "group-key", Kind: config.String, Group: groupNDJSON, Mode: NDJSON, DefaultText: "--route-key", Usage: "with --group, the key whose value picks a message's target group (same forms as --route-key)"},
	{Name: "group", Fields: []string{"ndjson.Route.Groups"}, Kind: config.Strings, Group: groupNDJSON, Mode: NDJSON, Usage: "a target group, instead of --target: NAME=TARGET[,TARGET...][;values=V[,V...]][;default][;balance=key|spread]; messages whose key value is listed go to it, the others to the default group (without one, they are dropped and counted as unrouted). Repeat for each group; in a config file, write [[listener.group]] tables"},
	{Name: "read-bytes", Fields: []string{"ndjson.Framer.ReadBytes"}, Kind: config.String, Default: "64KiB", Group: groupNDJSON, Mode: NDJSON, Usage: "size of each read from a client"},
	{Name: "read-coalesce", Fields: []string{"ndjson.ReadCoalesce"}, Kind: config.Duration, Default: ndjson.DefaultReadCoalesce, Group: groupNDJSON, Mode: NDJSON, Usage: "a plain TCP client sending at least 2/3 of a read per this long is read a few times per this long at most: when about 3/4 of what it sends in this long is waiting (SO_RCVLOWAT, from half a read up to 256KiB; Linux 5.11+), so each wake-up, batch and write to a target carries several of its writes; a byte waits at most about this much longer. Slower clients are read as their bytes come (0: off)"},
	{Name: "failback", Fields: []string{"ndjson.Pool.Failback"}, Kind: config.Duration, Default: poolDefaults.Failback, Group: groupNDJSON, Mode: NDJSON, Usage: "how often a worker that failed over tries its home target again (0: never)"},
	{Name: "write-timeout", Fields: []string{"ndjson.Pool.WriteTimeout"}, Kind: config.Duration, Default: poolDefaults.WriteTimeout, Group: groupNDJSON, Mode: NDJSON, Usage: "a target that accepts no data for this long is failed over (a slow one that keeps taking bytes is not, unless its receive window stays shut for --tcp-user-timeout)"},
	{Name: "tcp-user-timeout", Fields: []string{"ndjson.Pool.UserTimeout"}, Kind: config.Duration, Default: poolDefaults.UserTimeout, Group: groupNDJSON, Mode: NDJSON, Usage: "TCP_USER_TIMEOUT: unacknowledged data this old, or a receive window shut this long, fails a target connection (0: system default)"},
	{Name: "deliver-timeout", Fields: []string{"ndjson.DeliverTimeout"}, Kind: config.Duration, Default: ndjson.DefaultDeliverTimeout, Group: groupNDJSON, Mode: NDJSON, Usage: "after the drain, how long ndlb keeps delivering before it drops (and counts) what is left"},

	{Name: "balance", Fields: []string{"passthrough.Balance"}, Kind: config.String, Default: passDefaults.Balance, Group: groupPassthrough, Mode: Passthrough, Reload: LiveBalance, Usage: "how a connection's target is chosen: " + strings.Join(balance.Names, ", ")},
	{Name: "hash-key", Fields: []string{"passthrough.HashKey", "passthrough.HashFirst"}, Kind: config.String, Default: string(passDefaults.HashKey), Group: groupPassthrough, Mode: Passthrough, Usage: "what --balance hash hashes: ip (a client sticks to its target), ip-port, or ip+first:START:END (the IP and bytes START..END of what the client sends first, such as a user name: clients behind one NAT spread out)"},
	{Name: "hash-key-timeout", Fields: []string{"passthrough.HashKeyTimeout"}, Kind: config.Duration, Default: passthrough.DefaultHashKeyTimeout, Group: groupPassthrough, Mode: Passthrough, Usage: "with --hash-key ip+first, how long to wait for those bytes before choosing on what came"},
	{Name: "hash-on", Fields: []string{"passthrough.HashOn"}, Kind: config.String, Default: "addr", Group: groupPassthrough, Mode: Passthrough, Usage: "what --balance hash scores targets by: addr (host:port) or host (a client reaches the same host on every port, so listeners of one service agree)"},
	{Name: "connect-retries", Fields: []string{"passthrough.ConnectRetries"}, Kind: config.Int, Default: passDefaults.ConnectRetries, Group: groupPassthrough, Mode: Passthrough, Usage: "when every target failed, how many more rounds are tried (with backoff) before the client is closed"},
	{Name: "max-fails", Fields: []string{"passthrough.MaxFails"}, Kind: config.Int, Default: passDefaults.MaxFails, Group: groupPassthrough, Mode: Passthrough, Usage: "a target whose last N attempts failed is skipped for --fail-timeout, unless all are (0: never skip)"},
	{Name: "fail-timeout", Fields: []string{"passthrough.FailTimeout"}, Kind: config.Duration, Default: passDefaults.FailTimeout, Group: groupPassthrough, Mode: Passthrough, Usage: "how long a failing target is skipped"},
	{Name: "idle-timeout", Fields: []string{"passthrough.IdleTimeout"}, Kind: config.Duration, Default: passDefaults.IdleTimeout, Group: groupPassthrough, Mode: Passthrough, Usage: "close a connection with no traffic either way for this long (0: never)"},
	{Name: "half-close-timeout", Fields: []string{"passthrough.HalfCloseTimeout"}, Kind: config.Duration, Default: passDefaults.HalfCloseTimeout, Group: groupPassthrough, Mode: Passthrough, Usage: "close a connection one side of which has sent FIN once nothing has moved either way for this long (HAProxy's timeout client-fin; 0: --idle-timeout applies)"},
	{Name: "udp-idle-timeout", Fields: []string{"passthrough.UDPIdleTimeout"}, Kind: config.Duration, Default: passthrough.DefaultUDPIdleTimeout, Group: groupPassthrough, Mode: Passthrough, Usage: "with --udp, end a flow with no datagram either way for this long (its socket to the target is closed)"},
	{Name: "event-loop", Kind: config.Bool, Default: true, Group: groupPassthrough, Mode: Passthrough, Usage: "serve plain TCP connections (no TLS on either side, targets given as IP:port) in epoll event loops, one per core, rather than with a goroutine per direction: fewer system calls and thread hand-offs per connection and about 1.3 KiB less memory per open connection (Linux; =false for goroutines, which also park idle connections)"},
	{Name: "event-loops", Fields: []string{"passthrough.EventLoops"}, Kind: config.Int, Default: 0, Group: groupPassthrough, Mode: Passthrough, Usage: "how many event loops serve connections with --event-loop (0: one per core); fewer leave more CPU to backends on the same host and give shorter latency tails for small requests, at the cost of bulk throughput"},
	{Name: "event-loop-threads", Kind: config.Bool, Default: true, Group: groupPassthrough, Mode: Passthrough, Usage: "event loops wait for their sockets in the kernel, each on its thread, as HAProxy's threads do, holding a processor GOMAXPROCS gains for them (up to twice as many loops in the process as it has cores): more requests/s and steadier tails over kept-alive connections, for a few percent of the new-connection rate (=false: they wait in the Go runtime's poller)"},
	{Name: "send-proxy", Fields: []string{"passthrough.SendProxy"}, Kind: config.String, Group: groupPassthrough, Mode: Passthrough, Usage: "send a PROXY protocol header (v1 or v2) with the client's address to each target"},

	{Name: "check", Fields: []string{"health.Kind"}, Kind: config.String, Group: groupCheck, Reload: LiveChecks, Usage: "active health checks of the targets: tcp (connect), http, or udp (a datagram is answered) (off by default)"},
	{Name: "check-port", Fields: []string{"health.Port"}, Kind: config.Int, Default: 0, Group: groupCheck, Reload: LiveChecks, Usage: "check this port of each target's host instead of the target's own (a health port beside the service; 0: the target's)"},
	{Name: "check-interval", Fields: []string{"health.Interval"}, Kind: config.Duration, Default: health.DefaultInterval, Group: groupCheck, Reload: LiveChecks, Usage: "time between checks of a target (at least 10ms)"},
	{Name: "check-timeout", Fields: []string{"health.Timeout"}, Kind: config.Duration, Default: health.DefaultTimeout, Group: groupCheck, Reload: LiveChecks, Usage: "timeout of one check"},
	{Name: "check-rise", Fields: []string{"health.Rise"}, Kind: config.Int, Default: health.DefaultRise, Group: groupCheck, Reload: LiveChecks, Usage: "passing checks in a row that bring a down target up"},
	{Name: "check-fall", Fields: []string{"health.Fall"}, Kind: config.Int, Default: health.DefaultFall, Group: groupCheck, Reload: LiveChecks, Usage: "failing checks in a row that take a target down"},
	{Name: "check-http-method", Fields: []string{"health.HTTP.Method"}, Kind: config.String, Default: "GET", Group: groupCheck, Reload: LiveChecks, Usage: "method of http checks"},
	{Name: "check-http-path", Fields: []string{"health.HTTP.Path"}, Kind: config.String, Default: "/", Group: groupCheck, Reload: LiveChecks, Usage: "path of http checks"},
	{Name: "check-http-status", Fields: []string{"health.HTTP.Status"}, Kind: config.Int, Default: 200, Group: groupCheck, Reload: LiveChecks, Usage: "status an http check expects"},
	{Name: "check-http-body", Kind: config.String, Group: groupCheck, Reload: LiveChecks, Usage: "text the answer to an http check must contain"},
	{Name: "check-tls", Kind: config.Bool, Group: groupCheck, Reload: LiveChecks, Usage: "make http checks over TLS: with the --tls-target settings when set, else without verifying the certificate"},
	{Name: "check-udp-send", Fields: []string{"health.UDP.Send"}, Kind: config.String, Default: `ping\n`, DefaultText: `ping\n`, Group: groupCheck, Reload: LiveChecks, Usage: "datagram a udp check sends: text with \\n, \\r, \\t, \\\\ and \\xHH escapes, or hex:HEX for binary (such as a DNS query)"},
	{Name: "check-udp-expect", Kind: config.String, Group: groupCheck, Reload: LiveChecks, Usage: "text the answer to a udp check must contain (default: any answer passes)"},

	{Name: "admin", Fields: []string{"admin.Addr"}, Kind: config.String, Group: groupAdmin, Global: true, Reload: Restart, Usage: "serve the admin HTTP API (health, readiness, targets, drain) on HOST:PORT; bind it to loopback (off by default)"},
	{Name: "admin-token-file", Fields: []string{"admin.TokenFile"}, Kind: config.String, Group: groupAdmin, Global: true, Reload: Restart, Usage: "file holding a bearer token that the admin API's POST routes require; re-read when it changes. Without it, changes are accepted only from this host, and never from a web page"},
	{Name: "admin-token-for-reads", Kind: config.Bool, Group: groupAdmin, Global: true, Reload: Restart, Usage: "require the token for every admin route but /healthz and /readyz (metrics, targets, config, the status page)"},
	{Name: "admin-hosts", Kind: config.Strings, Group: groupAdmin, Global: true, Reload: Restart, Usage: "host names the admin API answers to besides IP addresses, localhost and --admin's host (a Service name Prometheus scrapes); a request with the token may use any"},
	{Name: "admin-tls-cert", Kind: config.String, Group: groupAdmin, Global: true, Reload: Restart, Usage: "serve the admin API over HTTPS: certificate file (PEM), reloaded when it changes"},
	{Name: "admin-tls-key", Kind: config.String, Group: groupAdmin, Global: true, Reload: Restart, Usage: "key file (PEM) of --admin-tls-cert"},

	{Name: "log-format", Kind: config.String, Default: "text", Group: groupLog, Global: true, Reload: Restart, Usage: "log format: text or json"},
	{Name: "log-level", Kind: config.String, Default: "info", Group: groupLog, Global: true, Reload: LiveProcess, Usage: "log level: debug, info, warn or error (passthrough logs each connection at info)"},

	{Name: "pid-file", Kind: config.String, Group: groupProcess, Global: true, Reload: Restart, Usage: "write the process id to this file once ready (and the new process's after an upgrade), for systemd's PIDFile= and `kill -USR2`"},
	{Name: "state-file", Kind: config.String, Group: groupProcess, Global: true, Reload: Restart, Usage: "keep operators' drains and disables and failed health verdicts in this file across restarts (written atomically within a second of a change)"},
	{Name: "upgrade-timeout", Kind: config.Duration, Default: time.Minute, Group: groupProcess, Global: true, Reload: Restart, Usage: "on SIGUSR2 (upgrade), how long the new process may take to be ready before it is stopped and this one serves on"},
}
