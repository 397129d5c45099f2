package setup

import (
	"log/slog"
	"strings"
	"time"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/tlsutil"
)

// Process is the process-wide settings, checked.
type Process struct {
	LogLevel  slog.Level
	LogFormat string // "text" or "json"
	// Admin is the admin API's address and token file; Addr is "" when
	// the API is off. The caller fills in the rest.
	Admin          admin.Config
	PIDFile        string
	StateFile      string
	UpgradeTimeout time.Duration
}

// ProcessOf checks the process-wide settings in c. A bad value is a
// *settings.Error naming the setting.
func ProcessOf(c Values) (Process, error) {
	p := Process{LogFormat: c.String("log-format"), PIDFile: c.String("pid-file"), StateFile: c.String("state-file"), UpgradeTimeout: c.Duration("upgrade-timeout"),
		Admin: admin.Config{Addr: c.String("admin"), TokenFile: c.String("admin-token-file"), TokenForReads: c.Bool("admin-token-for-reads"),
			Hosts: splitList(c.StringSlice("admin-hosts"))}}
	if err := p.LogLevel.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return p, settings.Errorf("log-level", "invalid value %q for --log-level: want debug, info, warn or error", c.String("log-level"))
	}
	if p.LogFormat != "text" && p.LogFormat != "json" {
		return p, settings.Errorf("log-format", "invalid value %q for --log-format: want text or json", p.LogFormat)
	}
	if p.UpgradeTimeout <= 0 {
		return p, settings.Errorf("upgrade-timeout", "invalid value %s for --upgrade-timeout: must be positive", p.UpgradeTimeout)
	}
	if p.Admin.Addr == "" {
		for _, n := range []string{"admin-token-file", "admin-token-for-reads", "admin-hosts", "admin-tls-cert", "admin-tls-key"} {
			if c.IsSet(n) {
				return p, settings.Errorf(n, "--%s needs --admin", n)
			}
		}
		return p, nil
	}
	if p.Admin.TokenForReads && p.Admin.TokenFile == "" {
		return p, settings.Errorf("admin-token-for-reads", "--admin-token-for-reads needs --admin-token-file")
	}
	cert, key := c.String("admin-tls-cert"), c.String("admin-tls-key")
	if (cert == "") != (key == "") {
		return p, settings.Errorf("admin-tls-cert", "--admin-tls-cert and --admin-tls-key go together")
	}
	if cert != "" {
		var err error
		onErr := func(err error) {
			slog.Error("admin API certificate files changed but cannot be loaded; keeping the previous ones", "err", err)
		}
		if p.Admin.TLS, err = tlsutil.Server(tlsutil.ServerOptions{CertFile: cert, KeyFile: key, OnReloadError: onErr}); err != nil {
			return p, settings.Errorf("admin-tls-cert", "invalid --admin-tls-cert/--admin-tls-key: %v", err)
		}
	}
	return p, fieldError("admin", p.Admin.Validate())
}

// splitList is comma-separated and repeated values as one list.
func splitList(raw []string) []string {
	var out []string
	for _, r := range raw {
		for _, v := range strings.Split(r, ",") {
			if v = strings.TrimSpace(v); v != "" {
				out = append(out, v)
			}
		}
	}
	return out
}
