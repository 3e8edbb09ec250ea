#!/usr/bin/env bash
# A shared store against a local one, in one run on this machine: a 3-node Garage cluster and
# a PostgreSQL are started for it (.ci/cluster.sh) in a temp dir and stopped at the end.
#   1. pack of SIZE_MIB (default 1024) MiB of executables: into the local store, then straight
#      into Garage (wall time, throughput, peak RSS);
#   2. 50 concurrent pulls of a 256 MiB blob through one replica that streams it, then through
#      one that redirects to Garage (aggregate throughput; the replica's CPU seconds);
#   3. manifest GETs by tag per second with wrk: a replica over PostgreSQL, a local server.
# Everything shares this machine's cores: Garage, PostgreSQL, the clients and quinistry.
# usage: benches/scale.sh [SIZE_MIB] [PULLS]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/serve-lib.sh
need curl:curl wrk:wrk psql:postgresql-client /usr/bin/time:time bc:bc
command -v garage >/dev/null || { echo "needs garage: cargo install garage --locked" >&2; exit 1; }
mib=${1:-1024}
pulls=${2:-50}
cargo build --release --quiet
bin=$PWD/target/release/quinistry
work=$(mktemp -d /tmp/quinistry-scale.XXXXXX)
chmod 711 "$work" # PostgreSQL runs as postgres (when we are root) under it
cluster=$work/cluster
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  .ci/cluster.sh stop "$cluster" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
.ci/cluster.sh start "$cluster" >/dev/null
. "$cluster/env"
psql -q "$QUINISTRY_TEST_POSTGRES" -c 'CREATE DATABASE bench'
meta=${QUINISTRY_TEST_POSTGRES%/*}/bench
export QUINISTRY_S3_ENDPOINTS=$QUINISTRY_TEST_S3_ENDPOINTS
s3=s3://$QUINISTRY_TEST_BUCKET/bench

echo "== pack of $mib MiB (default gzip, all cores)"
benches/make-input.sh "$work/input" "$mib" >/dev/null
pack() { # LABEL STORE-ARGS...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$bin" pack "$@" --tag bench/pack:v1 \
    "$work/input" >/dev/null 2>"$work/pack.log" || { cat "$work/pack.log" >&2; exit 1; }
  read -r secs kib <"$work/time"
  printf '%-22s %6.1f s  %6.0f MB/s  peak RSS %4d MiB\n' "$label" "$secs" \
    "$(echo "$mib * 1.048576 / $secs" | bc -l)" "$((kib / 1024))" >&2
  echo "$secs"
}
local_s=$(pack "local directory" --store "$work/local")
garage_s=$(pack "Garage + PostgreSQL" --store "$s3" --metadata "$meta")
printf 'Garage / local time: %.2fx\n' "$(echo "$garage_s / $local_s" | bc -l)"
rm -f "$work/input"

# Replicas over the shared store: $1 = extra flag. Sets $addr and $rpid.
replica() {
  RUST_LOG=warn "$bin" serve --push --listen 127.0.0.1:0 --store "$s3" --metadata "$meta" "$@" \
    >"$work/out.$#" 2>>"$work/replica.log" &
  rpid=$!
  pids+=("$rpid")
  addr=""
  for _ in $(seq 1 200); do
    addr=$(awk '$1 == "listening" { sub("http://", "", $2); print $2 }' "$work/out.$#")
    [ -n "$addr" ] && return
    sleep 0.05
  done
  echo "replica did not start" >&2; cat "$work/replica.log" >&2; exit 1
}
cpu_s() { # PID: user+system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

echo "== $pulls concurrent pulls of a 256 MiB blob"
replica
streamer=$addr streamer_pid=$rpid
replica --redirect
redirector=$addr redirector_pid=$rpid
head -c $((256 << 20)) /dev/urandom >"$work/blob"
digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
curl -sf -X POST --data-binary @"$work/blob" -H 'content-type: application/octet-stream' \
  "http://$streamer/v2/bench/blob/blobs/uploads/?digest=$digest" -o /dev/null
rm -f "$work/blob"
pull_all() { # ADDR PID LABEL [curl flags]
  local a=$1 p=$2 label=$3; shift 3
  local c0 t0 t1 c1
  c0=$(cpu_s "$p"); t0=$(date +%s.%N)
  local clients=()
  : >"$work/sizes"
  for _ in $(seq 1 "$pulls"); do
    curl -sf "$@" "http://$a/v2/bench/blob/blobs/$digest" -o /dev/null -w '%{size_download}\n' >>"$work/sizes" &
    clients+=($!)
  done
  wait "${clients[@]}" || true
  t1=$(date +%s.%N); c1=$(cpu_s "$p")
  local got; got=$(awk '{ s += $1 } END { printf "%.0f", s }' "$work/sizes")
  printf '%-32s %6.1f s  %7.0f MB/s aggregate  replica CPU %6.1f s  (%d of %d bytes)\n' \
    "$label" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$got / ($t1 - $t0) / 1000000" | bc -l)" \
    "$(echo "$c1 - $c0" | bc -l)" "$got" "$((pulls * (256 << 20)))"
}
pull_all "$streamer" "$streamer_pid" "streamed through the replica"
pull_all "$redirector" "$redirector_pid" "redirected to Garage (curl -L)" -L

echo "== manifest GETs by tag, wrk -t2 -c32 -d8s"
config='{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
push_small() { # ADDR
  local c l m
  c=sha256:$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  curl -sf -X POST --data-binary "$config" "http://$1/v2/bench/app/blobs/uploads/?digest=$c" -o /dev/null
  l=sha256:$(printf 'layer' | sha256sum | cut -d' ' -f1)
  curl -sf -X POST --data-binary 'layer' "http://$1/v2/bench/app/blobs/uploads/?digest=$l" -o /dev/null
  m="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$c\",\"size\":${#config}},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$l\",\"size\":5}]}"
  curl -sf -X PUT -H 'content-type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "$m" "http://$1/v2/bench/app/manifests/v1" -o /dev/null
}
rate() { # ADDR LABEL
  local r
  r=$(wrk -t2 -c32 -d8s -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$1/v2/bench/app/manifests/v1" | awk '/Requests\/sec/ { print $2 }')
  printf '%-34s %9.0f requests/s\n' "$2" "$r"
  echo "$r" >"$work/rate"
}
push_small "$streamer"
rate "$streamer" "replica, metadata in PostgreSQL"
shared_rate=$(cat "$work/rate")
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()
serve_start --push
pids+=("$pid")
push_small "$addr"
rate "$addr" "local server, metadata in files"
printf 'PostgreSQL / local: %.2fx\n' "$(echo "$shared_rate / $(cat "$work/rate")" | bc -l)"
