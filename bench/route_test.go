package bench

import (
	"sync"
	"testing"
	"time"
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
	var once sync.Once
	stop := func() {
		for _, p := range procs {
			p.stop()
		}
	}
	defer once.Do(stop)
	var took [2]time.Duration
	var cpu [2]float64
	i := 0
	for b.Loop() {
		for k := range 2 {
			run := (i + k) % 2
			p := procs[run]
			c0 := p.cpuSeconds()
			took[run] += generate(b, shipper{}, oneCPU, []string{p.addr}, sinks)
			cpu[run] += p.cpuSeconds() - c0
		}
		i++
	}
	gb := float64(b.N) * e2eBytes / 1e9
	lines := func(d time.Duration) float64 { return gb * 1e9 / 256 / d.Seconds() }
	rss := []float64{procs[0].peakRSS(), procs[1].peakRSS()}
	once.Do(stop)
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
