package regfile

import (
	"io"
	"os"
	"syscall"
)

// NotRegularError is Read's error for a path that is not a regular file.
type NotRegularError struct {
	Path string
	// Kind names what the path is: "a directory", "a named pipe (FIFO)"…
	Kind string
}

func (e *NotRegularError) Error() string { return e.Path + ": not a regular file: " + e.Kind }

// Read reads at most limit+1 bytes of the regular file at path: a result
// longer than limit means the file is longer than limit. Anything else (a FIFO, a device, a
// directory) is refused with a *NotRegularError before a read: opening it
// does not wait (O_NONBLOCK, which changes nothing for a regular file).
func Read(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, &NotRegularError{Path: path, Kind: Kind(st.Mode())}
	}
	return io.ReadAll(io.LimitReader(f, limit+1))
}

// Kind names what a file that is not a regular one is.
func Kind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "a special file"
}
