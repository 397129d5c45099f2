package integration

import "os/exec"

// command returns a command for a test binary.
func command(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }

// cmdStatic runs the static (Dockerfile-style) build: no race detector, so
// its memory use is what production sees.
func cmdStatic(args ...string) *exec.Cmd { return exec.Command(staticBin, args...) }
