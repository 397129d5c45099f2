#!/usr/bin/env bash
# Mutation testing of the packages the data path rests on, with gremlins
# (github.com/go-gremlins/gremlins v0.6.0, installed when missing). Prints
# each package's test efficacy and mutator coverage, and writes the full
# results to $MUTATION_OUT/<pkg>.txt (default /tmp/ndlb-mutation), with the
# mutants gremlins cannot place rechecked by scripts/recheck. It takes
# several minutes: run it by hand,
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
printf '| package | killed | lived | not covered | timed out | test efficacy | mutator coverage | efficacy, time-outs as killed |\n|---|---|---|---|---|---|---|---|\n'
for p in "${pkgs[@]}"; do
  # One worker: the machines have two cores and the tests use sockets. The
  # timeout is a multiple of the coverage run, which is shorter than building
  # a mutant: a small multiple turns every mutant into a time-out.
  gremlins unleash "./$p" --workers 1 --timeout-coefficient "${MUTATION_TIMEOUT_COEFFICIENT:-15}" -S lct > "$out/$p.txt" 2>&1 || true
  # gremlins v0.6.0 marks the conditions of tagless switches and constant
  # declarations NOT COVERED without running them (gremlins issue #298):
  # recheck runs each of them.
  go run ./scripts/recheck -pkg "./$p" < "$out/$p.txt" > "$out/$p.rechecked.txt"
  k=$(sed -n 's/^Killed: \([0-9]*\), Lived: \([0-9]*\), Not covered: \([0-9]*\).*/\1 \2 \3/p' "$out/$p.txt")
  to=$(sed -n 's/^Timed out: \([0-9]*\).*/\1/p' "$out/$p.txt")
  set -- $k
  killed=${1:-0} lived=${2:-0} timedout=${to:-0}
  count() { grep -c "^ *$1 " "$out/$p.rechecked.txt" || true; }
  killed=$((killed + $(count KILLED)))
  lived=$((lived + $(count LIVED)))
  timedout=$((timedout + $(count 'TIMED OUT')))
  notcov=$(count 'NOT COVERED')
  awk -v p="$p" -v k="$killed" -v l="$lived" -v n="$notcov" -v t="$timedout" 'BEGIN {
    e = (k + l) ? 100 * k / (k + l) : 0
    c = (k + l + n) ? 100 * (k + l) / (k + l + n) : 0
    et = (k + l + t) ? 100 * (k + t) / (k + l + t) : 0
    printf "| %s | %d | %d | %d | %d | %.1f %% | %.1f %% | %.1f %% |\n", p, k, l, n, t, e, c, et
  }'
done
echo
echo "Lived and not covered mutants, per package: $out/<package>.txt and $out/<package>.rechecked.txt"
