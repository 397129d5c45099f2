//go:build !linux

package passthrough

import (
	"errors"
	"runtime"

	"github.com/ndlb/ndlb/listener"
)

// Event loops are Linux only: elsewhere goroutines serve every connection.
type (
	evloop struct{}
	lconn  struct{}
)

func newLoops(*Server, int, bool) ([]*evloop, int, error) {
	return nil, 0, errors.New("event loops need Linux")
}
func stopLoops([]*evloop) {}
func cores() int          { return runtime.GOMAXPROCS(0) }

func (l *evloop) wake()                                    {}
func (l *evloop) stop()                                    {}
func (s *Server) serveInLoop(*listener.Conn, *evloop) bool { return false }
func (s *Server) acceptInLoops() bool                      { return false }
func (lc *lconn) close()                                   {}
func (lc *lconn) shutdownSockets()                         {}
func (lc *lconn) cutIfInFlight() bool                      { return false }

// WantsRaw implements listener.RawWanter: never, without the loops.
func (s *Server) WantsRaw() bool { return false }
