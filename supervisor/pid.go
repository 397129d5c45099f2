package supervisor

import (
	"os"
	"strconv"
	"strings"
)

// WritePID writes the process id to path, if set, through a temporary
// file, so that a reader never sees it half written.
func WritePID(path string) error {
	if path == "" {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RemovePID removes the PID file at exit if it still names this process.
func RemovePID(path string) {
	if path == "" {
		return
	}
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		os.Remove(path)
	}
}
