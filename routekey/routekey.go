package routekey

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxKeyBytes is the longest key; a longer value is TooLong, not a key (a
// key is hashed per message, and a field that long is not an identifier).
const MaxKeyBytes = 1024

// Outcome says what Key found.
type Outcome uint8

// The outcomes.
const (
	// Found: the key is returned.
	Found Outcome = iota
	// Missing: the message is well formed as far as it was read, but has
	// no such field (or range, or match), or the field is not a string or
	// a number.
	Missing
	// Malformed: the message is not a JSON object, or breaks before the
	// field is found.
	Malformed
	// TooLong: the value is longer than MaxKeyBytes.
	TooLong
)

func (o Outcome) String() string {
	switch o {
	case Found:
		return "found"
	case Missing:
		return "missing"
	case Malformed:
		return "malformed"
	case TooLong:
		return "too_long"
	}
	return "unknown"
}

// Extractor takes the key of one message.
type Extractor interface {
	// Key returns the key of msg (one message, without its framing),
	// aliasing msg, when the outcome is Found.
	Key(msg []byte) ([]byte, Outcome)
	// String is the spec Parse read.
	String() string
}

// ErrSpec is wrapped by Parse's errors.
var ErrSpec = errors.New("routekey: invalid key")

// Parse reads a key spec: json:FIELD (a dotted path for nested objects:
// json:kubernetes.namespace), bytes:START:END (bytes START up to END of the
// message), or regex:EXPR (the first group of EXPR's first match; RE2
// syntax, linear in the message).
func Parse(spec string) (Extractor, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	switch kind {
	case "json":
		if arg == "" {
			return nil, fmt.Errorf("%w %q: want json:FIELD or json:a.b.c", ErrSpec, spec)
		}
		j := &jsonKey{spec: spec}
		for _, seg := range strings.Split(arg, ".") {
			if seg == "" {
				return nil, fmt.Errorf("%w %q: an empty field name in the path", ErrSpec, spec)
			}
			j.path = append(j.path, []byte(seg))
		}
		return j, nil
	case "bytes":
		from, to, ok := strings.Cut(arg, ":")
		a, errA := strconv.Atoi(from)
		b, errB := strconv.Atoi(to)
		if !ok || errA != nil || errB != nil || a < 0 || b <= a || b-a > MaxKeyBytes {
			return nil, fmt.Errorf("%w %q: want bytes:START:END, 0 <= START < END, at most %d bytes", ErrSpec, spec, MaxKeyBytes)
		}
		return byteRange{spec: spec, from: a, to: b}, nil
	case "regex":
		re, err := regexp.Compile(arg)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %v", ErrSpec, spec, err)
		}
		if re.NumSubexp() < 1 {
			return nil, fmt.Errorf("%w %q: the expression needs a group, such as tenant=(\\w+)", ErrSpec, spec)
		}
		return regexKey{spec: spec, re: re}, nil
	}
	return nil, fmt.Errorf("%w %q: want json:FIELD, bytes:START:END or regex:EXPR", ErrSpec, spec)
}

// byteRange is bytes:START:END; a message shorter than END gives what it
// has past START.
type byteRange struct {
	spec     string
	from, to int
}

func (r byteRange) String() string { return r.spec }

func (r byteRange) Key(msg []byte) ([]byte, Outcome) {
	if len(msg) <= r.from {
		return nil, Missing
	}
	return msg[r.from:min(len(msg), r.to)], Found
}

// regexKey is regex:EXPR.
type regexKey struct {
	spec string
	re   *regexp.Regexp
}

func (r regexKey) String() string { return r.spec }

func (r regexKey) Key(msg []byte) ([]byte, Outcome) {
	m := r.re.FindSubmatchIndex(msg)
	if m == nil || m[2] < 0 {
		return nil, Missing
	}
	if m[3]-m[2] > MaxKeyBytes {
		return nil, TooLong
	}
	return msg[m[2]:m[3]], Found
}

// jsonKey is json:a.b.c.
type jsonKey struct {
	spec string
	path [][]byte
}

func (j *jsonKey) String() string { return j.spec }

func (j *jsonKey) Key(msg []byte) ([]byte, Outcome) {
	i := skipWS(msg, 0)
	for depth, want := range j.path {
		if i >= len(msg) || msg[i] != '{' {
			if depth == 0 {
				return nil, Malformed
			}
			return nil, Missing // the parent field is not an object
		}
		i = skipWS(msg, i+1)
		if i < len(msg) && msg[i] == '}' {
			return nil, Missing
		}
		for {
			if i >= len(msg) || msg[i] != '"' {
				return nil, Malformed
			}
			end, escaped, ok := scanString(msg, i)
			if !ok {
				return nil, Malformed
			}
			match := sameName(msg[i+1:end], want, escaped)
			i = skipWS(msg, end+1)
			if i >= len(msg) || msg[i] != ':' {
				return nil, Malformed
			}
			i = skipWS(msg, i+1)
			if match {
				break // i is at the field's value
			}
			if i, ok = skipValue(msg, i); !ok {
				return nil, Malformed
			}
			i = skipWS(msg, i)
			switch {
			case i < len(msg) && msg[i] == ',':
				i = skipWS(msg, i+1)
			case i < len(msg) && msg[i] == '}':
				return nil, Missing
			default:
				return nil, Malformed
			}
		}
	}
	return value(msg, i)
}

