//go:build !linux

package listener

// peerClosed cannot tell on this system; a read of 0 bytes is taken as the
// peer's end of stream.
func peerClosed(uintptr) bool { return true }
