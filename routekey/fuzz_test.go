package routekey

import (
	"bytes"
	"testing"
)

// FuzzJSONKey: any input gives an outcome, never a panic; a key found lies
// within the message and within MaxKeyBytes.
func FuzzJSONKey(f *testing.F) {
	for _, s := range []string{`{"tenant":"acme"}`, `{"a":{"tenant":1},"tenant":"x"}`, `{"\u0074enant":"x"}`,
		`{"tenant":"a\"b\\"}`, `[{]`, `{"a":"\ud83d\ude00"}`, "\x00{", `{"k8s":{"ns":"p"}}`} {
		f.Add([]byte(s))
	}
	exts := []Extractor{}
	for _, spec := range []string{"json:tenant", "json:k8s.ns", "json:a", "bytes:1:9", `regex:"tenant":"(\w+)"`} {
		e, err := Parse(spec)
		if err != nil {
			f.Fatal(err)
		}
		exts = append(exts, e)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, e := range exts {
			key, out := e.Key(msg)
			if out != Found {
				if key != nil {
					t.Fatalf("%s: key %q with outcome %s", e, key, out)
				}
				continue
			}
			if len(key) > MaxKeyBytes || len(key) > 0 && !bytes.Contains(msg, key) {
				t.Fatalf("%s: key %q not within the message", e, key)
			}
		}
	})
}
