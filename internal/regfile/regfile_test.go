package regfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte("x"), n), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if b, err := Read(write("at", 100), 100); err != nil || len(b) != 100 {
		t.Fatalf("a file of the limit: %d bytes, %v", len(b), err)
	}
	if b, err := Read(write("over", 5000), 100); err != nil || len(b) != 101 {
		t.Fatalf("a file over the limit: %d bytes (want limit+1), %v", len(b), err)
	}
	if _, err := Read(filepath.Join(dir, "missing"), 100); !os.IsNotExist(err) {
		t.Fatalf("a missing file: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, kind := range map[string]string{dir: "a directory", fifo: "a named pipe (FIFO)", "/dev/null": "a device"} {
		done := make(chan error, 1)
		go func() { _, err := Read(path, 100); done <- err }()
		select {
		case err := <-done:
			var nr *NotRegularError
			if !errors.As(err, &nr) || nr.Kind != kind || nr.Path != path {
				t.Errorf("%s: %v, want %s", path, err, kind)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Read blocks", path)
		}
	}
}
