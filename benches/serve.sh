#!/usr/bin/env bash
# Serving benchmark: quinistry beside nginx (sendfile on), same files, same run, same machine.
#  1. one download of a 1 GiB blob (median of RUNS), and quinistry's peak RSS during them;
#  2. 50 concurrent downloads of a 100 MiB blob, and quinistry's peak RSS during them;
#  3. wrk -t2 -c32 on the manifest endpoint, beside nginx serving a static file of the same size.
# Both servers log every request to a file, as they would in production.
# usage: benches/serve.sh [RUNS (default 3)] [SECONDS of wrk (default 10)]
# Needs curl, nginx and wrk (apt-get install curl nginx-light wrk) and ~2.5 GiB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-10}
for tool in curl:curl nginx:nginx-light wrk:wrk; do
  command -v "${tool%%:*}" >/dev/null || { echo "serve.sh: needs ${tool%%:*} (apt-get install ${tool#*:})" >&2; exit 1; }
done
work=$(mktemp -d /tmp/quinistry-serve-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet
bin=target/release/quinistry
store=$work/store

# Pack at level 0: the benchmark is about serving, and level 0 packs 1 GiB quickly.
digest_of() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
head -c $((1024 << 20)) /dev/urandom >"$work/big"
head -c $((100 << 20)) /dev/urandom >"$work/mid"
$bin pack --level 0 --store "$store" --tag bench/big:v1 "$work/big" >"$work/big.out"
$bin pack --level 0 --store "$store" --tag bench/mid:v1 "$work/mid" >"$work/mid.out"
rm "$work/big" "$work/mid"
big=$(digest_of layer "$work/big.out")
mid=$(digest_of layer "$work/mid.out")
manifest=$(digest_of manifest "$work/mid.out")

# nginx serves the very same files (hard links into the store: same inode, same page cache).
www=$work/www
mkdir -p "$www"
ln "$store/blobs/sha256/${big#sha256:}" "$www/big"
ln "$store/blobs/sha256/${mid#sha256:}" "$www/mid"
ln "$store/blobs/sha256/${manifest#sha256:}" "$www/manifest.json"
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
  server { listen 127.0.0.1:0; root $www; }
}
CONF
# nginx cannot pick a free port itself; find one.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nport=$(port)
sed -i "s/listen 127.0.0.1:0;/listen 127.0.0.1:$nport;/" "$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

qport=$(port)
RUST_LOG=info $bin serve --store "$store" --listen "127.0.0.1:$qport" >"$work/serve.out" 2>"$work/serve.log" &
qpid=$!
pids+=($qpid)
for _ in $(seq 1 100); do
  grep -q '^listening' "$work/serve.out" 2>/dev/null && curl -sf "http://127.0.0.1:$nport/manifest.json" >/dev/null && break
  sleep 0.1
done
Q=http://127.0.0.1:$qport
N=http://127.0.0.1:$nport
cat "$store/blobs/sha256/"* >/dev/null  # warm the page cache for both

# Peak RSS since the last reset (writing 5 to clear_refs resets VmHWM).
reset_peak() { echo 5 >"/proc/$qpid/clear_refs"; }
peak() { awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$qpid/status"; }
mibs() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

echo "== 1. one 1 GiB download, $runs rounds alternating which server goes first (curl -o /dev/null)"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
: >"$work/dq"; : >"$work/dn"
reset_peak
for i in $(seq 1 "$runs"); do
  get_q() { curl -sf -o /dev/null -w '%{speed_download}' "$Q/v2/bench/big/blobs/$big"; }
  get_n() { curl -sf -o /dev/null -w '%{speed_download}' "$N/big"; }
  if [ $((i % 2)) = 1 ]; then q=$(get_q); n=$(get_n); else n=$(get_n); q=$(get_q); fi
  echo "$q" >>"$work/dq"; echo "$n" >>"$work/dn"
  echo "   round: quinistry $(mibs "$q") MiB/s, nginx $(mibs "$n") MiB/s, ratio $(ratio "$q" "$n")"
done
mq=$(median <"$work/dq"); mn=$(median <"$work/dn")
echo "   median: quinistry $(mibs "$mq") MiB/s   nginx $(mibs "$mn") MiB/s   ratio $(ratio "$mq" "$mn")   quinistry peak RSS $(peak)"

echo "== 2. 50 concurrent downloads of a 100 MiB blob"
mid_size=$(stat -c %s "$www/mid")
concurrent() {  # URL -> seconds for 50 parallel downloads, each checked for its full size
  local start end
  start=$(date +%s.%N)
  seq 1 50 | xargs -P 50 -I{} sh -c "test \$(curl -sf -o /dev/null -w '%{size_download}' '$1') -eq $mid_size || echo SHORT" >"$work/short"
  end=$(date +%s.%N)
  if [ -s "$work/short" ]; then echo "serve.sh: a download was short or failed" >&2; exit 1; fi
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}
reset_peak
tq=$(concurrent "$Q/v2/bench/mid/blobs/$mid")
rss=$(peak)
tn=$(concurrent "$N/mid")
total=$((50 * mid_size))
echo "   quinistry $tq s ($(awk -v t="$tq" -v b="$total" 'BEGIN { printf "%.0f", b / 1048576 / t }') MiB/s total), peak RSS $rss"
echo "   nginx     $tn s ($(awk -v t="$tn" -v b="$total" 'BEGIN { printf "%.0f", b / 1048576 / t }') MiB/s total)"

echo "== 3. wrk -t2 -c32 -d${secs}s, $runs rounds alternating: manifest by tag vs nginx static file of the same size ($(stat -c %s "$www/manifest.json") B)"
rate() { wrk -t2 -c32 -d"${secs}s" "$@" | awk '/Requests\/sec/ { print $2 }'; }
: >"$work/rq"; : >"$work/rn"
for _ in $(seq 1 "$runs"); do
  rq=$(rate "$Q/v2/bench/mid/manifests/v1"); echo "$rq" >>"$work/rq"
  rn=$(rate "$N/manifest.json"); echo "$rn" >>"$work/rn"
  echo "   round: quinistry $rq req/s, nginx $rn req/s, ratio $(ratio "$rq" "$rn")"
done
mq=$(median <"$work/rq"); mn=$(median <"$work/rn")
echo "   median: quinistry $mq req/s   nginx $mn req/s   ratio $(ratio "$mq" "$mn")"
echo "   (log lines written: quinistry $(grep -c 'quinistry::access' "$work/serve.log"), nginx $(wc -l <"$work/nginx-access.log"))"
