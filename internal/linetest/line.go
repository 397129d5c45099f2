package linetest

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"
)

// padLen is the padding length of line (c, s): 16 to 207 bytes.
func padLen(c, s uint32) int { return 16 + int((c*131+s*17)%192) }

func padByte(c, s uint32) byte { return 'a' + byte((c+s)%26) }

// AppendLine appends line number s of client c, with its newline, to dst.
func AppendLine(dst []byte, c, s uint32) []byte {
	dst = append(dst, `{"c":`...)
	dst = strconv.AppendUint(dst, uint64(c), 10)
	dst = append(dst, `,"s":`...)
	dst = strconv.AppendUint(dst, uint64(s), 10)
	dst = append(dst, `,"p":"`...)
	p := padByte(c, s)
	for range padLen(c, s) {
		dst = append(dst, p)
	}
	return append(dst, "\"}\n"...)
}

// ParseLine parses one line without its newline. ok is false when the line
// is not exactly what AppendLine makes, which is how torn lines show.
func ParseLine(line []byte) (c, s uint32, ok bool) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"c":`))
	if !ok {
		return 0, 0, false
	}
	c, rest, ok = parseUint(rest, ',')
	if !ok {
		return 0, 0, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`"s":`)); !ok {
		return 0, 0, false
	}
	s, rest, ok = parseUint(rest, ',')
	if !ok {
		return 0, 0, false
	}
	n := padLen(c, s)
	if len(rest) != len(`"p":""}`)+n || !bytes.HasPrefix(rest, []byte(`"p":"`)) || !bytes.HasSuffix(rest, []byte(`"}`)) {
		return 0, 0, false
	}
	pad := rest[5 : 5+n]
	p := padByte(c, s)
	for _, b := range pad {
		if b != p {
			return 0, 0, false
		}
	}
	return c, s, true
}

func parseUint(b []byte, end byte) (uint32, []byte, bool) {
	i := bytes.IndexByte(b, end)
	if i <= 0 {
		return 0, nil, false
	}
	v, err := strconv.ParseUint(string(b[:i]), 10, 32)
	if err != nil {
		return 0, nil, false
	}
	return uint32(v), b[i+1:], true
}

// Ledger counts the lines targets received. It is safe for concurrent use.
type Ledger struct {
	mu    sync.Mutex
	seen  map[uint64]uint32 // (client<<32 | seq) -> times received; guarded by mu
	lines uint64            // complete lines received; guarded by mu
	torn  uint64            // complete lines that failed the parse; guarded by mu
	bad   [][]byte          // the first few torn lines, for messages; guarded by mu
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{seen: make(map[uint64]uint32)} }

// Add records whole lines (each ending in '\n').
func (l *Ledger) Add(lines []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		line := lines[:i]
		lines = lines[i+1:]
		l.lines++
		c, s, ok := ParseLine(line)
		if !ok {
			l.torn++
			if len(l.bad) < 3 {
				l.bad = append(l.bad, bytes.Clone(line[:min(len(line), 120)]))
			}
			continue
		}
		l.seen[uint64(c)<<32|uint64(s)]++
	}
}

// Report compares the ledger with what was sent: sent[c] lines 0..sent[c]-1
// of client c, less those in skip (lines that were meant to be dropped).
type Report struct {
	Sent, Received, Unique, Lost, Duplicated, Torn, Unexpected uint64
	FirstLost                                                  string
	TornSample                                                 []string
}

// Check compares the ledger against sent.
func (l *Ledger) Check(sent map[uint32]uint32) Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := Report{Received: l.lines, Torn: l.torn}
	for _, b := range l.bad {
		r.TornSample = append(r.TornSample, string(b))
	}
	for c, n := range sent {
		r.Sent += uint64(n)
		for s := range n {
			switch k := l.seen[uint64(c)<<32|uint64(s)]; {
			case k == 0:
				r.Lost++
				if r.FirstLost == "" {
					r.FirstLost = fmt.Sprintf("client %d line %d", c, s)
				}
			case k > 1:
				r.Duplicated += uint64(k - 1)
			}
		}
	}
	for k := range l.seen {
		if n, ok := sent[uint32(k>>32)]; !ok || uint32(k) >= n {
			r.Unexpected++
		}
	}
	r.Unique = uint64(len(l.seen)) - r.Unexpected
	return r
}

// Client counts the distinct lines of client c received so far.
func (l *Ledger) Client(c uint32) (n uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.seen {
		if uint32(k>>32) == c {
			n++
		}
	}
	return n
}

// Lost returns the keys (client<<32 | seq) of the lines in sent that the
// ledger never received.
func (l *Ledger) Lost(sent map[uint32]uint32) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []uint64
	for c, n := range sent {
		for s := range n {
			if k := uint64(c)<<32 | uint64(s); l.seen[k] == 0 {
				out = append(out, k)
			}
		}
	}
	return out
}

// Keys returns the keys (client<<32 | seq) of the well-formed lines in b; a
// final line without its newline counts if it parses.
func Keys(b []byte) map[uint64]bool {
	out := map[uint64]bool{}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		line := b
		if i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if c, s, ok := ParseLine(line); ok {
			out[uint64(c)<<32|uint64(s)] = true
		}
	}
	return out
}

// String is a one-line summary.
func (r Report) String() string {
	s := fmt.Sprintf("sent %d, received %d (%d unique), lost %d, duplicated %d, torn %d",
		r.Sent, r.Received, r.Unique, r.Lost, r.Duplicated, r.Torn)
	if r.Unexpected > 0 {
		s += fmt.Sprintf(", unexpected %d", r.Unexpected)
	}
	if r.FirstLost != "" {
		s += ", first lost: " + r.FirstLost
	}
	if len(r.TornSample) > 0 {
		s += fmt.Sprintf(", torn sample: %q", r.TornSample)
	}
	return s
}
