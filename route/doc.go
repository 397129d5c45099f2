// Package route owns sending each message of an NDJSON listener to a target
// group and a target by a key taken from it (issue 14).
//
// A Router sits between the framers and the dispatch.Queue. For each batch
// a client sends, it takes every line's key (package routekey), picks the
// line's group by the key's exact value (or the default group), and in a
// group balanced by key picks the target by weighted rendezvous hashing of
// the key over the group's targets that take work: the same key always
// goes to the same target, instances with the same targets agree without
// talking, and a target that fails moves only its own keys, each to its
// next choice, and gets them back when it returns. Each target has one
// queue lane for its keyed messages, written by the first of its worker
// connections, so the messages of one key from one client connection
// arrive in order while their target stays; its other connections carry
// the messages without a key. (The lanes are per worker slot in the code;
// one slot keeps a client's batch split in as few parts as there are
// targets: more, smaller parts cost more than the connections gain.)
//
// A bound on load ("consistent hashing with bounded loads", Mirrokni,
// Thorup and Zadimoghaddam) keeps a hot key from swamping its target: a
// target that has taken more than MaxLoad times its share of the group's
// recent keyed messages gets no more of them; they go to the key's next
// choice. Load is counted over a window of the group's last 2^16 to 2^17
// keyed messages, so the bound holds for any stretch of traffic that long.
// A key whose target is over the bound is split between it and its next
// choice for as long as that lasts: affinity yields to the bound, and
// instances may disagree on such overflow.
//
// Lines without the key, and groups balanced by spreading, go to the
// group's shared lane, which every worker of the group takes from, as
// without routing. A line whose value names no group and that has no
// default group is dropped and counted (dispatch.DropUnrouted).
//
// When a target stops taking work (its connection failed, it failed its
// checks, it was drained, disabled or removed), the Router closes its
// lanes and routes what waited in them, and what its workers hand back,
// again. The Router does not dial or write; package pool does, its
// workers told their lanes by Router.Lanes.
package route
