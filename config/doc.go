// Package config owns ndlb's configuration file: a TOML document (parsed by
// pelletier/go-toml/v2, unknown keys rejected) whose keys are the names of
// the command-line flags. Process-wide keys sit at the top; each
// [[listener]] table holds one listener's keys.
//
//	log-level = "info"
//	admin = "127.0.0.1:9900"
//
//	[[listener]]
//	name = "logs"
//	port = 9000
//	target = ["10.0.0.5:5170", "10.0.0.6:5170"]
//
//	[[listener]]
//	name = "web"
//	passthrough = true
//	port = 8443
//	balance = "leastconn"
//	target-dns = ["web.internal:443"]
//
// Load checks the document against a Schema (the flags' names and kinds)
// and returns each section as flag arguments with the line of every key,
// so that the caller validates a file exactly as it validates flags and
// reports errors as FILE:LINE. Watch reports changes of the file's
// content (editors' renames and Kubernetes ConfigMap swaps included). The
// package knows nothing of what the keys mean.
package config
