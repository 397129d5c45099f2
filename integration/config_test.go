package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, dir, doc string) string {
	t.Helper()
	path := filepath.Join(dir, "ndlb.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// listening returns the address of each listener, by name, from the
// "listening" log lines.
func listening(t *testing.T, p *proc, n int) map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := map[string]string{}
		for _, l := range p.findLogs("listening") {
			name, _ := l["listener"].(string)
			out[name], _ = l["addr"].(string)
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d listeners, want %d", len(out), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One process runs an NDJSON and a passthrough listener from a file.
func TestConfigFileTwoListeners(t *testing.T) {
	w := newWorld(t, 1)
	echo := newIDBackend(t, "echo", nil)
	path := writeConfig(t, t.TempDir(), fmt.Sprintf(`
log-format = "json"

[[listener]]
name = "logs"
addr = "127.0.0.1"
port = 0
target = [%q]

[[listener]]
name = "web"
passthrough = true
addr = "127.0.0.1"
port = 0
balance = "first"
target = [%q]
`, w.sinks[0].Addr(), echo.addr()))
	p := startCmd(t, command(bin, "--config", path))
	addrs := listening(t, p, 2)
	c := dial(t, addrs["logs"])
	if _, err := linetest.Send(c, 1, 0, 1000, 4096); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if name, err := hello(t, addrs["web"], nil, false); err != nil || name != "echo" {
		t.Fatalf("web: %q %v", name, err)
	}
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 1000}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if g := p.ledger("logs"); g.received != 1000 || g.delivered != 1000 {
		t.Fatalf("ledger %+v", g)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		doc  string
		code int
		want string
	}{
		{name: "good", code: 0, want: "ok:", doc: "[[listener]]\nname = \"a\"\ntarget = [\"127.0.0.1:1\"]\n"},
		{name: "unknown key", code: 2, want: "ndlb.toml:3: listener \"a\": unknown key \"targets\" (did you mean target?)", doc: "[[listener]]\nname = \"a\"\ntargets = [\"127.0.0.1:1\"]\n"},
		{name: "bad value", code: 2, want: "ndlb.toml:4: listener \"a\"", doc: "[[listener]]\nname = \"a\"\ntarget = [\"127.0.0.1:1\"]\nconnections = 0\n"},
		{name: "no target", code: 2, want: "ndlb.toml:1:", doc: "[[listener]]\nname = \"a\"\n"},
		{name: "syntax", code: 2, want: "ndlb.toml:2:", doc: "[[listener]]\nname = \n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, dir, tt.doc)
			out, _ := command(bin, "check-config", path).CombinedOutput()
			cmd := command(bin, "check-config", path)
			cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != tt.code || !strings.Contains(string(out), tt.want) {
				t.Fatalf("exit %d, output %q; want %d and %q", code, out, tt.code, tt.want)
			}
			if tt.code == 2 && strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
				t.Fatalf("more than one line: %q", out)
			}
		})
	}
}
