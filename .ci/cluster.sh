#!/usr/bin/env bash
# A 3-node Garage cluster (S3-compatible object storage, replication 3), an Azurite (the
# Azure Blob Storage emulator, when `azurite-blob` is on PATH) and a PostgreSQL server, on
# loopback ports, with all their files under one folder: what a shared quinistry store
# (`--store s3://… | az://… --metadata postgres://…`) runs over, for the tests, the
# benchmarks and docs/scale-out.md's walk-through.
#
#   .ci/cluster.sh start DIR    starts both, writes DIR/env (source it), prints it
#   .ci/cluster.sh stop DIR     stops both (the folder is left for the caller to remove)
#
# DIR/env sets AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (what quinistry and any
# S3 client read), and for the tests QUINISTRY_TEST_S3_ENDPOINTS (the three nodes' S3 APIs,
# comma-separated), QUINISTRY_TEST_BUCKET, QUINISTRY_TEST_POSTGRES (a superuser URL) and
# QUINISTRY_TEST_CLUSTER (DIR: node N's config is DIR/garageN.toml, its pid DIR/garageN.pid,
# so a test can kill a node and start it again; PostgreSQL's data is DIR/pg, and
# QUINISTRY_TEST_PG_CTL is its pg_ctl, so a test can stop it and start it again). With
# Azurite: AZURE_STORAGE_USE_EMULATOR=true and AZURITE_BLOB_STORAGE_URL (what quinistry's
# az:// stores read), and QUINISTRY_TEST_AZURE_CONTAINER, a container made for the tests.
#
# Needs `garage` (cargo install garage --locked) and PostgreSQL's server binaries (Debian's
# postgresql). As root, PostgreSQL runs as the `postgres` user.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$pg_bin" ] || pg_bin=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /usr/bin/pg_ctl)")

# Runs a PostgreSQL command as the owner of its data folder (postgres when we are root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}

