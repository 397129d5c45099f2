package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
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
// --config, or of --addr/--port) accepts a TCP connection or, for a UDP
// one, holds its port (a datagram proves nothing: UDP has no handshake).
// It exits 1 otherwise, whatever the reason: 2 means something else to
// Docker.
func runHealthcheck(c *cli.Context) error {
	if err := healthcheck(c); err != nil {
		return cli.Exit("unhealthy: "+strings.TrimPrefix(err.Error(), "ndlb: "), exitError)
	}
	return nil
}

func healthcheck(c *cli.Context) error {
	adminAddr, addrs, udp := flagOrParent(c, "admin"), []string{}, map[int]bool{}
	adminTLS := c.String("admin-tls-cert") != ""
	if path := flagOrParent(c, "config"); path != "" && adminAddr == "" {
		proc, srcs, err := setup.Load(path, c)
		if err != nil {
			return err
		}
		adminAddr, adminTLS = proc.Values.String("admin"), proc.Values.String("admin-tls-cert") != ""
		for i, in := range srcs {
			addr, err := setup.ListenAddr(in.Values)
			if err != nil {
				return in.Place(err)
			}
			if udp[i], err = setup.UDP(in.Values); err != nil {
				return in.Place(err)
			}
			addrs = append(addrs, addr)
		}
	} else if adminAddr == "" {
		port, _ := strconv.Atoi(flagOrParent(c, "port"))
		addrs = append(addrs, net.JoinHostPort(flagOrParent(c, "addr"), strconv.Itoa(port)))
		udp[0] = flagOrParent(c, "udp") == "true" || flagOrParent(c, "proto") == "udp"
	}
	if adminAddr != "" {
		url, err := admin.Probe(adminAddr, adminTLS)
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, "ok:", url)
		return nil
	}
	for i, addr := range addrs {
		host, port, _ := net.SplitHostPort(addr)
		if port == "0" {
			return fmt.Errorf("listener %d listens on port 0, which cannot be found: give it a port, or set admin", i+1)
		}
		if ip := net.ParseIP(host); !udp[i] && (host == "" || ip != nil && ip.IsUnspecified()) {
			addrs[i] = net.JoinHostPort("127.0.0.1", port)
		}
	}
	for i, addr := range addrs {
		if udp[i] {
			if err := udpHeld(addr); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, "ok:", addr, "(udp) is held")
			continue
		}
		conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		conn.Close()
		fmt.Fprintln(c.App.Writer, "ok:", addr, "accepts connections")
	}
	return nil
}

// udpHeld reports an error unless some process holds the UDP port of
// addr: binding it must fail with "address in use".
func udpHeld(addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err == nil {
		pc.Close()
		return fmt.Errorf("nothing listens on udp %s", addr)
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil
	}
	return err
}

// flagOrParent is the healthcheck flag name as set on the command, or
// before it (ndlb --config F healthcheck), or by its variable.
func flagOrParent(c *cli.Context, name string) string {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet(name) {
			return fmt.Sprint(ctx.Value(name))
		}
	}
	return fmt.Sprint(c.Value(name))
}
