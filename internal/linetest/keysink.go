package linetest

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/ndlb/ndlb/balance"
)

// KeyOwner is the target that weighted rendezvous hashing (equal weights)
// gives key among addrs: where routing by key sends it, whatever the
// order of addrs.
func KeyOwner(key string, addrs []string) string {
	h := xxhash.Sum64String(key)
	best, score := "", uint64(0)
	for _, a := range addrs {
		if s := balance.Score(h, a); best == "" || s > score {
			best, score = a, s
		}
	}
	return best
}

// NewKeySinks starts n KeySinks on loopback, closed when t ends, and
// returns them with their addresses.
func NewKeySinks(t testing.TB, n int) ([]*KeySink, []string) {
	t.Helper()
	var sinks []*KeySink
	var addrs []string
	for range n {
		s, err := NewKeySink("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		sinks, addrs = append(sinks, s), append(addrs, s.Addr())
	}
	return sinks, addrs
}

// AppendKeyed appends a line with a routing key: {"k":"KEY","c":C,"s":S},
// line s of client c, and its newline.
func AppendKeyed(dst []byte, key string, c, s uint32) []byte {
	dst = append(dst, `{"k":"`...)
	dst = append(dst, key...)
	dst = append(dst, `","c":`...)
	dst = strconv.AppendUint(dst, uint64(c), 10)
	dst = append(dst, `,"s":`...)
	dst = strconv.AppendUint(dst, uint64(s), 10)
	return append(dst, "}\n"...)
}

// ParseKeyed parses what AppendKeyed makes, without the newline.
func ParseKeyed(line []byte) (key string, c, s uint32, ok bool) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"k":"`))
	if !ok {
		return "", 0, 0, false
	}
	i := bytes.IndexByte(rest, '"')
	if i < 0 {
		return "", 0, 0, false
	}
	key, rest = string(rest[:i]), rest[i:]
	if rest, ok = bytes.CutPrefix(rest, []byte(`","c":`)); !ok {
		return "", 0, 0, false
	}
	if c, rest, ok = parseUint(rest, ','); !ok {
		return "", 0, 0, false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte(`"s":`)); !ok {
		return "", 0, 0, false
	}
	if s, rest, ok = parseUint(rest, '}'); !ok || len(rest) != 0 {
		return "", 0, 0, false
	}
	return key, c, s, true
}

// KeySink is a target on loopback that records, for keyed lines
// (AppendKeyed), which keys it received and whether each client's lines of
// one key came in order. It can be killed (its listener and connections
// closed) and restarted on the same address.
type KeySink struct {
	addr string

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]bool
	keys     map[string]int    // lines per key
	last     map[string]uint32 // "key/client" → last sequence number
	lines    int
	bad      int // lines that did not parse (torn)
	outOrder int // lines of a client's key after a later one
	seen     map[uint64]bool
	dups     int
	wg       sync.WaitGroup
}

// NewKeySink listens on addr ("127.0.0.1:0" for any port).
func NewKeySink(addr string) (*KeySink, error) {
	s := &KeySink{conns: map[net.Conn]bool{}, keys: map[string]int{}, last: map[string]uint32{}, seen: map[uint64]bool{}}
	if err := s.listen(addr); err != nil {
		return nil, err
	}
	s.addr = s.ln.Addr().String()
	return s, nil
}

func (s *KeySink) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Go(func() { s.read(c) })
		}
	})
	return nil
}

func (s *KeySink) read(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return // a partial line at the end is not a line
		}
		key, cl, seq, ok := ParseKeyed(line[:len(line)-1])
		s.mu.Lock()
		s.lines++
		if !ok {
			s.bad++
		} else {
			s.keys[key]++
			id := key + "/" + strconv.FormatUint(uint64(cl), 10)
			if prev, had := s.last[id]; had && seq <= prev {
				s.outOrder++
			}
			s.last[id] = seq
			k := uint64(cl)<<32 | uint64(seq)
			if s.seen[k] {
				s.dups++
			}
			s.seen[k] = true
		}
		s.mu.Unlock()
	}
}

// Addr is the sink's host:port; it stays the same across Kill and Restart.
func (s *KeySink) Addr() string { return s.addr }

// Kill closes the listener and every connection: the target is gone.
func (s *KeySink) Kill() {
	s.mu.Lock()
	s.ln.Close()
	for c := range s.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset: what it had not read is lost
		}
		c.Close()
	}
	s.mu.Unlock()
}

// Restart listens again on the sink's address.
func (s *KeySink) Restart() error {
	var err error
	for range 50 { // the port may linger a moment after Kill
		if err = s.listen(s.addr); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// Close kills the sink and waits for its goroutines.
func (s *KeySink) Close() {
	s.Kill()
	s.wg.Wait()
}

// KeyStats is what a KeySink received.
type KeyStats struct {
	Lines, Bad, OutOfOrder, Dups int
	Keys                         map[string]int // lines per key
	Seen                         map[uint64]bool
}

// Stats returns a copy of what the sink received.
func (s *KeySink) Stats() KeyStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := KeyStats{Lines: s.lines, Bad: s.bad, OutOfOrder: s.outOrder, Dups: s.dups,
		Keys: make(map[string]int, len(s.keys)), Seen: make(map[uint64]bool, len(s.seen))}
	for k, v := range s.keys {
		st.Keys[k] = v
	}
	for k := range s.seen {
		st.Seen[k] = true
	}
	return st
}

// Reset forgets what the sink received (between phases of a test).
func (s *KeySink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys, s.last, s.seen = map[string]int{}, map[string]uint32{}, map[uint64]bool{}
	s.lines, s.bad, s.outOrder, s.dups = 0, 0, 0, 0
}
