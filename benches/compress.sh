#!/usr/bin/env bash
# Packing throughput per compression, against the standard compressors on the same file in
# the same run. Each round runs every command once, in turn (so a slow spell of the machine
# hits all of them alike); the figure is each command's median over the rounds.
#
#   quinistry pack --block-size 0            single-stream gzip -6: one deflate stream, one core
#   quinistry pack                           parallel gzip -6, 1 MiB blocks, one thread per core
#   quinistry pack --compression zstd        zstd -3
#   gzip -6 / pigz -6 -p2 / zstd -3 < FILE > OUT
#
# quinistry does more than the others: it reads the file into a tar stream, hashes the tar
# and the compressed bytes, writes the blob and fsyncs it. The others only compress, into a
# file on the same disk, without fsync.
#
# usage: benches/compress.sh [SIZE_MIB (default 512)] [ROUNDS (default 3)]
# Needs: pigz, zstd, GNU time (apt-get install pigz zstd time).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-512}
rounds=${2:-3}
for tool in gzip pigz zstd /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "compress.sh: needs $tool (apt-get install pigz zstd time)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
bin=$PWD/target/release/quinistry
benches/make-input.sh "$work/input" "$mib" >/dev/null
bytes=$((mib * 1024 * 1024))

names=(q-single q-parallel q-zstd gzip pigz zstd)
declare -A cmd=(
  [q-single]="$bin pack --no-cache --store $work/store --tag b:b --block-size 0 $work/input"
  [q-parallel]="$bin pack --no-cache --store $work/store --tag b:b $work/input"
  [q-zstd]="$bin pack --no-cache --store $work/store --tag b:b --compression zstd $work/input"
  [gzip]="gzip -6 -c $work/input"
  [pigz]="pigz -6 -p2 -c $work/input"
  [zstd]="zstd -3 -q -c $work/input"
)
declare -A times size rss
for ((r = 1; r <= rounds; r++)); do
  for n in "${names[@]}"; do
    rm -rf "$work/store" "$work/out"
    # %e: wall seconds; %M: peak RSS in KiB.
    /usr/bin/time -f "%e %M" -o "$work/time" ${cmd[$n]} >"$work/out" 2>/dev/null
    read -r secs kib <"$work/time"
    times[$n]+="$secs "
    rss[$n]=$kib
    if [[ $n == q-* ]]; then
      size[$n]=$(awk '$1 == "layer" { print $3 }' "$work/out")
    else
      size[$n]=$(stat -c %s "$work/out")
    fi
  done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
declare -A mibs
echo "input: $mib MiB binary-like (benches/make-input.sh), $rounds rounds, $(nproc) cores"
printf '%-44s %9s %8s %13s %9s  %s\n' command "MiB/s" "median" "output B" "peak RSS" "all runs (s)"
for n in "${names[@]}"; do
  m=$(median "${times[$n]}")
  mibs[$n]=$(rate "$m")
  label=${cmd[$n]//$work\//}
  label=${label//$bin/quinistry}
  label=${label/ --no-cache --store store --tag b:b/}
  printf '%-44s %9s %7ss %13s %6s MiB  %s\n' "$label" "${mibs[$n]}" "$m" "${size[$n]}" \
    $((rss[$n] / 1024)) "${times[$n]}"
done
ratio() { awk -v a="${mibs[$1]}" -v b="${mibs[$2]}" 'BEGIN { printf "%.2fx", a / b }'; }
echo
echo "parallel gzip / single-stream gzip   $(ratio q-parallel q-single)"
echo "parallel gzip / gzip -6              $(ratio q-parallel gzip)"
echo "parallel gzip / pigz -6 -p2          $(ratio q-parallel pigz)"
echo "quinistry zstd / zstd -3             $(ratio q-zstd zstd)"
