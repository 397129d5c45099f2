// Package logtest holds what tests need to read the logs of code that logs
// from its own goroutines: Buffer, a bytes.Buffer safe for concurrent use,
// to put under a slog handler.
package logtest
