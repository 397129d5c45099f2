package config

import (
	"crypto/sha256"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce is how long the config file must stay unchanged after an event
// before it is read: editors and ConfigMap updates write in several steps.
const debounce = 200 * time.Millisecond

// Watch reports changes of the config file's content. It watches
// the file's directory, so that a file replaced by a rename and a
// Kubernetes ConfigMap's symlink swap (..data) are seen. stop ends it.
// loaded is the hash of the content first loaded: a change made before the
// watch began counts too.
func Watch(path string, loaded [32]byte, log *slog.Logger) (changed <-chan struct{}, stop func()) {
	if path == "" {
		return nil, func() {}
	}
	w, err := fsnotify.NewWatcher()
	if err == nil {
		err = w.Add(filepath.Dir(path))
	}
	if err != nil {
		log.Warn("cannot watch the config file; reload it with SIGHUP", "path", path, "err", err)
		if w != nil {
			w.Close()
		}
		return nil, func() {}
	}
	out := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchLoop(w, path, out, loaded, log)
	}()
	return out, func() { w.Close(); <-done }
}

// watchLoop turns the watcher's events into content changes on out.
func watchLoop(w *fsnotify.Watcher, path string, out chan<- struct{}, loaded [32]byte, log *slog.Logger) {
	base := filepath.Base(path)
	last := loaded
	settle := time.After(debounce) // a change before the watch began counts too
	for {
		select {
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if name := filepath.Base(ev.Name); name == base || name == "..data" {
				settle = time.After(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			log.Warn("watching the config file", "err", err)
		case <-settle:
			settle = nil
			if h := Hash(path); h != last {
				last = h
				select {
				case out <- struct{}{}:
				default: // a reload is already due
				}
			}
		}
	}
}

// Hash is the SHA-256 of the file's content as Load reads it (zero if
// unreadable, or not a regular file).
func Hash(path string) [32]byte {
	b, err := readFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
}
