#!/usr/bin/env bash
# What the store's size costs: the same operations on stores of growing size, quinistry's
# local directory engine beside distribution 2.8 (Debian's docker-registry) on the same data,
# and quinistry over PostgreSQL (the shared store's metadata) for the catalog and tags.
#
# Each size is generated straight into both layouts (as the servers would leave them):
#   REPOS repositories bench/rNNNNNN with one image each (manifest, config, one layer:
#   three small distinct blobs, tag v1), and big/tags with REPOS/2 tags, each its own
#   manifest over one shared config and layer. Blobs: 3.5 x REPOS.
#
# Figures per size and registry:
#   start-up    spawn until GET /v2/ answers 200; RSS idle right after
#   catalog     every page of /v2/_catalog?n=1000 (Link followed): total and slowest page,
#               walked twice: the first reads from disk, the second from the page cache
#   tags        every page of big/tags' tag list, n=1000: the same
#   GET, PUT    manifest GET by tag and manifest PUT to new tags, wrk -t2 -c32, WRK_SECONDS each
#   RSS         the server's peak RSS after all of the above
#   gc          an offline pass (quinistry gc --dry-run / registry garbage-collect --dry-run):
#               seconds and peak RSS. quinistry also collects online while serving (benches/gc.sh).
#   verify      quinistry verify (distribution has none)
#
# usage: benches/growth.sh [SIZES (default "1000 10000 100000" repositories)] [WRK_SECONDS (5)]
# Needs: python3 wrk docker-registry psql (PostgreSQL, started here with .ci/cluster.sh when
# QUINISTRY_TEST_POSTGRES is not set; skipped if it cannot be), /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-1000 10000 100000}
secs=${2:-5}
# An offline pass that runs longer than this is stopped and reported as "> LIMIT s".
limit=${GROWTH_LIMIT:-600}
# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
need wrk:wrk python3:python3 /usr/bin/time:time curl:curl docker-registry:docker-registry

cargo build --release -q
bin=$PWD/target/release/quinistry
work=$(mktemp -d /tmp/quinistry-growth.XXXXXX)
chmod 711 "$work"
pids=()
cluster=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$cluster" ] && { .ci/cluster.sh stop "$cluster" >/dev/null 2>&1 || true; }
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${QUINISTRY_TEST_POSTGRES:-}" ] && command -v garage >/dev/null; then
  cluster=$work/cluster
  .ci/cluster.sh start "$cluster" >/dev/null && . "$cluster/env" || cluster=
fi


# The client: pages followed through Link, timed one by one (one keep-alive connection).
cat >"$work/walk.py" <<'EOF'
import http.client, sys, time, json
addr, path, key = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = addr.split(":")
c = http.client.HTTPConnection(host, int(port))
n, pages, slowest, start = 0, 0, 0.0, time.perf_counter()
while path:
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    slowest = max(slowest, time.perf_counter() - t)
    if r.status != 200:
        sys.exit(f"{path}: {r.status} {body[:200]}")
    n += len(json.loads(body)[key] or [])
    pages += 1
    link = r.getheader("Link")
    path = link[1:link.index(">")] if link else None
print(f"{n} {pages} {time.perf_counter() - start:.3f} {slowest * 1000:.1f}")
EOF
# Manifest PUTs to new tags (wrk): the manifest of bench/r000000, pushed into that repository.
cat >"$work/put.lua" <<'EOF'
local n = 0
local body = io.open(os.getenv("MANIFEST")):read("*a")
request = function()
  n = n + 1
  return wrk.format("PUT", "/v2/bench/r000000/manifests/p" .. math.random(1, 1e9) .. "x" .. n,
    { ["Content-Type"] = "application/vnd.oci.image.manifest.v1+json" }, body)
end
EOF

generate() { # REPOS QSTORE DSTORE
  python3 - "$@" <<'EOF'
import hashlib, json, os, sys
repos, q, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
qb = os.path.join(q, "blobs", "sha256")
db = os.path.join(d, "docker/registry/v2")
for p in (qb, os.path.join(q, "tmp"), os.path.join(q, "repositories")):
    os.makedirs(p, exist_ok=True)
def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(qb, h), "wb") as f:
        f.write(data)
    p = os.path.join(db, "blobs/sha256", h[:2], h)
    os.makedirs(p, exist_ok=True)
    with open(os.path.join(p, "data"), "wb") as f:
        f.write(data)
    return h
