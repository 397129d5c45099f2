package linetest

import (
	"io"
	"net"
	"sync"
	"time"
)

// Send writes lines from..to-1 of client c to w, in writes of about chunk
// bytes, and returns the number of lines fully written.
func Send(w io.Writer, c, from, to uint32, chunk int) (uint32, error) {
	buf := make([]byte, 0, chunk+512)
	s, flushed := from, from
	for ; s < to; s++ {
		buf = AppendLine(buf, c, s)
		if len(buf) >= chunk {
			if _, err := w.Write(buf); err != nil {
				return flushed, err
			}
			buf, flushed = buf[:0], s+1
		}
	}
	if len(buf) > 0 {
		if _, err := w.Write(buf); err != nil {
			return flushed, err
		}
	}
	return to, nil
}

// SendPaced writes lines from..to-1 of client c to w evenly over about d, in
// a hundred steps.
func SendPaced(w io.Writer, c, from, to uint32, d time.Duration) error {
	const steps = 100
	tick := time.NewTicker(d / steps)
	defer tick.Stop()
	per := max(1, (to-from+steps-1)/steps)
	for s := from; s < to; s += per {
		if _, err := Send(w, c, s, min(s+per, to), 32<<10); err != nil {
			return err
		}
		<-tick.C
	}
	return nil
}

// SendClients sends lines from..to-1 of clients 1..n to addr at once, each
// on a connection of its own, in writes of about chunk bytes, and returns
// the first error.
func SendClients(addr string, n, from, to uint32, chunk int) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for c := range n {
		wg.Go(func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			if _, err := Send(conn, c+1, from, to, chunk); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}
