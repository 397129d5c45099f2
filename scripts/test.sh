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
#   - rsyslog: a real shipper sends octet-counted syslog through ndlb;
#   - syslog-ng: another, in both framings. Debian's syslog-ng-core
#     conflicts with rsyslog, so its package is unpacked (not installed)
#     under /opt/ndlb-test/syslog-ng, after its libraries are installed;
#   - haproxy: a real front load balancer sends PROXY headers to ndlb.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo /root/go)/bin"
export GOTOOLCHAIN=local

need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v rsyslogd >/dev/null 2>&1 || need+=(rsyslog)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
sng=/opt/ndlb-test/syslog-ng
unpack_sng=
if ! command -v syslog-ng >/dev/null 2>&1 && [ ! -x "$sng/usr/sbin/syslog-ng" ]; then
  unpack_sng=1
fi
if [ ${#need[@]} -gt 0 ] || [ -n "$unpack_sng" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: the tests need: ${need[*]} ${unpack_sng:+syslog-ng} (install them, or run this as root on Debian)" >&2
    exit 1
  fi
  apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -n "$unpack_sng" ]; then
  echo "scripts/test.sh: unpacking syslog-ng-core in $sng" >&2
  deps=$(apt-cache depends syslog-ng-core | awk '$1 ~ /Depends:$/ && $2 !~ /^</ { print $2 }')
  # shellcheck disable=SC2086 # one package per word
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $deps >/dev/null
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq syslog-ng-core >/dev/null)
  mkdir -p "$(dirname "$sng")"
  rm -rf "$sng.new"
  dpkg -x "$tmp"/syslog-ng-core_*.deb "$sng.new"
  rm -rf "$tmp" "$sng"
  mv "$sng.new" "$sng"
fi

go test -race -timeout 15m "$@" ./...
