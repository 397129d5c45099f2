#!/usr/bin/env bash
# Mutation testing of the packages the data path rests on, with gremlins
# (github.com/go-gremlins/gremlins v0.6.0, installed when missing). Prints
# each package's test efficacy and mutator coverage, and writes the full
# results to mutation/<pkg>.txt. It takes several minutes: run it by hand,
# not in CI.
#
#   scripts/mutation.sh                 # framer dispatch balance upstream pool listener
#   scripts/mutation.sh framer pool     # some of them
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
export PATH="$PATH:$(go env GOPATH)/bin"
command -v gremlins >/dev/null 2>&1 || go install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(framer dispatch balance upstream pool listener)
out=${MUTATION_OUT:-/tmp/ndlb-mutation}
mkdir -p "$out"
printf '| package | killed | lived | not covered | timed out | test efficacy | mutator coverage |\n|---|---|---|---|---|---|---|\n'
for p in "${pkgs[@]}"; do
  # One worker: the machines have two cores and the tests use sockets.
  gremlins unleash "./$p" --workers 1 --timeout-coefficient 5 -S lt > "$out/$p.txt" 2>&1 || true
  k=$(sed -n 's/^Killed: \([0-9]*\), Lived: \([0-9]*\), Not covered: \([0-9]*\).*/\1 \2 \3/p' "$out/$p.txt")
  to=$(sed -n 's/^Timed out: \([0-9]*\).*/\1/p' "$out/$p.txt")
  eff=$(sed -n 's/^Test efficacy: \(.*\)/\1/p' "$out/$p.txt")
  cov=$(sed -n 's/^Mutator coverage: \(.*\)/\1/p' "$out/$p.txt")
  set -- $k
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$p" "${1:-?}" "${2:-?}" "${3:-?}" "${to:-?}" "${eff:-?}" "${cov:-?}"
done
echo
echo "Lived and not covered mutants, per package: $out/<package>.txt"
