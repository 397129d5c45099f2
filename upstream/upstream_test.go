package upstream

import (
	"errors"
	"testing"
	"time"
)

func TestFailoverOrder(t *testing.T) {
	s := NewSet([]string{"a:1", "b:1", "c:1", "d:1"})
	ts := s.Targets()
	a, b, c, d := ts[0], ts[1], ts[2], ts[3]
	c.MarkDown(errors.New("refused"))
	tests := []struct {
		name       string
		home, prev *Target
		first      *Target // nil: any up target other than home and prev
		last       *Target
	}{
		{name: "start at home", home: a, prev: nil, first: a, last: c},
		{name: "home failed: others first, home last", home: a, prev: a, last: a},
		{name: "away failed: home first", home: a, prev: b, first: a, last: b},
		{name: "down home after up others", home: c, prev: b, last: b},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 20 {
				order := s.FailoverOrder(tt.home, tt.prev)
				if len(order) != 4 {
					t.Fatalf("order %v has %d targets", order, len(order))
				}
				if tt.first != nil && order[0] != tt.first {
					t.Fatalf("first %s, want %s", order[0].Addr, tt.first.Addr)
				}
				if tt.first == nil && (order[0] == tt.home || order[0] == tt.prev || !order[0].Up()) {
					t.Fatalf("first %s is not another up target", order[0].Addr)
				}
				if order[3] != tt.last {
					t.Fatalf("last %s, want %s", order[3].Addr, tt.last.Addr)
				}
			}
		})
	}
	_ = d
}

func TestStateAndCounters(t *testing.T) {
	tg := &Target{Addr: "x:1"}
	if !tg.Up() {
		t.Fatal("a new target is up")
	}
	tg.MarkDown(errors.New("boom"))
	tg.Delivered(3, 30)
	st := tg.Stats()
	if st.Up || st.Lines != 3 || st.Bytes != 30 || st.Failures != 1 || tg.LastErr() == nil {
		t.Fatalf("stats %+v", st)
	}
	tg.MarkUp()
	if !tg.Up() {
		t.Fatal("MarkUp did not mark up")
	}
}

func TestPassiveHealth(t *testing.T) {
	tg := &Target{Addr: "x:1"}
	now := time.Unix(1000, 0)
	refused := errors.New("refused")
	for i := range 2 {
		if tg.AttemptFailed(refused, now, 3, 10*time.Second) || tg.Skipped(now) {
			t.Fatalf("skipped after %d failures, want 3", i+1)
		}
	}
	if !tg.AttemptFailed(refused, now, 3, 10*time.Second) || !tg.Skipped(now) {
		t.Fatal("not skipped after 3 failures")
	}
	if !tg.Skipped(now.Add(9*time.Second)) || tg.Skipped(now.Add(10*time.Second)) {
		t.Fatal("skip period is not --fail-timeout")
	}
	later := now.Add(11 * time.Second)
	if !tg.AttemptFailed(refused, later, 3, 10*time.Second) || !tg.Skipped(later) {
		t.Fatal("a failed retry after the period does not skip again at once")
	}
	if !tg.AttemptSucceeded() || tg.Skipped(later) || !tg.Up() {
		t.Fatal("a success does not clear the skip")
	}
	if tg.AttemptFailed(refused, later, 3, time.Second) {
		t.Fatal("the streak was not reset by the success")
	}
	if (&Target{}).AttemptFailed(refused, now, 0, time.Second) {
		t.Fatal("maxFails 0 must disable skipping")
	}
}