def write(path, text=""):
    with open(path, "w") as f:
        f.write(text)
def image(name, config, layer, tags, extra):
    qr = os.path.join(q, "repositories", name)
    dr = os.path.join(db, "repositories", name)
    for sub in ("_tags", "_blobs", "_manifests"):
        os.makedirs(os.path.join(qr, sub), exist_ok=True)
    for h in (config, layer):
        write(os.path.join(qr, "_blobs", h))
        os.makedirs(os.path.join(dr, "_layers/sha256", h), exist_ok=True)
        write(os.path.join(dr, "_layers/sha256", h, "link"), "sha256:" + h)
    for tag in tags:
        body = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + config, "size": extra[config]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": "sha256:" + layer, "size": extra[layer]}],
            "annotations": {"tag": tag}}).encode()
        m = put(body)
        write(os.path.join(qr, "_manifests", m))
        write(os.path.join(qr, "_tags", tag), f"sha256:{m}\n")
        os.makedirs(os.path.join(dr, "_manifests/revisions/sha256", m), exist_ok=True)
        write(os.path.join(dr, "_manifests/revisions/sha256", m, "link"), "sha256:" + m)
        t = os.path.join(dr, "_manifests/tags", tag)
        os.makedirs(os.path.join(t, "current"), exist_ok=True)
        write(os.path.join(t, "current/link"), "sha256:" + m)
        os.makedirs(os.path.join(t, "index/sha256", m), exist_ok=True)
        write(os.path.join(t, "index/sha256", m, "link"), "sha256:" + m)
        if name == "bench/r000000" and tag == "v1":
            write(os.path.join(q, "..", "manifest.json"), body.decode())
for r in range(repos):
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "n": r}).encode()
    layer = f"layer {r}".encode() * 16
    sizes = {put(config): len(config), put(layer): len(layer)}
    c, l = list(sizes)
    image(f"bench/r{r:06}", c, l, ["v1"], sizes)
