#!/usr/bin/env bash
# Writes a binary-like test input of SIZE_MIB MiB to OUT: the machine's own executables and
# shared libraries concatenated (sorted, so the same machine gives the same file), repeated
# if there are not enough of them. Compresses like real executables do, unlike random bytes.
# usage: make-input.sh OUT SIZE_MIB
set -euo pipefail
out=$1
mib=$2
want=$((mib * 1024 * 1024))
list=$(mktemp)
trap 'rm -f "$list"' EXIT
find /usr/bin /usr/lib /usr/libexec -type f -size +64k -perm -u+x 2>/dev/null | LC_ALL=C sort > "$list"
[ -s "$list" ] || { echo "make-input.sh: no executables found under /usr" >&2; exit 1; }
# Each round appends the whole list; stop once there is enough, then trim to size.
: > "$out"
while [ "$(stat -c %s "$out")" -lt "$want" ]; do
  xargs -d '\n' cat < "$list" >> "$out" 2>/dev/null || true
done
truncate -s "$want" "$out"
echo "$out: $(stat -c %s "$out") bytes from $(wc -l < "$list") files"
