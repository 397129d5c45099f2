package setup

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/supervisor"
)

// values is Values from a map, on top of the settings' defaults.
type values map[string]any

func (v values) get(name string) any {
	if x, ok := v[name]; ok {
		return x
	}
	s, _ := settings.Lookup(name)
	return s.Default
}

func (v values) String(n string) string          { s, _ := v.get(n).(string); return s }
func (v values) Int(n string) int                { i, _ := v.get(n).(int); return i }
func (v values) Bool(n string) bool              { b, _ := v.get(n).(bool); return b }
func (v values) Duration(n string) time.Duration { d, _ := v.get(n).(time.Duration); return d }
func (v values) StringSlice(n string) []string   { s, _ := v.get(n).([]string); return s }
func (v values) IsSet(n string) bool             { _, ok := v[n]; return ok }

var quiet = slog.New(slog.DiscardHandler)

// Each bad value is a *settings.Error naming its setting.
func TestBadValuesNameTheirSetting(t *testing.T) {
	target := []string{"127.0.0.1:9"}
	byLibrary := map[string]bool{}
	for _, tc := range []struct {
		setting string
		v       values
	}{
		{"port", values{"target": target, "port": 70000}},
		{"addr", values{"target": target, "addr": "a b"}},
		{"addr", values{"target": target, "addr": ""}},
		{"accept-proxy-from", values{"target": target, "accept-proxy": false, "accept-proxy-from": []string{"10.0.0.1"}}},
		{"target", values{}},
		{"target", values{"target": []string{"nohost"}}},
		{"target", values{"target": []string{"h:1", "h:1"}}},
		{"target", values{"target": []string{"recv 1:514"}}},
		{"target", values{"target": []string{"<recv>:514"}}},
		{"target", values{"target": []string{"a/b:514"}}},
		{"target-dns", values{"target-dns": []string{"logs example:514"}}},
		{"target-srv", values{"target-srv": []string{"_syslog._tcp.logs example"}}},
		{"dns-resolver", values{"target-dns": []string{"a.test:1"}, "dns-resolver": "name server:53"}},
		{"connections", values{"target": target, "connections": 0}},
		{"max-line-bytes", values{"target": target, "max-line-bytes": "2GiB"}},
		{"read-bytes", values{"target": target, "read-bytes": "0"}},
		{"buffer-bytes", values{"target": target, "buffer-bytes": "1KiB"}},
		{"client-buffer-bytes", values{"target": target, "client-buffer-bytes": "1KiB"}},
		{"write-timeout", values{"target": target, "write-timeout": time.Duration(0)}},
		{"line-timeout", values{"target": target, "line-timeout": -time.Second}},
		{"read-coalesce", values{"target": target, "read-coalesce": -time.Second}},
		{"max-conns", values{"target": target, "max-conns": -1}},
		{"proxy-header-timeout", values{"target": target, "proxy-header-timeout": time.Second}},
		{"balance", values{"target": target, "balance": "leastconn"}}, // NDJSON mode
		{"balance", values{"target": target, "passthrough": true, "balance": "nope"}},
		{"hash-key", values{"target": target, "passthrough": true, "hash-key": "ip-port"}},
		{"connect-retries", values{"target": target, "passthrough": true, "connect-retries": 1001}},
		{"event-loops", values{"target": target, "passthrough": true, "event-loops": -1}},
		{"event-loops", values{"target": target, "passthrough": true, "event-loops": 1025}},
		{"event-loop-threads", values{"target": target, "event-loop-threads": true}}, // NDJSON mode
		{"send-proxy", values{"target": target, "passthrough": true, "send-proxy": "v3"}},
		{"tls-cert", values{"target": target, "tls-cert": "c.pem"}},
		{"tls-target-ca", values{"target": target, "tls-target-ca": "ca.pem"}},
		{"check-http-path", values{"target": target, "check-http-path": "/x"}},
		{"check-http-path", values{"target": target, "check": "tcp", "check-http-path": "/x"}},
		{"check", values{"target": target, "check": "icmp"}},
		{"check-port", values{"target": target, "passthrough": true, "check": "udp", "check-port": 70000}},
		{"check-udp-send", values{"target": target, "passthrough": true, "check": "udp", "check-udp-send": strings.Repeat("x", 1025)}},
		{"check-udp-send", values{"target": target, "passthrough": true, "check": "udp", "check-udp-send": `\q`}},
		{"check-udp-send", values{"target": target, "passthrough": true, "check": "udp", "check-udp-send": "hex:zz"}},
		{"check-udp-send", values{"target": target, "check": "tcp", "check-udp-send": "x"}},
		{"check-udp-expect", values{"target": target, "check": "http", "check-udp-expect": "x"}},
		{"check-port", values{"target": target, "check-port": 9}},
		{"proto", values{"target": target, "proto": "sctp"}},
		{"framing", values{"target": target, "framing": "length"}},
		{"framing", values{"target": target, "udp": true, "framing": "octet-counted"}},
		{"target-framing", values{"target": target, "target-framing": "crlf"}},
		{"framing", values{"target": target, "passthrough": true, "framing": "octet-counted"}},
		{"udp", values{"target": target, "proto": "udp", "udp": false}},
		{"check", values{"target": target, "udp": true, "check": "udp"}},
		{"udp", values{"target": target, "proto": "tcp", "udp": true}},
		{"udp-idle-timeout", values{"target": target, "passthrough": true, "udp-idle-timeout": time.Second}},
		{"udp-idle-timeout", values{"target": target, "passthrough": true, "udp": true, "udp-idle-timeout": time.Duration(0)}},
		{"tls-cert", values{"target": target, "udp": true, "tls-cert": "x.pem"}},
		{"accept-proxy", values{"target": target, "proto": "udp", "accept-proxy": true}},
		{"max-conns", values{"target": target, "udp": true, "max-conns": 10}},
		{"send-proxy", values{"target": target, "passthrough": true, "udp": true, "send-proxy": "v2"}},
		{"idle-timeout", values{"target": target, "passthrough": true, "udp": true, "idle-timeout": time.Second}},
		{"check-timeout", values{"target": target, "check": "tcp", "check-timeout": 10 * time.Second}},
		{"check-rise", values{"target": target, "check": "tcp", "check-rise": 0}},
		{"check-http-status", values{"target": target, "check": "http", "check-http-status": 99}},
		{"target-srv", values{"target-srv": []string{"logs.example"}}},
		{"target-dns", values{"target-dns": []string{"logs.example"}}},
		{"dns-interval", values{"target": target, "dns-interval": time.Second}},
		{"dns-resolver", values{"target-dns": []string{"a.test:1"}, "dns-resolver": "nope"}},
		{"read-bytes", values{"target": target, "read-bytes": "32MiB"}},
		{"max-conns-per-source", values{"target": target, "max-conns-per-source": -1}},
		{"hash-on", values{"target": target, "passthrough": true, "balance": "hash", "hash-on": "port"}},
		{"hash-on", values{"target": target, "passthrough": true, "hash-on": "host"}},
		{"hash-key", values{"target": target, "passthrough": true, "balance": "hash", "hash-key": "ip+first:8:4"}},
		{"hash-key", values{"target": target, "passthrough": true, "balance": "hash", "hash-key": "ip+first:0:5000"}},
		{"hash-key-timeout", values{"target": target, "passthrough": true, "balance": "hash", "hash-key-timeout": -time.Second}},
		{"client-rate", values{"target": target, "client-rate": "fast"}},
		{"max-conn-rate-per-source", values{"target": target, "passthrough": true, "max-conn-rate-per-source": -1}},
		{"failback", values{"target": target, "failback": -time.Second}},
		{"tcp-user-timeout", values{"target": target, "tcp-user-timeout": -time.Second}},
		{"tcp-user-timeout", values{"target": target, "tcp-user-timeout": 600 * time.Hour}}, // over the kernel's 32-bit milliseconds
		{"write-timeout", values{"target": target, "write-timeout": time.Nanosecond}},
		{"line-timeout", values{"target": target, "line-timeout": time.Nanosecond}},
		{"drain-timeout", values{"target": target, "drain-timeout": 2562047 * time.Hour}}, // with deliver-timeout, past a Duration
		{"deliver-timeout", values{"target": target, "deliver-timeout": 2562047 * time.Hour}},
		{"deliver-timeout", values{"target": target, "deliver-timeout": time.Duration(0)}},
		{"drain-timeout", values{"target": target, "drain-timeout": time.Duration(0)}},
		{"drain-timeout", values{"target": target, "passthrough": true, "drain-timeout": -time.Second}},
		{"connect-timeout", values{"target": target, "connect-timeout": time.Duration(0)}},
		{"connect-timeout", values{"target": target, "passthrough": true, "connect-timeout": -time.Second}},
		{"backoff-max", values{"target": target, "backoff-max": time.Duration(0)}},
		{"backoff-max", values{"target": target, "passthrough": true, "backoff-max": -time.Second}},
		{"backoff-max", values{"target": target, "backoff-max": time.Nanosecond}},
		{"backoff-max", values{"target": target, "passthrough": true, "backoff-max": 999 * time.Microsecond}},
		{"max-conns", values{"target": target, "passthrough": true, "max-conns": -5}},
		{"proxy-header-timeout", values{"target": target, "accept-proxy": true, "proxy-header-timeout": -time.Second}},
		{"hash-key", values{"target": target, "passthrough": true, "balance": "hash", "hash-key": "mac"}},
		{"max-fails", values{"target": target, "passthrough": true, "max-fails": -1}},
		{"fail-timeout", values{"target": target, "passthrough": true, "fail-timeout": -time.Second}},
		{"idle-timeout", values{"target": target, "passthrough": true, "idle-timeout": -time.Second}},
		{"half-close-timeout", values{"target": target, "passthrough": true, "half-close-timeout": -time.Second}},
		{"half-close-timeout", values{"target": target, "passthrough": true, "udp": true, "half-close-timeout": time.Second}},
		{"check-interval", values{"target": target, "check": "tcp", "check-interval": time.Duration(0)}},
		{"check-fall", values{"target": target, "check": "tcp", "check-fall": 0}},
		{"check-http-method", values{"target": target, "check": "http", "check-http-method": "GET /"}},
		{"proxy-header-timeout", values{"target": target, "accept-proxy": true, "proxy-header-timeout": time.Duration(0)}},
		{"dns-interval", values{"target-dns": []string{"a.test:1"}, "dns-interval": time.Duration(0)}},
		{"dns-max-targets", values{"target-dns": []string{"a.test:1"}, "dns-max-targets": -1}},
		{"dns-max-targets", values{"target": target, "dns-max-targets": 8}},
		{"check-http-path", values{"target": target, "check": "http", "check-http-path": "x"}},
		{"balance", values{"target": target, "passthrough": true, "balance": "nope", "hash-key": "ip"}},
		{"buffer-bytes", values{"target": target, "max-line-bytes": "512MiB"}},
		{"route-key", values{"target": target, "route-key": "xml:tenant"}},
		{"route-key", values{"target": target, "route-key": "regex:no group"}},
		{"route-max-load", values{"target": target, "route-key": "json:k", "route-max-load": "0.5"}},
		{"route-max-load", values{"target": target, "route-key": "json:k", "route-max-load": "NaN"}},
		{"route-max-load", values{"target": target, "route-key": "json:k", "route-max-load": "lots"}},
		{"route-max-load", values{"target": target, "route-max-load": "2"}},
		{"group-key", values{"target": target, "group-key": "json:stream"}},
		{"group", values{"group": []string{"a=127.0.0.1:1;default", "b=127.0.0.1:2;default"}, "group-key": "json:t"}},
		{"group", values{"group": []string{"a=127.0.0.1:1;values=x", "b=127.0.0.1:1;values=y"}, "group-key": "json:t"}},
		{"group", values{"group": []string{"a=127.0.0.1:1;values=x", "b=127.0.0.1:2;values=x"}, "group-key": "json:t"}},
		{"group", values{"group": []string{"a=127.0.0.1:1;values=x"}}},
		{"group", values{"group": []string{"a=;values=x"}, "group-key": "json:t"}},
		{"group", values{"group": []string{"a=127.0.0.1:1;balance=round"}, "group-key": "json:t"}},
		{"group", values{"group": []string{"a=127.0.0.1:1;colour=red"}, "group-key": "json:t"}},
		{"group", values{"group": []string{"a=127.0.0.1:1"}, "group-key": "json:t"}},
		{"target", values{"target": target, "group": []string{"a=127.0.0.1:1;default"}, "group-key": "json:t"}},
	} {
		_, err := Listener("x", tc.v, nil, quiet)
		var se *settings.Error
		if !errors.As(err, &se) || se.Setting != tc.setting {
			t.Errorf("%v: error %v, want one about %s", tc.v, err, tc.setting)
		} else if !strings.Contains(se.Error(), "--"+tc.setting) {
			t.Errorf("%q does not name --%s", se.Error(), tc.setting)
		}
		if errors.As(err, new(*invalid.Error)) {
			byLibrary[tc.setting] = true
		}
	}
	// Every limit a library checks is named by its setting: each setting
	// that fills a library field has a bad value above that the library
	// refused. The exceptions never reach the library with a bad value:
	// setup refuses them first (no target at all; a PROXY version other
	// than v1 or v2 does not parse).
	for _, s := range settings.All {
		if len(s.Fields) > 0 && !s.Global && !byLibrary[s.Name] && s.Name != "target" && s.Name != "send-proxy" {
			t.Errorf("no bad value of --%s reaches the library", s.Name)
		}
	}
}