config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "big": True}).encode()
layer = b"big layer" * 16
sizes = {put(config): len(config), put(layer): len(layer)}
c, l = list(sizes)
image("big/tags", c, l, [f"t{i:06}" for i in range(repos // 2)], sizes)
EOF
}

# Loads the directory store's records into the PostgreSQL database $1 (the same rows a
# replica would write), for the catalog and tag figures of the shared store's metadata.
load_postgres() { # URL QSTORE
  python3 - "$2" >"$work/rows.sql" <<'EOF'
import os, sys
q = sys.argv[1]
root = os.path.join(q, "repositories")
print("COPY tags (repository, tag, digest) FROM stdin;")
links = []
for base, dirs, _ in os.walk(root):
    if "_tags" not in dirs:
        continue
    name = os.path.relpath(base, root)
    if name == "input":
        continue  # the input's image: already there
    for tag in os.listdir(os.path.join(base, "_tags")):
        with open(os.path.join(base, "_tags", tag)) as f:
            print(f"{name}\t{tag}\t{f.read().strip()}")
    for kind in ("_blobs", "_manifests"):
        for h in os.listdir(os.path.join(base, kind)):
            links.append(f"{name}\t{kind}\tsha256:{h}")
    dirs[:] = [d for d in dirs if not d.startswith("_")]
print("\\.")
print("COPY links (repository, kind, digest) FROM stdin;")
print("\n".join(links))
print("\\.")
# What a replica writes with each tag and link (schema 6).
print("INSERT INTO repositories SELECT repository FROM tags UNION SELECT repository FROM links"
      " ON CONFLICT DO NOTHING;")
EOF
  psql -q "$1" -f "$work/rows.sql" >/dev/null
  psql -q "$1" -c 'ANALYZE' >/dev/null
}

# Spawns a server; sets $spid, $saddr and $up, the seconds until GET /v2/ answered.
started() { # ADDR CMD...
  local addr=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" >"$work/server.out" 2>"$work/server.log" &
  spid=$!
  pids+=("$spid")
  saddr=$addr
  for _ in $(seq 1 3000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/v2/" 2>/dev/null)" = 200 ]; then
      up=$(echo "$(date +%s.%N) - $t0" | bc -l)
      return
    fi
    sleep 0.01
  done
  echo "server did not start" >&2; cat "$work/server.log" >&2; exit 1
}
stop() { kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; }
rss() { awk -v k="$1" '$1 == k":" { print int($2 / 1024) }' "/proc/$spid/status"; }
wrk_rate() { # URL [SCRIPT]
  local script=()
  [ -n "${2:-}" ] && script=(-s "$2")
  MANIFEST=$work/manifest.json wrk -t2 -c32 -d"${secs}s" "${script[@]}" \
    -H "Accept: application/vnd.oci.image.manifest.v1+json" "$1" >"$work/wrk.out"
  # An error answer is no manifest served: a rate of those would mean nothing.
  if grep -q "Non-2xx" "$work/wrk.out"; then
    echo "$1: $(grep Non-2xx "$work/wrk.out")" >&2; exit 1
  fi
  awk '/Requests\/sec/ { printf "%.0f", $2 }' "$work/wrk.out"
}
timed() { # CMD... -> "SECONDS PEAK_MIB", or "> LIMIT s" when it ran longer than LIMIT
  local rc=0
  timeout "$limit" /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/cmd.out" 2>&1 || rc=$?
  if [ "$rc" = 124 ]; then echo "> $limit s (stopped)"; return; fi
  [ "$rc" = 0 ] || { tail -3 "$work/cmd.out" >&2; echo "failed: $*"; return; }
  awk '{ printf "%s s %d MiB", $1, $2 / 1024 }' "$work/time"
}

row() { # LABEL UP IDLE C1 CW1 C2 CW2 T1 TW1 T2 TW2 GET PUT PEAK
  printf '%-23s %5.2f s %3s MiB | %7.2f s %7.1f ms / %6.2f s %6.1f ms | %5.2f s %6.1f ms / %5.2f s %5.1f ms | %6s %5s | %3s MiB\n' "$@"
}

measure() { # LABEL REPOS [noput] -- uses $saddr, $spid and $up of a started server
  local label=$1 repos=$2
  local idle; idle=$(rss VmRSS)
  # The first walk reads folders from disk (this VM's page cache is reclaimed as it
  # ages), the second from memory: both are printed, first / second.
  read -r cn cp ct1 cs1 < <(python3 "$work/walk.py" "$saddr" "/v2/_catalog?n=1000" repositories)
  read -r tn tp tt1 ts1 < <(python3 "$work/walk.py" "$saddr" "/v2/big/tags/tags/list?n=1000" tags)
  read -r cn cp ct cs < <(python3 "$work/walk.py" "$saddr" "/v2/_catalog?n=1000" repositories)
  read -r tn tp tt ts < <(python3 "$work/walk.py" "$saddr" "/v2/big/tags/tags/list?n=1000" tags)
  # +1: big/tags; quinistry also lists the image of its input.
  [ "$cn" -ge $((repos + 1)) ] || { echo "$label: catalog listed $cn of $((repos + 1))" >&2; exit 1; }
  [ "$tn" -eq $((repos / 2)) ] || { echo "$label: tags listed $tn of $((repos / 2))" >&2; exit 1; }
  local get put=-
  get=$(wrk_rate "http://$saddr/v2/bench/r000007/manifests/v1")
  [ "${3:-}" != noput ] && put=$(wrk_rate "http://$saddr/" "$work/put.lua")
  row "$label" "$up" "$idle" "$ct1" "$cs1" "$ct" "$cs" "$tt1" "$ts1" "$tt" "$ts" "$get" "$put" "$(rss VmHWM)"
}

head -c 4096 /dev/urandom >"$work/input"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run; $(date -u +%FT%TZ)"
for repos in $sizes; do
  q=$work/q$repos/store d=$work/d$repos
  mkdir -p "$work/q$repos"
  t0=$(date +%s)
  generate "$repos" "$q" "$d"
  cp "$work/q$repos/manifest.json" "$work/manifest.json"
  blobs=$(find "$q/blobs/sha256" -type f | wc -l)
  echo
  echo "== $repos repositories, $((repos / 2)) tags in big/tags, $blobs blobs (generated in $(( $(date +%s) - t0 )) s); load $(cut -d' ' -f1-3 /proc/loadavg)"
  printf '%-23s %-16s | %-39s | %-35s | %-12s | %s\n' "" "start-up, idle" "catalog n=1000: walk, worst page (1st / 2nd)" "tags n=1000: walk, worst (1st / 2nd)" "GET/s  PUT/s" "peak"

  # Offline passes first, on the store as generated (the PUTs below add to it).
  p=$(port)
  cat >"$work/registry.yml" <<CONF
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $d }, delete: { enabled: true } }
http: { addr: 127.0.0.1:$p }
CONF
  echo "gc, offline pass:  quinistry $(timed "$bin" gc --store "$q" --dry-run)  |  docker-registry $(timed docker-registry garbage-collect --dry-run "$work/registry.yml")"
  echo "verify:            quinistry $(timed "$bin" verify --store "$q")"

  started "127.0.0.1:$p" env RUST_LOG=warn "$bin" serve --push --no-prepack --listen "127.0.0.1:$p" --store "$q" "$work/input"
  measure "quinistry (directory)" "$repos"
  stop

  if [ -n "${QUINISTRY_TEST_POSTGRES:-}" ]; then
    dbname=growth${repos}_$$
    psql -q "$QUINISTRY_TEST_POSTGRES" -c "CREATE DATABASE $dbname" >/dev/null
    meta=${QUINISTRY_TEST_POSTGRES%/*}/$dbname
    p=$(port)
    # Once, to make the schema; then the rows; then timed.
    started "127.0.0.1:$p" env RUST_LOG=warn QUINISTRY_S3_ENDPOINTS="$QUINISTRY_TEST_S3_ENDPOINTS" \
      "$bin" serve --no-prepack --listen "127.0.0.1:$p" \
      --store "s3://$QUINISTRY_TEST_BUCKET/$dbname" --metadata "$meta" "$work/input"
    stop
    load_postgres "$meta" "$q"
    started "127.0.0.1:$p" env RUST_LOG=warn QUINISTRY_S3_ENDPOINTS="$QUINISTRY_TEST_S3_ENDPOINTS" \
      "$bin" serve --no-prepack --listen "127.0.0.1:$p" \
      --store "s3://$QUINISTRY_TEST_BUCKET/$dbname" --metadata "$meta" "$work/input"
    # Its blobs are not in the bucket: catalog and tags only (no GET/PUT of manifests).
    idle=$(rss VmRSS)
    # The first walk reads folders from disk (this VM's page cache is reclaimed as it
    # ages), the second from memory: both are printed, first / second.
    read -r cn cp ct1 cs1 < <(python3 "$work/walk.py" "$saddr" "/v2/_catalog?n=1000" repositories)
    read -r tn tp tt1 ts1 < <(python3 "$work/walk.py" "$saddr" "/v2/big/tags/tags/list?n=1000" tags)
    read -r cn cp ct cs < <(python3 "$work/walk.py" "$saddr" "/v2/_catalog?n=1000" repositories)
    read -r tn tp tt ts < <(python3 "$work/walk.py" "$saddr" "/v2/big/tags/tags/list?n=1000" tags)
    # The small input's image makes one more repository here.
    [ "$cn" -ge $((repos + 1)) ] || { echo "postgres: catalog listed $cn" >&2; exit 1; }
    row "quinistry (PostgreSQL)" "$up" "$idle" "$ct1" "$cs1" "$ct" "$cs" "$tt1" "$ts1" "$tt" "$ts" - - "$(rss VmHWM)"
    stop
    psql -q "$QUINISTRY_TEST_POSTGRES" -c "DROP DATABASE $dbname" >/dev/null
  fi

  p=$(port)
  sed -i "s/addr: 127.0.0.1:[0-9]*/addr: 127.0.0.1:$p/" "$work/registry.yml"
  started "127.0.0.1:$p" docker-registry serve "$work/registry.yml"
  measure "docker-registry 2.8" "$repos"
  stop

  rm -rf "$work/q$repos" "$d"
done
