#!/usr/bin/env bash
# quinistry beside its peers on this machine, in one run, in interleaved rounds (each round
# runs every contender once, in a rotating order, so a slow spell of the machine hits all of
# them alike); every figure is the median of its rounds, and each ratio is quinistry's figure
# over the peer's (above 1: quinistry is faster).
#
#   1. pack, gzip -6: `quinistry pack` (parallel; and --block-size 0, one stream), against
#      `tar cf - F | pigz -6 -p$(nproc) | sha256sum`, `tar cf - F | gzip -6 | sha256sum`, and
#      the Go seed (it tars and gzips its own executable, with the input appended, at start)
#   2. pack, zstd -3: `quinistry pack --compression zstd` against `tar | zstd -3 -T0 | sha256sum`
#      and `tar | zstd -3 | sha256sum`
#   3. one download of the gzip layer with curl, from quinistry, nginx (`sendfile on`, a hard
#      link to the very blob) and the reference registry (docker-registry 2.8, the same bytes
#      copied in by skopeo)
#   4. 50 concurrent downloads of it, aggregate; quinistry's peak RSS
#   5. `wrk -t2 -c32` on the manifest by tag; nginx serves the manifest as a static file; the
#      seed its own manifest. Every server logs each request.
#   6. the first pull of a 1 GiB executable copied under a running `serve --root` 30 s
#      before: the manifest request's time, then the layer's download
#
# quinistry packs do the whole job: read, tar, sha256 of the tar, compress, sha256 of the
# layer, write, fsync. The pipelines only compress and hash, and write nothing.
#
# Set BEFORE=/path/to/an/older/quinistry to add it as a contender in every row (the
# "before" of a change, in the same run). The machine's own load is sampled before each
# row: another process eating CPU makes every server slower and the ratios meaningless.
#
# usage: benches/peers.sh [SIZE_MIB (default 256)] [ROUNDS (default 3)] [WRK_SECONDS (default 10)]
# Needs: curl nginx wrk pigz zstd skopeo docker-registry golang-go time (installed with apt
# when missing and run as root), ~4 GiB of disk, the ports it picks on 127.0.0.1, and 8080
# for the seed (its port is fixed; its rows are skipped if 8080 is taken).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-256}
rounds=${2:-3}
secs=${3:-10}
dl_rounds=$((rounds * 3))
ncpu=$(nproc)

# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need curl:curl nginx:nginx-light wrk:wrk pigz:pigz zstd:zstd skopeo:skopeo docker-registry:docker-registry go:golang-go /usr/bin/time:time

