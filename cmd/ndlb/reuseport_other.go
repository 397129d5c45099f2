//go:build !linux

package main

import "syscall"

// reusePort is Linux only: elsewhere a replaced listener's port is taken
// over only once the old listener has closed.
func reusePort(_, _ string, _ syscall.RawConn) error { return nil }
