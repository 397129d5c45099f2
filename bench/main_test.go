package bench

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// genEnv makes this test binary a generator process instead: NDLB_BENCH_GEN
// holds the comma-separated addresses to send to, one client per address in
// turn, e2eClients clients in all.
const genEnv = "NDLB_BENCH_GEN"

// genOctetEnv, set, makes the generator process send octet-counted frames
// (octetShipper) instead of lines.
const genOctetEnv = "NDLB_BENCH_GEN_OCTET"

// newConnsEnv makes this test binary a client of new connections instead:
// NDLB_BENCH_NEWCONNS holds "ADDR WORKERS EACH"; it prints the seconds
// taken.
const newConnsEnv = "NDLB_BENCH_NEWCONNS"

// reqRespEnv makes this test binary a client of kept-alive exchanges
// instead: NDLB_BENCH_REQRESP holds "ADDR CONNS EACH"; it prints the
// exchanges per second and the p50, p99 and p99.9 latencies in µs.
const reqRespEnv = "NDLB_BENCH_REQRESP"

func TestMain(m *testing.M) {
	if v := os.Getenv(newConnsEnv); v != "" {
		addr, workers, each := clientArgs(v, "new connections")
		start := time.Now()
		if err := newConns(addr, workers, each); err != nil {
			fmt.Fprintln(os.Stderr, "new connections:", err)
			os.Exit(1)
		}
		fmt.Println(time.Since(start).Seconds())
		os.Exit(0)
	}
	if v := os.Getenv(reqRespEnv); v != "" {
		addr, conns, each := clientArgs(v, "exchanges")
		r, err := closedLoop(addr, conns, each, false)
		if err != nil {
			fmt.Fprintln(os.Stderr, "exchanges:", err)
			os.Exit(1)
		}
		fmt.Println(r[0], r[1], r[2], r[3])
		os.Exit(0)
	}
	if addrs := os.Getenv(genEnv); addrs != "" {
		var gen generator = shipper{}
		if os.Getenv(genOctetEnv) != "" {
			gen = octetShipper{}
		}
		if err := runGenerator(strings.Split(addrs, ","), gen); err != nil {
			fmt.Fprintln(os.Stderr, "generator:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// clientArgs parses a client process's "ADDR N M", or exits.
func clientArgs(v, what string) (addr string, n, m int) {
	if _, err := fmt.Sscan(v, &addr, &n, &m); err != nil {
		fmt.Fprintln(os.Stderr, what+":", err)
		os.Exit(2)
	}
	return addr, n, m
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
