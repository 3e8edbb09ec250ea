#!/usr/bin/env bash
# Shared-store throughput: a MIB-sized blob pushed and pulled through a replica (`quinistry
# serve` over S3 + PostgreSQL), beside object_store's own put and get of the same bytes to
# the same storage cluster (tools/objstore.rs: its BufWriter with defaults, one streamed get).
# Each round writes a new random blob and runs, in an order that alternates each round:
#   object_store   put, then get                                 (to the first endpoint)
#   replica        monolithic push (POST ?digest=, the body is the blob), then a pull (GET)
# with curl on loopback; medians of the rounds, and the replica's ratio to object_store.
# The replica is a release build with default settings (every endpoint given, as in
# production); it is restarted with a fresh store prefix for the run.
#
# usage: benches/shared.sh [MIB (default 1024)] [ROUNDS (default 3)]
# Needs the storage cluster of .ci/cluster.sh: its env file sourced (QUINISTRY_TEST_*), or
# garage and PostgreSQL's server installed, and then one is started here and stopped after.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
rounds=${2:-3}
# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need curl:curl psql:postgresql-client
work=$(mktemp -d /tmp/quinistry-shared-bench.XXXXXX)
server=
cluster=
cleanup() {
  [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  [ -n "${db:-}" ] && { psql -q "$QUINISTRY_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true; }
  [ -n "$cluster" ] && { .ci/cluster.sh stop "$cluster" >/dev/null 2>&1 || true; }
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${QUINISTRY_TEST_S3_ENDPOINTS:-}" ]; then
  cluster=$work/cluster
  .ci/cluster.sh start "$cluster" >/dev/null
  # shellcheck disable=SC1091
  . "$cluster/env"
fi
cargo build --release -q
cargo build --release -q --example objstore
bin=$PWD/target/release/quinistry
objstore=$PWD/target/release/examples/objstore
first=${QUINISTRY_TEST_S3_ENDPOINTS%%,*}
prefix=bench-$(date +%s)-$$
# A database of its own: a metadata database belongs to one store (prefix).
db=quinistry_bench_$$
psql -q "$QUINISTRY_TEST_POSTGRES" -c "CREATE DATABASE $db" >/dev/null
metadata=${QUINISTRY_TEST_POSTGRES%/*}/$db

endpoints=()
for e in ${QUINISTRY_TEST_S3_ENDPOINTS//,/ }; do endpoints+=(--s3-endpoint "$e"); done
echo x >"$work/x"
"$bin" serve --push --store "s3://$QUINISTRY_TEST_BUCKET/$prefix" --metadata "$metadata" \
  "${endpoints[@]}" --listen 127.0.0.1:0 "$work/x" >"$work/out" 2>"$work/log" &
server=$!
for _ in $(seq 300); do grep -q '^listening' "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(awk '$1 == "listening" { sub("http://", "", $2); print $2 }' "$work/out")
[ -n "$addr" ] || { cat "$work/log" >&2; exit 1; }

mibs() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.1f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
load() { echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; }

declare -A rate=([put]="" [get]="" [push]="" [pull]="")
object_store() {
  "$objstore" "$first" "$QUINISTRY_TEST_BUCKET" "$prefix/objstore-$1" "$work/blob" >"$work/obj.out"
  rate[put]+="$(mibs "$(awk '$1 == "put" { print $2 }' "$work/obj.out") ") "
  rate[get]+="$(mibs "$(awk '$1 == "get" { print $2 }' "$work/obj.out") ") "
}
replica() {
  local digest t0 t1 t2 code
  digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
  t0=$(now)
  code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -T "$work/blob" "http://$addr/v2/bench/r$1/blobs/uploads?digest=$digest")
  t1=$(now)
  [ "$code" = 201 ] || { echo "shared.sh: push answered $code" >&2; tail "$work/log" >&2; exit 1; }
  code=$(curl -sS -o /dev/null -w '%{http_code} %{size_download}' "http://$addr/v2/bench/r$1/blobs/$digest")
  t2=$(now)
  [ "$code" = "200 $((mib << 20))" ] || { echo "shared.sh: pull answered $code" >&2; exit 1; }
  rate[push]+="$(mibs "$(echo "$t1 - $t0" | bc -l)") "
  rate[pull]+="$(mibs "$(echo "$t2 - $t1" | bc -l)") "
}

echo "shared store: $mib MiB blobs, $rounds rounds; endpoints $QUINISTRY_TEST_S3_ENDPOINTS; $(nproc) CPUs; $(date -u +%FT%TZ)"
for round in $(seq "$rounds"); do
  head -c $((mib << 20)) /dev/urandom >"$work/blob"
  echo "round $round ($(load))"
  if ((round % 2)); then object_store "$round"; replica "$round"; else replica "$round"; object_store "$round"; fi
done
echo
printf '%-34s %10s   %s\n' "MiB/s (median of $rounds)" "replica" "object_store (replica's ratio)"
for pair in "push put" "pull get"; do
  set -- $pair
  q=$(median "${rate[$1]}"); o=$(median "${rate[$2]}")
  printf '%-34s %10s   %s (%s)   rounds: %s / %s\n' "$1 / $2" "$q" "$o" "$(ratio "$q" "$o")" "${rate[$1]% }" "${rate[$2]% }"
done
echo "replica peak RSS: $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$server/status"); $(load)"
