package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/setup"
)

// listenerName names the one listener the flags configure.
const listenerName = "default"

// newAdmin makes the admin API server if --admin is set: it listens, and a
// bad address or token file is reported before any traffic.
func newAdmin(c setup.Values, log *slog.Logger, listeners func() []admin.Listener, reloads func() admin.ReloadInfo,
	metrics http.Handler, listen func(string) (net.Listener, error)) (*admin.Server, error) {
	addr := c.String("admin")
	if addr == "" {
		if c.String("admin-token-file") != "" {
			return nil, usageError("--admin-token-file needs --admin")
		}
		return nil, nil
	}
	adm, err := admin.New(admin.Config{
		Addr: addr, TokenFile: c.String("admin-token-file"), Logger: log, Listeners: listeners, Reloads: reloads, Metrics: metrics,
		Listen: listen,
	})
	if err != nil {
		return nil, usageError("invalid --admin or --admin-token-file: %v", err)
	}
	return adm, nil
}

// runHealthcheck exits 0 when ndlb's admin API answers /healthz (with
// --admin), or else when ndlb accepts a TCP connection on its port.
func runHealthcheck(c *cli.Context) error {
	if a := c.String("admin"); a != "" {
		url, err := admin.Probe(a)
		if errors.Is(err, admin.ErrProbeAddr) {
			return usageError("invalid value %q for --admin: want HOST:PORT", a)
		}
		if err != nil {
			return cli.Exit(fmt.Sprintf("unhealthy: %v", err), exitError)
		}
		fmt.Fprintln(c.App.Writer, "ok:", url)
		return nil
	}
	port := c.Int("port")
	if port < 1 || port > 65535 {
		return usageError("invalid value %d for --port: want 1..65535", port)
	}
	host := c.String("addr")
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return cli.Exit(fmt.Sprintf("unhealthy: %v", err), exitError)
	}
	conn.Close()
	fmt.Fprintln(c.App.Writer, "ok:", addr, "accepts connections")
	return nil
}
