package integration

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/ndlb/ndlb/internal/linetest"
)

// The container image runs the static binary alone in an empty root as a
// non-root user, configured only by NDLB_* variables. No Docker engine runs
// here, so this test builds the binary the way the Dockerfile does and runs
// it that way: chrooted into an empty directory as uid 65532 when the test
// runs as root, else from an empty directory with an empty environment.
func TestContainerStyleRun(t *testing.T) {
	f, err := elf.Open(staticBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Fatal("the Dockerfile build is dynamically linked; it cannot run from scratch or distroless/static")
		}
	}
	f.Close()

	root := t.TempDir()
	data, err := os.ReadFile(staticBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "ndlb"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, 2)
	port := freePort(t)
	env := []string{"NDLB_TARGET=" + w.targets(), "NDLB_ADDR=127.0.0.1", "NDLB_PORT=" + port, "NDLB_LOG_FORMAT=json", "NDLB_CONNECTIONS=2"}
	image := func(args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(root, "ndlb"), args...)
		cmd.Env, cmd.Dir = env, root
		if os.Geteuid() == 0 {
			cmd.Path, cmd.Dir = "/ndlb", "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
		}
		return cmd
	}
	p := startCmd(t, image())
	if out, err := image("healthcheck").CombinedOutput(); err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("healthcheck: %v %s", err, out)
	}
	sent, err := clients(2, 10000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = linetest.Send(conn, c, 0, 10000, 8<<10)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if out, err := image("healthcheck").CombinedOutput(); err == nil {
		t.Fatalf("healthcheck passed with ndlb stopped: %s", out)
	}
}

// The Dockerfile builds what TestContainerStyleRun runs: the same static
// build, a non-root user, the port, the entrypoint and the healthcheck.
func TestDockerfileMatchesTheTestedBuild(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{
		"CGO_ENABLED=0 go build -trimpath -ldflags=\"-s -w",
		"FROM gcr.io/distroless/static",
		"USER 65532:65532",
		"EXPOSE 9000",
		`ENTRYPOINT ["/ndlb"]`,
		`HEALTHCHECK`, `CMD ["/ndlb", "healthcheck"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The build image is the Go that go.mod names: an older one would
	// fetch that toolchain before building.
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
	if goVersion == nil || !strings.Contains(df, "FROM golang:"+string(goVersion[1])+" ") {
		t.Errorf("the Dockerfile's build image is not golang:%s, go.mod's go directive", goVersion[1])
	}
}
