#!/usr/bin/env bash
# Installs promtool and prometheus (Debian's `prometheus` package) when promtool is missing.
# Idempotent and quiet: prints nothing when promtool is already on PATH. Used by .ci/run and
# `make test` before the deploy/ tests, which run `promtool check rules`, `promtool test rules`
# and (with the e2e tag) a real Prometheus.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
	exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO="sudo"
	else
		echo "install-prometheus: promtool is missing and this user cannot run apt-get (not root, no sudo)" >&2
		exit 1
	fi
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends prometheus; } >"$log" 2>&1; then
	echo "install-prometheus: apt-get failed:" >&2
	tail -n 30 "$log" >&2
	exit 1
fi

# The package's postinst may start a prometheus service where an init system runs; the tests
# start their own on random loopback ports, so a running service does no harm, but stop it where
# we can so it does not hold port 9090 for nothing.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	$SUDO systemctl stop prometheus >/dev/null 2>&1 || true
fi

if ! command -v promtool >/dev/null 2>&1; then
	echo "install-prometheus: the prometheus package installed but promtool is not on PATH" >&2
	exit 1
fi
