package mono

import (
	"strings"
	"testing"
	"time"
)

// Now and Of agree and advance with the clock; Time converts back with a
// monotonic reading (its String shows "m=").
func TestNowOfAndTime(t *testing.T) {
	a := Now()
	now := time.Now()
	b := Of(now)
	time.Sleep(2 * time.Millisecond)
	c := Now()
	if !(a <= b && b < c) || c-b < int64(2*time.Millisecond) {
		t.Fatalf("Now %d, Of(time.Now()) %d, Now after 2ms %d", a, b, c)
	}
	back := Time(b)
	if d := back.Sub(now); d < -time.Microsecond || d > time.Microsecond {
		t.Fatalf("Time(Of(t)) is %v off t", d)
	}
	if s := back.String(); !strings.Contains(s, "m=") {
		t.Fatalf("Time(%d) = %s: no monotonic reading", b, s)
	}
	if d := time.Until(Time(Now() + int64(time.Hour))); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("until an hour from now: %v", d)
	}
}

// A time without a monotonic reading (a fake clock's) converts on the
// wall clock, so fake times compare with one another.
func TestOfWallTimes(t *testing.T) {
	fake := time.Date(1984, 4, 4, 0, 0, 0, 0, time.UTC)
	if d := Of(fake.Add(time.Minute)) - Of(fake); d != int64(time.Minute) {
		t.Fatalf("a minute apart on a fake clock: %v", time.Duration(d))
	}
}