// Good settings make a listener of the right mode, with checks and DNS
// discovery when asked for.
func TestListenerOfEachMode(t *testing.T) {
	l, err := Listener("logs", values{"target": []string{"127.0.0.1:9"}, "check": "tcp", "port": 0, "addr": "127.0.0.1"}, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Mode.(supervisor.NDJSON); !ok || l.Health == nil || l.Discovery != nil || l.Addr != "127.0.0.1:0" {
		t.Fatalf("ndjson listener %+v", l)
	}
	l, err = Listener("web", values{"passthrough": true, "target-dns": []string{"web.test:443"}, "balance": "leastconn"}, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Mode.(supervisor.Passthrough); !ok || l.Discovery == nil || l.Health != nil || l.Balance != "leastconn" {
		t.Fatalf("passthrough listener %+v", l)
	}
	if err := supervisor.Check(supervisor.Spec{Listeners: []supervisor.Listener{l}}); err != nil {
		t.Fatal(err)
	}
}

// Flags win over the file, the file over the defaults; Set lists what
// either set, as text, for a reload to compare.
func TestLayeredPrecedence(t *testing.T) {
	l := Layered{
		Flags: values{"port": 7000},
		File:  map[string]any{"port": 9100, "connections": 2, "target": []string{"a:1", "b:2"}, "failback": time.Minute},
	}
	if l.Int("port") != 7000 || l.Int("connections") != 2 || l.String("addr") != "0.0.0.0" ||
		l.Duration("failback") != time.Minute || len(l.StringSlice("target")) != 2 {
		t.Fatalf("port %d connections %d addr %q failback %v targets %v", l.Int("port"), l.Int("connections"),
			l.String("addr"), l.Duration("failback"), l.StringSlice("target"))
	}
	if !l.IsSet("port") || !l.IsSet("target") || l.IsSet("addr") {
		t.Fatal("IsSet")
	}
	set := l.Set()
	if len(set) != 4 || set["port"][0] != "7000" || set["failback"][0] != "1m0s" || len(set["target"]) != 2 {
		t.Fatalf("Set() = %v", set)
	}
	fileOnly := Layered{File: map[string]any{"passthrough": true}}
	if !fileOnly.Bool("passthrough") || fileOnly.Int("port") != 9000 {
		t.Fatal("without flags, the file and the defaults")
	}
	for name, want := range map[string]string{"port": "7000", "failback": "1m0s", "target": "a:1,b:2", "addr": "0.0.0.0", "passthrough": "false"} {
		s, _ := settings.Lookup(name)
		if got := Text(l, s); got != want {
			t.Errorf("Text(%s) = %q, want %q", name, got, want)
		}
	}
}

// The process-wide settings are checked as the listeners' are: each bad
// value names its setting, the admin API's through its library.
func TestProcessOf(t *testing.T) {
	dir := t.TempDir()
	empty, token := filepath.Join(dir, "empty"), filepath.Join(dir, "token")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		setting string
		v       values
	}{
		{"log-level", values{"log-level": "loud"}},
		{"log-format", values{"log-format": "xml"}},
		{"upgrade-timeout", values{"upgrade-timeout": time.Duration(0)}},
		{"admin", values{"admin": "nope"}},
		{"admin", values{"admin": "127.0.0.1:99999"}},
		{"admin-token-file", values{"admin-token-file": token}},
		{"admin-token-file", values{"admin": "127.0.0.1:0", "admin-token-file": filepath.Join(dir, "missing")}},
		{"admin-token-file", values{"admin": "127.0.0.1:0", "admin-token-file": empty}},
		{"admin-token-for-reads", values{"admin": "127.0.0.1:0", "admin-token-for-reads": true}},
		{"admin-tls-key", values{"admin-tls-key": "k.pem"}},
		{"admin-tls-cert", values{"admin": "127.0.0.1:0", "admin-tls-cert": "c.pem"}},
		{"admin-tls-cert", values{"admin": "127.0.0.1:0", "admin-tls-cert": filepath.Join(dir, "missing"), "admin-tls-key": filepath.Join(dir, "missing")}},
	} {
		_, err := ProcessOf(tc.v)
		var se *settings.Error
		if !errors.As(err, &se) || se.Setting != tc.setting || !strings.Contains(se.Error(), "--"+tc.setting) {
			t.Errorf("%v: error %v, want one naming --%s", tc.v, err, tc.setting)
		}
	}
	p, err := ProcessOf(values{"admin": "127.0.0.1:0", "admin-token-file": token, "log-level": "debug", "log-format": "json"})
	if err != nil || p.LogLevel != slog.LevelDebug || p.LogFormat != "json" || p.Admin.Addr != "127.0.0.1:0" || p.UpgradeTimeout != time.Minute {
		t.Fatalf("ProcessOf: %+v, %v", p, err)
	}
}

// --udp and --proto udp make UDP listeners of both modes, and a udp
// check's datagram is decoded.
func TestUDPListeners(t *testing.T) {
	target := []string{"127.0.0.1:9"}
	for _, v := range []values{
		{"target": target, "udp": true},
		{"target": target, "proto": "udp", "passthrough": true, "udp-idle-timeout": time.Second, "max-conns": 5},
	} {
		l, err := Listener("logs", v, nil, quiet)
		if err != nil {
			t.Fatalf("%v: %v", v, err)
		}
		if l.Mode.Network() != "udp" {
			t.Errorf("%v: network %s", v, l.Mode.Network())
		}
	}
	for in, want := range map[string]string{`ping\n`: "ping\n", "hex:00 01ff": "\x00\x01\xff", `a\x00b`: "a\x00b", `say "hi"`: `say "hi"`} {
		l, err := Listener("logs", values{"target": target, "passthrough": true, "udp": true, "check": "udp", "check-udp-send": in}, nil, quiet)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := string(l.Health.UDP.Send); got != want {
			t.Errorf("%q decoded as %q, want %q", in, got, want)
		}
	}
}

// The command line splits list flags at commas; a group comes back whole.
func TestRejoinGroups(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"audit=a:1", "b:2=3;values=x", "y", "z", "rest=c:1;default"}, []string{"audit=a:1,b:2=3;values=x,y,z", "rest=c:1;default"}},
		{[]string{"a=x:1", "[::1]:9000;values=p", "b=y:1;values=q"}, []string{"a=x:1,[::1]:9000;values=p", "b=y:1;values=q"}},
		{[]string{"a=x:1", "eu:west=y:1"}, []string{"a=x:1", "eu:west=y:1"}},           // a second group, not a target
		{[]string{"a=x:1;values=p", "svc=y:1"}, []string{"a=x:1;values=p", "svc=y:1"}}, // a group, not a value
	} {
		if got := rejoinGroups(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("rejoinGroups(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// Listener names map to spool directories one to one.
func TestSafeNameKeepsNamesApart(t *testing.T) {
	seen := map[string]string{}
	for _, n := range []string{"", "a/b", "a_b", "a%2Fb", `a\b`, ".", "..", "%2E", "logs", "a\x00b"} {
		d := safeName(n)
		if strings.ContainsAny(d, "/\\\x00") || d == "." || d == ".." {
			t.Errorf("%q → %q: not one directory name", n, d)
		}
		if o, ok := seen[d]; ok {
			t.Errorf("%q and %q share the directory %q", o, n, d)
		}
		seen[d] = n
	}
}

// The default limit on clients leaves files for the workers' sockets to
// the targets.
func TestDefaultMaxConnsLeavesFilesForWorkers(t *testing.T) {
	l, err := Listener("logs", values{"target": []string{"127.0.0.1:9", "127.0.0.1:10"}, "connections": 64}, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := l.Mode.(supervisor.NDJSON)
	if !ok {
		t.Fatalf("mode %T", l.Mode)
	}
	if want := max(64, listener.DefaultMaxConns()-2*64); m.Config.Listener.MaxConns != want {
		t.Fatalf("max conns %d, want %d", m.Config.Listener.MaxConns, want)
	}
}
