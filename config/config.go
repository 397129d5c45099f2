package config

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pelletier/go-toml/v2"

	"github.com/ndlb/ndlb/internal/regfile"
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

// Value is one key's value.
type Value struct {
	Key  string
	Line int
	// V is the value, typed by the key's Kind: string, int, bool,
	// time.Duration or []string.
	V any
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
	// Listener names the [[listener]] table the problem is in; "" for the
	// top of the file or the file as a whole.
	Listener string
	Msg      string
	// Err, if set, is the error Msg was made from (a *settings.Error).
	Err error
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// Error is PATH:LINE: listener "NAME": MSG, without the parts not known.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Path)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Listener != "" {
		fmt.Fprintf(&b, "listener %q: ", e.Listener)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrNoListener is wrapped when the file has no [[listener]] table.
var ErrNoListener = errors.New("no [[listener]] table")

// MaxFileBytes bounds what Load reads: a config file is far smaller.
const MaxFileBytes = 16 << 20

// Load reads and checks the file at path against schema.
func Load(path string, schema Schema) (*File, error) {
	doc, err := readFile(path)
	if err != nil {
		return nil, err
	}
	if len(doc) > MaxFileBytes {
		return nil, &Error{Path: path, Msg: "over 16MiB: is this the config file?"}
	}
	return Parse(path, doc, schema)
}

// readFile reads at most MaxFileBytes+1 bytes of the regular file at
// path. Anything else (a FIFO, a device such as /dev/zero, a directory) is
// refused before a read, so a FIFO put at the path cannot block a reload
// or the watcher, and a device cannot fill memory (regfile.Read).
func readFile(path string) ([]byte, error) {
	b, err := regfile.Read(path, MaxFileBytes)
	var nr *regfile.NotRegularError
	if errors.As(err, &nr) {
		return nil, &Error{Path: path, Msg: "not a regular file: " + nr.Kind}
	}
	return b, err
}

// Parse is Load of a document already read.
func Parse(path string, doc []byte, schema Schema) (*File, error) {
	doc = bytes.TrimPrefix(doc, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	if bytes.HasPrefix(doc, []byte("\xff\xfe")) || bytes.HasPrefix(doc, []byte("\xfe\xff")) {
		return nil, &Error{Path: path, Msg: "the file is UTF-16: save it as UTF-8"}
	}
	var raw map[string]any
	if err := toml.Unmarshal(doc, &raw); err != nil {
		return nil, decodeError(path, err)
	}
	p := parser{path: path, keys: map[string]Key{}}
	for _, k := range schema {
		p.keys[k.Name] = k
	}
	lines := keyLines(doc)
	g, err := p.section(raw, lines[0], true)
	if err != nil {
		return nil, err
	}
	f := &File{Path: path, Global: g}
	tables, ok := raw["listener"].([]any)
	if !ok && raw["listener"] != nil {
		return nil, &Error{Path: path, Line: lines[0].keys["listener"],
			Msg: `listener: write each listener as a [[listener]] table with its name inside (name = "logs"), not [listener] or [[listener.logs]]`}
	}
	names := map[string]int{}
	for i, t := range tables {
		m, ok := t.(map[string]any)
		if !ok {
			return nil, &Error{Path: path, Msg: "listener: write each listener as a [[listener]] table (two brackets)"}
		}
		ln := sectionLines{keys: map[string]int{}}
		if i+1 < len(lines) {
			ln = lines[i+1]
		}
		s, err := p.section(m, ln, false)
		if err != nil {
			return nil, err
		}
		if first, dup := names[s.Name]; dup {
			return nil, &Error{Path: path, Line: s.LineOf(NameKey), Listener: s.Name, Msg: fmt.Sprintf("name %q is used twice (first on line %d)", s.Name, first)}
		}
		names[s.Name] = s.LineOf(NameKey)
		f.Listeners = append(f.Listeners, s)
	}
	if len(f.Listeners) == 0 {
		return nil, &Error{Path: path, Msg: ErrNoListener.Error() + ": add one with at least name and target"}
	}
	return f, nil
}

// parser checks one document's sections against the schema.
type parser struct {
	path string
	keys map[string]Key
}

// section checks one table's keys (the top of the file when top) and
// types their values, in file order. Each problem is an *Error at its
// key's line.
func (p parser) section(m map[string]any, ln sectionLines, top bool) (Section, error) {
	s := Section{Line: ln.header}
	bad := func(key, format string, a ...any) error {
		line := ln.keys[key]
		if line == 0 {
			line = ln.header
		}
		return &Error{Path: p.path, Line: line, Listener: s.Name, Msg: fmt.Sprintf(format, a...)}
	}
	if !top {
		name, ok := m[NameKey].(string)
		switch {
		case m[NameKey] != nil && !ok:
			return s, bad(NameKey, "name: %s; want a name in quotes", describe(m[NameKey]))
		case strings.TrimSpace(name) == "":
			return s, &Error{Path: p.path, Line: ln.header, Msg: `[[listener]] needs a name (name = "logs")`}
		case strings.ContainsFunc(name, unicode.IsControl):
			return s, bad(NameKey, "name: %q has control characters", name)
		}
		s.Name = name
		s.Values = append(s.Values, Value{Key: NameKey, Line: ln.keys[NameKey], V: name})
	}
	// File order first; keys the line scan did not see (unusual shapes)
	// after them, sorted.
	order, seen := slices.Clone(ln.order), map[string]bool{}
	for _, k := range ln.order {
		seen[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !seen[k] {
			order = append(order, k)
		}
	}
	for _, key := range order {
		raw, ok := m[key]
		if !ok || key == NameKey && !top || key == "listener" && top {
			continue
		}
		if key == GroupKey && !top {
			if _, known := p.keys[GroupKey]; known {
				v, line, err := p.groups(raw, ln)
				if err != nil {
					err.Listener = s.Name
					return s, err
				}
				s.Values = append(s.Values, Value{Key: key, Line: line, V: v})
				continue
			}
		}
		k, known := p.keys[key]
		switch {
		case !known && top && key == NameKey:
			return s, bad(key, "name: belongs in a [[listener]] table")
		case !known && top && editDistance(key, "listener") <= 2:
			return s, bad(key, "unknown key %q (did you mean [[listener]]?)", key)
		case !known:
			return s, bad(key, "unknown key %q%s", key, p.suggest(key))
		case k.Global && !top:
			return s, bad(key, "%s: is process-wide: set it at the top of the file, before the first [[listener]]", key)
		case !k.Global && top:
			return s, bad(key, "%s: belongs in a [[listener]] table (each listener has its own)", key)
		}
		v, err := typed(key, k.Kind, raw)
		if err != nil {
			return s, bad(key, "%s", err)
		}
		s.Values = append(s.Values, Value{Key: key, Line: ln.keys[key], V: v})
	}
	return s, nil
}

// GroupKey is the [[listener.group]] tables of a listener: target groups
// (NDJSON routing). The file's tables become the values of the setting of
// this name, one string per group in its flag form:
// NAME=TARGET[,TARGET...][;values=V[,V...]][;default][;balance=key|spread].
const GroupKey = "group"

// groupKeys are the keys a [[listener.group]] table may hold.
var groupKeys = []string{"name", "target", "values", "default", "balance"}

// groups turns a listener's [[listener.group]] tables into the group
// setting's strings, and returns the line of the first table.
func (p parser) groups(raw any, ln sectionLines) ([]string, int, *Error) {
	tables, ok := raw.([]any)
	line := ln.keys[GroupKey] // group = [...] in the listener table, or the first [[listener.group]]
	if len(ln.groups) > 0 {
		line = ln.groups[0].header
	}
	if line == 0 {
		line = ln.header
	}
	if !ok {
		return nil, line, &Error{Path: p.path, Line: line, Msg: "group: write each target group as a [[listener.group]] table (two brackets) under its [[listener]]"}
	}
	var out []string
	for i, t := range tables {
		gl := sectionLines{keys: map[string]int{}}
		if i < len(ln.groups) {
			gl = ln.groups[i]
		}
		bad := func(key, format string, a ...any) *Error {
			l := gl.keys[key]
			if l == 0 {
				l = gl.header
			}
			if l == 0 {
				l = line
			}
			return &Error{Path: p.path, Line: l, Msg: fmt.Sprintf(format, a...)}
		}
		if flagForm, ok := t.(string); ok { // group = ["audit=HOST:PORT;values=audit"]
			out = append(out, flagForm)
			continue
		}
		m, ok := t.(map[string]any)
		if !ok {
			return nil, line, bad("", "group: write each target group as a [[listener.group]] table")
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if !slices.Contains(groupKeys, k) {
				return nil, line, bad(k, "[[listener.group]]: unknown key %q (a group has %s)", k, strings.Join(groupKeys, ", "))
			}
		}
		name, _ := m["name"].(string)
		if strings.TrimSpace(name) == "" {
			return nil, line, bad("name", `[[listener.group]] needs a name (name = "audit")`)
		}
		if strings.ContainsAny(name, "=;,") || strings.ContainsFunc(name, unicode.IsControl) {
			return nil, line, bad("name", "group name %q: no =, ; or , and no control characters", name)
		}
		targets, err := typed("target", Strings, m["target"])
		if m["target"] == nil || err != nil || len(targets.([]string)) == 0 {
			return nil, line, bad("target", `group %q: target: want a list of HOST:PORT (target = ["10.0.0.1:9000"])`, name)
		}
		for _, t := range targets.([]string) {
			if strings.ContainsAny(t, ";,") || strings.TrimSpace(t) == "" {
				return nil, line, bad("target", "group %q: target %q: one HOST:PORT (or HOST:PORT=WEIGHT) per string", name, t)
			}
		}
		spec := name + "=" + strings.Join(targets.([]string), ",")
		if m["values"] != nil {
			vs, err := typed("values", Strings, m["values"])
			if err != nil {
				return nil, line, bad("values", "group %q: %v", name, err)
			}
			for _, v := range vs.([]string) {
				if v == "" || strings.ContainsAny(v, ";,") {
					return nil, line, bad("values", "group %q: value %q: values are not empty and hold no ; or ,", name, v)
				}
			}
			spec += ";values=" + strings.Join(vs.([]string), ",")
		}
		if m["default"] != nil {
			d, err := typed("default", Bool, m["default"])
			if err != nil {
				return nil, line, bad("default", "group %q: %v", name, err)
			}
			if d.(bool) {
				spec += ";default"
			}
		}
		if m["balance"] != nil {
			b, ok := m["balance"].(string)
			if !ok || b != "key" && b != "spread" {
				return nil, line, bad("balance", `group %q: balance: %s; want "key" (by route-key) or "spread"`, name, describe(m["balance"]))
			}
			spec += ";balance=" + b
		}
		out = append(out, spec)
	}
	return out, line, nil
}

// suggest is " (did you mean NAME?)" for a key one or two edits from a
// known one, else where the keys are listed.
func (p parser) suggest(key string) string {
	best := Closest(key, maps.Keys(p.keys))
	if best == "" {
		return " (the keys are the flags' names: see ndlb --help)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// typed checks that raw, as go-toml decoded it, fits kind and returns it
// as Value.V holds it. A string setting written as a number (a size) is
// taken as its text, and one string where a list is wanted as a list of
// one.
func typed(key string, kind Kind, raw any) (any, error) {
	switch kind {
	case Int:
		if n, ok := raw.(int64); ok {
			return int(n), nil
		}
		if t, ok := raw.(string); ok {
			if _, err := strconv.Atoi(strings.TrimSpace(t)); err == nil {
				return nil, fmt.Errorf("%s: %q is text; want a number without quotes (%s = %s)", key, t, key, strings.TrimSpace(t))
			}
		}
		return nil, fmt.Errorf("%s: %s; want a whole number", key, describe(raw))
	case Bool:
		if b, ok := raw.(bool); ok {
			return b, nil
		}
		return nil, fmt.Errorf("%s: %s; want true or false, without quotes (%s = true)", key, describe(raw), key)
	case Duration:
		t, ok := raw.(string)
		if !ok {
			hint := "90s"
			if n, isInt := raw.(int64); isInt {
				hint = fmt.Sprintf("%ds", n)
			}
			return nil, fmt.Errorf("%s: %s; want a duration in quotes (%s = %q)", key, describe(raw), key, hint)
		}
		d, err := time.ParseDuration(strings.TrimSpace(t))
		if err != nil {
			return nil, fmt.Errorf("%s: %s", key, DurationError(t))
		}
		return d, nil
	case Strings:
		if t, ok := raw.(string); ok {
			return []string{t}, nil
		}
		list, ok := raw.([]any)
		if !ok {
			return nil, fmt.Errorf(`%s: %s; want a list of strings (%s = ["a", "b"])`, key, describe(raw), key)
		}
		out := make([]string, 0, len(list))
		for i, e := range list {
			t, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s: item %d: %s; want a string in quotes", key, i+1, describe(e))
			}
			out = append(out, t)
		}
		return out, nil
	}
	switch x := raw.(type) {
	case string:
		return x, nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	}
	return nil, fmt.Errorf("%s: %s; want a string in quotes", key, describe(raw))
}

// describe says what a decoded TOML value is, for an error message.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("%q is text", x)
	case int64:
		return fmt.Sprintf("%d is a number", x)
	case float64:
		return "a decimal number"
	case bool:
		return fmt.Sprintf("%v is a boolean", x)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("%v is a date or time", v)
}

// durationUnits are unit words people write, in Go's spelling.
var durationUnits = map[string]string{
	"ns": "ns", "us": "us", "µs": "µs", "ms": "ms", "msec": "ms", "millisecond": "ms", "milliseconds": "ms",
	"s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
	"m": "m", "min": "m", "mins": "m", "minute": "m", "minutes": "m",
	"h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
}

var durationWords = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-zµ]+)\s*$`)

// durationHint is t as a Go duration ("10 minutes": 10m, "2 days": 48h),
// or examples when that cannot be guessed.
// DurationError says what is wrong with t, which time.ParseDuration
// refused, and what to write instead.
func DurationError(t string) string {
	hint := durationHint(t)
	if hint == strings.TrimSpace(t) { // well formed: too long
		return fmt.Sprintf("%q is longer than a duration can be (at most 2562047h, about 292 years)", t)
	}
	return fmt.Sprintf("%q is not a duration (use %s)", t, hint)
}

func durationHint(t string) string {
	if n, err := strconv.Atoi(strings.TrimSpace(t)); err == nil {
		return strconv.Itoa(n) + "s" // a bare number: seconds, most likely
	}
	if m := durationWords.FindStringSubmatch(t); m != nil {
		unit := strings.ToLower(m[2])
		if u, ok := durationUnits[unit]; ok {
			return m[1] + u
		}
		if n, err := strconv.Atoi(m[1]); err == nil && (unit == "d" || unit == "day" || unit == "days") {
			return strconv.Itoa(24*n) + "h"
		}
	}
	return "a number and a unit: 500ms, 90s, 5m or 1h30m"
}

// Closest is the name among known at most two edits from name (the
// first in order when two are as close), or "" if there is none: what a
// typo probably meant.
func Closest(name string, known iter.Seq[string]) string {
	best, dist := "", 3
	for k := range known {
		if d := editDistance(name, k); d < dist || d == dist && best != "" && k < best {
			best, dist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev, cur := make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sectionLines holds where a table and its keys are.
type sectionLines struct {
	header int
	keys   map[string]int
	order  []string
	groups []sectionLines // a listener's [[listener.group]] tables
}

var (
	keyLine     = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+|"[^"]+"|'[^']+')\s*(?:\.[^=]*)?=`)
	headerLine  = regexp.MustCompile(`^\s*\[\[\s*(?:listener|"listener"|'listener')\s*\]\]`)
	groupLine   = regexp.MustCompile(`^\s*\[\[\s*(?:listener|"listener"|'listener')\s*\.\s*(?:group|"group"|'group')\s*\]\]`)
	arrayLine   = regexp.MustCompile(`^\s*\[\[\s*([A-Za-z0-9_-]+|"[^"]+"|'[^']+')`)
	tableLine   = regexp.MustCompile(`^\s*\[\s*([A-Za-z0-9_-]+|"[^"]+"|'[^']+')\s*(?:\.\s*([A-Za-z0-9_-]+|"[^"]+"|'[^']+'))?`)
	multiString = regexp.MustCompile(`"""|\'\'\'`)
)

