package setup

import (
	"log/slog"
	"time"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/settings"
)

// Process is the process-wide settings, checked.
type Process struct {
	LogLevel  slog.Level
	LogFormat string // "text" or "json"
	// Admin is the admin API's address and token file; Addr is "" when
	// the API is off. The caller fills in the rest.
	Admin          admin.Config
	PIDFile        string
	UpgradeTimeout time.Duration
}

// ProcessOf checks the process-wide settings in c. A bad value is a
// *settings.Error naming the setting.
func ProcessOf(c Values) (Process, error) {
	p := Process{LogFormat: c.String("log-format"), PIDFile: c.String("pid-file"), UpgradeTimeout: c.Duration("upgrade-timeout"),
		Admin: admin.Config{Addr: c.String("admin"), TokenFile: c.String("admin-token-file")}}
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
		if p.Admin.TokenFile != "" {
			return p, settings.Errorf("admin-token-file", "--admin-token-file needs --admin")
		}
		return p, nil
	}
	return p, fieldError("admin", p.Admin.Validate())
}
