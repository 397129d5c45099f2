#!/usr/bin/env bash
# The README's test command, also run by .ci/run: installs what the tests
# need when it is missing (Debian packages, as root), then runs every test
# under the race detector. Extra arguments go to `go test`.
#
# What needs what:
#   - gcc, libc6-dev: the race detector (cgo);
#   - iproute2: the black-hole test changes routes in its own network
#     namespace;
#   - chromium: the status page test drives headless Chromium;
#   - rsyslog: a real shipper sends octet-counted syslog through ndlb.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo /root/go)/bin"
export GOTOOLCHAIN=local

need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: the tests need: ${need[*]} (install them, or run this as root on Debian)" >&2
    exit 1
  fi
  echo "scripts/test.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

go test -race -timeout 15m "$@" ./...