work=$(mktemp -d /tmp/quinistry-peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet
bin=$PWD/target/release/quinistry
before=${BEFORE:-}

# ---------------------------------------------------------------- helpers
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
# Runs a row: every contender once per round in a rotating order; `run_one NAME` prints one
# figure. Sets fig[NAME] to the median and all[NAME] to every round's figure.
declare -A fig all
row() {
  local n=${#contenders[@]} r i k name
  for name in "${contenders[@]}"; do all[$name]=""; done
  for ((r = 0; r < $1; r++)); do
    for ((i = 0; i < n; i++)); do
      k=$(((i + r) % n))
      name=${contenders[$k]}
      all[$name]+="$(run_one "$name") "
    done
  done
  for name in "${contenders[@]}"; do fig[$name]=$(median "${all[$name]}"); done
}
# Prints a row's figures, and the ratio of the first contender (quinistry) to each other.
show() {  # UNIT
  local first=${contenders[0]} name
  for name in "${contenders[@]}"; do
    if [ "$name" = "$first" ]; then
      printf '   %-34s %10s %-6s %s\n' "${label[$name]}" "${fig[$name]}" "$1" "(rounds: ${all[$name]% })"
    else
      printf '   %-34s %10s %-6s quinistry/this %-7s (rounds: %s)\n' "${label[$name]}" "${fig[$name]}" "$1" \
        "$(ratio "${fig[$first]}" "${fig[$name]}")" "${all[$name]% }"
    fi
  done
}
declare -A label

# ---------------------------------------------------------------- input
# The machine's executables, behind a line of text so the file is not ELF: quinistry would
# add the interpreter and libraries of an ELF file as layers of their own, and the pipelines
# pack the one file.
printf 'quinistry benchmark input\n' >"$work/input"
benches/make-input.sh "$work/made" "$mib" >/dev/null
cat "$work/made" >>"$work/input"
rm "$work/made"
truncate -s $((mib << 20)) "$work/input"
bytes=$((mib << 20))
mibs() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
echo "input: $mib MiB of this machine's executables; $ncpu cores; $(nproc --all) CPUs; $(date -u +%FT%TZ)"
echo "binary: $bin$( [ -n "$before" ] && echo "; before: $before")"

# The seed, built from the Go source the project started as, with the input appended.
seed_ok=
if ! (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
  mkdir -p "$work/seed"
  # The seed as the project started (benches/seed/main.go.txt, kept as text so that no Go
  # tool takes it for part of this crate) lacks its config types; types.go has them.
  cp "${SEED:-benches/seed/main.go.txt}" "$work/seed/main.go" 2>/dev/null || true
  cp benches/seed/types.go "$work/seed/types.go"
  if [ -s "$work/seed/main.go" ] && (cd "$work/seed" && GO111MODULE=off GOCACHE=$work/gocache go build -o seed main.go types.go) 2>"$work/seed/build.log"; then
    cat "$work/seed/seed" "$work/input" >"$work/seed/seed-big"
    chmod +x "$work/seed/seed-big"
    seed_ok=1
  else
    echo "(seed rows skipped: the seed does not build here: $(head -c 300 "$work/seed/build.log"))"
  fi
else
  echo "(seed rows skipped: port 8080 is taken)"
fi

# ---------------------------------------------------------------- 1, 2: packing
pack_q() {  # BINARY ARGS...: seconds of a whole pack into a fresh store
  local b=$1 t
  shift
  rm -rf "$work/pstore"
  t=$(now)
  "$b" pack --no-cache --store "$work/pstore" --tag bench/in:v1 "$@" "$work/input" >"$work/pack.out" 2>/dev/null
  elapsed "$t"
}
pipe() {  # COMPRESSOR...: seconds of tar | COMPRESSOR | sha256sum
  local t
  t=$(now)
  tar cf - -C "$work" input | "$@" | sha256sum >/dev/null
  elapsed "$t"
}
seed_pack() {  # seconds from start to the seed answering (it packs before it listens)
  local t p
  t=$(now)
  /usr/bin/time -f %M -o "$work/seed/rss" "$work/seed/seed-big" 2>/dev/null &
  p=$!
  wait_http http://127.0.0.1:8080/v2/ >/dev/null
  elapsed "$t"
  pkill -x seed-big 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
run_one() {
  local s
  case $1 in
    q) s=$(pack_q "$bin") ;;
    q-before) s=$(pack_q "$before") ;;
    q-single) s=$(pack_q "$bin" --block-size 0) ;;
    pigz) s=$(pipe pigz -6 -p"$ncpu") ;;
    gzip) s=$(pipe gzip -6) ;;
    seed) s=$(seed_pack) ;;
    qz) s=$(pack_q "$bin" --compression zstd) ;;
    qz-before) s=$(pack_q "$before" --compression zstd) ;;
    zstd-T0) s=$(pipe zstd -3 -T0 -q) ;;
    zstd) s=$(pipe zstd -3 -q) ;;
  esac
  mibs "$s"
}
label=([q]="quinistry pack (gzip -6)" [q-before]="quinistry pack, before" [q-single]="quinistry pack --block-size 0"
  [pigz]="tar | pigz -6 -p$ncpu | sha256sum" [gzip]="tar | gzip -6 | sha256sum" [seed]="seed (Go), at start"
  [qz]="quinistry pack --compression zstd" [qz-before]="quinistry pack zstd, before"
  [zstd-T0]="tar | zstd -3 -T0 | sha256sum" [zstd]="tar | zstd -3 | sha256sum")

