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

// A flag value the flag package cannot parse gets the hint a config file's
// error gives, naming the setting.
// Whole numbers in NDLB_* variables are decimal too.
func TestWholeNumbersInTheEnvironmentAreDecimal(t *testing.T) {
	t.Setenv("NDLB_CONNECTIONS", "010")
	var out, errOut bytes.Buffer
	code := run([]string{"ndlb", "--target", "127.0.0.1:1"}, &out, &errOut)
	if want := `NDLB_CONNECTIONS: "010"; write it in decimal`; code != exitUsage || !strings.Contains(errOut.String(), want) {
		t.Errorf("exit %d, %q; want %d and %q", code, errOut.String(), exitUsage, want)
	}
}

func TestBadFlagValuesSayWhatTheyWant(t *testing.T) {
	for args, want := range map[string]string{
		"--line-timeout 5":          `--line-timeout: "5" is not a duration (use 5s)`,
		"--drain-timeout 3 minutes": `--drain-timeout: "3" is not a duration (use 3s)`,
		"--line-timeout 99999999h":  `"99999999h" is longer than a duration can be`,
		"--port abc":                `--port: "abc" is not a whole number`,
		"--port 023420":             `--port: "023420"; write it in decimal`, // not octal 10000
		"--connections=0x10":        `--connections: "0x10"; write it in decimal`,
	} {
		var out, errOut bytes.Buffer
		code := run(append([]string{"ndlb", "--target", "127.0.0.1:1"}, strings.Fields(args)...), &out, &errOut)
		if code != exitUsage || !strings.Contains(errOut.String(), want) {
			t.Errorf("%s: exit %d, %q; want %d and %q", args, code, errOut.String(), exitUsage, want)
		}
	}
}

// A command that takes no arguments refuses one, rather than ignoring it
// (ndlb healthcheck 9000 would check port 9000? It would not).
func TestCommandsRefuseStrayArguments(t *testing.T) {
	for _, cmd := range []string{"demo", "version", "healthcheck"} {
		var out, errOut bytes.Buffer
		code := run([]string{"ndlb", cmd, "extra"}, &out, &errOut)
		if want := "ndlb: " + cmd + ` takes no arguments, got "extra"`; code != exitUsage || !strings.HasPrefix(errOut.String(), want) {
			t.Errorf("ndlb %s extra: exit %d, %q; want %d and %q", cmd, code, errOut.String(), exitUsage, want)
		}
	}
}
