// Package spool is the write-ahead spool of the NDJSON mode (issue 13): a
// directory of segment files that batches are appended to before they are
// queued, and removed from once their target acknowledged them, so that
// what ndlb read survives a crash of ndlb itself and targets that are down
// for longer than memory lasts.
//
// A segment file starts with an 8-byte magic and holds records, each a
// 16-byte header (the data's length, its line count, the segment's tag,
// and a CRC-32C of those and the data) and the data. Appends go to the
// newest segment only; a segment is sealed when it reaches
// Config.SegmentBytes and deleted once every record in it has been
// acknowledged (Ack), whatever the order of the acknowledgements. Up to
// two deleted segments' files are kept as spares and written over by new
// segments (the kernel's page cache still holds their pages, so this
// costs about half what writing a new file does); a spare's bytes count
// against Config.MaxBytes, and spares go first when the spool is full.
//
// When the reader has caught up, AppendHandOff gives the record back to
// the caller to queue from memory: only records that wait are read back
// from the files. Acknowledgements are written down only by Close, which
// rewrites each segment that holds acknowledged and unacknowledged records
// without the acknowledged ones (the spool tracks the offsets it was
// given to Ack): after a crash, the records of a segment that still exists
// are all replayed, including those acknowledged before it (at-least-once:
// only batches a target had acknowledged come twice); after Close, only
// those not acknowledged. Keep appends after EndInput, without waiting for
// room, for records a caller holds only in memory as it stops.
//
// Open checks every segment: a record that does not fit in its file, or
// whose checksum does not match (a crash in the middle of an append, a
// torn write, a flipped bit, pages a power loss left unwritten), is
// damage. Open looks past it for the next whole record of the segment (by
// the segment's tag, then its length and checksum); the segment is
// rewritten without the damage (into a new file, synced and renamed over
// it), and what has no whole record after it is cut off. The damaged bytes are counted (Stats.CorruptTails
// segments, Stats.CorruptBytes bytes). A record with another segment's
// tag (what a reused file held before) or fewer bytes than a header at the
// end are not damage and are cut uncounted. A record Next returns was
// written whole, in that segment.
//
// Damage found while the spool runs (a record that no longer checks, a
// file cut short or removed) does not stop Next: it skips to the next
// whole record, and counts the records it missed (Config.OnLost,
// Stats.Lost) as it leaves the segment; damage in the segment being
// written seals it first. Other read errors (out of file descriptors, an
// I/O error) are returned and the record stays, for the caller to try
// again. The segment being written is read through a duplicate of the
// writer's descriptor, so its records are read even when its name is gone.
// Close forgets the segments whose files are gone, which the next Open
// could not replay: the records Next had not returned are counted lost,
// and Has is false for those it had, for their holders to count.
//
// Durability: a record is in the operating system's page cache once
// Append returns, so a crash of the process never loses it. Whether it
// survives a power loss depends on Config.Sync: SyncAlways returns only
// after an fsync that covers the record (group commit: concurrent appends
// share one fsync), SyncInterval fsyncs every Config.SyncInterval (the
// segment being written, the segments sealed since the last tick that
// are not yet deleted, and the directory), and SyncNever leaves it to the
// kernel. A segment deleted before any fsync reached it need never be
// written to the disk at all. Deletions are made durable by the next
// fsync of the directory: lost to a power cut, a deleted segment comes
// back and is delivered again (duplicates, never a loss).
//
// The spool does no networking and knows nothing of queues or targets;
// package ndjson wires it in.
package spool
