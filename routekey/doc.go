// Package routekey owns taking a routing key from one message, so that
// every message of one key can go to one target (issue 14): a field of a
// JSON object (json:FIELD, or a dotted path json:a.b.c), a byte range
// (bytes:START:END), or the first group of a regular expression
// (regex:EXPR).
//
// The JSON extractor reads only as far as the field, without decoding the
// message: no allocation, no recursion (deep nesting costs one pass, never
// stack), and malformed input ends in Malformed, never a panic. It is not a
// validator: what lies after the key is not read. A string value's key is
// its raw bytes between the quotes (escapes as written); a number's, its
// digits. Extractors are safe for concurrent use.
//
// routekey imports nothing of ndlb's; it does no I/O.
package routekey
