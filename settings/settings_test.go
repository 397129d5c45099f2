package settings

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
)

// Every setting is declared whole and once, with a default of its kind and
// a reload rule that fits where it lives.
func TestRegistryIsConsistent(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range All {
		if seen[s.Name] {
			t.Errorf("%s is declared twice", s.Name)
		}
		seen[s.Name] = true
		if s.Usage == "" || s.Group == "" {
			t.Errorf("%s has no usage or group", s.Name)
		}
		if s.Name != strings.ToLower(s.Name) || strings.ContainsAny(s.Name, " _") {
			t.Errorf("%s: names are lower-case words joined by '-'", s.Name)
		}
		ok := false
		switch v := s.Default.(type) {
		case nil:
			ok = true
		case string:
			ok = s.Kind == config.String
		case int:
			ok = s.Kind == config.Int
		case bool:
			ok = s.Kind == config.Bool
		case time.Duration:
			ok = s.Kind == config.Duration
		default:
			t.Errorf("%s: default %v of type %T", s.Name, v, v)
		}
		if !ok {
			t.Errorf("%s: default %#v is not of its kind %v", s.Name, s.Default, s.Kind)
		}
		switch {
		case s.Global && s.Reload != Restart && s.Reload != LiveProcess:
			t.Errorf("%s is process-wide: a reload applies it to the process or at restart, not %v", s.Name, s.Reload)
		case !s.Global && (s.Reload == Restart || s.Reload == LiveProcess):
			t.Errorf("%s belongs to a listener: %v does not apply", s.Name, s.Reload)
		case s.Global && s.Mode != Both:
			t.Errorf("%s is process-wide but only for %v", s.Name, s.Mode)
		case s.Reload == LiveBalance && s.Mode != Passthrough:
			t.Errorf("%s: only passthrough switches its policy live", s.Name)
		}
	}
}

func TestLookupsFollowTheTable(t *testing.T) {
	if s, ok := Lookup("connections"); !ok || s.Mode != NDJSON || s.Env() != "NDLB_CONNECTIONS" {
		t.Errorf("Lookup(connections) = %+v, %v", s, ok)
	}
	if _, ok := Lookup("no-such"); ok || RuleOf("no-such") != Replace {
		t.Error("an unknown setting must be unknown, and replace")
	}
	if RuleOf("target") != LiveTargets || RuleOf("balance") != LiveBalance || RuleOf("check-tls") != LiveChecks ||
		RuleOf("log-level") != LiveProcess || RuleOf("admin") != Restart || RuleOf("max-line-bytes") != Replace {
		t.Error("reload rules differ from the table")
	}
	if !slices.Contains(OnlyIn(Passthrough), "balance") || slices.Contains(OnlyIn(NDJSON), "balance") ||
		slices.Contains(OnlyIn(Passthrough), "target") {
		t.Errorf("OnlyIn: ndjson %v, passthrough %v", OnlyIn(NDJSON), OnlyIn(Passthrough))
	}
	for _, k := range Schema() {
		if k.Name == "config" {
			t.Error("the file's own path is not a key of the file")
		}
		if s, _ := Lookup(k.Name); s.Global != k.Global || s.Kind != k.Kind {
			t.Errorf("schema key %+v differs from the setting %+v", k, s)
		}
	}
	fields := map[string]bool{}
	for _, s := range All {
		for _, f := range s.Fields {
			if fields[f] {
				t.Errorf("field %s is filled by two settings", f)
			}
			fields[f] = true
			if got, ok := ByField(f); !ok || got.Name != s.Name {
				t.Errorf("ByField(%s) = %s", f, got.Name)
			}
			if !fieldExists(f) {
				t.Errorf("setting %s names %s, which is no field of that package's Config", s.Name, f)
			}
		}
	}
	if _, ok := ByField(""); ok {
		t.Error("ByField of no field found a setting")
	}
	if len(Schema()) != len(All)-1 {
		t.Errorf("schema has %d keys for %d settings", len(Schema()), len(All))
	}
	for r := Replace; r <= Restart; r++ {
		if r.String() == "" || (r.Live() != (r == LiveTargets || r == LiveBalance || r == LiveChecks)) {
			t.Errorf("rule %d: %q, live %v", r, r, r.Live())
		}
	}
	for _, m := range []Mode{Both, NDJSON, Passthrough} {
		if m.String() == "" {
			t.Errorf("mode %d has no name", m)
		}
	}
}

// fieldExists reports whether PACKAGE.FIELD (dotted through nested
// structs) is a field of that package's Config.
func fieldExists(f string) bool {
	configs := map[string]reflect.Type{
		"ndjson": reflect.TypeFor[ndjson.Config](), "passthrough": reflect.TypeFor[passthrough.Config](),
		"health": reflect.TypeFor[health.Config](), "discovery": reflect.TypeFor[discovery.Config](),
		"admin": reflect.TypeFor[admin.Config](),
	}
	pkg, path, _ := strings.Cut(f, ".")
	t, ok := configs[pkg]
	for name := range strings.SplitSeq(path, ".") {
		if !ok || t.Kind() != reflect.Struct {
			return false
		}
		var sf reflect.StructField
		sf, ok = t.FieldByName(name)
		t = sf.Type
	}
	return ok
}
