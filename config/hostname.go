package config

import (
	"os"
	"strings"
)

func defaultNodeID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "revenprox"
	}
	// Dots would split the node id into several NATS subject tokens.
	return strings.ReplaceAll(h, ".", "-")
}
