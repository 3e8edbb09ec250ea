#!/usr/bin/env bash
# What a garbage collection pass costs on a large store, and what it costs the pulls beside
# it. The store is generated straight into quinistry's layout (as a server would leave it):
#
#   REPOS repositories x 10 images, each a manifest, a config and 8 layers (all blobs
#   small and distinct): 100,000 blobs and 10,000 manifests with the defaults; 1 image in
#   10 is deleted (its manifest unlinked, its links left), so a pass has work to do.
#
# Figures:
#   1. `quinistry gc --dry-run` on the store (nothing else running): seconds, peak RSS.
#   2. `quinistry gc --grace 0 --link-grace 0` (removes the deleted images): seconds, RSS.
#   3. manifest GET by tag, `wrk -t2 -c32` for WRK_SECONDS, from `serve` alone, then from a
#      `serve --gc-interval 1ms` (passes back to back, so the whole run is during
#      collection): requests/s and the ratio; how long a pass took on the idle server and
#      the passes finished under wrk; the server's peak RSS each time.
#      With 2 or more CPUs the server runs on CPU 1 (its collector too) and wrk on CPU 0.
#
# usage: benches/gc.sh [REPOS (default 1000)] [WRK_SECONDS (default 10)]
# Needs: wrk, python3, /usr/bin/time (installed with apt when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
repos=${1:-1000}
secs=${2:-10}

# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need wrk:wrk python3:python3 /usr/bin/time:time curl:curl

cargo build --release -q
bin=$PWD/target/release/quinistry
work=$(mktemp -d /tmp/quinistry-gc.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
store=$work/store

echo "generating $repos repositories x 10 images into $store ..."
python3 - "$store" "$repos" <<'EOF'
import hashlib, json, os, sys
store, repos = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(store, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
for d in ("tmp", "repositories", "cache/layers"):
    os.makedirs(os.path.join(store, d), exist_ok=True)
def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return h
def touch(path):
    open(path, "wb").close()
n = 0
for r in range(repos):
    repo = os.path.join(store, "repositories", "bench", f"r{r:05}")
    for sub in ("_tags", "_blobs", "_manifests"):
        os.makedirs(os.path.join(repo, sub), exist_ok=True)
    for i in range(10):
        n += 1
        layers = []
        for l in range(8):
            data = f"layer {r} {i} {l}".encode() * 8
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "digest": "sha256:" + put(data), "size": len(data)})
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": n}).encode()
        c = put(config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + c, "size": len(config)},
            "layers": layers}).encode()
        m = put(manifest)
        for d in [c] + [x["digest"][7:] for x in layers]:
            touch(os.path.join(repo, "_blobs", d))
        if i == 9:
            continue  # deleted: the manifest unlinked, its blob links left behind
        touch(os.path.join(repo, "_manifests", m))
        with open(os.path.join(repo, "_tags", f"v{i}"), "w") as f:
            f.write(f"sha256:{m}\n")
EOF
blobs=$(find "$store/blobs/sha256" -type f | wc -l)
echo "store: $blobs blobs, $((repos * 10)) manifests ($((repos)) of them deleted), $(du -sh "$store" | cut -f1)"

# Seconds and peak RSS (MiB) of a command, from /usr/bin/time.
timed() {
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  read -r s kib <"$work/time"
  echo "$s s, peak RSS $((kib / 1024)) MiB: $(grep '^gc:' "$work/out")"
}
echo "1. gc --dry-run:                  $(timed "$bin" gc --store "$store" --dry-run)"
# Kept from the second run on: the store as it was, for step 3.
cp -a "$store" "$work/again"
echo "2. gc --grace 0 --link-grace 0:   $(timed "$bin" gc --store "$work/again" --grace 0 --link-grace 0)"
rm -rf "$work/again"

# With 2 or more CPUs the server (its collector too) runs on CPU 1 and wrk on CPU 0.
on_client=()
if [ "$(nproc)" -ge 2 ]; then on_client=(taskset -c 0); fi
pin() { if [ "$(nproc)" -ge 2 ]; then taskset -a -p -c 1 "$pid" >/dev/null; fi; }
rate() {
  "${on_client[@]}" wrk -t2 -c32 -d"${secs}s" "http://$addr/v2/bench/r00007/manifests/v3" |
    awk '/Requests\/sec/ { print $2 }'
}
hwm() { awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$pid/status"; }
head -c 4096 /dev/urandom >"$work/input"

serve_start --no-prepack --no-cache "$work/input"
pin
plain=$(rate)
hwm_plain=$(hwm)
serve_stop
: >"$work/serve.log"

serve_start --no-prepack --no-cache --gc-interval 1ms --grace 1h "$work/input"
pin
# The first pass on the idle server, then wrk while the next ones run.
until grep -q 'gc: ' "$work/serve.log"; do sleep 0.1; done
idle=$(grep -o '[0-9.]* s; [a-z ]*[0-9]* layer-cache' "$work/serve.log" | awk '{ print $1 }')
: >"$work/serve.log"
busy=$(rate)
hwm=$(hwm)
serve_stop
passes=$(grep -c 'gc: ' "$work/serve.log" || true)
took=$(grep -o '[0-9.]* s; [a-z ]*[0-9]* layer-cache' "$work/serve.log" | awk '{ printf "%s%s s", (NR > 1 ? ", " : ""), $1 }' || true)
echo "3. manifest GET: $plain req/s alone, $busy req/s during collection ($(awk -v a="$busy" -v b="$plain" 'BEGIN { printf "%.3fx", a / b }'));"
echo "   a pass of the server's collector took $idle s idle; under wrk it finished $passes (${took:-none}), a pass running throughout;"
echo "   the server's peak RSS: $hwm_plain MiB alone, $hwm MiB with its collector"
