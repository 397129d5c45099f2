// Package mono owns ndlb's timestamps that live in atomics and deadlines
// (a session's last activity, a target's skip period, a framer's idle
// start, an event loop's timers): nanoseconds since the process started,
// on the monotonic clock, so that a step of the wall clock (NTP setting
// the time at boot, a virtual machine resumed) neither closes every idle
// connection at once nor keeps one open for as long as the clock went
// back. time.Time.UnixNano would drop the monotonic reading.
package mono