func TestStates(t *testing.T) {
	s := NewSet([]string{"a:1", "b:1"})
	a, _ := s.Lookup("a:1")
	w := s.Watch()
	tests := []struct {
		name    string
		do      func() bool
		want    State
		accepts bool
	}{
		{name: "starts up", do: func() bool { return true }, want: StateUp, accepts: true},
		{name: "passive failure: down but tried", do: func() bool { return a.MarkDown(errors.New("refused")) }, want: StateDown, accepts: true},
		{name: "dial works again", do: a.MarkUp, want: StateUp, accepts: true},
		{name: "checks fail", do: func() bool { return a.SetChecked(CheckResult{Err: errors.New("503")}, false, true) }, want: StateDown},
		{name: "drain wins over down", do: a.Drain, want: StateDraining},
		{name: "disable", do: a.Disable, want: StateDisabled},
		{name: "enable: back to the check verdict", do: a.Enable, want: StateDown},
		{name: "checks pass", do: func() bool { return a.SetChecked(CheckResult{}, true, true) }, want: StateUp, accepts: true},
	}
	for _, tt := range tests {
		if !tt.do() {
			t.Fatalf("%s: no change reported", tt.name)
		}
		if a.State() != tt.want || a.Accepts() != tt.accepts {
			t.Fatalf("%s: state %s accepts %v, want %s %v", tt.name, a.State(), a.Accepts(), tt.want, tt.accepts)
		}
	}
	select {
	case <-w:
	default:
		t.Fatal("Watch was not signalled")
	}
	if a.Drain(); a.Drain() {
		t.Fatal("a second Drain reported a change")
	}
	if _, err := s.Lookup("z:1"); !errors.Is(err, ErrUnknownTarget) {
		t.Fatal(err)
	}
}

func TestUpdateDrainsThenPrunes(t *testing.T) {
	s := NewSet([]string{"a:1", "b:1"})
	b, _ := s.Lookup("b:1")
	b.ConnOpened()
	added, removed := s.Update([]string{"a:1", "c:1"})
	if len(added) != 1 || added[0].Addr != "c:1" || len(removed) != 1 || removed[0] != b {
		t.Fatalf("added %v removed %v", added, removed)
	}
	if b.State() != StateDraining || !b.Removed() || b.Enable() {
		t.Fatalf("removed target: %s removed=%v", b.State(), b.Removed())
	}
	if got := s.Prune(); len(got) != 0 || len(s.Targets()) != 3 {
		t.Fatal("a removed target with a connection was pruned")
	}
	b.ConnClosed()
	if got := s.Prune(); len(got) != 1 || len(s.Targets()) != 2 {
		t.Fatalf("pruned %v, targets %d", got, len(s.Targets()))
	}
	// A removed target that comes back before it is pruned is enabled.
	d, _ := s.Update([]string{"a:1", "c:1", "d:1"})
	s.Update([]string{"a:1", "c:1"})
	s.Update([]string{"a:1", "c:1", "d:1"})
	if dd, _ := s.Lookup("d:1"); dd != d[0] || dd.State() != StateUp || dd.Removed() {
		t.Fatal("a returning target is not up again")
	}
	if order := s.FailoverOrder(s.Targets()[0], nil); len(order) != 3 {
		t.Fatalf("failover order %d targets", len(order))
	}
}

func TestWeights(t *testing.T) {
	if a, w, err := ParseSpec("10.0.0.1:80=3"); err != nil || a != "10.0.0.1:80" || w != 3 {
		t.Fatalf("%q %d %v", a, w, err)
	}
	if a, w, err := ParseSpec("[::1]:80"); err != nil || a != "[::1]:80" || w != 1 {
		t.Fatalf("%q %d %v", a, w, err)
	}
	for _, bad := range []string{"a:1=0", "a:1=x", "a:1=257"} {
		if _, _, err := ParseSpec(bad); !errors.Is(err, ErrSpec) {
			t.Fatalf("%s: %v", bad, err)
		}
	}
	s := NewSet([]string{"a:1=2", "b:1"})
	a, _ := s.Lookup("a:1")
	if a.Weight() != 2 || s.Targets()[1].Weight() != 1 {
		t.Fatal("weights not set")
	}
	w := s.Watch()
	s.Update([]string{"a:1=5", "b:1"})
	select {
	case <-w:
	default:
		t.Fatal("a weight change is not a set change")
	}
	if a.Weight() != 5 || a.Stats().Weight != 5 {
		t.Fatalf("weight %d", a.Weight())
	}
}

// A target removed and listed again before Prune comes back enabled, is
// reported added and wakes the watchers, so workers and checks restart.
func TestRemovedTargetAddedBack(t *testing.T) {
	s := NewSet([]string{"a:1", "b:1"})
	s.Update([]string{"a:1"})
	b, err := s.Lookup("b:1")
	if err != nil || !b.Removed() {
		t.Fatalf("b not removed: %v", err)
	}
	watch := s.Watch()
	added, removed := s.Update([]string{"a:1", "b:1"})
	if len(added) != 1 || added[0] != b || len(removed) != 0 {
		t.Fatalf("added %v removed %v, want b added back", added, removed)
	}
	select {
	case <-watch:
	default:
		t.Fatal("adding b back did not wake the watchers")
	}
	if b.Removed() || b.State() != StateUp {
		t.Fatalf("b removed=%v state=%v", b.Removed(), b.State())
	}
}

