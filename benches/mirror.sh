#!/usr/bin/env bash
# quinistry's pull-through mirror beside distribution's own proxy mode (Debian's
# docker-registry 2.8 with `proxy: remoteurl`), both in front of one upstream (another
# docker-registry 2.8 holding an image of 5 random layers, MiB each as given), in
# interleaved rounds (the order rotates, so a slow spell of the machine hits both alike).
# Each figure is the median of its rounds; each ratio is distribution's time over
# quinistry's (above 1: quinistry is faster).
#
#   1. cold pull: a fresh store; the manifest, then the config and layers 3 at a time (as
#      docker pulls), each read to the end by curl
#   2. warm pull: the same pull again
#   3. 10 clients pulling at once into another fresh store (all done)
#
# Beside each time, the bytes the upstream sent for that pull (its access log): the image
# once is the goal. Both servers run with their defaults (quinistry: `serve --mirror
# up=URL`; distribution: its proxy configuration with a filesystem store), each on a
# fresh directory; the peak RSS of each server over a round is printed too.
#
# usage: benches/mirror.sh [LAYER_MIB (default 100)] [ROUNDS (default 3)]
# Needs: curl jq docker-registry python3 (installed with apt when missing and run as root),
# 6 x the image's size of disk, ports it picks on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
layer_mib=${1:-100}
rounds=${2:-3}
layers=5

# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need curl:curl jq:jq docker-registry:docker-registry python3:python3

work=$(mktemp -d /tmp/quinistry-mirror.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet
bin=$PWD/target/release/quinistry

# ---------------------------------------------------------------- the upstream
uport=$(port)
upstream=http://127.0.0.1:$uport
registry_conf() {  # ADDR DIR [PROXY_URL]
  printf 'version: 0.1\nlog: { level: warn, accesslog: { disabled: %s } }\n' "$([ -z "${3:-}" ] && echo false || echo true)"
  printf 'storage: { filesystem: { rootdirectory: %s }, delete: { enabled: true } }\n' "$2"
  printf 'http: { addr: %s }\n' "$1"
  [ -z "${3:-}" ] || printf 'proxy: { remoteurl: %s }\n' "$3"
}
registry_conf "127.0.0.1:$uport" "$work/upstream" >"$work/upstream.yml"
docker-registry serve "$work/upstream.yml" >"$work/upstream.access" 2>"$work/upstream.log" &
pids+=($!)
wait_http "$upstream/v2/"

push_blob() {  # FILE: uploads it (monolithic), prints its digest
  local digest loc
  digest=sha256:$(sha256sum "$1" | cut -d' ' -f1)
  loc=$(curl -sf -X POST -D - -o /dev/null "$upstream/v2/bench/big/blobs/uploads/" |
    awk 'tolower($1) == "location:" { sub("\r", "", $2); print $2 }')
  case "$loc" in http*) ;; *) loc=$upstream$loc ;; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$loc&digest=$digest" -o /dev/null
  echo "$digest"
}
descs=()
for i in $(seq 1 $layers); do
  head -c $((layer_mib << 20)) /dev/urandom >"$work/layer"
  d=$(push_blob "$work/layer")
  descs+=("{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$d\",\"size\":$((layer_mib << 20))}")
done
rm "$work/layer"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/config"
config=$(push_blob "$work/config")
layers_json=$(IFS=,; echo "${descs[*]}")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
  "$config" "$(stat -c %s "$work/config")" "$layers_json" >"$work/manifest"
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary @"$work/manifest" "$upstream/v2/bench/big/manifests/v1" -o /dev/null
image_bytes=$(jq '[.config.size, .layers[].size] | add' "$work/manifest")
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }

# Bytes of blobs the upstream has sent so far (its access log: status, then bytes).
upstream_bytes() {
  awk '$6 == "\"GET" && $7 ~ /^\/v2\/bench\/big\/blobs\// && $9 == 200 { s += $10 } END { printf "%.0f", s }' \
    "$work/upstream.access"
}

