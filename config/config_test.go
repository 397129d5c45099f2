package config

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
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
	if got := valuesOf(f.Global); !reflect.DeepEqual(got, []any{"log-level", "debug"}) {
		t.Fatalf("global %v", got)
	}
	if len(f.Listeners) != 2 || f.Listeners[0].Name != "logs" || f.Listeners[1].Line != 9 {
		t.Fatalf("listeners %+v", f.Listeners)
	}
	if got := valuesOf(f.Listeners[0]); !reflect.DeepEqual(got, []any{"name", "logs", "port", 9000, "target", []string{"a:1", "b:2"}}) {
		t.Fatalf("logs %v", got)
	}
	if got := valuesOf(f.Listeners[1]); !reflect.DeepEqual(got, []any{"name", "web", "passthrough", true, "idle-timeout", 5 * time.Minute, "target", []string{"c:3"}}) {
		t.Fatalf("web %v", got)
	}
	if l := f.Listeners[1].LineOf("idle-timeout"); l != 12 {
		t.Fatalf("idle-timeout on line %d, want 12", l)
	}
}

// valuesOf is a section's keys and values, in order.
func valuesOf(s Section) []any {
	var out []any
	for _, v := range s.Values {
		out = append(out, v.Key, v.V)
	}
	return out
}

// A byte order mark is not part of the file.
func TestByteOrderMark(t *testing.T) {
	if _, err := Parse("f.toml", append([]byte("\xef\xbb\xbf"), good...), schema); err != nil {
		t.Fatal(err)
	}
}

// What people write for what is meant: one string for a list of one, a
// number for a size.
func TestLenientShapes(t *testing.T) {
	sch := append(slices.Clone(schema), Key{Name: "max-line-bytes", Kind: String})
	f, err := Parse("f.toml", []byte("[[listener]]\nname = \"a\"\ntarget = \"a:1\"\nmax-line-bytes = 65536\n"), sch)
	if err != nil {
		t.Fatal(err)
	}
	if got := valuesOf(f.Listeners[0]); !reflect.DeepEqual(got, []any{"name", "a", "target", []string{"a:1"}, "max-line-bytes", "65536"}) {
		t.Fatalf("values %v", got)
	}
}

