// Package regfile reads the small regular files an operator names (a
// config file, the state file) without the surprises other paths bring:
// a FIFO put at the path does not block the read, and a device such as
// /dev/zero or a huge file cannot fill memory.
package regfile
