//go:build !linux

package listener

func fileLimit() uint64 { return 0 }
