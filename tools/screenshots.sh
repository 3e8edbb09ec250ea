#!/usr/bin/env bash
# Screenshots of every page of the web page, for docs/ui/: a release server on a temp store
# with three packed images (one of them a two-layer program with its libraries), a --root of
# three programs, taken by headless Chromium (light, dark, and a phone's width).
#
# usage: tools/screenshots.sh [OUT_DIR (docs/ui)]
# Needs: chromium (apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/ui}
cargo build --release -q
bin=$PWD/target/release/quinistry
work=$(mktemp -d /tmp/quinistry-shots.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
store=$work/store
echo "hello from quinistry" >"$work/hello.txt"
"$bin" pack --store "$store" --tag team/web:1.4 --env LANG=C.UTF-8 \
  --entrypoint /usr/bin/curl /usr/bin/curl >/dev/null
"$bin" pack --store "$store" --tag team/web:1.5 --env LANG=C.UTF-8 \
  --entrypoint /usr/bin/curl /usr/bin/curl "$work/hello.txt" >/dev/null
"$bin" pack --store "$store" --tag tools/hello:latest "$work/hello.txt" >/dev/null
mkdir -p "$work/root"
for p in cat ls sha256sum; do cp "/usr/bin/$p" "$work/root/"; done
# shellcheck source=benches/serve-lib.sh
. benches/serve-lib.sh
serve_start --no-prepack --root "$work/root" --name tools/hello "$work/hello.txt"
curl -sf -o /dev/null "http://$addr/v2/ls/manifests/latest" -H 'Accept: application/vnd.oci.image.manifest.v1+json'
digest=$(curl -sf -o /dev/null -D - "http://$addr/v2/team/web/manifests/1.5" \
  -H 'Accept: application/vnd.oci.image.manifest.v1+json' | awk 'tolower($1) == "docker-content-digest:" { print $2 }' | tr -d '\r')
shoot() {  # FILE URL [chromium flags...]
  local file=$1 url=$2; shift 2
  chromium --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
    --disable-background-networking --disable-component-update --disable-sync \
    --host-resolver-rules="MAP * ~NOTFOUND , EXCLUDE 127.0.0.1" \
    --user-data-dir="$work/profile" --window-size=1200,760 "$@" \
    --screenshot="$out/$file" "$url" 2>/dev/null
  echo "$out/$file"
}
mkdir -p "$out"
shoot repositories.png "http://$addr/ui/"
shoot search.png "http://$addr/ui/?q=team"
shoot repository.png "http://$addr/ui/repository?name=team/web"
shoot image.png "http://$addr/ui/image?name=team/web&digest=$digest"
shoot programs.png "http://$addr/ui/programs"
shoot storage.png "http://$addr/ui/storage"
shoot repository-dark.png "http://$addr/ui/repository?name=team/web" --blink-settings=preferredColorScheme=0
shoot repositories-phone.png "http://$addr/ui/" --window-size=390,800
