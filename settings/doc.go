// Package settings is the one registry of ndlb's settings. Each setting is
// declared once, in All: its name, kind, default, help text and --help
// group, the mode it belongs to, whether it is process-wide, and what a
// config reload does when it changes (Reload). From it come the command
// line flags and their NDLB_* variables (cmd/ndlb), the keys a config file
// may hold (Schema), the flags that mean nothing in the other mode
// (OnlyIn), the live-or-replace rule of a reload (supervisor), and which
// setting to name when a library's Config.Validate rejects one of its
// fields (ByField).
//
// The package knows nothing of how a value is checked or used: each
// library's Config.Validate does that.
package settings