// keyLines finds the line of every key: index 0 is the top of the file, i
// the i-th [[listener]] table. It reads the shapes people write (key =
// value, dotted keys, [table] and [[table]] headers, multi-line strings)
// line by line; a key it cannot place gets its table's line.
func keyLines(doc []byte) []sectionLines {
	out := []sectionLines{{keys: map[string]int{}}}
	note := func(sec *sectionLines, k string, line int) {
		k = strings.Trim(k, `"'`)
		if _, dup := sec.keys[k]; !dup {
			sec.keys[k] = line
			sec.order = append(sec.order, k)
		}
	}
	inString, other := false, false // inside a multi-line string; in a table that is not ours
	var group *sectionLines         // in a [[listener.group]] table
	for i, line := range strings.Split(string(doc), "\n") {
		n := i + 1
		if inString {
			inString = len(multiString.FindAllString(line, -1))%2 == 0
			continue
		}
		switch {
		case headerLine.MatchString(line):
			out, other, group = append(out, sectionLines{header: n, keys: map[string]int{}}), false, nil
		case groupLine.MatchString(line) && len(out) > 1:
			l := &out[len(out)-1]
			note(l, GroupKey, n)
			l.groups = append(l.groups, sectionLines{header: n, keys: map[string]int{}})
			group, other = &l.groups[len(l.groups)-1], false
		case arrayLine.MatchString(line):
			note(&out[0], arrayLine.FindStringSubmatch(line)[1], n) // [[listeners]], [[listener.x]]
			other, group = true, nil
		case tableLine.MatchString(line):
			group = nil
			m := tableLine.FindStringSubmatch(line)
			if strings.Trim(m[1], `"'`) == "listener" && m[2] != "" && len(out) > 1 {
				note(&out[len(out)-1], m[2], n) // [listener.tls] inside a listener
			} else {
				note(&out[0], m[1], n)
			}
			other = true
		case keyLine.MatchString(line):
			switch {
			case group != nil:
				note(group, keyLine.FindStringSubmatch(line)[1], n)
			case !other:
				note(&out[len(out)-1], keyLine.FindStringSubmatch(line)[1], n)
			}
		}
		if len(multiString.FindAllString(line, -1))%2 == 1 {
			inString = true
		}
	}
	return out
}

// decodeError gives go-toml's syntax errors their line.
func decodeError(path string, err error) error {
	var decErr *toml.DecodeError
	if errors.As(err, &decErr) {
		row, _ := decErr.Position()
		return &Error{Path: path, Line: row, Msg: "not valid TOML: " + strings.TrimPrefix(decErr.Error(), "toml: ")}
	}
	return &Error{Path: path, Msg: err.Error()}
}
