package invalid

import (
	"errors"
	"testing"
)

var (
	errPkg   = errors.New("pkg: invalid config")
	errMid   = errors.New("mid: invalid config")
	errOuter = errors.New("outer: invalid config")
)

func TestFieldAndIn(t *testing.T) {
	err := Field(errPkg, "Connections", "connections %d outside 1..%d", 0, 1024)
	if err.Error() != "pkg: invalid config: connections 0 outside 1..1024" || !errors.Is(err, errPkg) {
		t.Fatalf("Field: %v", err)
	}
	nested := In(errOuter, "Outer", In(errMid, "Pool", err))
	var e *Error
	if !errors.As(nested, &e) || e.Field != "Outer.Pool.Connections" || nested.Error() != err.Error() {
		t.Fatalf("In: %#v", nested)
	}
	for _, s := range []error{errPkg, errMid, errOuter} {
		if !errors.Is(nested, s) {
			t.Errorf("the nested error does not wrap %v", s)
		}
	}
	if errors.Is(err, errMid) {
		t.Error("In changed the inner error's sentinels")
	}
	if err.(*Error).Field != "Connections" {
		t.Fatal("In changed the inner error")
	}
	plain := errors.New("other")
	if In(errMid, "Pool", plain) != plain || In(errMid, "Pool", nil) != nil {
		t.Fatal("In changed an error that is not an *Error")
	}
	if (&Error{Msg: "bare"}).Error() != "bare" || len((&Error{}).Unwrap()) != 0 {
		t.Fatal("an Error without a sentinel")
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 bytes", 1: "1 byte", 1000: "1000 bytes", 1024: "1KiB", 1536: "1536 bytes", 64 << 10: "64KiB",
		2 << 20: "2MiB", 1 << 30: "1GiB", 3 << 40: "3TiB", -2048: "-2KiB",
	} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
