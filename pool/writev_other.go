//go:build !linux

package pool

import (
	"net"
	"syscall"
)

// rawWriter is Linux only; elsewhere net.Buffers writes.
type rawWriter struct{}

func newRawWriter(syscall.RawConn) *rawWriter { return nil }

func (w *rawWriter) writeBuffers(*net.Buffers) (int64, error) { panic("unreachable") }
