package config

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var schema = Schema{
	{Name: "log-level", Kind: String, Global: true},
	{Name: "admin", Kind: String, Global: true},
	{Name: "port", Kind: Int},
	{Name: "passthrough", Kind: Bool},
	{Name: "target", Kind: Strings},
	{Name: "idle-timeout", Kind: Duration},
}

const good = `# two listeners
log-level = "debug"

[[listener]]
name = "logs"
port = 9000
target = ["a:1", "b:2"]

[[listener]]
name = "web"
passthrough = true
idle-timeout = "5m"
target = [
  "c:3",
]
`

func TestParse(t *testing.T) {
	f, err := Parse("ndlb.toml", []byte(good), schema)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Global.Args(); !slices.Equal(got, []string{"--log-level=debug"}) {
		t.Fatalf("global %v", got)
	}
	if len(f.Listeners) != 2 || f.Listeners[0].Name != "logs" || f.Listeners[1].Line != 9 {
		t.Fatalf("listeners %+v", f.Listeners)
	}
	if got := f.Listeners[0].Args(); !slices.Equal(got, []string{"--port=9000", "--target=a:1", "--target=b:2"}) {
		t.Fatalf("logs %v", got)
	}
	if got := f.Listeners[1].Args(); !slices.Equal(got, []string{"--passthrough=true", "--idle-timeout=5m", "--target=c:3"}) {
		t.Fatalf("web %v", got)
	}
	if l := f.Listeners[1].LineOf("idle-timeout"); l != 12 {
		t.Fatalf("idle-timeout on line %d, want 12", l)
	}
}

func TestErrorsHaveLines(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		line int
		want string
	}{
		{name: "unknown key", doc: "[[listener]]\nname = \"a\"\nprot = 9000\n", line: 3, want: `unknown key "listener.prot"`},
		{name: "wrong type", doc: "[[listener]]\nname = \"a\"\nport = \"9000\"\n", line: 3, want: "port"},
		{name: "global key in a listener", doc: "[[listener]]\nname = \"a\"\nadmin = \"x\"\n", line: 3, want: "unknown key"},
		{name: "listener key at the top", doc: "port = 1\n[[listener]]\nname = \"a\"\n", line: 1, want: "unknown key"},
		{name: "no name", doc: "[[listener]]\nport = 1\n", line: 1, want: "needs a name"},
		{name: "name twice", doc: "[[listener]]\nname = \"a\"\n[[listener]]\nname = \"a\"\n", line: 4, want: "used twice"},
		{name: "syntax", doc: "[[listener]\nname = \"a\"\n", line: 1, want: ""},
		{name: "no listener", doc: "log-level = \"info\"\n", line: 0, want: "no [[listener]]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.toml", []byte(tt.doc), schema)
			var e *Error
			if !errors.As(err, &e) || e.Line != tt.line || !strings.Contains(e.Msg, tt.want) {
				t.Fatalf("error %v, want line %d mentioning %q", err, tt.line, tt.want)
			}
			if tt.line > 0 && !strings.HasPrefix(err.Error(), "f.toml:") {
				t.Fatalf("error %q does not start with FILE:LINE", err)
			}
		})
	}
}

// Watch reports a new content written by rename, as editors and ConfigMap
// updates do, and Hash tells contents apart.
func TestWatchSeesARename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ndlb.toml")
	if err := os.WriteFile(path, []byte("a = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	first := Hash(path)
	changed, stop := Watch(path, first, slog.New(slog.DiscardHandler))
	defer stop()
	tmp := filepath.Join(dir, ".ndlb.toml.swp")
	if err := os.WriteFile(tmp, []byte("a = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the renamed file was not reported")
	}
	if Hash(path) == first || Hash(filepath.Join(dir, "missing")) != [32]byte{} {
		t.Fatal("Hash does not tell contents apart")
	}
}
