package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files of TestConfigErrors")

// Every bad config file is refused with one line naming the place and what
// to write instead, the same line from check-config and from the run (one
// validation path). The lines are golden files: go test ./cmd/ndlb -update
// rewrites them.
func TestConfigErrors(t *testing.T) {
	files, err := filepath.Glob("testdata/config-errors/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".toml"), func(t *testing.T) {
			golden := strings.TrimSuffix(path, ".toml") + ".golden"
			check := ndlb(t, "check-config", path)
			if *update {
				if err := os.WriteFile(golden, []byte(check), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if check != string(want) {
				t.Errorf("check-config says\n%s\nwant\n%s", check, want)
			}
			if got := ndlb(t, "--config", path); got != string(want) {
				t.Errorf("the run says\n%s\nwant (as check-config)\n%s", got, want)
			}
		})
	}
}

// The environment counts in check-config as in the run.
func TestCheckConfigReadsTheEnvironment(t *testing.T) {
	two, one := "testdata/config-errors/dup-port.toml", filepath.Join(t.TempDir(), "one.toml")
	if err := os.WriteFile(one, []byte("[[listener]]\nname = \"logs\"\nport = 0\ntarget = [\"127.0.0.1:1\"]\nconnections = 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env, path, want string
	}{
		{"NDLB_PORT=5", two, "ndlb: --port (or NDLB_PORT) is set, but " + two + " has 2 listeners: set it in the file\n"},
		// The variable's value, not the file's line 5 (connections = 4).
		{"NDLB_CONNECTIONS=-1", one, "ndlb: " + one + `: listener "logs": invalid value for --connections: -1 connections per target: want 1..1024 (set by --connections or NDLB_CONNECTIONS)` + "\n"},
		{"NDLB_ADMIN=nope", one, "ndlb: " + one + `: invalid value for --admin: address "nope": want HOST:PORT, such as 127.0.0.1:9900 (set by --admin or NDLB_ADMIN)` + "\n"},
	} {
		k, v, _ := strings.Cut(tc.env, "=")
		t.Setenv(k, v)
		if got := ndlb(t, "check-config", tc.path); got != tc.want {
			t.Errorf("%s: check-config says\n%s\nwant\n%s", tc.env, got, tc.want)
		}
		os.Unsetenv(k)
	}
	// A PID file that cannot be written now is a warning: its directory
	// may be made when the service starts.
	var out, errOut bytes.Buffer
	if code := run([]string{"ndlb", "--pid-file", "/nonexistent/ndlb.pid", "check-config", one}, &out, &errOut); code != exitOK ||
		!strings.HasPrefix(errOut.String(), "ndlb: warning: --pid-file /nonexistent/ndlb.pid cannot be written now") {
		t.Errorf("check-config with an unwritable --pid-file: exit %d, %q", code, errOut.String())
	}
	// A flag after the command is a usage error of one line.
	if got := ndlb(t, "check-config", "--port", "5", one); strings.Count(got, "\n") != 1 || !strings.Contains(got, "the balancer's flags go before the command") {
		t.Errorf("check-config --port: %q", got)
	}
}

// ndlb runs the command line in process, wants exit 2, and returns stderr.
func ndlb(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(append([]string{"ndlb"}, args...), &out, &errOut); code != exitUsage {
		t.Fatalf("ndlb %v: exit %d, want %d\nstdout %s\nstderr %s", args, code, exitUsage, out.String(), errOut.String())
	}
	return errOut.String()
}
