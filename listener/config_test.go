package listener

import (
	"errors"
	"testing"

	"github.com/ndlb/ndlb/invalid"
)

// Zero means the default (or no limit); only negative values are refused,
// each with an error naming its field.
func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("the zero config: %v", err)
	}
	for field, c := range map[string]Config{
		"HandshakeTimeout":   {HandshakeTimeout: -1},
		"ProxyHeaderTimeout": {ProxyHeaderTimeout: -1},
		"MaxConns":           {MaxConns: -1},
	} {
		var ie *invalid.Error
		if err := c.Validate(); !errors.Is(err, ErrConfig) || !errors.As(err, &ie) || ie.Field != field {
			t.Errorf("%+v: Validate() = %v, want an error about %s", c, err, field)
		}
	}
}
