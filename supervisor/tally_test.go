package supervisor

import (
	"testing"

	"github.com/ndlb/ndlb/upstream"
)

// A replaced listener's instance: its target counts go on in the
// replacement's while both run and once the old one stopped; what no
// running instance has (a target that left, a listener removed) is
// forgotten.
func TestTallyCarriesTargetCounts(t *testing.T) {
	ty := newTally()
	inst := func(addrs ...string) *instance {
		return &instance{name: "logs", mode: fakeMode{}, srv: &fakeServer{name: "logs", set: upstream.NewSet(addrs)}}
	}
	old := inst("a:1", "gone:1")
	oldSet := old.srv.Set()
	oldSet.Targets()[0].Delivered(10, 100)
	oldSet.Targets()[1].Delivered(5, 50)
	ty.start(old)
	repl := inst("a:1")
	ty.start(repl)
	a := repl.srv.Set().Targets()[0]
	a.Delivered(1, 10)
	a.ConnOpened()
	oldSet.Targets()[0].ConnOpened()
	if st := ty.total(repl, a.Stats()); st.Lines != 11 || st.Bytes != 110 || st.Conns != 2 {
		t.Fatalf("both running: %+v", st)
	}
	ty.stop(old)
	ty.stop(old) // once only
	oldSet.Targets()[0].Delivered(100, 1000)
	if st := ty.total(repl, a.Stats()); st.Lines != 11 || st.Bytes != 110 || st.Conns != 1 {
		t.Fatalf("the old one stopped: %+v", st)
	}
	if _, ok := ty.base["logs"]["gone:1"]; ok {
		t.Error("a target no running instance has is kept")
	}
	ty.stop(repl)
	if len(ty.live) != 0 || len(ty.base) != 0 || len(ty.accepted) != 0 {
		t.Fatalf("a removed listener is kept: %v %v %v", ty.live, ty.base, ty.accepted)
	}
}
