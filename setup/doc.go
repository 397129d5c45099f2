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
// config file's typed values over the registry's defaults.
package setup
