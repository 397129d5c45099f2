package bench

import (
	"sync"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// BenchmarkRouteByKey runs the end-to-end NDJSON workload (512 MiB of
// 256-byte JSON records from 4 clients, 4 sinks) through two ndlb
// processes of the same build in each iteration: one spreading batches as
// usual, one routing every record by its "host" field (--route-key
// json:host, 64 keys, the load bound on). The order rotates between
// iterations. It reports both rates, routed/plain, and CPU seconds per GB;
// issue 14's goal is routed/plain >= 0.9.
func BenchmarkRouteByKey(b *testing.B) {
	bin := buildNDLB(b)
	b.Run("shipper-1cpu", func(b *testing.B) { routeByKey(b, bin, true) })
	b.Run("shipper", func(b *testing.B) { routeByKey(b, bin, false) })
}

func routeByKey(b *testing.B, bin string, oneCPU bool) {
	sinks, addrs := newSinks(b, 4)
	procs := []*ndlbProc{
		startNDLBArgs(b, bin, addrs, nil),
		startNDLBArgs(b, bin, addrs, []string{"--route-key", "json:host"}),
	}
	took, cpu, rss := rotate(b, procs, sinks, shipper{}, oneCPU)
	gb := float64(b.N) * e2eBytes / 1e9
	lines := func(d time.Duration) float64 { return gb * 1e9 / 256 / d.Seconds() }
	b.ReportMetric(lines(took[0]), "plain-lines/s")
	b.ReportMetric(lines(took[1]), "routed-lines/s")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "routed/plain")
	b.ReportMetric(cpu[0]/gb, "plain-cpu-s/GB")
	b.ReportMetric(cpu[1]/gb, "routed-cpu-s/GB")
	b.ReportMetric(cpu[1]/cpu[0], "routed/plain-cpu")
	b.ReportMetric(rss[0], "plain-peak-RSS-MiB")
	b.ReportMetric(rss[1], "routed-peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}

// rotate runs gen through each of procs in every iteration of b, in an
// order that rotates between iterations, and returns each one's time and
// CPU seconds, and its peak RSS in MiB. It stops the processes.
func rotate(b *testing.B, procs []*ndlbProc, sinks []*linetest.Sink, gen generator, oneCPU bool) (took []time.Duration, cpu, rss []float64) {
	var once sync.Once
	stop := func() {
		for _, p := range procs {
			p.stop()
		}
	}
	defer once.Do(stop)
	took, cpu = make([]time.Duration, len(procs)), make([]float64, len(procs))
	i := 0
	for b.Loop() {
		for k := range procs {
			run := (i + k) % len(procs)
			p := procs[run]
			c0 := p.cpuSeconds()
			took[run] += generate(b, gen, oneCPU, []string{p.addr}, sinks)
			cpu[run] += p.cpuSeconds() - c0
		}
		i++
	}
	for _, p := range procs {
		rss = append(rss, p.peakRSS())
	}
	once.Do(stop)
	return took, cpu, rss
}
