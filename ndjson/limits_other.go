//go:build !linux

package ndjson

func fileLimit() uint64 { return 0 }