// Every problem is at its own line, names its listener, and says what to
// write instead.
func TestErrorsHaveLines(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string // the whole error
	}{
		{name: "unknown key", doc: "[[listener]]\nname = \"a\"\nprot = 9000\n", want: `f.toml:3: listener "a": unknown key "prot" (did you mean port?)`},
		{name: "unknown key, far from any", doc: "[[listener]]\nname = \"a\"\nbogus-key = 1\n", want: `f.toml:3: listener "a": unknown key "bogus-key" (the keys are the flags' names: see ndlb --help)`},
		{name: "port as text", doc: "[[listener]]\nname = \"a\"\nport = \"9000\"\n", want: `f.toml:3: listener "a": port: "9000" is text; want a number without quotes (port = 9000)`},
		{name: "port as a word", doc: "[[listener]]\nname = \"a\"\nport = \"http\"\n", want: `f.toml:3: listener "a": port: "http" is text; want a whole number`},
		{name: "bool as text", doc: "[[listener]]\nname = \"a\"\npassthrough = \"yes\"\n", want: `f.toml:3: listener "a": passthrough: "yes" is text; want true or false, without quotes (passthrough = true)`},
		{name: "duration as a number", doc: "[[listener]]\nname = \"a\"\nidle-timeout = 10\n", want: `f.toml:3: listener "a": idle-timeout: 10 is a number; want a duration in quotes (idle-timeout = "10s")`},
		{name: "duration in words", doc: "[[listener]]\nname = \"web\"\n\nidle-timeout = \"10 minutes\"\n", want: `f.toml:4: listener "web": idle-timeout: "10 minutes" is not a duration (use 10m)`},
		{name: "duration in days", doc: "[[listener]]\nname = \"a\"\nidle-timeout = \"2 days\"\n", want: `f.toml:3: listener "a": idle-timeout: "2 days" is not a duration (use 48h)`},
		{name: "duration nonsense", doc: "[[listener]]\nname = \"a\"\nidle-timeout = \"abc\"\n", want: `f.toml:3: listener "a": idle-timeout: "abc" is not a duration (use a number and a unit: 500ms, 90s, 5m or 1h30m)`},
		{name: "list of numbers", doc: "[[listener]]\nname = \"a\"\ntarget = [\"a:1\", 2]\n", want: `f.toml:3: listener "a": target: item 2: 2 is a number; want a string in quotes`},
		{name: "string as a table", doc: "log-level = {a = 1}\n[[listener]]\nname = \"a\"\n", want: `f.toml:1: log-level: a table; want a string in quotes`},
		{name: "global key in a listener", doc: "[[listener]]\nname = \"a\"\nadmin = \"x\"\n", want: `f.toml:3: listener "a": admin: is process-wide: set it at the top of the file, before the first [[listener]]`},
		{name: "listener key at the top", doc: "port = 1\n[[listener]]\nname = \"a\"\n", want: `f.toml:1: port: belongs in a [[listener]] table (each listener has its own)`},
		{name: "name at the top", doc: "name = \"a\"\n[[listener]]\nname = \"a\"\n", want: `f.toml:1: name: belongs in a [[listener]] table`},
		{name: "one bracket", doc: "[listener]\nname = \"a\"\n", want: `f.toml:1: listener: write each listener as a [[listener]] table with its name inside (name = "logs"), not [listener] or [[listener.logs]]`},
		{name: "no name", doc: "[[listener]]\nport = 1\n", want: `f.toml:1: [[listener]] needs a name (name = "logs")`},
		{name: "name not text", doc: "[[listener]]\nname = 1\n", want: `f.toml:2: name: 1 is a number; want a name in quotes`},
		{name: "name twice", doc: "[[listener]]\nname = \"a\"\n[[listener]]\nname = \"a\"\n", want: `f.toml:4: listener "a": name "a" is used twice (first on line 2)`},
		{name: "quoted header shifts nothing", doc: "[[listener]]\nname = \"a\"\n[[\"listener\"]]\nname = \"b\"\nidle-timeout = \"10 minutes\"\n[[listener]]\nname = \"c\"\n", want: `f.toml:5: listener "b": idle-timeout: "10 minutes" is not a duration (use 10m)`},
		{name: "a key inside a multi-line string", doc: "[[listener]]\nname = \"a\"\ntarget = \"\"\"\nidle-timeout = 1\n\"\"\"\nidle-timeout = \"x\"\n", want: `f.toml:6: listener "a": idle-timeout: "x" is not a duration (use a number and a unit: 500ms, 90s, 5m or 1h30m)`},
		{name: "dotted key", doc: "[[listener]]\nname = \"a\"\n\nidle.timeout = \"5s\"\n", want: `f.toml:4: listener "a": unknown key "idle" (the keys are the flags' names: see ndlb --help)`},
		{name: "single-quoted key", doc: "[[listener]]\nname = \"a\"\n\n'idle-timeout' = '10 minutes'\n", want: `f.toml:4: listener "a": idle-timeout: "10 minutes" is not a duration (use 10m)`},
		{name: "a table after the listeners", doc: "[[listener]]\nname = \"a\"\n[admin]\naddr = \"x\"\n", want: `f.toml:3: admin: a table; want a string in quotes`},
		{name: "a listener's sub-table", doc: "[[listener]]\nname = \"a\"\n\n[listener.tls]\ncert = \"x\"\n", want: `f.toml:4: listener "a": unknown key "tls" (the keys are the flags' names: see ndlb --help)`},
		{name: "listeners", doc: "[[listeners]]\nname = \"a\"\n", want: `f.toml:1: unknown key "listeners" (did you mean [[listener]]?)`},
		{name: "listener.name", doc: "[[listener.logs]]\nport = 1\n", want: `f.toml:1: listener: write each listener as a [[listener]] table with its name inside (name = "logs"), not [listener] or [[listener.logs]]`},
		{name: "decimal port", doc: "[[listener]]\nname = \"a\"\nport = 9000.0\n", want: `f.toml:3: listener "a": port: a decimal number; want a whole number`},
		{name: "control character in a name", doc: "[[listener]]\nname = \"a\\nb\"\n", want: `f.toml:2: name: "a\nb" has control characters`},
		{name: "UTF-16", doc: "\xff\xfe[\x00", want: `f.toml: the file is UTF-16: save it as UTF-8`},
		{name: "syntax", doc: "[[listener]\nname = \"a\"\n", want: "f.toml:1: not valid TOML: "},
		{name: "no listener", doc: "log-level = \"info\"\n", want: "f.toml: no [[listener]] table: add one with at least name and target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.toml", []byte(tt.doc), schema)
			var e *Error
			if !errors.As(err, &e) || !strings.HasPrefix(err.Error(), tt.want) || tt.name != "syntax" && err.Error() != tt.want {
				t.Fatalf("error\n%v\nwant\n%s", err, tt.want)
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

// [[listener.group]] tables become the group setting's values, in their
// flag form, and a bad one is reported at its line.
func TestGroupTables(t *testing.T) {
	sch := append(slices.Clone(schema), Key{Name: GroupKey, Kind: Strings}, Key{Name: "group-key", Kind: String})
	doc := `[[listener]]
name = "logs"
group-key = "json:stream"

[[listener.group]]
name = "audit"
target = ["10.0.0.1:9000", "10.0.0.2:9000=2"]
values = ["audit", "security"]

[[listener.group]]
name = "rest"
target = "10.0.1.1:9000"
default = true
balance = "spread"

[[listener]]
name = "web"
port = 80
`
	f, err := Parse("f.toml", []byte(doc), sch)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range f.Listeners[0].Values {
		if v.Key == GroupKey {
			got = v.V.([]string)
			if v.Line != 5 {
				t.Errorf("group line %d, want 5", v.Line)
			}
		}
	}
	want := []string{"audit=10.0.0.1:9000,10.0.0.2:9000=2;values=audit,security", "rest=10.0.1.1:9000;default;balance=spread"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("groups %q, want %q", got, want)
	}
	if f.Listeners[1].LineOf("port") != 18 {
		t.Fatalf("port of the second listener at line %d", f.Listeners[1].LineOf("port"))
	}
	for _, tt := range []struct{ doc, want string }{
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\nname = \"g\"\ntargets = [\"x:1\"]\n", `f.toml:5: listener "a": [[listener.group]]: unknown key "targets" (a group has name, target, values, default, balance)`},
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\ntarget = [\"x:1\"]\n", `f.toml:3: listener "a": [[listener.group]] needs a name (name = "audit")`},
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\nname = \"g\"\n", `f.toml:3: listener "a": group "g": target: want a list of HOST:PORT (target = ["10.0.0.1:9000"])`},
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\nname = \"g\"\ntarget = \"x:1\"\nvalues = [\"a,b\"]\n", `f.toml:6: listener "a": group "g": value "a,b": values are not empty and hold no ; or ,`},
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\nname = \"g\"\ntarget = \"x:1\"\ndefault = \"yes\"\n", `f.toml:6: listener "a": group "g": default: "yes" is text; want true or false, without quotes (default = true)`},
	} {
		if _, err := Parse("f.toml", []byte(tt.doc), sch); err == nil || err.Error() != tt.want {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}
}

