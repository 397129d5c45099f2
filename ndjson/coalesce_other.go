//go:build !linux

package ndjson

import (
	"syscall"
	"time"
)

// coalescer is Linux only (SO_RCVLOWAT with epoll); elsewhere every read
// is as the client's bytes come.
type coalescer struct{}

func newCoalescer(syscall.RawConn, int, time.Duration) *coalescer { return nil }

func (co *coalescer) read(int) {}
func (co *coalescer) waiting() {}
func (co *coalescer) stop()    {}
