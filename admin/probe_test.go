package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if url, err := Probe(addr, false); err != nil || url != srv.URL+"/healthz" {
		t.Fatalf("Probe(%s) = %q, %v", addr, url, err)
	}
	_, port, _ := strings.Cut(addr, ":")
	if _, err := Probe("0.0.0.0:"+port, false); err != nil {
		t.Fatalf("0.0.0.0 is not probed on loopback: %v", err)
	}
	status = http.StatusServiceUnavailable
	if _, err := Probe(addr, false); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("a 503 answer: %v", err)
	}
	if _, err := Probe("nocolon", false); !errors.Is(err, ErrProbeAddr) {
		t.Fatalf("a bad address: %v", err)
	}
	srv.Close()
	if _, err := Probe(addr, false); err == nil {
		t.Fatal("nobody listening, yet healthy")
	}
}
