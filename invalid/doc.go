// Package invalid owns the one error type every library's Config.Validate
// returns: it names the config field at fault ("Pool.Connections" for a
// field of a nested config), so that a caller can name its own setting for
// it (cmd/ndlb names the flag) without reading the message, and each limit
// is checked once, in the library that owns it.
//
// Bytes writes sizes in those messages as a user would type them.
//
// It imports nothing of ndlb's, so that every library, framer included,
// can use it.
package invalid