stop() {
  if [ -f "$dir/azurite.pid" ]; then
    kill "$(cat "$dir/azurite.pid")" 2>/dev/null || true
    rm -f "$dir/azurite.pid"
  fi
  for n in 1 2 3; do
    if [ -f "$dir/garage$n.pid" ]; then
      kill "$(cat "$dir/garage$n.pid")" 2>/dev/null || true
    fi
  done
  if [ -f "$dir/pg/postmaster.pid" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$dir/pg" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  for n in 1 2 3; do
    if [ -f "$dir/garage$n.pid" ]; then
      pid=$(cat "$dir/garage$n.pid")
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/garage$n.pid"
    fi
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
command -v garage >/dev/null || { echo "garage not found: cargo install garage --locked" >&2; exit 1; }
[ -x "$pg_bin/initdb" ] || { echo "PostgreSQL's initdb not found: apt-get install postgresql" >&2; exit 1; }

# Free loopback ports: 3 per Garage node (RPC, S3, admin), one for PostgreSQL, one for Azurite.
read -r -a ports < <(python3 -c '
import socket
socks = []
for _ in range(11):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))')

secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
endpoints=()
for n in 1 2 3; do
  rpc=${ports[$(( (n - 1) * 3 ))]}
  s3=${ports[$(( (n - 1) * 3 + 1 ))]}
  admin=${ports[$(( (n - 1) * 3 + 2 ))]}
  mkdir -p "$dir/garage$n/meta" "$dir/garage$n/data"
  cat >"$dir/garage$n.toml" <<EOF
metadata_dir = "$dir/garage$n/meta"
data_dir = "$dir/garage$n/data"
db_engine = "sqlite"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
EOF
  RUST_LOG=warn garage -c "$dir/garage$n.toml" server >"$dir/garage$n.log" 2>&1 &
  echo $! >"$dir/garage$n.pid"
  endpoints+=("http://127.0.0.1:$s3")
done
trap 'stop' ERR

g() { garage -c "$dir/garage1.toml" "$@"; }
ids=()
for n in 1 2 3; do
  id=""
  for _ in $(seq 1 100); do
    id=$(garage -c "$dir/garage$n.toml" node id -q 2>/dev/null) && break
    sleep 0.1
  done
  [ -n "$id" ] || { echo "garage node $n did not start:" >&2; cat "$dir/garage$n.log" >&2; exit 1; }
  ids+=("$id")
done
# `node id` reads the node's key file, which exists before its RPC port is bound: connecting
# at once was refused now and then (seen in CI). Retried for up to 10 s.
for n in 1 2; do
  for try in $(seq 1 100); do
    g node connect "${ids[$n]}" >/dev/null 2>&1 && break
    [ "$try" = 100 ] && { echo "garage node $((n + 1)) refused to connect:" >&2; g node connect "${ids[$n]}" >&2; exit 1; }
    sleep 0.1
  done
done
for id in "${ids[@]}"; do g layout assign "${id%@*}" -z dc1 -c 1G >/dev/null; done
g layout apply --version 1 >/dev/null
# Fixed-format test keys: GK + 24 hex, and 64 hex.
key_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
key_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
for _ in $(seq 1 100); do
  g bucket create quinistry >/dev/null 2>&1 && break
  sleep 0.1
done
g key import --yes -n quinistry "$key_id" "$key_secret" >/dev/null
g bucket allow --read --write --owner quinistry --key quinistry >/dev/null

pg_port=${ports[9]}
mkdir -p "$dir/pg" "$dir/pg-socket"
[ "$(id -u)" = 0 ] && chown postgres "$dir/pg" "$dir/pg-socket" && chmod 711 "$dir"
as_pg "$pg_bin/initdb" -D "$dir/pg" -A trust -U postgres >"$dir/initdb.log" 2>&1 || {
  echo "initdb failed (as root, every folder above $dir must be searchable by postgres):" >&2
  cat "$dir/initdb.log" >&2
  exit 1
}
# In its config, not on the command line, so that a plain `pg_ctl start` (a test that
# stopped it) brings it back the same.
cat >>"$dir/pg/postgresql.conf" <<EOF
port = $pg_port
unix_socket_directories = '$dir/pg-socket'
listen_addresses = '127.0.0.1'
max_connections = 400
EOF
as_pg "$pg_bin/pg_ctl" -D "$dir/pg" -l "$dir/pg-socket/log" -w start >/dev/null

# Azurite, if installed: its blob service, and a container made with the emulator's
# published account key (a Shared Key request signed here: curl and openssl only).
azure_env=""
if command -v azurite-blob >/dev/null 2>&1; then
  az_port=${ports[10]}
  mkdir -p "$dir/azurite"
  azurite-blob --blobHost 127.0.0.1 --blobPort "$az_port" --location "$dir/azurite" \
    --skipApiVersionCheck --silent >"$dir/azurite.log" 2>&1 &
  echo $! >"$dir/azurite.pid"
  account=devstoreaccount1
  key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
  hexkey=$(printf '%s' "$key" | base64 -d | od -An -tx1 | tr -d ' \n')
  created=""
  for _ in $(seq 1 100); do
    date=$(TZ=GMT date '+%a, %d %b %Y %H:%M:%S GMT')
    version=2021-08-06
    to_sign="PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:$date\nx-ms-version:$version\n/$account/$account/quinistry\nrestype:container"
    signature=$(printf "$to_sign" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64 -w0)
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "x-ms-date: $date" \
      -H "x-ms-version: $version" -H "Content-Length: 0" \
      -H "Authorization: SharedKey $account:$signature" \
      "http://127.0.0.1:$az_port/$account/quinistry?restype=container" || true)
    case "$code" in 201|409) created=1; break ;; esac
    sleep 0.1
  done
  [ -n "$created" ] || { echo "azurite did not start:" >&2; cat "$dir/azurite.log" >&2; exit 1; }
  azure_env="export AZURE_STORAGE_USE_EMULATOR=true
export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$az_port
export QUINISTRY_TEST_AZURE_CONTAINER=quinistry"
fi

cat >"$dir/env" <<EOF
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_REGION=garage
export QUINISTRY_TEST_S3_ENDPOINTS=$(IFS=,; echo "${endpoints[*]}")
export QUINISTRY_TEST_BUCKET=quinistry
export QUINISTRY_TEST_POSTGRES=postgres://postgres@127.0.0.1:$pg_port/postgres
export QUINISTRY_TEST_CLUSTER=$dir
export QUINISTRY_TEST_PG_CTL=$pg_bin/pg_ctl
$azure_env
EOF
cat "$dir/env"
