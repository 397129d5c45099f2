package bench

import (
	"testing"
	"time"
)

// BenchmarkSpool runs the end-to-end NDJSON workload (512 MiB of 256-byte
// JSON records from 4 clients, 2 sinks) through three ndlb processes of the
// same build in each iteration, in rotating order: without a spool, with
// --spool-dir and --spool-sync 1s, and with --spool-sync always. It reports
// each one's lines/s and CPU seconds per GB, and the spooled/plain ratios;
// issue 13's goal is spool (1s) >= 0.8 of plain.
func BenchmarkSpool(b *testing.B) {
	bin := buildNDLB(b)
	b.Run("shipper", func(b *testing.B) { spoolBench(b, bin) })
}

func spoolBench(b *testing.B, bin string) {
	sinks, addrs := newSinks(b, 2)
	procs := []*ndlbProc{
		startNDLBArgs(b, bin, addrs, nil),
		startNDLBArgs(b, bin, addrs, []string{"--spool-dir", b.TempDir(), "--spool-sync", "1s"}),
		startNDLBArgs(b, bin, addrs, []string{"--spool-dir", b.TempDir(), "--spool-sync", "always"}),
	}
	took, cpu, rss := rotate(b, procs, sinks, shipper{}, false)
	gb := float64(b.N) * e2eBytes / 1e9
	lines := func(d time.Duration) float64 { return gb * 1e9 / 256 / d.Seconds() }
	b.ReportMetric(lines(took[0]), "plain-lines/s")
	b.ReportMetric(lines(took[1]), "spool1s-lines/s")
	b.ReportMetric(lines(took[2]), "spoolalways-lines/s")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "spool1s/plain")
	b.ReportMetric(took[0].Seconds()/took[2].Seconds(), "spoolalways/plain")
	b.ReportMetric(cpu[0]/gb, "plain-cpu-s/GB")
	b.ReportMetric(cpu[1]/gb, "spool1s-cpu-s/GB")
	b.ReportMetric(cpu[2]/gb, "spoolalways-cpu-s/GB")
	b.ReportMetric(rss[0], "plain-peak-RSS-MiB")
	b.ReportMetric(rss[1], "spool1s-peak-RSS-MiB")
	b.ReportMetric(rss[2], "spoolalways-peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}
