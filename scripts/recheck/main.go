// Command recheck runs the mutants that gremlins v0.6.0 reports as NOT
// COVERED although the tests run their line, and reports whether the tests
// kill them.
//
// gremlins reads Go's coverage profile, whose blocks leave out the
// conditions of a tagless switch and constant declarations, so it marks
// every mutant there as not covered without running it
// (https://github.com/go-gremlins/gremlins/issues/298). recheck applies each
// such mutant through `go test -overlay` (the tree is never modified), runs
// the package's tests and prints the verdict in gremlins' format:
//
//	go run ./scripts/recheck -pkg ./framer < gremlins-output.txt
//
// It is a development tool for scripts/mutation.sh, not part of ndlb.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var notCovered = regexp.MustCompile(`NOT COVERED (\w+) at (\S+):(\d+):(\d+)`)

// replacements maps a mutator and the operator at the mutant's position to
// what gremlins puts there.
var replacements = map[string]map[string]string{
	"CONDITIONALS_BOUNDARY": {"<": "<=", "<=": "<", ">": ">=", ">=": ">"},
	"CONDITIONALS_NEGATION": {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"},
	"ARITHMETIC_BASE":       {"+": "-", "-": "+", "*": "/", "/": "*", "%": "*"},
	"INVERT_NEGATIVES":      {"-": "+"},
	"INCREMENT_DECREMENT":   {"++": "--", "--": "++"},
	"INVERT_LOGICAL":        {"&&": "||", "||": "&&"},
}

// operators, longest first, so that "<=" is not read as "<".
var operators = []string{"<=", ">=", "==", "!=", "&&", "||", "++", "--", "<", ">", "+", "-", "*", "/", "%"}

func main() {
	pkg := flag.String("pkg", "", "package directory, e.g. ./framer")
	timeout := flag.Duration("timeout", 0, "per-mutant test timeout (default: 5× a clean run, at least 30s)")
	flag.Parse()
	if *pkg == "" {
		fmt.Fprintln(os.Stderr, "recheck: -pkg is required")
		os.Exit(2)
	}
	dir, err := filepath.Abs(*pkg)
	if err != nil {
		fatal(err)
	}
	if *timeout == 0 {
		start := time.Now()
		if out, err := goTest(context.Background(), *pkg, ""); err != nil {
			fatal(fmt.Errorf("the tests fail without mutants:\n%s", out))
		}
		*timeout = max(5*time.Since(start), 30*time.Second)
	}
	tmp, err := os.MkdirTemp("", "recheck")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(tmp)

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		m := notCovered.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		kind, file := m[1], m[2]
		line, _ := strconv.Atoi(m[3])
		col, _ := strconv.Atoi(m[4])
		status := run(*pkg, dir, tmp, kind, file, line, col, *timeout)
		fmt.Printf("%12s %s at %s:%d:%d (rechecked)\n", status, kind, file, line, col)
	}
	if err := sc.Err(); err != nil {
		fatal(err)
	}
}

// run applies one mutant and returns its status: KILLED, LIVED, TIMED OUT,
// NOT VIABLE (it does not compile) or NOT COVERED (recheck cannot apply it).
func run(pkg, dir, tmp, kind, file string, line, col int, timeout time.Duration) string {
	path := filepath.Join(dir, file)
	src, err := os.ReadFile(path)
	if err != nil {
		fatal(err)
	}
	mutated, ok := mutate(src, kind, line, col)
	if !ok {
		return "NOT COVERED"
	}
	repl := filepath.Join(tmp, fmt.Sprintf("%s.%d.%d.go", filepath.Base(file), line, col))
	if err := os.WriteFile(repl, mutated, 0o644); err != nil {
		fatal(err)
	}
	overlay := filepath.Join(tmp, "overlay.json")
	js, _ := json.Marshal(map[string]map[string]string{"Replace": {path: repl}})
	if err := os.WriteFile(overlay, js, 0o644); err != nil {
		fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := goTest(ctx, pkg, overlay)
	switch {
	case err == nil:
		return "LIVED"
	case ctx.Err() != nil || strings.Contains(out, "panic: test timed out"):
		return "TIMED OUT"
	case strings.Contains(out, "[build failed]") || strings.Contains(out, "[setup failed]"):
		return "NOT VIABLE"
	}
	return "KILLED"
}

// mutate replaces the operator at line:col (1-based, in bytes) of src.
func mutate(src []byte, kind string, line, col int) ([]byte, bool) {
	off := 0
	for l := 1; l < line; l++ {
		i := strings.IndexByte(string(src[off:]), '\n')
		if i < 0 {
			return nil, false
		}
		off += i + 1
	}
	off += col - 1
	if off >= len(src) {
		return nil, false
	}
	for _, op := range operators {
		if !strings.HasPrefix(string(src[off:]), op) {
			continue
		}
		to, ok := replacements[kind][op]
		if !ok {
			return nil, false
		}
		out := append([]byte{}, src[:off]...)
		out = append(out, to...)
		return append(out, src[off+len(op):]...), true
	}
	return nil, false
}

// goTest runs the package's tests, with an overlay when one is given.
func goTest(ctx context.Context, pkg, overlay string) (string, error) {
	args := []string{"test", "-count=1", "-failfast"}
	if overlay != "" {
		args = append(args, "-overlay", overlay)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) && ctx.Err() == nil {
		fatal(err)
	}
	return string(out), err
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "recheck:", err)
	os.Exit(1)
}