echo
echo "== 1. pack, gzip level 6, MiB/s of input ($rounds rounds; $(load))"
contenders=(q ${before:+q-before} q-single pigz gzip ${seed_ok:+seed})
row "$rounds"
show MiB/s
qsize=$(awk '$1 == "layer" { print $3 }' "$work/pack.out" 2>/dev/null || true)
rm -rf "$work/pstore"
"$bin" pack --no-cache --store "$work/pstore" --tag bench/in:v1 "$work/input" >"$work/pack.out" 2>/dev/null
qsize=$(awk '$1 == "layer" { print $3 }' "$work/pack.out")
gsize=$(tar cf - -C "$work" input | gzip -6 | wc -c)
psize=$(tar cf - -C "$work" input | pigz -6 -p"$ncpu" | wc -c)
echo "   layer sizes: quinistry $qsize B, gzip -6 $gsize B ($(awk -v a="$qsize" -v b="$gsize" 'BEGIN { printf "%+.2f%%", 100 * (a - b) / b }') against gzip -6), pigz $psize B"
[ -n "$seed_ok" ] && echo "   seed peak RSS: $(( $(tail -n 1 "$work/seed/rss" 2>/dev/null | grep -E "^[0-9]+$" || echo 0) / 1024 )) MiB"

echo
echo "== 2. pack, zstd level 3, MiB/s of input ($rounds rounds; $(load))"
contenders=(qz ${before:+qz-before} zstd-T0 zstd)
row "$rounds"
show MiB/s

# ---------------------------------------------------------------- servers
# The store that every server serves: one gzip pack of the input.
store=$work/store
"$bin" pack --store "$store" --tag bench/in:v1 "$work/input" >"$work/serve-pack.out" 2>/dev/null
layer=$(awk '$1 == "layer" { print $2 }' "$work/serve-pack.out")
size=$(awk '$1 == "layer" { print $3 }' "$work/serve-pack.out")
manifest=$(awk '$1 == "manifest" { print $2 }' "$work/serve-pack.out")
rm -f "$work/input"

start_q() {  # NAME BINARY: a quinistry server on the store, logging to a file
  local p
  p=$(port)
  RUST_LOG=info "$2" serve --store "$store" --listen "127.0.0.1:$p" --no-prepack >"$work/$1.out" 2>"$work/$1.log" &
  pids+=($!)
  eval "pid_$1=$!"
  url[$1]=http://127.0.0.1:$p
  wait_http "${url[$1]}/v2/"
}
declare -A url
start_q q "$bin"
if [ -n "$before" ]; then
  # The "before" build may not know --no-prepack; nothing is on demand here anyway.
  p=$(port)
  RUST_LOG=info "$before" serve --store "$store" --listen "127.0.0.1:$p" >"$work/q-before.out" 2>"$work/q-before.log" &
  pids+=($!)
  url[q-before]=http://127.0.0.1:$p
  wait_http "${url[q-before]}/v2/"
fi

# nginx: the same files, hard links into the store (same inodes, same page cache).
www=$work/www
mkdir -p "$www"
ln "$store/blobs/sha256/${layer#sha256:}" "$www/layer"
ln "$store/blobs/sha256/${manifest#sha256:}" "$www/manifest.json"
nport=$(port)
cat >"$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
daemon off;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
events { worker_connections 1024; }
http {
  access_log $work/nginx-access.log;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { application/vnd.oci.image.manifest.v1+json json; }
  server { listen 127.0.0.1:$nport; root $www; }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
url[nginx]=http://127.0.0.1:$nport
wait_http "${url[nginx]}/manifest.json"

# The reference registry, given the same image by skopeo (blobs copied as they are).
rport=$(port)
cat >"$work/registry.yml" <<CONF
version: 0.1
log: { level: info, accesslog: { disabled: false } }
storage: { filesystem: { rootdirectory: $work/registry }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$rport }
CONF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
url[registry]=http://127.0.0.1:$rport
wait_http "${url[registry]}/v2/"
skopeo copy -q --src-tls-verify=false --dest-tls-verify=false --preserve-digests \
  "docker://${url[q]#http://}/bench/in:v1" "docker://${url[registry]#http://}/bench/in:v1"

if [ -n "$seed_ok" ]; then
  "$work/seed/seed" >/dev/null 2>"$work/seed.log" &
  pids+=($!)
  url[seed]=http://127.0.0.1:8080
  wait_http "${url[seed]}/v2/"
fi
cat "$store/blobs/sha256/"* >/dev/null # warm the page cache

blob_url() {
  case $1 in
    nginx) echo "${url[nginx]}/layer" ;;
    *) echo "${url[$1]}/v2/bench/in/blobs/$layer" ;;
  esac
}
manifest_url() {
  case $1 in
    nginx) echo "${url[nginx]}/manifest.json" ;;
    seed) echo "${url[seed]}/v2/quinistry/manifests/latest" ;;
    *) echo "${url[$1]}/v2/bench/in/manifests/v1" ;;
  esac
}
label=([q]="quinistry" [q-before]="quinistry, before" [nginx]="nginx (sendfile on)"
  [registry]="docker-registry 2.8 (registry:2)" [seed]="seed (Go)")