// value is the key of the value at msg[i:]: a string's raw content or a
// number's digits.
func value(msg []byte, i int) ([]byte, Outcome) {
	if i >= len(msg) {
		return nil, Malformed
	}
	var key []byte
	switch c := msg[i]; {
	case c == '"':
		end, _, ok := scanString(msg, i)
		if !ok {
			return nil, Malformed
		}
		key = msg[i+1 : end]
	case c == '-' || c >= '0' && c <= '9':
		j := i + 1
		for j < len(msg) && isNumberByte(msg[j]) {
			j++
		}
		key = msg[i:j]
	default:
		if c == '{' || c == '[' || c == 't' || c == 'f' || c == 'n' {
			return nil, Missing // an object, array, boolean or null is no key
		}
		return nil, Malformed
	}
	if len(key) > MaxKeyBytes {
		return nil, TooLong
	}
	return key, Found
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

func skipWS(msg []byte, i int) int {
	for i < len(msg) && (msg[i] == ' ' || msg[i] == '\t' || msg[i] == '\r' || msg[i] == '\n') {
		i++
	}
	return i
}

// scanString returns the index of the closing quote of the string that
// opens at msg[i], and whether it holds escapes; ok is false when it does
// not close, or holds a control character.
func scanString(msg []byte, i int) (end int, escaped, ok bool) {
	j := i + 1
	for {
		// Eight bytes at a time while none of them is a quote, a
		// backslash or a control character (SWAR: "Bit Twiddling
		// Hacks", haszero and hasless); the lowest flagged byte is
		// exact, so the byte loop below starts at it.
		for j+8 <= len(msg) {
			x := binary.LittleEndian.Uint64(msg[j:])
			m := hasZero(x^(lsb*'"')) | hasZero(x^(lsb*'\\')) | (x-lsb*0x20)&^x&msb
			if m == 0 {
				j += 8
				continue
			}
			j += bits.TrailingZeros64(m) / 8
			break
		}
		if j >= len(msg) {
			return 0, false, false
		}
		switch c := msg[j]; {
		case c == '"':
			return j, escaped, true
		case c == '\\':
			escaped = true
			j += 2 // the backslash and the byte it escapes
		case c < 0x20:
			return 0, false, false
		default:
			j++
		}
	}
}

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// hasZero flags the bytes of x that are zero (the lowest one exactly).
func hasZero(x uint64) uint64 { return (x - lsb) &^ x & msb }

// skipValue returns the index just past the value at msg[i:]. Objects and
// arrays are skipped by counting brackets outside strings, in one pass.
func skipValue(msg []byte, i int) (int, bool) {
	if i >= len(msg) {
		return 0, false
	}
	switch msg[i] {
	case '"':
		end, _, ok := scanString(msg, i)
		return end + 1, ok
	case '{', '[':
		depth := 0
		for j := i; j < len(msg); j++ {
			switch msg[j] {
			case '"':
				end, _, ok := scanString(msg, j)
				if !ok {
					return 0, false
				}
				j = end
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	}
	j := i
	for j < len(msg) {
		if c := msg[j]; c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n' {
			break
		}
		j++
	}
	return j, j > i
}

// sameName reports whether the raw JSON string content raw names want,
// decoding escapes (\", \\, \/, \b, \f, \n, \r, \t, \uXXXX with surrogate
// pairs) as it goes, without allocating.
func sameName(raw, want []byte, escaped bool) bool {
	if !escaped {
		return bytes.Equal(raw, want)
	}
	k := 0
	for i := 0; i < len(raw); {
		if raw[i] != '\\' {
			if k >= len(want) || raw[i] != want[k] {
				return false
			}
			i++
			k++
			continue
		}
		if i+1 >= len(raw) {
			return false
		}
		var r rune
		switch raw[i+1] {
		case '"', '\\', '/':
			r = rune(raw[i+1])
		case 'b':
			r = '\b'
		case 'f':
			r = '\f'
		case 'n':
			r = '\n'
		case 'r':
			r = '\r'
		case 't':
			r = '\t'
		case 'u':
			var ok bool
			if r, ok = hex4(raw, i+2); !ok {
				return false
			}
			if utf16.IsSurrogate(r) {
				lo, ok := rune(0), i+12 <= len(raw) && raw[i+6] == '\\' && raw[i+7] == 'u'
				if ok {
					lo, ok = hex4(raw, i+8)
				}
				if !ok {
					return false
				}
				r = utf16.DecodeRune(r, lo)
				i += 6
			}
			i += 4
		default:
			return false
		}
		i += 2
		var b [utf8.UTFMax]byte
		n := utf8.EncodeRune(b[:], r)
		if k+n > len(want) || !bytes.Equal(b[:n], want[k:k+n]) {
			return false
		}
		k += n
	}
	return k == len(want)
}

// hex4 decodes the four hex digits at raw[i:].
func hex4(raw []byte, i int) (rune, bool) {
	if i+4 > len(raw) {
		return 0, false
	}
	var r rune
	for _, c := range raw[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
