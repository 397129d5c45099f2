package balance

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"

	"github.com/ndlb/ndlb/upstream"
)

// Policy orders the targets for one connection.
type Policy interface {
	// Order appends to dst the index of every target, once each, in the
	// order to try them for a client whose hash key is key, and returns
	// the extended slice. It is safe for concurrent use.
	Order(dst []int, targets []*upstream.Target, key []byte) []int
}

// Names lists the policies New knows, default first.
var Names = []string{"roundrobin", "first", "leastconn", "random", "hash"}

// ErrUnknown is returned by New for a name not in Names.
var ErrUnknown = errors.New("unknown balancing policy")

// New returns the policy called name.
func New(name string) (Policy, error) {
	switch name {
	case "first":
		return First{}, nil
	case "roundrobin":
		return &RoundRobin{}, nil
	case "leastconn":
		return &LeastConn{}, nil
	case "random":
		return Random{}, nil
	case "hash":
		return Hash{}, nil
	}
	return nil, fmt.Errorf("%w %q: want %s", ErrUnknown, name, strings.Join(Names, ", "))
}

var (
	_ Policy = First{}
	_ Policy = (*RoundRobin)(nil)
	_ Policy = (*LeastConn)(nil)
	_ Policy = Random{}
	_ Policy = Hash{}
)

// First is ordered failover: the targets in configuration order, so the
// first one that accepts takes every connection ("primary, then secondary").
type First struct{}

// Order implements Policy.
func (First) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	for i := range targets {
		dst = append(dst, i)
	}
	return dst
}

// RoundRobin starts each connection at the next target in turn. With
// weights it is smooth weighted round-robin (as nginx does it): a target of
// weight 3 gets three connections for each of a target of weight 1's,
// interleaved.
type RoundRobin struct {
	next atomic.Uint64

	mu      sync.Mutex
	current map[*upstream.Target]int // weighted round-robin state; guarded by mu
}

// Order implements Policy.
func (r *RoundRobin) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	if uniform(targets) {
		return rotated(dst, len(targets), r.next.Add(1)-1)
	}
	r.mu.Lock()
	if r.current == nil || len(r.current) > 2*len(targets) {
		r.current = make(map[*upstream.Target]int, len(targets))
	}
	total, best := 0, 0
	for i, t := range targets {
		w := t.Weight()
		total += w
		r.current[t] += w
		if r.current[t] > r.current[targets[best]] {
			best = i
		}
	}
	r.current[targets[best]] -= total
	r.mu.Unlock()
	return rotated(dst, len(targets), uint64(best))
}

// uniform reports whether every target has the same weight.
func uniform(targets []*upstream.Target) bool {
	for _, t := range targets[min(1, len(targets)):] {
		if t.Weight() != targets[0].Weight() {
			return false
		}
	}
	return true
}

// rotated appends 0..n-1 starting at start mod n.
func rotated(dst []int, n int, start uint64) []int {
	if n == 0 {
		return dst
	}
	s := int(start % uint64(n))
	for i := range n {
		dst = append(dst, (s+i)%n)
	}
	return dst
}

// LeastConn prefers the targets with the fewest open connections for their
// weight. Ties are broken in turn, so that short connections that never
// overlap still spread over every target.
type LeastConn struct {
	next atomic.Uint64
}

// Order implements Policy.
func (l *LeastConn) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	base := len(dst)
	dst = rotated(dst, len(targets), l.next.Add(1)-1)
	sortBy(dst[base:], func(i int) int64 { return load(targets[i]) })
	return dst
}

// load is a target's open connections per unit of weight, in millionths.
func load(t *upstream.Target) int64 { return t.Active() * 1_000_000 / int64(t.Weight()) }

// Random is the power of two choices: of two targets picked at random
// (in proportion to their weights), the one with fewer open connections
// for its weight comes first, then the other, then the rest in random
// order.
type Random struct{}

