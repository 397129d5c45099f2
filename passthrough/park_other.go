//go:build !linux

package passthrough

import "errors"

// parker is Linux only: elsewhere streams keep their goroutines.
type parker struct{}

func newParker() (*parker, error) { return nil, errors.New("parking idle streams needs Linux") }

func (p *parker) park(st *stream) bool { return false }
func (p *parker) ask(st *stream)       {}
func (p *parker) withdraw(st *stream)  { st.canSplice.Store(false) }
func (p *parker) Parked() int          { return 0 }
func (p *parker) Parks() uint64        { return 0 }
func (p *parker) Stop()                {}
