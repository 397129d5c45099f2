package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What the environment's NDLB_* variables do before the flags read them.
func TestScreenEnv(t *testing.T) {
	known := envNames(newApp(nil, nil))
	environ := []string{
		"HOME=/root",
		"NDLB_LOG_FORMAT=",                        // empty: as if unset
		"NDLB_BALANCE=",                           // empty: as if unset
		"NDLB_PORT=tcp://10.96.0.7:9000",          // a Service named ndlb
		"NDLB_SERVICE_HOST=10.96.0.7",             // the rest of its links
		"NDLB_SERVICE_PORT=9000",                  //
		"NDLB_SERVICE_PORT_LOGS=9000",             //
		"NDLB_PORT_9000_TCP=tcp://10.96.0.7:9000", //
		"NDLB_PORT_9000_TCP_ADDR=10.96.0.7",       //
		"NDLB_CHECK_PORT=udp://10.96.0.8:53",      // a Service named ndlb-check
		"NDLB_ADMIN=tcp://127.0.0.1:9900",         // a setting, wrongly written: kept, for the flag to refuse
		"NDLB_CONNECTIONS=8",                      // a setting: kept
		"NDLB_TARGETS=10.0.0.1:514",               // a typo
		"NDLB_FROBNICATE=1",                       // unknown, nothing near
	}
	var unset []string
	notes := screenEnv(environ, known, func(name string) error {
		unset = append(unset, name)
		return nil
	})
	if want := []string{"NDLB_LOG_FORMAT", "NDLB_BALANCE", "NDLB_PORT", "NDLB_CHECK_PORT"}; !slices.Equal(unset, want) {
		t.Errorf("unset %v, want %v", unset, want)
	}
	var msgs []string
	for _, n := range notes {
		msgs = append(msgs, n.msg)
	}
	want := []string{
		"ignoring NDLB_PORT=tcp://10.96.0.7:9000: a service link, not --port (set enableServiceLinks: false in the pod's spec, or give the Service or the link another name)",
		"ignoring NDLB_CHECK_PORT=udp://10.96.0.8:53: a service link, not --check-port (set enableServiceLinks: false in the pod's spec, or give the Service or the link another name)",
		"ignoring NDLB_TARGETS: no setting reads it (did you mean NDLB_TARGET?)",
		"ignoring NDLB_FROBNICATE: no setting reads it",
	}
	if !slices.Equal(msgs, want) {
		t.Errorf("notices\n%s\nwant\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
	// The commands' own flags count as known.
	for _, name := range []string{"NDLB_PORT", "NDLB_ADMIN", "NDLB_CONFIG", "NDLB_PROTO"} {
		if !known[name] {
			t.Errorf("%s is not known", name)
		}
	}
}

// A Kubernetes Service named ndlb sets NDLB_PORT=tcp://IP:PORT in every
// pod started after it. ndlb runs, and says it ignored it.
func TestServiceLinkDoesNotStopTheStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "one.toml")
	if err := os.WriteFile(path, []byte("[[listener]]\nname = \"logs\"\nport = 0\ntarget = [\"127.0.0.1:1\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NDLB_PORT", "tcp://10.96.0.7:9000")
	t.Setenv("NDLB_SERVICE_HOST", "10.96.0.7")
	t.Setenv("NDLB_LOG_FORMAT", "")
	var out, errOut bytes.Buffer
	code := run([]string{"ndlb", "check-config", path}, &out, &errOut)
	if code != exitOK || !strings.Contains(out.String(), "ok: ") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out.String(), errOut.String())
	}
	if want := "ndlb: warning: ignoring NDLB_PORT=tcp://10.96.0.7:9000: a service link, not --port"; !strings.HasPrefix(errOut.String(), want) || strings.Count(errOut.String(), "\n") != 1 {
		t.Errorf("stderr %q, want one line beginning %q", errOut.String(), want)
	}
	// Set by the user, the same variable still counts.
	t.Setenv("NDLB_PORT", "5")
	if got := ndlb(t, "check-config", "testdata/config-errors/dup-port.toml"); !strings.Contains(got, "--port (or NDLB_PORT) is set") {
		t.Errorf("NDLB_PORT=5: %q", got)
	}
}