# ---------------------------------------------------------------- the mirrors
declare -A label=([q]="quinistry serve --mirror" [d]="distribution 2.8 proxy")
contenders=(q d)
start_mirror() {  # NAME: a fresh store; sets $url, $name, $mpid
  rm -rf "$work/store-d"
  case $1 in
  q)
    rm -rf "$work/store"
    serve_start --no-prepack --mirror "up=$upstream"
    mpid=$pid
    url=http://$addr
    name=up/bench/big
    ;;
  d)
    local p
    p=$(port)
    registry_conf "127.0.0.1:$p" "$work/store-d" "$upstream" >"$work/proxy.yml"
    docker-registry serve "$work/proxy.yml" >/dev/null 2>>"$work/d.log" &
    mpid=$!
    url=http://127.0.0.1:$p
    wait_http "$url/v2/"
    name=bench/big
    ;;
  esac
}
stop_mirror() { kill "$mpid"; wait "$mpid" 2>/dev/null || true; pid=; rm -rf "$work/store" "$work/store-d"; }
peak_rss() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$mpid/status"; }

# One pull as docker makes it: the manifest, then config and layers 3 at a time.
pull() {
  local m
  m=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$url/v2/$name/manifests/v1")
  jq -r '.config.digest, .layers[].digest' <<<"$m" |
    xargs -P3 -I{} curl -sf -o /dev/null "$url/v2/$name/blobs/{}"
}
pulls() {  # N clients at once
  local i ps=()
  for ((i = 0; i < $1; i++)); do pull & ps+=($!); done
  for p in "${ps[@]}"; do wait "$p"; done
}
timed() {  # N: seconds for N clients' pulls, and the upstream's bytes for them
  local t0 b0
  b0=$(upstream_bytes)
  t0=$(now)
  pulls "$1"
  echo "$(elapsed "$t0") $(awk -v a="$(upstream_bytes)" -v b="$b0" 'BEGIN { printf "%.0f", a - b }')"
}

declare -A cold warm ten cold_up warm_up ten_up rss
for c in "${contenders[@]}"; do cold[$c]=""; warm[$c]=""; ten[$c]=""; rss[$c]=""; done
echo "image: $layers layers of $layer_mib MiB + config, $(mb "$image_bytes") MB; $rounds rounds; $(nproc) cores; $(date -u +%FT%TZ)"
echo "$(load)"
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < ${#contenders[@]}; i++)); do
    c=${contenders[$(((i + r) % ${#contenders[@]}))]}
    start_mirror "$c"
    read -r t b <<<"$(timed 1)"; cold[$c]+="$t "; cold_up[$c]=$b
    read -r t b <<<"$(timed 1)"; warm[$c]+="$t "; warm_up[$c]=$b
    stop_mirror
    start_mirror "$c"
    read -r t b <<<"$(timed 10)"; ten[$c]+="$t "; ten_up[$c]=$b
    rss[$c]+="$(peak_rss) "
    stop_mirror
  done
done
echo "$(load)"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2fx", b / a; else print "-" }'; }
row() {  # TITLE ARRAY UPSTREAM_ARRAY
  local -n times=$2 up=$3
  echo "== $1"
  for c in "${contenders[@]}"; do
    printf '   %-26s %8s s  upstream %5s MB  (rounds: %s)\n' "${label[$c]}" "$(median "${times[$c]}")" \
      "$(mb "${up[$c]}")" "${times[$c]% }"
  done
  echo "   quinistry vs distribution: $(ratio "$(median "${times[q]}")" "$(median "${times[d]}")") (distribution's time / quinistry's)"
}
row "cold pull, one client" cold cold_up
row "warm pull, one client" warm warm_up
row "cold pull, 10 clients at once" ten ten_up
echo "== peak RSS over a round (MiB): quinistry $(median "${rss[q]}"), distribution $(median "${rss[d]}")"