echo
echo "== 3. one download of the $((size >> 20)) MiB layer, MiB/s ($dl_rounds rounds; $(load))"
run_one() {
  curl -sf -o /dev/null -w '%{speed_download}' "$(blob_url "$1")" | awk '{ printf "%.0f", $1 / 1048576 }'
}
contenders=(q ${before:+q-before} nginx registry)
echo 5 >"/proc/$pid_q/clear_refs"
row "$dl_rounds"
show MiB/s
echo "   quinistry peak RSS: $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid_q/status")"

echo
echo "== 4. 50 concurrent downloads of the layer, aggregate MiB/s ($rounds rounds; $(load))"
run_one() {
  local t short
  t=$(now)
  seq 1 50 | xargs -P 50 -I{} sh -c "test \$(curl -sf -o /dev/null -w '%{size_download}' '$(blob_url "$1")') -eq $size || echo SHORT" >"$work/short"
  short=$(wc -l <"$work/short")
  [ "$short" = 0 ] || { echo "peers.sh: $short of 50 downloads from $1 were short" >&2; exit 1; }
  awk -v s="$(elapsed "$t")" -v b="$((50 * size))" 'BEGIN { printf "%.0f", b / 1048576 / s }'
}
echo 5 >"/proc/$pid_q/clear_refs"
row "$rounds"
show MiB/s
echo "   quinistry peak RSS: $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid_q/status")"

echo
echo "== 5. manifest GET by tag, wrk -t2 -c32 -d${secs}s, requests/s ($rounds rounds; $(load))"
run_one() {
  wrk -t2 -c32 -d"${secs}s" -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$(manifest_url "$1")" |
    awk '/Requests\/sec/ { printf "%.0f", $2 } /Non-2xx/ { print "peers.sh: non-2xx answers" > "/dev/stderr"; exit 1 }'
}
contenders=(q ${before:+q-before} nginx ${seed_ok:+seed} registry)
row "$rounds"
show req/s
echo "   access-log lines: quinistry $(grep -c 'quinistry::access' "$work/q.log"), nginx $(wc -l <"$work/nginx-access.log")"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# ---------------------------------------------------------------- 6: first pull
echo
echo "== 6. first pull of a 1 GiB executable copied under a running serve --root 30 s before ($(load))"
printf '#!/bin/sh\necho big\nexit 0\n' >"$work/big"
benches/make-input.sh "$work/made" 1024 >/dev/null
cat "$work/made" >>"$work/big"
rm "$work/made"
chmod +x "$work/big"
first_pull() {  # NAME BINARY
  local p t m mt lt
  rm -rf "$work/rstore" "$work/root"
  mkdir -p "$work/root"
  p=$(port)
  RUST_LOG=info "$2" serve --store "$work/rstore" --listen "127.0.0.1:$p" --root "$work/root" >"$work/r.out" 2>"$work/r.log" &
  pids=($!)
  wait_http "http://127.0.0.1:$p/v2/"
  cp "$work/big" "$work/root/big"
  sleep 30
  t=$(now)
  m=$(curl -sfI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$p/v2/big/manifests/latest" |
    awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r')
  mt=$(elapsed "$t")
  l=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$p/v2/big/manifests/$m" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["digest"])')
  t=$(now)
  curl -sf -o /dev/null "http://127.0.0.1:$p/v2/big/blobs/$l"
  lt=$(elapsed "$t")
  printf '   %-34s manifest after %7.3f s, then the layer in %.2f s\n' "$1" "$mt" "$lt"
  kill "${pids[0]}"
  wait 2>/dev/null || true
  pids=()
}
first_pull quinistry "$bin"
[ -n "$before" ] && first_pull "quinistry, before" "$before"
echo
echo "done: $(date -u +%FT%TZ)"
