package pool

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/ksuid"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/upstream"
)

// Every upstream connection of the default dialer has TCP_USER_TIMEOUT and
// keepalive set, so a black-holed target is found in seconds.
func TestUpstreamSocketOptions(t *testing.T) {
	cfg := testConfig()
	cfg.UserTimeout = 7 * time.Second
	cfg.KeepAlive = 11 * time.Second
	w := newWorld(t, 1, cfg)
	c, err := w.p.dialConn(context.Background(), &upstream.Target{Addr: w.sinks[0].Addr()}, "home", ksuid.New(), w.p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var ut, ka, idle int
	var serr error
	err = c.raw.Control(func(fd uintptr) {
		if ut, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); serr != nil {
			return
		}
		if ka, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); serr != nil {
			return
		}
		idle, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	})
	if err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if ut != 7000 || ka != 1 || idle != 11 {
		t.Fatalf("TCP_USER_TIMEOUT %d ms, SO_KEEPALIVE %d, TCP_KEEPIDLE %d s; want 7000, 1, 11", ut, ka, idle)
	}
}
