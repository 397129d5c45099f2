package passthrough

import (
	"errors"
	"testing"

	"github.com/ndlb/ndlb/invalid"
)

// Each bound itself is valid; one step past it is refused with an error
// that names the field, so that the command line can name its flag.
func TestConfigValidateNamesTheField(t *testing.T) {
	edges := []struct {
		field     string
		ok, wrong func(*Config)
	}{
		{"Balance", func(c *Config) { c.Balance = "hash" }, func(c *Config) { c.Balance = "fastest" }},
		{"Targets", func(c *Config) { c.Targets, c.Discovered = nil, true }, func(c *Config) { c.Targets = nil }},
		{"HashKey", func(c *Config) { c.HashKey = HashIPPort }, func(c *Config) { c.HashKey = "mac" }},
		{"ConnectTimeout", func(c *Config) { c.ConnectTimeout = 1 }, func(c *Config) { c.ConnectTimeout = 0 }},
		{"DrainTimeout", func(c *Config) { c.DrainTimeout = 1 }, func(c *Config) { c.DrainTimeout = 0 }},
		{"ConnectRetries", func(c *Config) { c.ConnectRetries = MaxRetries }, func(c *Config) { c.ConnectRetries = MaxRetries + 1 }},
		{"ConnectRetries", func(c *Config) { c.ConnectRetries = 0 }, func(c *Config) { c.ConnectRetries = -1 }},
		{"MaxFails", func(c *Config) { c.MaxFails = MaxRetries }, func(c *Config) { c.MaxFails = MaxRetries + 1 }},
		{"MaxFails", func(c *Config) { c.MaxFails = 0 }, func(c *Config) { c.MaxFails = -1 }},
		{"FailTimeout", func(c *Config) { c.FailTimeout = 0 }, func(c *Config) { c.FailTimeout = -1 }},
		{"IdleTimeout", func(c *Config) { c.IdleTimeout = 0 }, func(c *Config) { c.IdleTimeout = -1 }},
		{"HalfCloseTimeout", func(c *Config) { c.HalfCloseTimeout = 0 }, func(c *Config) { c.HalfCloseTimeout = -1 }},
		{"ParkAfter", func(c *Config) { c.ParkAfter = 0 }, func(c *Config) { c.ParkAfter = -1 }},
		{"KeepAlive", func(c *Config) { c.KeepAlive = 0 }, func(c *Config) { c.KeepAlive = -1 }},
		{"BackoffMax", func(c *Config) { c.BackoffInitial, c.BackoffMax = MinBackoff, MinBackoff }, func(c *Config) { c.BackoffMax = MinBackoff - 1 }},
		{"BackoffInitial", func(c *Config) { c.BackoffInitial = c.BackoffMax }, func(c *Config) { c.BackoffInitial = c.BackoffMax + 1 }},
		{"BackoffInitial", func(c *Config) { c.BackoffInitial = MinBackoff }, func(c *Config) { c.BackoffInitial = MinBackoff - 1 }},
		{"SendProxy", func(c *Config) { c.SendProxy = 2 }, func(c *Config) { c.SendProxy = 3 }},
		{"EventLoops", func(c *Config) { c.EventLoops = MaxEventLoops }, func(c *Config) { c.EventLoops = MaxEventLoops + 1 }},
		{"EventLoops", func(c *Config) { c.EventLoops = 0 }, func(c *Config) { c.EventLoops = -1 }},
		{"Listener.MaxConns", func(c *Config) { c.Listener.MaxConns = 0 }, func(c *Config) { c.Listener.MaxConns = -1 }},
		{"Listener.ProxyHeaderTimeout", func(c *Config) { c.Listener.ProxyHeaderTimeout = 0 }, func(c *Config) { c.Listener.ProxyHeaderTimeout = -1 }},
	}
	for _, e := range edges {
		ok, wrong := DefaultConfig(), DefaultConfig()
		ok.Targets, wrong.Targets = []string{"127.0.0.1:1"}, []string{"127.0.0.1:1"}
		e.ok(&ok)
		e.wrong(&wrong)
		if err := ok.Validate(); err != nil {
			t.Errorf("%s: the bound is refused: %v", e.field, err)
		}
		var ie *invalid.Error
		if err := wrong.Validate(); !errors.Is(err, ErrConfig) || !errors.As(err, &ie) || ie.Field != e.field {
			t.Errorf("%s: past the bound: Validate() = %v", e.field, err)
		}
	}
}
