// Package tlsutil builds the TLS configurations of both sides of ndlb: the
// listener (certificate and key, optional client-certificate verification)
// and upstream connections (CA, server name, skip-verify, optional client
// certificate). TLS 1.2 is the minimum.
//
// Files are read at start, so a bad path or a bad PEM is an error before any
// traffic flows, and read again whenever they change on disk (compared by
// inode, size and modification time at each new handshake), so certificates
// rotate without a restart. A rotation that leaves the files unusable, such
// as a new certificate beside the old key, keeps the last good configuration
// and is reported through the OnReloadError hook.
//
// The package opens no sockets.
package tlsutil
