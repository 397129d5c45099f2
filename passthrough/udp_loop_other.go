//go:build !linux

package passthrough

const udpSupported = false

// udpLoop is Linux's; NewUDP refuses to make a server elsewhere.
type udpLoop struct{}

func newUDPLoop(*UDPServer) (*udpLoop, error) { return nil, ErrUDPUnsupported }
func (*udpLoop) run()                         {}
func (*udpLoop) stopReading()                 {}
func (*udpLoop) exit()                        {}
