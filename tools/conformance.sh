#!/usr/bin/env bash
# The OCI distribution-spec conformance suite against quinistry, on every engine: a local
# directory, S3 (Garage) + PostgreSQL, and Azure (Azurite) + PostgreSQL. Each engine gets a
# fresh store and a release build of `quinistry serve --push` on a free loopback port.
#
#   tools/conformance.sh                      local engine only
#   . DIR/env && tools/conformance.sh         every engine .ci/cluster.sh started in DIR
#
# The suite is a Go program (github.com/opencontainers/distribution-spec, conformance/),
# which needs Go >= 1.24 and its modules from the Go module proxy. Give it one of:
#   OCI_CONFORMANCE=/path/to/conformance      a binary built with `go build -o conformance .`
#   OCI_CONFORMANCE_SRC=/path/to/conformance  its source folder, built here if `go` can
# Without either, or without a Go that can build it, the script says so and exits 0: the
# machines CI runs on reach crates.io, PyPI, Debian and npm, not the Go proxy or GitHub.
#
# Prints one line per engine: passed/failed/skipped counts, and where the report is; exits
# non-zero if any engine has a failure. Results stay in $OCI_RESULTS_BASE (a temp folder).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCI_CONFORMANCE:-}
if [ -z "$bin" ] && [ -n "${OCI_CONFORMANCE_SRC:-}" ]; then
  if command -v go >/dev/null && (cd "$OCI_CONFORMANCE_SRC" && go build -o conformance . ) 2>/tmp/conformance-build.log; then
    bin=$OCI_CONFORMANCE_SRC/conformance
  else
    echo "conformance: skipped: cannot build $OCI_CONFORMANCE_SRC with $(go version 2>/dev/null || echo 'no go'): see /tmp/conformance-build.log"
    exit 0
  fi
fi
if [ -z "$bin" ]; then
  echo "conformance: skipped: set OCI_CONFORMANCE (a built conformance binary) or OCI_CONFORMANCE_SRC (its source; needs Go >= 1.24 and the Go module proxy)"
  exit 0
fi

(cd "$here" && cargo build --release --quiet)
quinistry=$here/target/release/quinistry
base=${OCI_RESULTS_BASE:-$(mktemp -d)}
server=

stop() { [ -z "$server" ] || { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=; }; }
trap stop EXIT

# Serves `$@` (store arguments), runs the suite, prints the engine's line; 1 if it failed.
run_engine() {
  local engine=$1; shift
  local out=$base/$engine
  mkdir -p "$out"
  "$quinistry" serve --listen 127.0.0.1:0 --push "$@" >"$out/serve.out" 2>"$out/serve.log" &
  server=$!
  local addr=
  for _ in $(seq 1 300); do
    addr=$(sed -n 's#.*listening http://\([0-9.:]*\).*#\1#p' "$out/serve.out" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "conformance: $engine: the server did not start: $(tail -n3 "$out/serve.log")"
    stop
    return 1
  fi
  local status=0
  (cd "$out" && OCI_REGISTRY=$addr OCI_TLS=disabled OCI_RESULTS_DIR=$out/results \
    OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 OCI_VERSION=${OCI_VERSION:-dev} \
    OCI_LOG=${OCI_LOG:-error} "$bin" >"$out/suite.log" 2>&1) || status=$?
  stop
  local summary
  summary=$(grep -Eo '[0-9]+ (passed|failed|skipped|disabled)' "$out/suite.log" | tr '\n' ' ' || true)
  echo "conformance: $engine: ${summary:-no summary} (exit $status; report $out/results/report.html)"
  return "$status"
}

failed=0
dir=$(mktemp -d)
run_engine local --store "$dir/store" || failed=1
if [ -n "${QUINISTRY_TEST_BUCKET:-}" ] && [ -n "${QUINISTRY_TEST_POSTGRES:-}" ]; then
  for engine in s3 azure; do
    [ "$engine" = azure ] && [ -z "${QUINISTRY_TEST_AZURE_CONTAINER:-}" ] && continue
    db=c$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    psql "$QUINISTRY_TEST_POSTGRES" -q -c "CREATE DATABASE $db"
    meta=${QUINISTRY_TEST_POSTGRES%/*}/$db
    if [ "$engine" = s3 ]; then
      endpoints=()
      IFS=, read -ra eps <<<"$QUINISTRY_TEST_S3_ENDPOINTS"
      for e in "${eps[@]}"; do endpoints+=(--s3-endpoint "$e"); done
      run_engine s3 --store "s3://$QUINISTRY_TEST_BUCKET/$db" --metadata "$meta" "${endpoints[@]}" || failed=1
    else
      run_engine azure --store "az://$QUINISTRY_TEST_AZURE_CONTAINER/$db" --metadata "$meta" || failed=1
    fi
  done
else
  echo "conformance: s3, azure: skipped: no cluster (. DIR/env after .ci/cluster.sh start DIR)"
fi
rm -rf "$dir"
exit "$failed"
