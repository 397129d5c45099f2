#!/usr/bin/env bash
# Builds ndlb's release: static, reproducible binaries for linux/amd64 and
# linux/arm64 (-trimpath, no VCS stamp, the version linked in), a .deb of
# each with the systemd unit (nfpm, from go.mod's tool line), and SHA256SUMS.
#
#   scripts/release.sh VERSION [OUTDIR]      # OUTDIR defaults to dist/
#
# The same commit and VERSION give the same bytes: file times come from the
# commit (or SOURCE_DATE_EPOCH).
set -euo pipefail
version=${1:?usage: scripts/release.sh VERSION [OUTDIR]}
out=${2:-dist}
cd "$(dirname "$0")/.."
case "$version" in
  v*) version=${version#v} ;;
esac
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([~+.-][0-9A-Za-z.~+-]+)?$ ]]; then
  echo "release: version $version: want MAJOR.MINOR.PATCH, such as 1.2.0" >&2
  exit 2
fi
case "$out" in
  *[\&#\\]*) echo "release: OUTDIR $out: no &, # or backslash, please" >&2; exit 2 ;;
esac
# Debian orders ~ before anything: 1.2.3~rc.1 comes before 1.2.3.
debversion=${version//-/\~}
mkdir -p "$out"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
epoch=$SOURCE_DATE_EPOCH
for arch in amd64 arm64; do
  bin="$out/ndlb_${version}_linux_${arch}"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -buildvcs=false \
    -ldflags="-s -w -buildid= -X main.buildVersion=$version" -o "$bin" ./cmd/ndlb
  touch -d "@$epoch" "$bin"
  # nfpm expands variables in the package's fields, not in file paths.
  sed "s#\${BINARY}#$bin#" deploy/nfpm.yaml > "$out/.nfpm-$arch.yaml"
  VERSION=$debversion ARCH=$arch go tool nfpm package \
    --config "$out/.nfpm-$arch.yaml" --packager deb --target "$out/ndlb_${debversion}_${arch}.deb" >/dev/null
  rm "$out/.nfpm-$arch.yaml"
done
(cd "$out" && sha256sum ndlb_"${version}"_linux_* ndlb_"${debversion}"_*.deb > SHA256SUMS && cat SHA256SUMS)
