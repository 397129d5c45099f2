// Package dispatch is the bounded queue between framers and upstream workers,
// and owns the delivery contract.
//
// Producers Push batches; Push blocks while the queue holds its byte budget,
// so TCP backpressure reaches the clients. Workers take batches with TryPop
// when Ready signals, write them, and report each one exactly once:
//
//   - Done when the target's TCP stack has acknowledged every byte of it;
//   - Requeue when its connection failed first: it goes back to the front of
//     the queue, ahead of newer batches, for another worker.
//
// A batch counts against the budget from Push until Done, so the bound covers
// batches being written and waiting for acknowledgement too, and memory stays
// bounded by configuration whatever the input. Delivery is at-least-once: a
// batch requeued after a failure may have partly reached the old target.
//
// A Ledger accounts for a listener's lines: received (at Push, or dropped
// before the queue with a reason), delivered (Done, or DeliveredPart for the
// acknowledged lines of a batch cut short), dropped at Discard; the rest is
// in flight. A Book sums the ledgers of one listener name across the
// instances a reload replaced.
//
// The queue does not dial, write or retry by itself; package pool does.
package dispatch
