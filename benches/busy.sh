#!/usr/bin/env bash
# Does a server that is packing still answer? Serves a root of three executables, asks for two
# large ones at once (two packs run), and meanwhile times ROUNDS manifest requests for a small
# one that is already packed. Prints median, p90 and max.
# usage: benches/busy.sh [SIZE_MIB of each large file (default 286)] [ROUNDS (default 100)]
# Needs curl, and about 2x SIZE_MIB of free disk.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-286}
rounds=${2:-100}
command -v curl >/dev/null || { echo "busy.sh: needs curl" >&2; exit 1; }
work=$(mktemp -d /tmp/quinistry-busy-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet
mkdir -p "$work/root"
head -c $((mib << 20)) /dev/urandom >"$work/root/big1"
head -c $((mib << 20)) /dev/urandom >"$work/root/big2"
cp /usr/bin/env "$work/root/small"
chmod +x "$work/root/"*
touch -d '1 hour ago' "$work/root/"*

RUST_LOG=warn target/release/quinistry serve --listen 127.0.0.1:0 --store "$work/store" \
  --root "$work/root" >"$work/out" 2>"$work/err" &
pid=$!
addr=
for _ in $(seq 1 100); do
  addr=$(awk '$1 == "listening" { sub("http://", "", $2); print $2 }' "$work/out")
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { echo "server did not start" >&2; cat "$work/err" >&2; exit 1; }
manifest() { curl -s -o /dev/null -w '%{time_total}\n' "http://$addr/v2/$1/manifests/latest"; }
manifest small >/dev/null
manifest big1 >/dev/null & p1=$!
manifest big2 >/dev/null & p2=$!
sleep 1
for _ in $(seq 1 "$rounds"); do manifest small; sleep 0.02; done | sort -n |
  awk -v mib="$mib" '{ t[NR] = $1 * 1000 } END {
    printf "while two %d MiB images pack: %d requests, median %.1f ms, p90 %.1f ms, max %.1f ms\n",
      mib, NR, t[int(NR / 2)], t[int(NR * 0.9)], t[NR] }'
wait "$p1" "$p2"
