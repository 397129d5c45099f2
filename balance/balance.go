package balance

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
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

// RoundRobin starts each connection at the next target in turn.
type RoundRobin struct {
	next atomic.Uint64
}

// Order implements Policy.
func (r *RoundRobin) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	return rotated(dst, len(targets), r.next.Add(1)-1)
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

// LeastConn prefers the targets with the fewest open connections. Ties are
// broken in turn, so that short connections that never overlap still spread
// over every target.
type LeastConn struct {
	next atomic.Uint64
}

// Order implements Policy.
func (l *LeastConn) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	base := len(dst)
	dst = rotated(dst, len(targets), l.next.Add(1)-1)
	sortBy(dst[base:], func(i int) int64 { return targets[i].Active() })
	return dst
}

// Random is the power of two choices: of two targets picked at random, the
// one with fewer open connections comes first, then the other, then the rest
// in random order.
type Random struct{}

// Order implements Policy.
func (Random) Order(dst []int, targets []*upstream.Target, _ []byte) []int {
	base := len(dst)
	for i := range targets {
		dst = append(dst, i)
	}
	o := dst[base:]
	rand.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
	if len(o) >= 2 && targets[o[1]].Active() < targets[o[0]].Active() {
		o[0], o[1] = o[1], o[0]
	}
	return dst
}

// Hash is rendezvous (highest random weight) hashing of the client's key:
// each target scores hash(key, target address) and the highest score comes
// first. A client keeps its target while that target stays; a target that
// leaves moves only its own clients, each to its second-best target; and
// instances with the same target list agree with no shared state.
type Hash struct{}

// Order implements Policy.
func (Hash) Order(dst []int, targets []*upstream.Target, key []byte) []int {
	base := len(dst)
	k := xxhash.Sum64(key)
	var buf [32]uint64 // scores, on the stack for up to 32 targets
	scores := buf[:0]
	for i, t := range targets {
		dst = append(dst, i)
		scores = append(scores, Score(k, t.Addr))
	}
	// Highest score first: sortBy sorts ascending, so negate (after a
	// shift, so that the uint64 fits an int64).
	sortBy(dst[base:], func(i int) int64 { return -int64(scores[i] >> 1) })
	return dst
}

// Score is target's rendezvous weight for a key whose xxhash is k.
func Score(k uint64, target string) uint64 {
	return mix(k ^ xxhash.Sum64String(target))
}

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
func sortBy(idx []int, weight func(int) int64) {
	for i := 1; i < len(idx); i++ {
		v, w := idx[i], weight(idx[i])
		j := i
		for ; j > 0 && weight(idx[j-1]) > w; j-- {
			idx[j] = idx[j-1]
		}
		idx[j] = v
	}
}
