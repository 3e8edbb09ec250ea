#!/usr/bin/env bash
# Push benchmark: a MIB-sized blob pushed to `quinistry serve --push` with curl, beside what
# the same bytes cost the machine without a registry (sha256sum; cp + sync). Each round pushes
# a new random blob three ways:
#   monolithic   POST ?digest=            (the body is the blob; the URL has no trailing
#                                          slash, to which curl -T would add the file name)
#   streamed     POST, one PATCH, PUT     (what docker does)
#   chunked      POST, PATCHes of 64 MiB with Content-Range, PUT  (what skopeo can do)
# and the server's peak RSS (VmHWM) over the whole run is printed last.
# usage: benches/push.sh [MIB (default 1024)] [ROUNDS (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
rounds=${2:-2}
command -v curl >/dev/null || { echo "push.sh: needs curl (apt-get install curl)" >&2; exit 1; }
work=$(mktemp -d /tmp/quinistry-push-bench.XXXXXX)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --quiet
bin=target/release/quinistry
echo x >"$work/x"
"$bin" serve --push --store "$work/store" --listen 127.0.0.1:0 --level 0 "$work/x" \
  >"$work/out" 2>"$work/log" &
server=$!
for _ in $(seq 100); do grep -q '^listening' "$work/out" 2>/dev/null && break; sleep 0.1; done
addr=$(awk '$1 == "listening" { sub("http://", "", $2); print $2 }' "$work/out")
[ -n "$addr" ] || { cat "$work/log" >&2; exit 1; }

now() { date +%s.%N; }
rate() { awk -v m="$mib" -v a="$1" -v b="$2" 'BEGIN { printf "%7.1f MiB/s  (%.2f s)", m / (b - a), b - a }'; }
status() { curl -sS -o /dev/null -w '%{http_code}' "$@"; }
location() { curl -sS -D - -o /dev/null -X POST "http://$addr/v2/bench/$1/blobs/uploads/" | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }'; }

for round in $(seq "$rounds"); do
  echo "round $round: $mib MiB"
  for how in monolithic streamed chunked reference; do
    blob=$work/blob
    head -c $((mib << 20)) /dev/urandom >"$blob"
    sync
    if [ "$how" = reference ]; then
      t0=$(now); sha256sum "$blob" >/dev/null; t1=$(now)
      echo "  sha256sum           $(rate "$t0" "$t1")"
      t0=$(now); cp "$blob" "$work/copy"; sync "$work/copy"; t1=$(now)
      echo "  cp + sync           $(rate "$t0" "$t1")"
      rm -f "$work/copy"
      continue
    fi
    digest=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
    # The chunks are cut before the clock starts: the figure is the server's, not split's.
    [ "$how" = chunked ] && split -b 64M -a 3 "$blob" "$work/part."
    t0=$(now)
    case $how in
      monolithic)
        code=$(status -X POST -T "$blob" "http://$addr/v2/bench/$how/blobs/uploads?digest=$digest") ;;
      streamed)
        loc=$(location "$how")
        [ "$(status -X PATCH -T "$blob" "http://$addr$loc")" = 202 ]
        code=$(status -X PUT "http://$addr$loc?digest=$digest") ;;
      chunked)
        loc=$(location "$how")
        off=0
        for part in "$work"/part.*; do
          len=$(stat -c %s "$part")
          [ "$(status -X PATCH -H "Content-Range: $off-$((off + len - 1))" -T "$part" "http://$addr$loc")" = 202 ]
          off=$((off + len))
        done
        code=$(status -X PUT "http://$addr$loc?digest=$digest") ;;
    esac
    t1=$(now)
    [ "$code" = 201 ] || { echo "push.sh: $how push answered $code" >&2; tail "$work/log" >&2; exit 1; }
    printf '  %-19s %s\n' "$how" "$(rate "$t0" "$t1")"
    rm -f "$work"/part.*
  done
  rm -f "$work/blob"
done
echo "server peak RSS: $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$server/status")"
"$bin" verify --store "$work/store" | tail -1
