package deptest

import (
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/ndlb/ndlb/"

// allowed lists, for each library package, the packages of this module it
// may import (directly or not). cmd/ndlb wires everything and is not listed;
// nothing can import it, as it is a main package.
var allowed = map[string][]string{
	// invalid holds the error type of every Config.Validate; it imports
	// nothing of ours, so framer may import it.
	"invalid":  {},
	"framer":   {"invalid"},
	"upstream": {},
	"tlsutil":  {},
	"listener": {"internal/gopool", "internal/rawio", "invalid"},
	"dispatch": {"framer", "invalid"},
	"pool":     {"dispatch", "framer", "internal/rawio", "invalid", "tlsutil", "upstream"},
	"ndjson": {"balance", "dispatch", "framer", "internal/gopool", "internal/rawio", "invalid", "listener", "pool", "route", "routekey",
		"spool", "tlsutil", "upstream"},
	"balance":   {"upstream"},
	"admin":     {"invalid", "upstream"},
	"health":    {"invalid", "tlsutil", "upstream"},
	"discovery": {"invalid", "upstream"},
	"config":    {},
	// spool is the segment store of the write-ahead spool: a leaf.
	"spool": {},
	// routekey takes a routing key from a message: a leaf.
	"routekey": {},
	// route sends each message to a group and a target by its key.
	"route": {"balance", "dispatch", "framer", "internal/rawio", "invalid", "pool", "routekey", "tlsutil", "upstream"},
	// supervisor runs listeners of both modes; it knows the settings only
	// for their reload rules.
	"supervisor": {"admin", "balance", "config", "discovery", "dispatch", "framer", "health", "internal/gopool", "internal/rawio",
		"invalid", "listener", "ndjson", "passthrough", "pool", "route", "routekey", "settings", "spool", "tlsutil", "upstream"},
	// setup maps settings onto the libraries' configs and a supervisor spec.
	"setup": {"admin", "balance", "config", "discovery", "dispatch", "framer", "health", "internal/gopool", "internal/rawio",
		"invalid", "listener", "ndjson", "passthrough", "pool", "route", "routekey", "settings", "spool", "supervisor", "tlsutil", "upstream"},
	// demo runs the NDJSON mode against linetest's sinks, in one process.
	"demo": {"balance", "dispatch", "framer", "internal/gopool", "internal/rawio", "internal/linetest", "invalid", "listener", "ndjson",
		"pool", "route", "routekey", "spool", "tlsutil", "upstream"},
	// settings takes its defaults from the libraries it names.
	"settings": {"balance", "config", "discovery", "dispatch", "framer", "health", "internal/gopool", "internal/rawio", "invalid",
		"listener", "ndjson", "passthrough", "pool", "route", "routekey", "spool", "tlsutil", "upstream"},
	// telemetry installs the SDK; only cmd/ndlb may import it.
	"telemetry": {},
	// passthrough proxies whole connections; it must not reach into the
	// line path.
	"passthrough": {"balance", "internal/gopool", "internal/rawio", "invalid", "listener", "tlsutil", "upstream"},
}

// anyMay lists the leaves every package may import: they import nothing
// of ours (internal/carry: counters continuous across a listener's
// instances; internal/mono: monotonic timestamps; internal/regfile:
// reading the small files an operator names).
var anyMay = []string{"internal/carry", "internal/mono", "internal/regfile"}

func init() {
	for _, leaf := range anyMay {
		allowed[leaf] = nil
	}
}

type pkg struct {
	ImportPath string
	Deps       []string
}

func TestImportRules(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(p.ImportPath, module)
		rules, ok := allowed[name]
		if !ok {
			continue
		}
		seen++
		for _, d := range p.Deps {
			if name != "telemetry" && strings.HasPrefix(d, "go.opentelemetry.io/otel/sdk") {
				t.Errorf("%s imports %s: library packages use only the OpenTelemetry API", name, d)
			}
			dep, ours := strings.CutPrefix(d, module)
			if ours && !slices.Contains(rules, dep) && !slices.Contains(anyMay, dep) {
				t.Errorf("%s imports %s; docs/design.md allows only %v", name, dep, rules)
			}
		}
	}
	if seen != len(allowed) {
		t.Fatalf("checked %d packages, want %d: a package was renamed or removed", seen, len(allowed))
	}
}

// Timestamps kept as integers go through internal/mono: UnixNano drops
// the monotonic reading, so a step of the wall clock would close every
// idle connection at once (or keep one open as long as the clock went
// back). Tests and benchmarks may use it.
func TestNoWallClockTimestamps(t *testing.T) {
	root := "../.."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "bench" || rel == "integration" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(src), "\n") {
			if strings.Contains(line, ".UnixNano()") || strings.Contains(line, ".UnixMicro()") ||
				strings.Contains(line, ".UnixMilli()") || strings.Contains(line, "time.Unix(0,") {
				t.Errorf("%s:%d: a wall-clock timestamp; use internal/mono (Now, Of, Time)", rel, i+1)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
