#!/usr/bin/env bash
# `serve --root /usr/bin` on this machine, default settings, a fresh store (issue 29):
#  1. the server's CPU time (user + system) and the store's size after WAIT seconds with no
#     pull (the prepack packs only what was configured or pulled before: here, nothing);
#  2. the first pull of python3 (packed on that pull), by `docker pull` when a Docker
#     engine answers, else by `skopeo copy`; the server's own pack line beside it;
#  3. the same two figures after a restart, with python3 now recorded as pulled (so it is
#     prepacked, from the layer cache).
# usage: benches/root.sh [WAIT_SECONDS (default 120)]
set -euo pipefail
cd "$(dirname "$0")/.."
wait_s=${1:-120}
# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need skopeo:skopeo curl:curl
work=$(mktemp -d /tmp/quinistry-root-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet
bin=$PWD/target/release/quinistry
echo "machine    $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) before the run"

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$pid/stat"; }
store_mib() { du -sm "$work/store" | cut -f1; }
docker_ok=false
docker info >/dev/null 2>&1 && docker_ok=true
pull() {
  local t0; t0=$(now)
  if $docker_ok; then
    docker rmi -f "$addr/python3:latest" >/dev/null 2>&1 || true
    docker pull -q "$addr/python3:latest" >/dev/null
  else
    rm -rf "$work/copy"
    skopeo copy -q --src-tls-verify=false "docker://$addr/python3:latest" "dir:$work/copy"
  fi
  secs "$t0" "$(now)"
}
by=$($docker_ok && echo "docker pull" || echo "skopeo copy")

for round in first restarted; do
  serve_start --root /usr/bin
  served=$(grep -c '^on demand' "$work/out" || true)
  sleep "$wait_s"
  echo "$round: serve --root /usr/bin ($served images listed): after ${wait_s} s with no pull, server CPU $(cpu) s, store $(store_mib) MiB, load $(cut -d' ' -f1 /proc/loadavg)"
  took=$(pull)
  line=$(grep 'image=python3:latest' "$work/serve.log" | grep 'packed image' | tail -1 | sed 's/.*packed image: //')
  echo "$round: $by of python3: $took s (server: ${line:-no pack}), store now $(store_mib) MiB, server CPU $(cpu) s"
  $docker_ok && docker rmi -f "$addr/python3:latest" >/dev/null 2>&1 || true
  serve_stop
done
