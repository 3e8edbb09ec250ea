#!/usr/bin/env bash
# The catalog at a million repositories, on the directory engine: what a page costs and what
# the server holds as the store grows past what benches/growth.sh generates in both layouts.
#
# Makes REPOS repositories bench/rNNNNNNN (a `_tags` folder holding one tag file each: what
# makes a folder a repository to the catalog) in a store with no log of repositories, as a
# store from before the log; then, on the release build:
#   first start   the first walk of /v2/_catalog?n=1000 makes the log (one walk of every
#                 folder) and its sorted file; then a second walk
#   restart       spawn until GET /v2/ answers, the first page after it (the sorted file's
#                 header and the log past it), a whole walk and its slowest page, RSS
#
# usage: benches/catalog.sh [REPOS (1000000)]   CATALOG_DIR: where the store is made
# (default /dev/shm when it has room: 1,000,000 repositories are 3,000,000 inodes, which
# this VM's disk makes and removes in tens of minutes; the page figures count system calls
# on cached folders either way).
set -euo pipefail
cd "$(dirname "$0")/.."
repos=${1:-1000000}
# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need python3:python3 curl:curl
cargo build --release -q
bin=$PWD/target/release/quinistry
base=${CATALOG_DIR:-}
if [ -z "$base" ]; then
  base=/tmp
  [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((repos * 4)) ] && base=/dev/shm
fi
work=$(mktemp -d "$base/quinistry-catalog.XXXXXX")
pid=
cleanup() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/walk.py" <<'EOF'
import http.client, sys, time, json
host, port = sys.argv[1].split(":")
c = http.client.HTTPConnection(host, int(port))
path, n, pages, slowest, first, start = "/v2/_catalog?n=1000", 0, 0, 0.0, None, time.perf_counter()
while path:
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    took = time.perf_counter() - t
    first = took if first is None else first
    slowest = max(slowest, took)
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {body[:200]}")
    n += len(json.loads(body)["repositories"] or [])
    pages += 1
    link = r.getheader("Link")
    path = link[1:link.index(">")] if link else None
print(f"{n} names in {pages} pages: walk {time.perf_counter() - start:.2f} s, first page {first * 1000:.1f} ms, slowest {slowest * 1000:.1f} ms")
EOF

echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); store in $base; $(date -u +%FT%TZ)"
t0=$(date +%s)
python3 - "$work/store/repositories/bench" "$repos" <<'EOF'
import os, sys
base, repos = sys.argv[1], int(sys.argv[2])
os.makedirs(base)
for r in range(repos):
    d = f"{base}/r{r:07}/_tags"
    os.makedirs(d)
    os.close(os.open(f"{d}/v1", os.O_WRONLY | os.O_CREAT, 0o644))
EOF
echo "$repos repositories made in $(( $(date +%s) - t0 )) s"
head -c 4096 /dev/urandom >"$work/input"

start() { # -> $pid, $addr, $up
  local t; t=$(date +%s.%N)
  serve_start --no-prepack "$work/input"
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/v2/")" = 200 ]; do sleep 0.01; done
  up=$(echo "$(date +%s.%N) - $t" | bc -l)
}
rss() { awk -v k="$1" '$1 == k":" { printf "%d MiB", $2 / 1024 }' "/proc/$pid/status"; }

start
echo "first start (no log):  up in $(printf %.2f "$up") s, RSS $(rss VmRSS)"
echo "  walk 1 (makes the log): $(python3 "$work/walk.py" "$addr")"
echo "  walk 2:                 $(python3 "$work/walk.py" "$addr"); peak RSS $(rss VmHWM)"
serve_stop
ls -l "$work/store"/repositories.* | awk '{ print "  " $5 " bytes  " $NF }'
start
echo "restart:               up in $(printf %.2f "$up") s, RSS $(rss VmRSS)"
echo "  walk 1:                 $(python3 "$work/walk.py" "$addr")"
echo "  walk 2:                 $(python3 "$work/walk.py" "$addr"); peak RSS $(rss VmHWM)"
serve_stop
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
