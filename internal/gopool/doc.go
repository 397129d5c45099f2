// Package gopool reuses goroutines: a finished task's goroutine waits for
// the next one instead of exiting, up to a number of idle goroutines. A
// reused goroutine keeps the stack it grew, so a task that needs a deep
// stack (a dial, a TLS handshake, a copy loop) does not pay to grow one
// each time; at thousands of connections a second, stack growth was 6% of
// ndlb's CPU.
//
//	p := gopool.New(32)
//	p.Go(task)
//	p.Trim(0) // all quiet: idle goroutines exit, their stacks can be freed
//	p.Close() // idle goroutines exit; running tasks finish on their own
package gopool
