#!/usr/bin/env bash
# Packing throughput and peak memory of quinistry against the shell pipeline it replaces,
# on the same binary-like file in the same run:
#   quinistry pack --level 6 FILE            (read, tar, sha256, gzip, sha256, write, fsync)
#   tar cf - FILE | gzip -6 | sha256sum      (no write, no second hash: a generous baseline)
# usage: benches/compare.sh [SIZE_MIB (default 1024)]   Needs: GNU time (apt-get install time).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v /usr/bin/time >/dev/null || { echo "compare.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

cargo build --release --quiet
bin=target/release/quinistry
benches/make-input.sh "$work/input" "$mib" >/dev/null

now() { date +%s.%N; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
bytes=$((mib * 1024 * 1024))

t0=$(now)
/usr/bin/time -v "$bin" pack --level 6 --store "$work/store" "$work/input" >"$work/out" 2>"$work/time"
t1=$(now)
q_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
rss_kib=$(awk -F: '/Maximum resident/ { gsub(/ /, "", $2); print $2 }' "$work/time")
layer=$(awk '$1 == "layer" { print $3 }' "$work/out")

t0=$(now)
tar cf - -C "$work" input | gzip -6 | sha256sum >/dev/null
t1=$(now)
g_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

q=$(rate "$bytes" "$q_s"); g=$(rate "$bytes" "$g_s")
echo "input                      ${mib} MiB binary-like (benches/make-input.sh)"
echo "quinistry pack --level 6   ${q} MiB/s  (${q_s} s, layer ${layer} B, peak RSS $((rss_kib / 1024)) MiB)"
echo "tar | gzip -6 | sha256sum  ${g} MiB/s  (${g_s} s)"
awk -v q="$q" -v g="$g" 'BEGIN { printf "ratio                      %.2fx\n", q / g }'
