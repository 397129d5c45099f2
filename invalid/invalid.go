package invalid

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Error is a config value out of range.
type Error struct {
	// Field is the config field at fault, dotted for a field of a nested
	// config ("Pool.Connections", "HTTP.Path").
	Field string
	// Msg says what is wrong with the value and what is wanted.
	Msg string
	// Err is the sentinel of the package that rejected the value (such as
	// pool.ErrConfig); Error wraps it.
	Err error

	outer []error // the sentinels of the configs that hold Field's (see In)
}

// Error is the sentinel's text, then Msg.
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Err.Error() + ": " + e.Msg
}

// Unwrap returns the sentinel, then those of the configs that hold the
// field, outermost last: an error about ndjson's Pool.Connections is both
// pool.ErrConfig and ndjson.ErrConfig.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return append(errs, e.outer...)
}

// Field returns an *Error about field, wrapping sentinel, with a message
// made as fmt.Sprintf does.
func Field(sentinel error, field, format string, a ...any) error {
	return &Error{Field: field, Msg: fmt.Sprintf(format, a...), Err: sentinel}
}

// In is err as the config that holds the one that returned it, under the
// field outer, reports it: an *Error's Field gains the prefix "outer." and
// it also wraps sentinel, the holder's own. An error that wraps an *Error
// is reported as that *Error alone (Validate returns an *Error itself).
// Other errors, and nil, are returned as they are.
func In(sentinel error, outer string, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	return &Error{Field: outer + "." + e.Field, Msg: e.Msg, Err: e.Err, outer: append(slices.Clip(e.outer), sentinel)}
}

// Bytes writes a size as a user would type it: in the largest binary unit
// that divides it exactly ("64KiB", "2MiB"), else in bytes.
func Bytes(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.name)
		}
	}
	if n == 1 {
		return "1 byte"
	}
	return fmt.Sprintf("%d bytes", n)
}

// MaxTimeout bounds the timeouts a config may set: a year. Longer ones
// mean "never" to whoever writes them, and sums of them must not
// overflow a time.Duration (which holds 292 years).
const MaxTimeout = 365 * 24 * time.Hour

// MinTimeout is the least a timeout that bounds a network operation may
// be (a write, a connect, a line): a shorter one fails healthy peers.
const MinTimeout = 100 * time.Millisecond
