package main

import (
	"bytes"
	"strings"
	"testing"
)

// The README's first command must keep working: a short demo loses nothing,
// tears nothing, and says so.
func TestDemo(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"ndlb", "demo", "--clients", "2", "--lines", "20000", "--duration", "1500ms"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "sent 40000, delivered 40000, lost 0, torn 0") {
		t.Fatalf("demo verdict missing:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "killed") || !strings.Contains(out.String(), "restarted") {
		t.Fatalf("demo did not kill and restart a target:\n%s", out.String())
	}
}

func TestDemoBadFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"ndlb", "demo", "--clients", "0"}, &out, &errOut); code != exitUsage {
		t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, errOut.String())
	}
}
