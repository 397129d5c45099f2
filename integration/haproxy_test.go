package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ndlb/ndlb/internal/linetest"
)

// HAProxy, a front balancer nobody here wrote, sends PROXY headers to
// ndlb (--accept-proxy): v1, and v2 with TLVs (a CRC32c checksum, a unique
// id, the authority). ndlb takes the client's address from each: in
// passthrough it sends it on in its own header (--send-proxy), and the
// bytes after the header go through untouched; in NDJSON mode the lines
// arrive whole and the client's address is the one logged.
func TestBehindHAProxy(t *testing.T) {
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatal("haproxy is not installed (scripts/test.sh installs it)")
	}
	// The target of passthrough: reads ndlb's header, then echoes.
	type seen struct {
		src  string
		echo error
	}
	seenc := make(chan seen, 8)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				r := bufio.NewReader(c)
				h, err := proxyproto.Read(r)
				if err != nil {
					seenc <- seen{echo: err}
					return
				}
				_, err = io.Copy(c, r)
				seenc <- seen{src: h.SourceAddr.String(), echo: err}
			})
		}
	})
	pass := startPassthrough(t, []string{ln.Addr().String()}, "--accept-proxy", "--send-proxy", "v2")
	w := newWorld(t, 2)
	lines := startNDLB(t, "--target", w.targets(), "--accept-proxy")

	dir := t.TempDir()
	v1, v2, nd := freePort(t), freePort(t), freePort(t)
	conf := fmt.Sprintf(`global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend v1
  bind 127.0.0.1:%s
  default_backend v1
backend v1
  server ndlb %s send-proxy
frontend v2
  bind 127.0.0.1:%s
  unique-id-format %%{+X}o\ %%ci:%%cp_%%fi:%%fp_%%Ts_%%rt
  default_backend v2
backend v2
  server ndlb %s send-proxy-v2 proxy-v2-options crc32c,unique-id,authority
frontend nd
  bind 127.0.0.1:%s
  default_backend nd
backend nd
  server ndlb %s send-proxy-v2
`, v1, pass.addr, v2, pass.addr, nd, lines.addr)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	stop := startPeer(t, "haproxy", exec.Command(haproxy, "-db", "-f", path))
	// Clients come from 127.0.0.7, HAProxy from 127.0.0.1: the address
	// ndlb reports is the client's only if it read HAProxy's header.
	client := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 7)}, Timeout: 5 * time.Second}
	dialFront := func(port string) net.Conn { return dialPeer(t, client, "127.0.0.1:"+port) }

	for _, port := range []string{v1, v2} {
		c := dialFront(port)
		msg := []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nnot a header: the client's own bytes\n")
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != string(msg) {
			t.Fatalf("through HAProxy port %s: echo %q, %v", port, got, err)
		}
		s := <-seenc
		if s.echo != nil || s.src != c.LocalAddr().String() {
			t.Fatalf("through HAProxy port %s: the target saw %+v, want source %s", port, s, c.LocalAddr())
		}
	}

	const perClient = 2000
	c := dialFront(nd)
	if _, err := linetest.Send(c, 1, 0, perClient, 8<<10); err != nil {
		t.Fatal(err)
	}
	w.waitLines(perClient)
	c.Close()
	l := lines.waitLog("client disconnected", 20*time.Second)
	if l["client"] != c.LocalAddr().String() {
		t.Fatalf("NDJSON logged client %v, want %s", l["client"], c.LocalAddr())
	}
	stop()
	pass.stopOK()
	lines.stopOK()
	if r := w.check(map[uint32]uint32{1: perClient}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatalf("lines through HAProxy: %v", r)
	}
	w.checkLedger(lines, true)
	if n := pass.summary("proxy_rejected"); n != 0 {
		t.Fatalf("%d PROXY headers from HAProxy rejected", n)
	}
}
