package setup

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
)

// Any config file, however broken, is read into settings or refused with
// one line naming the file: never a panic, and every refusal a
// *config.Error. What the file's values then say is checked as a run
// checks it (the process's settings; each listener's, where that opens no
// file and dials nothing).
func FuzzConfigFile(f *testing.F) {
	seeds, _ := filepath.Glob("../cmd/ndlb/testdata/config-errors/*.toml")
	seeds = append(seeds, "../deploy/ndlb.toml.example")
	for _, path := range seeds {
		if b, err := os.ReadFile(path); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("[[listener]]\nname = \"a\"\ntarget = [\"127.0.0.1:1\"]\n[[listener.group]]\nname = \"g\"\n"))
	schema := settings.Schema()
	// What Listener reads outside the file: certificates, DNS, the
	// spool's directory.
	readsOutside := []string{"tls-cert", "tls-key", "tls-client-ca", "tls-target-ca", "tls-target-cert", "tls-target-key",
		"target-dns", "target-srv", "spool-dir"}
	f.Fuzz(func(t *testing.T, doc []byte) {
		file, err := config.Parse("fuzz.toml", doc, schema)
		if err != nil {
			if _, ok := err.(*config.Error); !ok {
				t.Fatalf("%T %v: not a *config.Error", err, err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "fuzz.toml") || strings.Contains(msg, "\n") {
				t.Fatalf("error %q: want one line naming the file", msg)
			}
			return
		}
		_, _ = ProcessOf(Layered{File: valuesOf(file.Global)})
		for _, sec := range file.Listeners {
			v := Layered{File: valuesOf(sec)}
			if slices.ContainsFunc(readsOutside, v.IsSet) {
				continue // would read files, query DNS or make directories
			}
			_, _ = Listener(sec.Name, v, v.Set(), quiet)
		}
	})
}