// Order implements Policy.
func (Random) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	base := len(dst)
	for i := range targets {
		dst = append(dst, i)
	}
	o := dst[base:]
	if uniform(targets) {
		rand.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
	} else {
		// A weighted random order (Efraimidis and Spirakis): sort by
		// -ln(u)/weight.
		var buf [32]float64
		keys := buf[:0]
		for _, t := range targets {
			keys = append(keys, -math.Log(1-rand.Float64())/float64(t.Weight()))
		}
		sortBy(o, func(i int) float64 { return keys[i] })
	}
	if len(o) >= 2 && load(targets[o[1]]) < load(targets[o[0]]) {
		o[0], o[1] = o[1], o[0]
	}
	return dst
}

// Hash is rendezvous (highest random weight) hashing of the client's key:
// each target scores hash(key, target address) and the highest score comes
// first. A client keeps its target while that target stays; a target that
// leaves moves only its own clients, each to its second-best target; and
// instances with the same target list agree with no shared state.
type Hash struct {
	// OnHost scores each target by its host alone, not host:port: lists
	// that name the same hosts on different ports (several listeners of
	// one service) send a client to the same host on each, with no shared
	// table, across instances too.
	OnHost bool
}

// Order implements Policy.
func (h Hash) Order(dst []int, targets []*upstream.Target, key []byte) []int {
	base := len(dst)
	k := xxhash.Sum64(key)
	var buf [32]float64 // scores, on the stack for up to 32 targets
	scores := buf[:0]
	for i, t := range targets {
		dst = append(dst, i)
		name := t.Addr
		if h.OnHost {
			if host, _, err := net.SplitHostPort(name); err == nil {
				name = host
			}
		}
		scores = append(scores, weighted(Score(k, name), t.Weight()))
	}
	if h.OnHost {
		// Ports of one host tie: order them by their own scores first
		// (the sort is stable), so each port is someone's first choice.
		sortBy(dst[base:], func(i int) uint64 { return ^Score(k, targets[i].Addr) })
	}
	sortBy(dst[base:], func(i int) float64 { return -scores[i] }) // highest first
	return dst
}

// weighted turns a score into weighted rendezvous hashing's: -weight/ln(u)
// for u, the score as a number in (0, 1). A target of weight 2 then wins
// twice as many keys as one of weight 1, and with equal weights the order
// is the scores' order.
func weighted(score uint64, weight int) float64 {
	u := (float64(score>>11) + 0.5) / (1 << 53)
	return -float64(weight) / math.Log(u)
}

// Score is target's rendezvous weight for a key whose xxhash is k.
func Score(k uint64, target string) uint64 {
	return mix(k ^ xxhash.Sum64String(target))
}

// TargetHash is what Score hashes a target's name to, for callers that
// score many keys against the same targets (ScoreHashed).
func TargetHash(target string) uint64 { return xxhash.Sum64String(target) }

// ScoreHashed is Score for a target whose name is already hashed
// (TargetHash): Score(k, t) == ScoreHashed(k, TargetHash(t)).
func ScoreHashed(k, target uint64) uint64 { return mix(k ^ target) }

// Weighted is weighted rendezvous hashing's score for a Score and a
// target's weight: the highest wins, a target of weight 2 twice as many
// keys as one of weight 1.
func Weighted(score uint64, weight int) float64 { return weighted(score, weight) }

// mix is the SplitMix64 finaliser: it spreads every input bit over the
// output, so scores of one key on different targets are independent.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// sortBy is a stable insertion sort of idx by weight, ascending. Target
// lists are short, and it allocates nothing.
func sortBy[K cmp.Ordered](idx []int, weight func(int) K) {
	for i := 1; i < len(idx); i++ {
		v, w := idx[i], weight(idx[i])
		j := i
		for ; j > 0 && weight(idx[j-1]) > w; j-- {
			idx[j] = idx[j-1]
		}
		idx[j] = v
	}
}