// A passing check keeps the last failure's error for the operator; a spec's
// weight must be 1..MaxWeight; removing a target wakes the watchers.
func TestCheckErrorWeightsAndRemovalWatch(t *testing.T) {
	s := NewSet([]string{"a:1", "b:1"})
	a := s.Targets()[0]
	boom := errors.New("boom")
	a.SetChecked(CheckResult{Err: boom}, false, true)
	a.SetChecked(CheckResult{}, true, true)
	if !errors.Is(a.LastErr(), boom) || a.LastCheck().Err != nil {
		t.Fatalf("last error %v, last check %v", a.LastErr(), a.LastCheck().Err)
	}
	for _, tt := range []struct {
		spec string
		ok   bool
		w    int
	}{
		{"h:1=1", true, 1}, {"h:1=256", true, 256}, {"h:1=0", false, 0}, {"h:1=257", false, 0}, {"h:1", true, 1},
	} {
		_, w, err := ParseSpec(tt.spec)
		if (err == nil) != tt.ok || tt.ok && w != tt.w {
			t.Errorf("ParseSpec(%q) = %d, %v", tt.spec, w, err)
		}
	}
	watch := s.Watch()
	if _, removed := s.Update([]string{"a:1"}); len(removed) != 1 {
		t.Fatalf("removed %v", removed)
	}
	select {
	case <-watch:
	default:
		t.Fatal("removing a target did not wake the watchers")
	}
}

// A dial that began before the last successful one is stale: it counts as
// a failure but does not mark the target down (it raced the target's
// return). One that began after does.
func TestDialFailedBeforeLastSuccess(t *testing.T) {
	s := NewSet([]string{"a:1"})
	tg := s.Targets()[0]
	before := time.Now().Add(-time.Millisecond) // strictly before, on a coarse clock too
	tg.MarkUp()
	if tg.DialFailed(errors.New("refused"), before) || !tg.Up() || tg.Stats().Failures != 1 {
		t.Fatalf("a stale dial failure marked the target down: up %v, %+v", tg.Up(), tg.Stats())
	}
	up := s.WatchUp()
	if !tg.DialFailed(errors.New("refused"), time.Now()) || tg.Up() {
		t.Fatal("a fresh dial failure did not mark the target down")
	}
	select {
	case <-up:
	default:
		t.Fatal("WatchUp was not woken by the flip")
	}
}

// A target that failed its checks when it left the set comes back failing
// them (until its checks pass again), not up; one that passed comes back
// up, and ForgetVerdicts (checks turned off) forgets.
func TestReturningTargetKeepsItsFailedChecks(t *testing.T) {
	s := NewSet([]string{"10.0.0.1:1", "10.0.0.2:1"})
	bad, _ := s.Lookup("10.0.0.1:1")
	failed := CheckResult{At: time.Now(), Err: errors.New("503")}
	bad.SetChecked(failed, false, true)
	s.Update(nil)
	if gone := s.Prune(); len(gone) != 2 {
		t.Fatalf("pruned %d, want 2", len(gone))
	}
	s.Update([]string{"10.0.0.1:1", "10.0.0.2:1"})
	back, _ := s.Lookup("10.0.0.1:1")
	good, _ := s.Lookup("10.0.0.2:1")
	if back == bad || !back.FailsChecks() || back.LastCheck().Err == nil || back.Accepts() {
		t.Fatalf("the failing target came back: fails %v, last %+v, accepts %v", back.FailsChecks(), back.LastCheck(), back.Accepts())
	}
	if good.FailsChecks() || !good.Accepts() {
		t.Fatal("the good target came back down")
	}
	back.SetChecked(CheckResult{At: time.Now()}, true, true)
	if !back.Accepts() {
		t.Fatal("passing checks do not bring it up")
	}
	back.SetChecked(failed, false, true)
	s.Update([]string{"10.0.0.2:1"})
	s.Prune()
	s.ForgetVerdicts()
	s.Update([]string{"10.0.0.1:1", "10.0.0.2:1"})
	if again, _ := s.Lookup("10.0.0.1:1"); again.FailsChecks() {
		t.Fatal("a forgotten verdict came back")
	}
}