func TestGroupTablesRefuseInjection(t *testing.T) {
	sch := append(slices.Clone(schema), Key{Name: GroupKey, Kind: Strings})
	for _, tt := range []struct{ doc, want string }{
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\nname = \"g\"\ntarget = [\"x:1;default\"]\n", `f.toml:5: listener "a": group "g": target "x:1;default": one HOST:PORT (or HOST:PORT=WEIGHT) per string`},
		{"[[listener]]\nname = \"a\"\n[[listener.group]]\nname = \"g\"\ntarget = \"x:1\"\nbalance = \"key;default\"\n", `f.toml:6: listener "a": group "g": balance: "key;default" is text; want "key" (by route-key) or "spread"`},
		{"[[listener]]\nname = \"a\"\ngroup = [{name = \"g\"}]\n", `f.toml:3: listener "a": group "g": target: want a list of HOST:PORT (target = ["10.0.0.1:9000"])`},
	} {
		if _, err := Parse("f.toml", []byte(tt.doc), sch); err == nil || err.Error() != tt.want {
			t.Errorf("error\n%v\nwant\n%s", err, tt.want)
		}
	}
}

// What is not a regular file is refused before a read, at once: a FIFO
// would block the reload (and the watcher) forever, a device such as
// /dev/zero would fill memory. Hash says nothing changed to a watcher.
func TestLoadRefusesWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.toml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.toml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{fifo: "a named pipe", zero: "a device", dir: "a directory"} {
		_, err := Load(path, schema)
		if err == nil || !strings.Contains(err.Error(), "not a regular file: "+want) {
			t.Errorf("%s: %v, want it refused as %s", path, err, want)
		}
		if Hash(path) != [32]byte{} {
			t.Errorf("%s: hashed", path)
		}
	}
}
