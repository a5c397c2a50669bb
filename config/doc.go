// Package config holds the node configuration: one struct whose fields document their
// defaults, Default, Validate (every error names the key and the bad value), and Load, which
// layers a YAML file (unknown keys are errors), REVENPROX_* environment variables and flags.
//
// Concurrency: a Config is a plain value; it is built once at start and only read afterwards.
package config
