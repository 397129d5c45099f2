//go:build !linux

package passthrough

import "net"

// overflowCounts does nothing: the kernel's drop count is Linux's.
func overflowCounts(*net.UDPConn) {}

// noteOverflow does nothing.
func (s *UDPServer) noteOverflow([]byte) {}
