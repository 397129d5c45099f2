// Package setup turns settings, as the command line, NDLB_* variables and
// config files give them (Values), into the supervisor's Listener: it maps
// each value onto the libraries' configs (reading certificate files, so a
// bad one is reported before any traffic).
//
// It checks only what is its own: the parsing of text (sizes, targets,
// addresses), which settings need others, and the few values the command
// line spells differently from the libraries. Every limit is checked once,
// by the library's Config.Validate, whose *invalid.Error names the field;
// settings.ByField turns the field into its setting. A bad value is a
// *settings.Error that names the setting, so the command line names the
// flag and a config file its line without reading the message.
//
// Layered stacks the sources of values: flags and NDLB_* variables over the
// config file's typed values over the registry's defaults. Load reads a
// config file into Sources (the process's and each listener's), which place
// every error at its FILE:LINE, or name the flag or variable that set the
// value; Spec makes the supervisor's Spec of them, and Explain places the
// supervisor's own errors.
package setup
