#!/usr/bin/env bash
# The web page's repository list on a store of many repositories (issue 35: the first page
# of 100,000 in under 100 ms of server time), on the release build, default settings.
#
# Makes REPOS repositories bench/rNNNNNNN in a directory store, each with tag `latest` on one
# shared image (a manifest, a config and a layer: what a row shows is read for real), then
# times, over ROUNDS requests each (curl's total time on loopback; the median and the
# slowest): the first page of /ui/, a later page (?after=), a search that matches one
# repository (every name is read) and one that matches none, and the same first page of
# /v2/_catalog?n=50 beside it.
#
# usage: benches/ui.sh [REPOS (100000)] [ROUNDS (20)]   UI_DIR: where the store is made
# (default /dev/shm when it has room).
set -euo pipefail
cd "$(dirname "$0")/.."
repos=${1:-100000}
rounds=${2:-20}
# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need python3:python3 curl:curl
cargo build --release -q
bin=$PWD/target/release/quinistry
base=${UI_DIR:-}
if [ -z "$base" ]; then
  base=/tmp
  [ -d /dev/shm ] && [ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((repos * 20)) ] && base=/dev/shm
fi
work=$(mktemp -d "$base/quinistry-ui.XXXXXX")
pid=
cleanup() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

echo "machine: $(nproc) CPUs, $(load); store in $base; $(date -u +%FT%TZ)"
t0=$(date +%s)
python3 - "$work/store" "$repos" <<'EOF'
import hashlib, json, os, sys
store, repos = sys.argv[1], int(sys.argv[2])
blobs = f"{store}/blobs/sha256"
os.makedirs(blobs)
def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(f"{blobs}/{h}", "wb") as f:
        f.write(data)
    return h
layer = put(os.urandom(4096))
config = put(json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-12-04T00:00:00Z",
                         "config": {"Entrypoint": ["/app"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer]}}).encode())
manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + config, "size": 200},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + layer, "size": 4096}]}).encode())
for r in range(repos):
    d = f"{store}/repositories/bench/r{r:07}"
    for sub in ("_tags", "_manifests", "_blobs"):
        os.makedirs(f"{d}/{sub}")
    with open(f"{d}/_tags/latest", "w") as f:
        f.write(f"sha256:{manifest}\n")
    for link in (f"_manifests/{manifest}", f"_blobs/{config}", f"_blobs/{layer}"):
        os.close(os.open(f"{d}/{link}", os.O_WRONLY | os.O_CREAT, 0o644))
EOF
echo "$repos repositories made in $(( $(date +%s) - t0 )) s"
head -c 4096 /dev/urandom >"$work/input"
serve_start --no-prepack "$work/input"
# The first catalog walk makes the store's log of repositories (once per store).
curl -sf -o /dev/null "http://$addr/v2/_catalog?n=1"
curl -sf -o /dev/null "http://$addr/ui/"

timed() {  # PATH: median and slowest of $rounds requests, ms
  local all="" i t
  for ((i = 0; i < rounds; i++)); do
    t=$(curl -sf -o /dev/null -w '%{time_total}' "http://$addr$1")
    all+="$(awk -v t="$t" 'BEGIN { printf "%.1f", t * 1000 }') "
  done
  printf 'median %6s ms, slowest %6s ms' "$(median "$all")" "$(tr ' ' '\n' <<<"$all" | grep . | sort -g | tail -1)"
}
mid=$(printf 'bench/r%07d' $((repos / 2)))
echo "/ui/ first page (50 rows):        $(timed /ui/)"
echo "/ui/?after=$mid:  $(timed "/ui/?after=$mid")"
echo "/ui/?q=$mid (one match):   $(timed "/ui/?q=$mid")"
echo "/ui/?q=nothing (no match):        $(timed "/ui/?q=nothing")"
echo "/v2/_catalog?n=50, beside:        $(timed "/v2/_catalog?n=50")"
echo "rows on the first page: $(curl -sf "http://$addr/ui/" | grep -c 'class="repo"'); peak RSS $(awk '/^VmHWM/ { printf "%d MiB", $2 / 1024 }' "/proc/$pid/status")"
echo "machine after: $(load)"
