#!/usr/bin/env bash
# Kept-alive HTTP through ndlb --passthrough and HAProxy, measured with wrk
# against nginx, as the issue's table was: rounds of wrk -t2 -c16, the
# peers in a rotating order, and for each peer the median over rounds of
# its requests/s and p99 divided by HAProxy's in the same round.
#
#   apt-get install -y wrk nginx-light haproxy
#   go build -o /tmp/ndlb ./cmd/ndlb
#   NDLB=/tmp/ndlb bench/wrk/run.sh [ROUNDS] [SECONDS]
#
# Peers: haproxy (nbthread 2, mode tcp), ndlb with its defaults, and ndlb
# with $ALT_ARGS (default: --event-loop-threads=false; set it empty for
# none), run from $ALT_NDLB (default: $NDLB; another build). Loopback only,
# ports 18180-18183.
set -euo pipefail
rounds=${1:-10} secs=${2:-4}
ndlb=${NDLB:?set NDLB to an ndlb binary}
alt=${ALT_ARGS---event-loop-threads=false}
altbin=${ALT_NDLB:-$ndlb}
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; nginx -c "$dir/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18180;
    location / { return 200 "hello, this is a small response body of 64 bytes or so........\n"; }
  }
}
CONF
cat > "$dir/haproxy.cfg" <<CONF
global
  maxconn 9000
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend f
  bind 127.0.0.1:18181
  default_backend b
backend b
  server s1 127.0.0.1:18180
CONF
nginx -c "$dir/nginx.conf"
haproxy -db -f "$dir/haproxy.cfg" >/dev/null 2>&1 & pids+=($!)
"$ndlb" --passthrough --addr 127.0.0.1 --port 18182 --target 127.0.0.1:18180 --log-level warn & pids+=($!)
# shellcheck disable=SC2086
"$altbin" --passthrough --addr 127.0.0.1 --port 18183 --target 127.0.0.1:18180 --log-level warn $alt & pids+=($!)
for p in 18180 18181 18182 18183; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$p/" >/dev/null && break; sleep 0.1; done
done
peers=(haproxy:18181 ndlb:18182 ndlb-alt:18183)
out=$dir/runs
for ((i = 0; i < rounds; i++)); do
  for ((j = 0; j < ${#peers[@]}; j++)); do
    p=${peers[$(((i + j) % ${#peers[@]}))]}
    wrk -t2 -c16 -d"${secs}s" --latency "http://127.0.0.1:${p##*:}/" | awk -v r="$i" -v n="${p%%:*}" '
      function us(x) { if (x ~ /ms$/) return x * 1000; if (x ~ /us$/) return x + 0; return x * 1e6 }
      /Requests\/sec/ { q = $2 } /^ +99%/ { p99 = us($2) } END { print r, n, q, p99 }' >> "$out"
  done
done
awk '
  { q[$1, $2] = $3; l[$1, $2] = $4; names[$2] = 1; if ($1 > last) last = $1 }
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    for (n in names) {
      if (n == "haproxy") continue
      k = 0
      for (r = 0; r <= last; r++) { k++; rq[k] = q[r, n] / q[r, "haproxy"]; rl[k] = l[r, n] / l[r, "haproxy"] }
      printf "%-9s requests/s %.3f of haproxy   p99 %.3f of haproxy   (medians of %d rounds)\n", n, median(rq, k), median(rl, k), k
    }
  }' "$out"
