// Package spool is the write-ahead spool of the NDJSON mode (issue 13): a
// directory of segment files that batches are appended to before they are
// queued, and removed from once their target acknowledged them, so that
// what ndlb read survives a crash of ndlb itself and targets that are down
// for longer than memory lasts.
//
// A segment file starts with an 8-byte magic and holds records, each a
// 12-byte header (the data's length, its line count, and a CRC-32C of
// both and the data) and the data. Appends go to the newest segment only;
// a segment is sealed when it reaches Config.SegmentBytes and deleted once
// every record in it has been acknowledged (Ack), whatever the order of
// the acknowledgements. Acknowledgements are not written down: after a
// restart, the records of a segment that still exists are all replayed,
// including those acknowledged before the restart (at-least-once: only
// batches a target had acknowledged come twice).
//
// Open checks every segment: a record that does not fit in its file, or
// whose checksum does not match (a crash in the middle of an append, a
// torn write), ends the segment there; the file is cut to its last whole
// record and the cut is counted (Stats.CorruptTails). A record Next
// returns was written whole.
//
// Durability: a record is in the operating system's page cache once
// Append returns, so a crash of the process never loses it. Whether it
// survives a power loss depends on Config.Sync: SyncAlways returns only
// after an fsync that covers the record (group commit: concurrent appends
// share one fsync), SyncInterval fsyncs every Config.SyncInterval, and
// SyncNever leaves it to the kernel.
//
// The spool does no networking and knows nothing of queues or targets;
// package ndjson wires it in.
package spool
