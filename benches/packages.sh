#!/usr/bin/env bash
# Images of installed programs with their packages (issue 16's figures):
#  1. planning time of python3's image (the dpkg database read, the package and ELF
#     closures), median of ROUNDS, from the pack's own debug line;
#  2. python3's image: layers, compressed and uncompressed size, against the sum of its
#     packages' Installed-Size;
#  3. first pull (`skopeo copy`, the server packs), the same again (the blobs are stored),
#     and after a restart (the layer cache), for python3 and for a SIZE_MIB program (an ELF
#     program with binary-like data appended, whose libc brings libc6's packages).
# usage: benches/packages.sh [SIZE_MIB (default 1024)] [ROUNDS (default 3)]
# Needs skopeo, curl, dpkg-query, a C compiler, and about 3x SIZE_MIB of free disk.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
rounds=${2:-3}
for tool in skopeo curl cc dpkg-query; do
  command -v "$tool" >/dev/null || { echo "packages.sh: needs $tool" >&2; exit 1; }
done
work=$(mktemp -d /tmp/quinistry-packages-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet
bin=$PWD/target/release/quinistry

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# 1. Planning.
for _ in $(seq 1 "$rounds"); do
  RUST_LOG=quinistry::pack=debug "$bin" pack --no-cache --store "$work/plan-store" /usr/bin/python3 \
    2>&1 >/dev/null | sed -n 's/.*planned image.* ms=\([0-9.]*\).*/\1/p'
done | median | awk '{ printf "planning   python3: %.0f ms (median)\n", $1 }'

# 2. Size against Installed-Size.
out=$("$bin" pack --store "$work/size-store" /usr/bin/python3 2>/dev/null)
packages=$(echo "$out" | awk '$1 == "packages" { for (i = 5; i <= NF; i++) print $i }')
installed_kib=$(for p in $packages; do dpkg-query -W -f '${Installed-Size}\n' "$p"; done | awk '{ s += $1 } END { print s }')
echo "$out" | awk -v n="$(echo "$packages" | wc -w)" -v kib="$installed_kib" '
  $1 == "layer" { layers++; gz += $3 }
  $1 == "diff_id" { tar += $3 }
  END {
    printf "python3    %d packages, %d layers: %.1f MiB compressed, %.1f MiB uncompressed; Installed-Size sum %.1f MiB (tar/installed %.2f)\n",
      n, layers, gz / 1048576, tar / 1048576, kib / 1024, tar / (kib * 1024)
  }'

# 3. Pulls.
mkdir -p "$work/root"
big=$work/root/big
printf '#include <stdio.h>\nint main(void) { puts("big ran"); return 0; }\n' >"$work/big.c"
cc -o "$big" "$work/big.c"
benches/make-input.sh "$work/data" "$mib" >/dev/null
cat "$work/data" >>"$big"
rm "$work/data"
touch -d '1 hour ago' "$big"

# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
start() { serve_start --image python3=/usr/bin/python3 --root "$work/root"; }
stop() { serve_stop; }
copy() {
  rm -rf "$work/copy"
  local t0; t0=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$addr/$1:latest" "dir:$work/copy"
  secs "$t0" "$(now)"
}
start
for image in python3 big; do
  first=$(copy "$image")
  again=$(copy "$image")
  stop; start
  restarted=$(copy "$image")
  layers=$(ls "$work/copy" | grep -cv -e manifest.json -e version)
  echo "pull       $image ($((layers - 1)) layers): first $first s (packed), again $again s, after a restart $restarted s (layer cache)"
done
stop
