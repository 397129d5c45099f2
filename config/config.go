package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// Kind is the type of a key's value.
type Kind int

// The kinds of value.
const (
	String   Kind = iota // a TOML string
	Int                  // a TOML integer
	Bool                 // a TOML boolean
	Duration             // a TOML string such as "5s"
	Strings              // a TOML array of strings
)

// Key is one key the file may hold.
type Key struct {
	Name string
	Kind Kind
	// Global keys are process-wide: only at the top of the file. The
	// others are only in [[listener]] tables.
	Global bool
}

// Schema is every key the file may hold.
type Schema []Key

// NameKey names a listener; every [[listener]] table must have one.
const NameKey = "name"

// File is a loaded configuration file.
type File struct {
	Path      string
	Global    Section
	Listeners []Section
}

// Section is the top of the file or one [[listener]] table.
type Section struct {
	Name   string // the listener's name; "" for the top
	Line   int    // line of the [[listener]] header; 0 for the top
	Values []Value
}

// Value is one key's value, as command-line arguments.
type Value struct {
	Key  string
	Line int
	Args []string // "--key=value", once per element for Strings
	// V is the value, typed by the key's Kind: string, int, bool,
	// time.Duration or []string.
	V any
}

// Args returns every value's arguments, in file order.
func (s Section) Args() []string {
	var out []string
	for _, v := range s.Values {
		out = append(out, v.Args...)
	}
	return out
}

// LineOf returns the line of key in the section, or the section's line.
func (s Section) LineOf(key string) int {
	for _, v := range s.Values {
		if v.Key == key {
			return v.Line
		}
	}
	return s.Line
}

// Error is a problem at a place in the file.
type Error struct {
	Path string
	Line int // 0: the file as a whole
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

// ErrNoListener is wrapped when the file has no [[listener]] table.
var ErrNoListener = errors.New("no [[listener]] table")

// Load reads and checks the file at path against schema.
func Load(path string, schema Schema) (*File, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, doc, schema)
}

// Parse is Load of a document already read.
func Parse(path string, doc []byte, schema Schema) (*File, error) {
	// First decode into a struct built from the schema, which rejects
	// unknown keys and wrong types with their positions.
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	strict := reflect.New(fileType(schema))
	if err := dec.Decode(strict.Interface()); err != nil {
		return nil, decodeError(path, err)
	}
	var raw map[string]any
	if err := toml.Unmarshal(doc, &raw); err != nil {
		return nil, decodeError(path, err)
	}
	lines := keyLines(doc)
	g, err := section(path, raw, schema, lines[0], 0)
	if err != nil {
		return nil, err
	}
	f := &File{Path: path, Global: g}
	tables, _ := raw["listener"].([]any)
	names := map[string]int{}
	for i, t := range tables {
		m, _ := t.(map[string]any)
		ln := lines[i+1]
		s, err := section(path, m, schema, ln, ln.header)
		if err != nil {
			return nil, err
		}
		name, _ := m[NameKey].(string)
		switch {
		case strings.TrimSpace(name) == "":
			return nil, &Error{path, ln.header, "[[listener]] needs a name"}
		case names[name] > 0:
			return nil, &Error{path, s.LineOf(NameKey), fmt.Sprintf("listener name %q is used twice (first on line %d)", name, names[name])}
		}
		s.Name = name
		names[name] = s.LineOf(NameKey)
		f.Listeners = append(f.Listeners, s)
	}
	if len(f.Listeners) == 0 {
		return nil, &Error{Path: path, Msg: ErrNoListener.Error() + ": add one with at least name and target"}
	}
	return f, nil
}

// fileType is the struct the strict decoding fills: global keys, and a
// listener array of structs with the listener keys.
func fileType(schema Schema) reflect.Type {
	var global, listener []reflect.StructField
	listener = append(listener, field(NameKey, String))
	for _, k := range schema {
		if k.Global {
			global = append(global, field(k.Name, k.Kind))
		} else {
			listener = append(listener, field(k.Name, k.Kind))
		}
	}
	global = append(global, reflect.StructField{
		Name: "Listener", Type: reflect.SliceOf(reflect.StructOf(listener)), Tag: `toml:"listener"`,
	})
	return reflect.StructOf(global)
}

