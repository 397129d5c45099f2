package gopool

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunsEveryTaskAndCloses(t *testing.T) {
	p := New(4)
	var n atomic.Int32
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		p.Go(func() { n.Add(1); wg.Done() })
	}
	wg.Wait()
	if n.Load() != 1000 {
		t.Fatalf("%d tasks ran", n.Load())
	}
	if idle := p.idle.Load(); idle > 4 {
		t.Fatalf("%d idle goroutines, want at most 4", idle)
	}
	p.Close() // goleak checks that every goroutine is gone
}

func TestCloseWaitsForRunningTasks(t *testing.T) {
	p := New(1)
	release := make(chan struct{})
	started := make(chan struct{})
	p.Go(func() { close(started); <-release })
	<-started
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	// A Close that does not wait returns at once: give it 100 ms to show
	// it. A correct Close cannot return before release, however long this
	// takes.
	select {
	case <-closed:
		t.Fatal("Close returned while a task ran")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-closed
}

// Trim ends idle goroutines beyond keep; the pool keeps working after it.
func TestTrim(t *testing.T) {
	p := New(8)
	defer p.Close()
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 8 {
		wg.Add(1)
		p.Go(func() { <-release; wg.Done() })
	}
	close(release)
	wg.Wait()
	// Each goroutine counts itself idle just before it waits: wait for all.
	for deadline := time.Now().Add(10 * time.Second); p.idle.Load() < 8; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle goroutines, want 8", p.idle.Load())
		}
	}
	exited := 0
	for deadline := time.Now().Add(10 * time.Second); p.idle.Load() > 2; {
		exited += p.Trim(2)
		if time.Now().After(deadline) {
			t.Fatalf("%d idle goroutines after Trim(2)", p.idle.Load())
		}
	}
	if exited != 6 {
		t.Fatalf("Trim ended %d goroutines, want 6", exited)
	}
	done := make(chan struct{})
	p.Go(func() { close(done) })
	<-done
}
