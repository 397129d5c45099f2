package supervisor

import (
	"testing"

	"github.com/ndlb/ndlb/upstream"
)

// A replaced listener's set: its target counts go on in the replacement's
// while both run and once the old one stopped; what no running set has
// (a target that left, a listener removed) is forgotten.
func TestTallyCarriesTargetCounts(t *testing.T) {
	ty := newTally()
	old := upstream.NewSet([]string{"a:1", "gone:1"})
	old.Targets()[0].Delivered(10, 100)
	old.Targets()[1].Delivered(5, 50)
	ty.start("logs", old)
	repl := upstream.NewSet([]string{"a:1"})
	ty.start("logs", repl)
	a := repl.Targets()[0]
	a.Delivered(1, 10)
	a.ConnOpened()
	old.Targets()[0].ConnOpened()
	if st := ty.total("logs", repl, a.Stats()); st.Lines != 11 || st.Bytes != 110 || st.Conns != 2 {
		t.Fatalf("both running: %+v", st)
	}
	ty.stop("logs", old)
	ty.stop("logs", old) // once only
	old.Targets()[0].Delivered(100, 1000)
	if st := ty.total("logs", repl, a.Stats()); st.Lines != 11 || st.Bytes != 110 || st.Conns != 1 {
		t.Fatalf("the old one stopped: %+v", st)
	}
	if _, ok := ty.base["logs"]["gone:1"]; ok {
		t.Error("a target no running set has is kept")
	}
	ty.stop("logs", repl)
	if len(ty.live) != 0 || len(ty.base) != 0 {
		t.Fatalf("a removed listener is kept: %v %v", ty.live, ty.base)
	}
}
