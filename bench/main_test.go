package bench

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"
)

// genEnv makes this test binary a generator process instead: NDLB_BENCH_GEN
// holds the comma-separated addresses to send to, one client per address in
// turn, e2eClients clients in all.
const genEnv = "NDLB_BENCH_GEN"

func TestMain(m *testing.M) {
	if addrs := os.Getenv(genEnv); addrs != "" {
		if err := runGenerator(strings.Split(addrs, ","), shipper{}); err != nil {
			fmt.Fprintln(os.Stderr, "generator:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runGenerator sends one run's lines from e2eClients connections.
func runGenerator(addrs []string, gen generator) error {
	conns := make([]net.Conn, e2eClients)
	for i := range conns {
		c, err := net.Dial("tcp", addrs[i%len(addrs)])
		if err != nil {
			return err
		}
		conns[i] = c
	}
	var g errgroup.Group
	for _, c := range conns {
		g.Go(func() error {
			defer c.Close()
			buf := make([]byte, 0, 32<<10)
			var err error
			for i := range gen.chunks() {
				if buf, err = gen.write(c, buf, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}
