package supervisor

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The PID file names this process; it is removed at exit only while it
// still does (after an upgrade it names the new process).
func TestPIDFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ndlb.pid")
	if err := WritePID(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("PID file holds %q", b)
	}
	os.WriteFile(path, []byte("1\n"), 0o644) // a new process took over
	RemovePID(path)
	if _, err := os.Stat(path); err != nil {
		t.Fatal("removed the PID file of another process")
	}
	WritePID(path)
	RemovePID(path)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("PID file left behind")
	}
	if WritePID("") != nil {
		t.Fatal("no PID file asked for, yet an error")
	}
	RemovePID("")
}
