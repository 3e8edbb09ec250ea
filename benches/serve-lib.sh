# Sourced by the bench scripts. `need TOOL:PACKAGE...` installs the packages of the tools
# that are missing (as root, with apt), or names them and exits.
need() {
  local missing=() tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "$(basename "$0") needs: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
}

# For the benches that run a quinistry server: `serve_start ARGS...` starts
# "$bin serve --listen 127.0.0.1:0 --store $work/store ARGS..." in the background and waits
# for its `listening` line (sets $pid and $addr); `serve_stop` stops it. Needs $bin and $work.
serve_start() {
  RUST_LOG=info "$bin" serve --listen 127.0.0.1:0 --store "$work/store" "$@" \
    >"$work/out" 2>>"$work/serve.log" &
  pid=$!
  for _ in $(seq 1 100); do
    addr=$(awk '$1 == "listening" { sub("http://", "", $2); print $2 }' "$work/out")
    [ -n "$addr" ] && return
    sleep 0.05
  done
  echo "server did not start" >&2; cat "$work/serve.log" >&2; exit 1
}
serve_stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

# The median of space-separated numbers.
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

now() { date +%s.%N; }
# Seconds since a `now`.
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }'; }
# A loopback port that was free a moment ago.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {  # URL: wait until it answers (at most 120 s)
  for _ in $(seq 1 1200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "$(basename "$0"): $1 never answered" >&2; exit 1
}
# CPU busy share of the whole machine over one second, and the steal share (a VM's
# neighbours): sampled while nothing of ours runs.
load() {
  local a b
  a=$(awk '/^cpu / { print $2+$3+$4+$7+$8, $5+$6, $9 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2+$3+$4+$7+$8, $5+$6, $9 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; steal = y[3] - x[3]; t = busy + idle + steal;
    printf "machine before this row: %.0f%% busy, %.0f%% stolen", 100 * busy / t, 100 * steal / t }'
}
