//go:build !linux

package listener

// CountOverflows does nothing: the kernel's drop count is Linux's.
func (p *Packet) CountOverflows() {}

// OverflowSpace is 0: there is no drop count to read.
var OverflowSpace = 0

// Overflows finds nothing.
func Overflows([]byte) (n uint64, ok bool) { return 0, false }

// Drops finds nothing.
func (p *Packet) Drops() (n uint64, ok bool) { return 0, false }
