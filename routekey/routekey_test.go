package routekey

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestJSONKey(t *testing.T) {
	big := strings.Repeat("v", MaxKeyBytes+1)
	deep := strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000)
	for _, tc := range []struct {
		spec, msg, key string
		out            Outcome
	}{
		{"json:tenant", `{"tenant":"acme","msg":"hi"}`, "acme", Found},
		{"json:tenant", ` {"msg":"a \"tenant\": x","n":[1,{"tenant":"no"}],"tenant" : "acme"}`, "acme", Found},
		{"json:tenant", `{"tenant":42}`, "42", Found},
		{"json:tenant", `{"tenant":-1.5e3}`, "-1.5e3", Found},
		{"json:tenant", `{"tenant":"a\"b"}`, `a\"b`, Found}, // raw bytes, as written
		{"json:tenant", `{"ten\u0061nt":"x"}`, "x", Found},  // the name's escapes are decoded
		{"json:tenant", `{"\u0074enant":"x"}`, "x", Found},
		{"json:é", `{"\u00e9":"x"}`, "x", Found},
		{"json:😀", `{"\ud83d\ude00":"x"}`, "x", Found},
		{"json:tenant", `{"tenant":"first","tenant":"second"}`, "first", Found},
		{"json:k8s.ns", `{"k8s":{"pod":"p","ns":"prod"},"ns":"no"}`, "prod", Found},
		{"json:k8s.ns", `{"k8s":"flat"}`, "", Missing},
		{"json:a.a", deep, "", Missing},
		{"json:b", `{"a":` + deep + `,"b":"after"}`, "after", Found},
		{"json:tenant", `{"tenant":{"id":1}}`, "", Missing},
		{"json:tenant", `{"tenant":null}`, "", Missing},
		{"json:tenant", `{"tenant":true}`, "", Missing},
		{"json:tenant", `{"other":1}`, "", Missing},
		{"json:tenant", `{}`, "", Missing},
		{"json:tenant", `[{"tenant":"x"}]`, "", Malformed},
		{"json:tenant", `not json`, "", Malformed},
		{"json:tenant", ``, "", Malformed},
		{"json:tenant", `{"tenant"`, "", Malformed},
		{"json:tenant", `{"tenant":"unterminated`, "", Malformed},
		{"json:tenant", `{"a":"x` + "\n" + `","tenant":"y"}`, "", Malformed}, // a raw control character
		{"json:tenant", `{"a":[1,2,"tenant"} ,"tenant":"y"}`, "y", Found},    // not a validator: brackets are counted, not matched
		{"json:tenant", "\x00\xff\xfe{\"tenant\":1}", "", Malformed},
		{"json:tenant", `{"tenant":"` + big + `"}`, "", TooLong},
		{"bytes:2:5", "abcdefg", "cde", Found},
		{"bytes:2:5", "abcd", "cd", Found},
		{"bytes:2:5", "ab", "", Missing},
		{"regex:tenant=(\\w+)", "x tenant=acme y", "acme", Found},
		{"regex:tenant=(\\w+)", "x user=acme y", "", Missing},
		{"regex:t=(\\w*)", "t=" + big, "", TooLong},
	} {
		e, err := Parse(tc.spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		key, out := e.Key([]byte(tc.msg))
		if out != tc.out || string(key) != tc.key {
			t.Errorf("%s on %.60q: %q %s, want %q %s", tc.spec, tc.msg, key, out, tc.key, tc.out)
		}
	}
}

func TestParse(t *testing.T) {
	for _, bad := range []string{"", "json:", "json:a..b", "json:.a", "bytes:5:2", "bytes:a:b", "bytes:0:5000", "regex:(", "regex:no group", "xml:a"} {
		if _, err := Parse(bad); !errors.Is(err, ErrSpec) {
			t.Errorf("%q: %v, want ErrSpec", bad, err)
		}
	}
	e, err := Parse("json:a.b")
	if err != nil || e.String() != "json:a.b" {
		t.Fatalf("%v %v", e, err)
	}
}

// Against encoding/json on random objects with unique keys: the field's
// value, when a string without escapes or a number, is the key.
func TestJSONKeyAgreesWithEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	e, _ := Parse("json:target")
	for i := range 5000 {
		obj := map[string]any{}
		for k := range r.IntN(6) {
			obj[fmt.Sprintf("f%d", k)] = randomValue(r, 3)
		}
		if r.IntN(4) > 0 {
			obj["target"] = randomValue(r, 1)
		}
		msg, _ := json.Marshal(obj)
		key, out := e.Key(msg)
		v, has := obj["target"]
		switch v := v.(type) {
		case string:
			raw, _ := json.Marshal(v)
			if out != Found || !bytes.Equal(key, raw[1:len(raw)-1]) {
				t.Fatalf("%d: %s: %q %s", i, msg, key, out)
			}
		case float64:
			raw, _ := json.Marshal(v)
			if out != Found || !bytes.Equal(key, raw) {
				t.Fatalf("%d: %s: %q %s", i, msg, key, out)
			}
		default:
			if out != Missing || has && v == nil && out != Missing {
				t.Fatalf("%d: %s: %q %s, want missing", i, msg, key, out)
			}
		}
	}
}

func randomValue(r *rand.Rand, depth int) any {
	switch n := r.IntN(6); {
	case n == 0 && depth > 0:
		m := map[string]any{}
		for k := range r.IntN(3) {
			m[fmt.Sprintf("n%d", k)] = randomValue(r, depth-1)
		}
		return m
	case n == 1 && depth > 0:
		return []any{randomValue(r, depth-1), "a,}]\"{"}
	case n == 2:
		return r.Float64() * 1e6
	case n == 3:
		return nil
	default:
		return strings.Repeat("xé\"\\\n<", r.IntN(4)) + fmt.Sprint(r.IntN(1000))
	}
}

// The JSON extractor allocates nothing per message.
func TestJSONKeyAllocatesNothing(t *testing.T) {
	e, _ := Parse("json:kubernetes.namespace")
	msg := []byte(`{"ts":"2026-12-02T10:00:00Z","level":"info","msg":"a \"quoted\" line","kubernetes":{"pod":"web-1","namespace":"prod"}}`)
	if n := testing.AllocsPerRun(1000, func() {
		if _, out := e.Key(msg); out != Found {
			t.Fatal(out)
		}
	}); n != 0 {
		t.Fatalf("%.1f allocations per message", n)
	}
}

func BenchmarkJSONKey(b *testing.B) {
	e, _ := Parse("json:tenant")
	msg := []byte(`{"ts":"2026-12-02T10:00:00.123Z","level":"info","service":"checkout","msg":"order placed","order":{"id":12345,"items":[1,2,3]},"tenant":"acme-corp","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}`)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, out := e.Key(msg); out != Found {
			b.Fatal(out)
		}
	}
}
