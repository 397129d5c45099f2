package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/setup"
)

// listenerName names the one listener the flags configure.
const listenerName = "default"

// newAdmin makes the admin API server if p turns it on; it listens.
func newAdmin(p setup.Process, log *slog.Logger, listeners func() []admin.Listener, reloads func() admin.ReloadInfo,
	metrics http.Handler, listen func(string) (net.Listener, error)) (*admin.Server, error) {
	if p.Admin.Addr == "" {
		return nil, nil
	}
	cfg := p.Admin
	cfg.Logger, cfg.Listeners, cfg.Reloads, cfg.Metrics, cfg.Listen = log, listeners, reloads, metrics, listen
	adm, err := admin.New(cfg)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("admin API: %v", err), exitError)
	}
	return adm, nil
}

// runHealthcheck exits 0 when ndlb's admin API answers /healthz (with
// --admin, or admin in the config file), or else when every listener (of
// --config, or of --addr/--port) accepts a TCP connection.
func runHealthcheck(c *cli.Context) error {
	adminAddr, addrs := c.String("admin"), []string{}
	if path := c.String("config"); path != "" && adminAddr == "" {
		proc, srcs, err := loadFile(c, path)
		if err != nil {
			return err
		}
		adminAddr = proc.c.String("admin")
		for _, in := range srcs {
			addr, err := setup.ListenAddr(in.c)
			if err != nil {
				return in.wrap(err)
			}
			addrs = append(addrs, addr)
		}
	} else if adminAddr == "" {
		addr, err := setup.ListenAddr(c)
		if err != nil {
			return err
		}
		addrs = append(addrs, addr)
	}
	if adminAddr != "" {
		url, err := admin.Probe(adminAddr)
		if errors.Is(err, admin.ErrProbeAddr) {
			return usageError("invalid value %q for --admin: want HOST:PORT", adminAddr)
		}
		if err != nil {
			return cli.Exit(fmt.Sprintf("unhealthy: %v", err), exitError)
		}
		fmt.Fprintln(c.App.Writer, "ok:", url)
		return nil
	}
	for _, addr := range addrs {
		host, port, _ := net.SplitHostPort(addr)
		if port == "0" {
			return usageError("a listener on port 0 cannot be found: set its port, or --admin")
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return cli.Exit(fmt.Sprintf("unhealthy: %v", err), exitError)
		}
		conn.Close()
		fmt.Fprintln(c.App.Writer, "ok:", addr, "accepts connections")
	}
	return nil
}
