package listener

// Bounds of DefaultMaxConns.
const (
	// MaxAutoConns caps the connection limit derived from the file limit.
	MaxAutoConns = 100_000
	// reservedFiles are left for upstream connections, the admin API,
	// listening sockets and files.
	reservedFiles = 1024
)

// DefaultMaxConns is the limit on client connections (NDJSON mode) or UDP
// flows (each holds a socket to its target) used when none is set: 90% of
// the open-file limit less reservedFiles, at least 64 and at most
// MaxAutoConns (4096 when the limit is unknown). A client beyond it waits
// in the kernel's accept backlog (a datagram opening a flow beyond it is
// dropped and counted); it cannot make ndlb fail for want of files. An
// NDJSON listener takes its workers' sockets to the targets off it too.
func DefaultMaxConns() int {
	n := fileLimit()
	if n == 0 {
		return 4096
	}
	return int(min(max(n*9/10, reservedFiles+64)-reservedFiles, MaxAutoConns))
}