var goTypes = map[Kind]reflect.Type{
	String: reflect.TypeOf(""), Int: reflect.TypeOf(int64(0)), Bool: reflect.TypeOf(false),
	Duration: reflect.TypeOf(""), Strings: reflect.TypeOf([]string(nil)),
}

// field is a struct field for key; its Go name only has to be unique and
// exported.
func field(key string, kind Kind) reflect.StructField {
	name := "F"
	for _, part := range strings.FieldsFunc(key, func(r rune) bool { return r == '-' || r == '_' }) {
		name += strings.ToUpper(part[:1]) + part[1:]
	}
	return reflect.StructField{Name: name, Type: goTypes[kind], Tag: reflect.StructTag(`toml:"` + key + `"`)}
}

// section turns one table's values into typed values and arguments, in
// file order. A duration that does not parse is an error at its line.
func section(path string, m map[string]any, schema Schema, ln sectionLines, line int) (Section, error) {
	kinds := map[string]Kind{}
	for _, k := range schema {
		kinds[k.Name] = k.Kind
	}
	s := Section{Line: line}
	for _, key := range ln.order {
		v, ok := m[key]
		if !ok || key == NameKey || key == "listener" {
			if key == NameKey && ok {
				s.Values = append(s.Values, Value{Key: key, Line: ln.keys[key], V: v})
			}
			continue
		}
		val := Value{Key: key, Line: ln.keys[key]}
		switch x := v.(type) {
		case []any:
			var list []string
			for _, e := range x {
				val.Args = append(val.Args, "--"+key+"="+fmt.Sprint(e))
				list = append(list, fmt.Sprint(e))
			}
			val.V = list
		case bool:
			val.Args = []string{"--" + key + "=" + strconv.FormatBool(x)}
			val.V = x
		case int64:
			val.Args = []string{"--" + key + "=" + fmt.Sprint(x)}
			val.V = int(x)
		default:
			val.Args = []string{"--" + key + "=" + fmt.Sprint(x)}
			val.V = fmt.Sprint(x)
			if kinds[key] == Duration {
				d, err := time.ParseDuration(fmt.Sprint(x))
				if err != nil {
					return s, &Error{path, val.Line, fmt.Sprintf("invalid duration %q for %s (want e.g. 90s or 5m)", x, key)}
				}
				val.V = d
			}
		}
		s.Values = append(s.Values, val)
	}
	return s, nil
}

// sectionLines holds where a table and its keys are.
type sectionLines struct {
	header int
	keys   map[string]int
	order  []string
}

var (
	keyLine    = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+|"[^"]+")\s*=`)
	headerLine = regexp.MustCompile(`^\s*\[\[\s*listener\s*\]\]`)
)

// keyLines finds the line of every key: index 0 is the top of the file, i
// the i-th [[listener]] table. It reads only the simple shapes this file
// uses (key = value at the start of a line).
func keyLines(doc []byte) []sectionLines {
	out := []sectionLines{{keys: map[string]int{}}}
	for i, line := range strings.Split(string(doc), "\n") {
		switch {
		case headerLine.MatchString(line):
			out = append(out, sectionLines{header: i + 1, keys: map[string]int{}})
		case keyLine.MatchString(line):
			k := strings.Trim(keyLine.FindStringSubmatch(line)[1], `"`)
			cur := &out[len(out)-1]
			if _, dup := cur.keys[k]; !dup {
				cur.keys[k] = i + 1
				cur.order = append(cur.order, k)
			}
		}
	}
	return out
}

// decodeError gives go-toml's errors a line.
func decodeError(path string, err error) error {
	var strictErr *toml.StrictMissingError
	if errors.As(err, &strictErr) && len(strictErr.Errors) > 0 {
		e := strictErr.Errors[0]
		row, _ := e.Position()
		return &Error{path, row, fmt.Sprintf("unknown key %q", strings.Join(e.Key(), "."))}
	}
	var decErr *toml.DecodeError
	if errors.As(err, &decErr) {
		row, _ := decErr.Position()
		return &Error{path, row, decErr.Error()}
	}
	return &Error{Path: path, Msg: err.Error()}
}
