package supervisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ndlb/ndlb/internal/regfile"
	"github.com/ndlb/ndlb/upstream"
)

// savedState is what Config.StateFile holds: by listener and target
// address, an operator's drain or disable and a failed health verdict.
type savedState struct {
	Version   int                               `json:"version"`
	Listeners map[string]map[string]savedTarget `json:"listeners"`
}

// savedTarget is one target's kept state; the zero value is not kept.
type savedTarget struct {
	Admin string `json:"admin,omitempty"` // "draining" or "disabled"
	// FailsChecks is the last health verdict: failed. The target is not
	// used again until its checks pass (rise in a row).
	FailsChecks bool `json:"fails_checks,omitempty"`
}

const stateVersion = 1

// errRestored is the last check's error of a target restored as failing.
var errRestored = fmt.Errorf("failed its health checks before the restart (state file)")

// pendingFor is how long entries of the state file whose targets are not
// in their listener's set yet (found by DNS later) wait for them.
const pendingFor = 10 * time.Minute

// stateNow is the state to keep, of every running listener, with the
// entries still waiting for their targets.
func (s *Supervisor) stateNow() savedState {
	st := savedState{Version: stateVersion, Listeners: map[string]map[string]savedTarget{}}
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	for _, in := range s.snapshot() {
		for addr, k := range s.pending[in.name] {
			if st.Listeners[in.name] == nil {
				st.Listeners[in.name] = map[string]savedTarget{}
			}
			st.Listeners[in.name][addr] = k.savedTarget
		}
		for _, t := range in.srv.Set().Targets() {
			var k savedTarget
			switch t.State() {
			case upstream.StateDraining:
				k.Admin = "draining"
			case upstream.StateDisabled:
				k.Admin = "disabled"
			}
			if t.Removed() {
				k.Admin = "" // it drains because it left the configuration
			}
			k.FailsChecks = t.FailsChecks()
			if k != (savedTarget{}) {
				if st.Listeners[in.name] == nil {
					st.Listeners[in.name] = map[string]savedTarget{}
				}
				st.Listeners[in.name][t.Addr] = k
			}
		}
	}
	return st
}

// pendingTarget is a state-file entry waiting for its target; checks
// says whether its listener runs health checks (read when it was
// restored, on the goroutine that owns the spec).
type pendingTarget struct {
	savedTarget
	checks bool
}

// maxStateBytes bounds the state file read: it is far smaller.
const maxStateBytes = 16 << 20

// restoreState applies the state file to the listeners: entries for
// listeners no longer configured are ignored, and those for targets not in
// their set yet wait for them (pendingFor). A file that cannot be parsed
// leaves every target as configured, says so, and is kept aside as
// PATH.corrupt rather than overwritten. A path that cannot be read (not
// a regular file, no permission, an I/O error) is left as it is and not
// written this run: the state is not kept.
func (s *Supervisor) restoreState() {
	b, err := regfile.Read(s.cfg.StateFile, maxStateBytes)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		s.stateOff.Store(true)
		s.log.Error("state file cannot be read; it is left as it is, every target starts as configured, and drains, disables and failed checks are not kept this run",
			"path", s.cfg.StateFile, "err", err)
		return
	}
	var st savedState
	if len(b) > maxStateBytes {
		err = fmt.Errorf("over %d MiB: is this the state file?", maxStateBytes>>20)
	} else {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		err = dec.Decode(&st)
		if err == nil && st.Version != stateVersion {
			err = fmt.Errorf("version %d, want %d", st.Version, stateVersion)
		}
	}
	if err != nil {
		aside := s.cfg.StateFile + ".corrupt"
		_ = os.Rename(s.cfg.StateFile, aside)
		s.log.Error("state file cannot be used; starting with every target as configured", "path", s.cfg.StateFile, "kept_as", aside, "err", err)
		return
	}
	s.stateMu.Lock()
	s.pending, s.pendingUntil = map[string]map[string]pendingTarget{}, time.Now().Add(pendingFor)
	for _, in := range s.snapshot() {
		for addr, k := range st.Listeners[in.name] {
			if s.pending[in.name] == nil {
				s.pending[in.name] = map[string]pendingTarget{}
			}
			s.pending[in.name][addr] = pendingTarget{savedTarget: k, checks: in.spec.Health != nil}
		}
	}
	s.savedState = b // what the file holds: the next change rewrites it
	s.stateMu.Unlock()
	s.applyPending()
}

// applyPending gives the state file's entries to their targets once they
// are in their listener's set; after pendingFor, the rest are forgotten.
func (s *Supervisor) applyPending() {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if len(s.pending) == 0 {
		return
	}
	if time.Now().After(s.pendingUntil) {
		s.pending = nil
		return
	}
	for _, in := range s.snapshot() {
		for addr, k := range s.pending[in.name] {
			t, err := in.srv.Set().Lookup(addr)
			if err != nil || t.Removed() {
				continue // not (yet) configured
			}
			apply(t, k.savedTarget, k.checks)
			in.log.Info("target state restored", "target", addr, "state", t.State().String(), "path", s.cfg.StateFile)
			delete(s.pending[in.name], addr)
		}
	}
}

// apply gives t the kept state k; a failed verdict only where checks run,
// which bring the target back when they pass.
func apply(t *upstream.Target, k savedTarget, checks bool) {
	switch k.Admin {
	case "draining":
		t.Drain()
	case "disabled":
		t.Disable()
	}
	if k.FailsChecks && checks {
		t.SetChecked(upstream.CheckResult{At: time.Now(), Err: errRestored}, false, true)
	}
}

// carryState gives the targets of a replacing listener's set the
// operators' drains and disables and, when the replacement runs checks
// (which bring a target back), the failed verdicts of the set it
// replaces, by address.
func carryState(from, to *upstream.Set, checks bool) {
	for _, t := range from.Targets() {
		if t.Removed() {
			continue
		}
		nt, err := to.Lookup(t.Addr)
		if err != nil {
			continue
		}
		switch t.State() {
		case upstream.StateDraining:
			nt.Drain()
		case upstream.StateDisabled:
			nt.Disable()
		}
		if t.FailsChecks() && checks {
			nt.SetChecked(t.LastCheck(), false, true)
		}
	}
}

// saveState writes the state file when the state changed since the last
// write: to a temporary file, synced, then renamed over it, so that a crash
// leaves the old file or the new one, never a torn one.
func (s *Supervisor) saveState() {
	if s.stateHanded.Load() {
		return // a newer process has it, and may have changed it since
	}
	if s.stateOff.Load() {
		// It could not be read at start: not overwritten. Say so
		// while there is something it would have kept.
		if len(s.stateNow().Listeners) > 0 {
			s.stateLog.Do(func() {
				s.log.Error("state file not written: it could not be read at start; drains, disables and failed checks are not kept across a restart",
					"path", s.cfg.StateFile)
			})
		}
		return
	}
	s.applyPending()
	b, err := json.MarshalIndent(s.stateNow(), "", "  ")
	b = append(b, '\n')
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	if err != nil || bytes.Equal(b, s.savedState) || s.stateHanded.Load() {
		return
	}
	if err := writeAtomic(s.cfg.StateFile, b); err != nil {
		s.stateLog.Do(func() { s.log.Error("cannot write the state file", "path", s.cfg.StateFile, "err", err) })
		return
	}
	s.savedState = b
}

func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after the rename, there is nothing to remove
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
