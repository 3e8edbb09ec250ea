#!/usr/bin/env bash
# What the production features cost, in one run, in interleaved rounds (each round runs every
# contender once, in a rotating order); medians, and each ratio over the plain server:
#
#   manifest GET by tag, `wrk -t2 -c32`, requests/s, from four servers on one store:
#     plain      quinistry serve (text access log)
#     metrics    + --metrics-listen (every request counted: 4 label lookups, a histogram)
#     json       + --log-format json
#     tls        + --tls-cert/--tls-key (wrk over HTTPS, keep-alive: one handshake per
#                connection)
#     basic      + --htpasswd --auth-reads, wrk sending Basic credentials (bcrypt checked
#                once, then remembered)
#     bearer     + the built-in token issuer (same users, --auth-reads), wrk sending a token from its /token (its
#                signature checked once, then remembered); its ratio over basic is the
#                token path's cost (goal >= 0.8x)
#
# On a machine of 2 or more CPUs every server runs on CPU 1 and wrk on CPU 0 (taskset), so a
# rate is what one core of server does, and wrk's own work does not move it around.
#
# usage: benches/ops.sh [ROUNDS (default 5)] [WRK_SECONDS (default 10)]
# Needs: curl wrk openssl (installed with apt when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-10}

# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need curl:curl wrk:wrk openssl:openssl htpasswd:apache2-utils

cargo build --release -q
bin=$PWD/target/release/quinistry
work=$(mktemp -d /tmp/quinistry-ops.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$(nproc)" -ge 2 ]; then
  on_server=(taskset -c 1)
  on_client=(taskset -c 0)
else
  on_server=()
  on_client=()
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3fx", a / b; else print "-" }'; }
load() { top -bn2 -d1 | awk '/^%Cpu/ { line = $0 } END { print line }'; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
head -c 100000 /dev/urandom >"$work/tool"
# One store, packed once; each server finds the image in its layer cache.
"$bin" pack --store "$work/store" --tag ops/tool:latest "$work/tool" >/dev/null

declare -A addr spid
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }  # utime + stime, in clock ticks
start() {  # NAME FLAGS...: a server on a free port; its address in addr[NAME]
  local name=$1
  shift
  "${on_server[@]}" "$bin" serve --store "$work/store" --listen 127.0.0.1:0 --no-prepack "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  spid[$name]=$!
  for _ in $(seq 600); do
    grep -q '^listening' "$work/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  addr[$name]=$(awk '/^listening/ { print $2 }' "$work/$name.out")
}
start plain --name ops/tool "$work/tool"
start metrics --metrics-listen 127.0.0.1:0 --name ops/tool "$work/tool"
start json --log-format json --name ops/tool "$work/tool"
start tls --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --name ops/tool "$work/tool"
htpasswd -Bbn bench secret >"$work/htpasswd"
start basic --htpasswd "$work/htpasswd" --auth-reads --name ops/tool "$work/tool"
start bearer --htpasswd "$work/htpasswd" --auth-reads --token-service bench --token-issuer bench \
  --token-signing-key "$work/token.key" --token-expiration 24h --name ops/tool "$work/tool"
token=$(curl -sf -u bench:secret "${addr[bearer]}/token?service=bench&scope=repository:ops/tool:pull" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
declare -A auth=([basic]="Authorization: Basic $(printf bench:secret | base64)" [bearer]="Authorization: Bearer $token")

contenders=(plain metrics json tls basic bearer)
declare -A rates costs
hz=$(getconf CLK_TCK)
echo "== manifest GET by tag, wrk -t2 -c32 -d${secs}s (${on_server[*]:-unpinned}; $rounds rounds; $(load))"
echo "   requests/s, and the server's CPU time per request (utime+stime over wrk's count)"
for r in $(seq "$rounds"); do
  n=${#contenders[@]}
  for i in $(seq 0 $((n - 1))); do
    c=${contenders[$(((i + r) % n))]}
    url="${addr[$c]}/v2/ops/tool/manifests/latest"
    before=$(cpu_ticks "${spid[$c]}")
    headers=(-H 'Accept: application/vnd.oci.image.manifest.v1+json')
    [ -n "${auth[$c]:-}" ] && headers+=(-H "${auth[$c]}")
    out=$("${on_client[@]}" wrk -t2 -c32 -d"${secs}s" "${headers[@]}" "$url")
    grep -q 'Non-2xx' <<<"$out" && { echo "$c: answers other than 2xx" >&2; echo "$out" >&2; exit 1; }
    after=$(cpu_ticks "${spid[$c]}")
    rate=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
    count=$(awk '/requests in/ { print $1 }' <<<"$out")
    rates[$c]="${rates[$c]:-} $rate"
    costs[$c]="${costs[$c]:-} $(awk -v t=$((after - before)) -v hz="$hz" -v n="$count" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')"
  done
done
base=$(median "${rates[plain]}")
base_cost=$(median "${costs[plain]}")
for c in "${contenders[@]}"; do
  m=$(median "${rates[$c]}")
  cost=$(median "${costs[$c]}")
  printf '%-8s %8.0f/s (%s of plain)  %6.2f us CPU/request (%s of plain)\n' \
    "$c" "$m" "$(ratio "$m" "$base")" "$cost" "$(ratio "$cost" "$base_cost")"
  printf '           rounds:%s\n           us:%s\n' "${rates[$c]}" "${costs[$c]}"
done
printf 'bearer over basic: %s\n' "$(ratio "$(median "${rates[bearer]}")" "$(median "${rates[basic]}")")"
# The metrics really counted what wrk sent.
maddr=$(awk '/^metrics/ { print $2 }' "$work/metrics.out")
counted=$(curl -s "$maddr" | awk '/^quinistry_http_requests_total\{.*route="manifest".*status="200"/ { s += $2 } END { print s + 0 }')
echo "metrics: quinistry_http_requests_total{route=\"manifest\",status=\"200\"} = $counted"
