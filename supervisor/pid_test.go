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

// CheckPID refuses a PID file WritePID could not write, and writes
// nothing.
func TestCheckPID(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string
	}{
		{"", ""},
		{filepath.Join(dir, "ndlb.pid"), ""},
		{dir, "is a directory"},
		{filepath.Join(dir, "missing", "ndlb.pid"), "no such file or directory"},
		{filepath.Join(file, "ndlb.pid"), "is not a directory"},
	} {
		err := CheckPID(tc.path)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckPID(%q) = %v, want %q", tc.path, err, tc.want)
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 {
		t.Errorf("CheckPID left %v", left)
	}
}
