package integration

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// scripts/release.sh builds static binaries for linux/amd64 and arm64, a
// .deb of each with the systemd unit, and SHA256SUMS; the same commit and
// version give the same bytes.
func TestReleaseBuild(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (scripts/test.sh installs it on Debian)")
	}
	release := func(dir string) {
		cmd := exec.Command("bash", "../scripts/release.sh", "v1.2.3-rc.1", dir)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1780000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("release.sh: %v\n%s", err, out)
		}
	}
	a, b := t.TempDir(), t.TempDir()
	release(a)
	release(b)
	sums, _ := os.ReadFile(filepath.Join(a, "SHA256SUMS"))
	if again, _ := os.ReadFile(filepath.Join(b, "SHA256SUMS")); string(sums) != string(again) || strings.Count(string(sums), "\n") != 4 {
		t.Fatalf("two builds differ, or not four artefacts:\n%s\n%s", sums, again)
	}
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = a
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}
	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		deb := filepath.Join(a, "ndlb_1.2.3~rc.1_"+arch+".deb") // ~: before 1.2.3 for dpkg
		fields, err := exec.Command("dpkg-deb", "-f", deb, "Package", "Version", "Architecture").Output()
		if err != nil || string(fields) != "Package: ndlb\nVersion: 1.2.3~rc.1\nArchitecture: "+arch+"\n" {
			t.Fatalf("%s: %v %q", deb, err, fields)
		}
		root := t.TempDir()
		if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v %s", err, out)
		}
		unit, err := os.ReadFile(filepath.Join(root, "lib/systemd/system/ndlb.service"))
		if err != nil || !strings.Contains(string(unit), "ExecStart=/usr/bin/ndlb ") {
			t.Fatalf("the unit in %s: %v", deb, err)
		}
		if _, err := os.Stat(filepath.Join(root, "usr/share/doc/ndlb/ndlb.toml.example")); err != nil {
			t.Fatal(err)
		}
		binary := filepath.Join(root, "usr/bin/ndlb")
		f, err := elf.Open(binary)
		if err != nil {
			t.Fatal(err)
		}
		static := true
		for _, p := range f.Progs {
			static = static && p.Type != elf.PT_INTERP
		}
		if f.Machine != machine || !static {
			t.Errorf("%s: machine %v, static %v", binary, f.Machine, static)
		}
		f.Close()
		if arch == "amd64" {
			if out, err := exec.Command(binary, "version").Output(); err != nil || string(out) != "ndlb 1.2.3-rc.1\n" {
				t.Errorf("ndlb version: %q %v", out, err)
			}
		}
	}
	// The example config that the .deb ships passes check-config.
	if out, err := exec.Command(bin, "check-config", "../deploy/ndlb.toml.example").CombinedOutput(); err != nil {
		t.Errorf("check-config of the example: %v %s", err, out)
	}
}
