// Package framer cuts byte streams into batches of whole lines.
//
// A Framer reads an io.Reader into pooled buffers, cuts each buffer after its
// last '\n' and hands out Batches: byte slices that hold one or more whole
// lines, each ending in '\n'. The partial tail is carried into the next read.
//
//	f := framer.New(conn, framer.DefaultConfig(), framer.NewPool())
//	for {
//		b, err := f.Next()
//		if err != nil {
//			break // io.EOF after the last batch
//		}
//		send(b) // the receiver calls b.Release when it is done with it
//	}
//
// Rules the framer keeps:
//   - A line longer than Config.MaxLineBytes is dropped whole (through its
//     newline), reported through Framer.OnDrop, and never forwarded in pieces.
//   - At a clean EOF an unterminated tail gets a '\n' and is forwarded, so it
//     can never merge with another line downstream. When the read fails any
//     other way the tail is a fragment and is dropped as ReasonIncomplete.
//   - Bytes between newlines pass through exactly; nothing else is parsed.
//   - Buffers come from a Pool with power-of-two size classes, so steady-state
//     framing allocates nothing per batch, and a batch's memory is at most
//     about twice its length (small batches are copied into small buffers).
//   - With a Budget, every framer sharing it stays within one bound: a read
//     reserves its buffer and the one buffer cutting may add before it
//     starts; a framer waiting for data between lines holds nothing, and one
//     waiting inside a line holds only that line. A batch carries its charge
//     until Batch.Uncharge (dispatch.Queue.Push calls it). Ordinary reads
//     wait for room; a line longer than one read that finds none within
//     Config.MemoryWait is dropped as ReasonMemory, and so is the partial
//     line of a framer whose wait would leave the whole budget held by
//     waiters (a stall nothing would end).
//
// The framer owns no sockets and imports nothing else of ndlb's but invalid
// (the error type of Config.Validate).
package framer
