package listener

import "golang.org/x/sys/unix"

// fileLimit is the process's soft limit on open files (the Go runtime
// raises it to the hard limit at start), or 0 when unknown.
func fileLimit() uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return r.Cur
}
