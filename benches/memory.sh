#!/usr/bin/env bash
# Peak RSS of `quinistry pack` as the input grows: it should stay flat, since every buffer in
# the pipeline has a fixed size. Prints one line per input size.
# usage: benches/memory.sh [LEVEL (default 1)] [SIZES_MIB... (default 16 256 1024 4096)]
# PACK_ARGS adds pack flags, e.g. PACK_ARGS="--compression zstd" (then give LEVEL 3) or
# PACK_ARGS="--threads 8". The defaults are gzip in 1 MiB blocks, one thread per core.
# Needs GNU time (apt-get install time) and about 1.5x the largest size in free disk.
set -euo pipefail
cd "$(dirname "$0")/.."
level=${1:-1}
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(16 256 1024 4096)
command -v /usr/bin/time >/dev/null || { echo "memory.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet
printf '%-10s %-12s %-12s %s\n' "input" "peak RSS" "throughput" "(level $level ${PACK_ARGS:-})"
for mib in "${sizes[@]}"; do
  benches/make-input.sh "$work/input" "$mib" >/dev/null
  # shellcheck disable=SC2086 # PACK_ARGS is a list of flags
  /usr/bin/time -v target/release/quinistry pack --level "$level" ${PACK_ARGS:-} \
    --store "$work/store" "$work/input" >"$work/out" 2>"$work/time"
  rss=$(awk -F: '/Maximum resident/ { gsub(/ /, "", $2); printf "%.1f MiB", $2 / 1024 }' "$work/time")
  rate=$(awk '$1 == "packed" && match($0, /\([0-9.]+ MiB\/s\)/) { print substr($0, RSTART + 1, RLENGTH - 2) }' "$work/out")
  printf '%-10s %-12s %-12s\n' "${mib} MiB" "$rss" "$rate"
  rm -rf "$work/store" "$work/input"
done
