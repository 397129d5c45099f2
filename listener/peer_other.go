//go:build !linux

package listener

// peerClosed cannot tell on this system; a read of 0 bytes is taken as the
// peer's end of stream.
func peerClosed(uintptr) bool { return true }

// canPeek says readable does not work here: TLS readers hold their buffer
// while they wait (Conn.CanTryRead is false).
const canPeek = false

func readable(uintptr) bool { return true }
