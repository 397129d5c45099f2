package upstream

import (
	"errors"
	"testing"
	"time"
)

func TestFailoverOrder(t *testing.T) {
	s := NewSet([]string{"a:1", "b:1", "c:1", "d:1"})
	a, b, c, d := s.targets[0], s.targets[1], s.targets[2], s.targets[3]
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
