package setup

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/supervisor"
)

// Errors are placed where the user set the value: the file's line, or the
// flag or variable that took its place; a socket that cannot be opened is
// a runtime failure at its listener's port line.
func TestSourcesPlaceErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ndlb.toml")
	doc := "[[listener]]\nname = \"a\"\nport = 9100\ntarget = [\"127.0.0.1:1\"]\n\n[[listener]]\nname = \"b\"\nport = 9101\ntarget = [\"127.0.0.1:1\"]\nconnections = 2\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	proc, srcs, err := Load(path, values{})
	if err != nil || len(srcs) != 2 || proc.File == nil {
		t.Fatalf("Load: %v %v", srcs, err)
	}
	if got := srcs[1].Place(settings.Errorf("connections", "bad")).Error(); got != path+`:10: listener "b": bad` {
		t.Errorf("placed at the file's line: %q", got)
	}
	flagged := &Source{Name: "b", File: srcs[1].File, Sec: srcs[1].Sec, Values: srcs[1].Values, Flags: values{"connections": 0}}
	if got := flagged.Place(settings.Errorf("connections", "bad")).Error(); !strings.HasSuffix(got, "bad (set by --connections or NDLB_CONNECTIONS)") || strings.Contains(got, ":10:") {
		t.Errorf("set by a flag: %q", got)
	}
	msg, listen := Explain(&supervisor.Error{Listener: "b", Listen: true, Err: errors.New("address already in use")}, srcs)
	if !listen || msg != path+`:8: listener "b": address already in use` {
		t.Errorf("a socket error: %q %v", msg, listen)
	}
	if _, _, err := Load(path, values{"port": 1}); err == nil || !strings.Contains(err.Error(), "has 2 listeners") {
		t.Errorf("a listener flag with two listeners: %v", err)
	}
	if _, _, err := Load(filepath.Join(t.TempDir(), "missing.toml"), values{}); err == nil || !strings.HasPrefix(err.Error(), "cannot read the config file") {
		t.Errorf("a missing file: %v", err)
	}
	p, l := FlagsOnly(values{}, "default")
	if p.File != nil || len(l) != 1 || l[0].Name != "default" || l[0].Place(settings.Errorf("port", "bad")).Error() != "bad" {
		t.Error("flags only")
	}
}

// The admin API (TCP) may share its port with a UDP listener, not with a
// TCP one.
func TestAdminSharesAPortWithUDPOnly(t *testing.T) {
	for _, udp := range []bool{true, false} {
		path := filepath.Join(t.TempDir(), "ndlb.toml")
		doc := "admin = \"127.0.0.1:9210\"\n\n[[listener]]\nname = \"a\"\naddr = \"127.0.0.1\"\nport = 9210\ntarget = [\"127.0.0.1:1\"]\n"
		if udp {
			doc += "udp = true\n"
		}
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		proc, srcs, err := Load(path, values{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = Spec(proc, srcs, slog.New(slog.DiscardHandler))
		if refused := err != nil && strings.Contains(err.Error(), "also the address of listener"); refused == udp {
			t.Errorf("udp %v: %v", udp, err)
		}
	}
}
