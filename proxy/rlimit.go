package proxy

import (
	"log/slog"
	"syscall"
)

// fdsPerProcessReserve is file descriptors kept for listeners, NATS, the webhook client and logs.
const fdsPerProcessReserve = 200

// raiseFileLimit lifts the soft open-file limit to the hard limit, logs both, and warns when
// limits.max_connections cannot be reached under it (one descriptor per connection).
func raiseFileLimit(log *slog.Logger, maxConnections int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("Cannot read the open-file limit", "err", err)
		return
	}
	soft := lim.Cur
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Warn("Cannot raise the open-file limit", "soft", soft, "hard", lim.Max, "err", err)
			lim.Cur = soft
		}
	}
	log.Info("Open-file limit", "soft_was", soft, "soft", lim.Cur, "hard", lim.Max)
	if usable := int64(lim.Cur) - fdsPerProcessReserve; int64(maxConnections) > usable {
		log.Warn("limits.max_connections exceeds what the open-file limit allows; connections beyond it fail with HTTP 503 or accept errors",
			"max_connections", maxConnections, "usable_fds", usable)
	}
}
