#!/usr/bin/env bash
# On-demand serving of a large executable with `serve --root`: the first pull packs it, a
# restart serves it from the layer cache, a change packs it again.
#  1. `skopeo copy` of a SIZE_MIB executable (a real ELF program with binary-like data
#     appended; it still runs) from a fresh store: time, and the server's peak RSS;
#  2. restart: the server's CPU time and the wall time of the first manifest request (what a
#     pull waits for before any layer byte moves), then a whole `skopeo copy` again;
#  3. the file changed (one byte): the next manifest is new, and holds the new bytes.
# usage: benches/ondemand.sh [SIZE_MIB (default 1024)] [LEVEL (default 6)]
# Needs skopeo, curl and a C compiler, and about 3x SIZE_MIB of free disk.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
level=${2:-6}
for tool in skopeo curl cc; do
  command -v "$tool" >/dev/null || { echo "ondemand.sh: needs $tool" >&2; exit 1; }
done
work=$(mktemp -d /tmp/quinistry-ondemand-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet
bin=$PWD/target/release/quinistry

mkdir -p "$work/root/tools"
big=$work/root/tools/big
printf '#include <stdio.h>\nint main(void) { puts("big ran"); return 0; }\n' >"$work/big.c"
cc -o "$big" "$work/big.c"
benches/make-input.sh "$work/data" "$mib" >/dev/null
cat "$work/data" >>"$big"
rm "$work/data"
touch -d '1 hour ago' "$big"
echo "input      tools/big: $(( $(stat -c %s "$big") / 1048576 )) MiB (an ELF program + binary-like data), level $level"

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# utime + stime of a process, in seconds.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
peak() { awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$1/status"; }

# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
start() { serve_start --level "$level" --root "$work/root"; }
stop() { serve_stop; }
head_digest() {
  curl -sfI -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$addr/v2/tools/big/manifests/latest" | awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r'
}
copy() {
  rm -rf "$work/copy"
  skopeo copy -q --src-tls-verify=false "docker://$addr/tools/big:latest" "dir:$work/copy"
}
# The executable inside the copied layer, hashed, against the file.
check_copy() {
  local layer
  layer=$(ls -S "$work/copy" | head -1)
  [ "$(tar xzOf "$work/copy/$layer" usr/local/bin/big | sha256sum | cut -d' ' -f1)" = \
    "$(sha256sum <"$big" | cut -d' ' -f1)" ] || { echo "the copied layer does not hold the file" >&2; exit 1; }
}

start
t0=$(now); copy; t1=$(now)
check_copy
echo "1. first pull (packs)    skopeo copy $(secs "$t0" "$t1") s; server CPU $(cpu "$pid") s; server peak RSS $(peak "$pid")"
first=$(head_digest)
stop

start
c0=$(cpu "$pid"); t0=$(now); d=$(head_digest); t1=$(now); c1=$(cpu "$pid")
[ "$d" = "$first" ] || { echo "restart served another manifest: $d != $first" >&2; exit 1; }
# The server's own time for that request, from its access log.
served_ms=$(grep 'method=HEAD path=/v2/tools/big/manifests/latest' "$work/serve.log" | tail -1 | sed 's/.* ms=\([0-9.]*\).*/\1/')
echo "2. after restart         first manifest HEAD: ${served_ms} ms in the server (access log), $(secs "$t0" "$t1") s for curl, server CPU $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }') s (10 ms ticks)"
t0=$(now); copy; t1=$(now)
check_copy
echo "                         skopeo copy $(secs "$t0" "$t1") s; server peak RSS $(peak "$pid")"

printf 'x' | dd of="$big" bs=1 seek=100000 conv=notrunc status=none
touch -d '1 hour ago' "$big"
t0=$(now); d=$(head_digest); t1=$(now)
[ -n "$d" ] && [ "$d" != "$first" ] || { echo "the changed file did not give a new manifest" >&2; exit 1; }
copy
check_copy
echo "3. file changed          new manifest after $(secs "$t0" "$t1") s (repacked); copy holds the new bytes; server peak RSS $(peak "$pid")"
stop
echo "   packs logged: $(grep -c 'packing layer:' "$work/serve.log"), cache hits: $(grep -c 'layer cache hit' "$work/serve.log")"
