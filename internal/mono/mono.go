package mono

import "time"

// epoch has a monotonic reading: differences from it use the monotonic
// clock.
var epoch = time.Now()

// Now is the time now, in nanoseconds since the process started.
func Now() int64 { return int64(time.Since(epoch)) }

// Of is t in nanoseconds since the process started: on the monotonic
// clock when t has a reading (time.Now, clockwork's real clock), else on
// the wall clock (a fake clock in tests, whose times all compare with
// one another).
func Of(t time.Time) int64 { return int64(t.Sub(epoch)) }

// Time is the time.Time of ns, a value of Now or Of, with a monotonic
// reading: time.Since, time.Until and deadlines measure from it on the
// monotonic clock.
func Time(ns int64) time.Time { return epoch.Add(time.Duration(ns)) }
