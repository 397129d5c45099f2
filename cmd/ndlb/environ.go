package main

import (
	"fmt"
	"maps"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/config"
)

// envPrefix begins the names of the variables ndlb reads.
const envPrefix = "NDLB_"

// serviceLink is the value Kubernetes and Docker's links give a
// service's NAME_PORT and NAME_PORT_<port>_<proto> variables.
var serviceLink = regexp.MustCompile(`^(tcp|udp|sctp)://\S+:[0-9]+$`)

// linkName is the shape of the variables Kubernetes sets for every
// Service in a pod's namespace (NAME_SERVICE_HOST, NAME_SERVICE_PORT,
// NAME_SERVICE_PORT_<port name>, NAME_PORT, NAME_PORT_<port>_<proto>
// and its _PROTO, _PORT and _ADDR), and Docker for a linked container.
var linkName = regexp.MustCompile(`_SERVICE_HOST$|_SERVICE_PORT(_|$)|_PORT$|_PORT_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?$`)

// envNotice is a warning about the environment, found before the
// command has a logger.
type envNotice struct {
	msg  string
	args []any
}

// envNoticesKey is where run leaves the notices for the command, in the
// app's Metadata.
const envNoticesKey = "env-notices"

// screenEnv looks at the NDLB_* variables of environ (NAME=VALUE) before
// the flags read them, and unsets (through unset) those the flags must
// not take:
//   - An empty value is the same as no variable: the flags package kept
//     the default for numbers, durations and switches but took "" for a
//     string, so NDLB_LOG_FORMAT= failed where NDLB_PORT= did not.
//   - A service link is not a setting. A Kubernetes Service named ndlb
//     gives every pod started after it NDLB_PORT=tcp://10.96.0.7:9000 (a
//     container linked as ndlb gets the same from Docker), which --port
//     would refuse, so ndlb would not start.
//
// It returns warnings for the link it set aside and for NDLB_* names no
// flag reads (a typo such as NDLB_TARGETS). known holds the names the
// flags read.
func screenEnv(environ []string, known map[string]bool, unset func(string) error) []envNotice {
	var notes []envNotice
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix) {
			continue
		}
		link := linkName.MatchString(name)
		switch {
		case known[name] && value == "":
			_ = unset(name)
		case known[name] && link && serviceLink.MatchString(value):
			_ = unset(name)
			notes = append(notes, envNotice{
				msg: fmt.Sprintf("ignoring %s=%s: a service link, not --%s (set enableServiceLinks: false in the pod's spec, or give the Service or the link another name)",
					name, value, flagName(name)),
				args: []any{"var", name},
			})
		case known[name] || link:
		default:
			msg := fmt.Sprintf("ignoring %s: no setting reads it", name)
			if best := config.Closest(name, maps.Keys(known)); best != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", best)
			}
			notes = append(notes, envNotice{msg: msg, args: []any{"var", name}})
		}
	}
	return notes
}

// flagName is the flag an NDLB_* variable sets: NDLB_CHECK_PORT is
// check-port.
func flagName(env string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(env, envPrefix), "_", "-"))
}

// envNames is every variable the app's flags and its commands' flags
// read.
func envNames(app *cli.App) map[string]bool {
	names := make(map[string]bool)
	add := func(flags []cli.Flag) {
		for _, f := range flags {
			if e, ok := f.(interface{ GetEnvVars() []string }); ok {
				for _, n := range e.GetEnvVars() {
					names[n] = true
				}
			}
		}
	}
	add(app.Flags)
	for _, c := range app.Commands {
		add(c.Flags)
	}
	return names
}

// envNotices are the notices run left for the command.
func envNotices(c *cli.Context) []envNotice {
	notes, _ := c.App.Metadata[envNoticesKey].([]envNotice)
	return notes
}
