#!/usr/bin/env bash
# Download one file into the host's model cache with resume and progress lines, then move it into place.
#
# Model files are gigabytes: a dropped connection resumes from the .part file instead of starting over, and a
# progress line every few seconds shows that it is moving. The final name appears only when the file is
# complete, so "the file exists" means "the file is whole".
#
# Env: URL (required), DEST (required, absolute path), HF_TOKEN (optional; sent as a header through curl's
# config on stdin, never on a command line), INTERVAL (seconds between progress lines, default 5).
# Output: "fetch: ..." lines; exit 0 when DEST is complete, 2 bad input, 22 HTTP error (e.g. 401/404).
set -euo pipefail

URL="${URL:?URL is required}"
DEST="${DEST:?DEST is required}"
INTERVAL="${INTERVAL:-5}"
PART="$DEST.part"

say() { echo "fetch: $*"; }
command -v curl >/dev/null 2>&1 || { echo "fetch: error: curl not found; install curl" >&2; exit 2; }

if [ -s "$DEST" ]; then
  say "cached: $DEST ($(du -h "$DEST" | cut -f1))"
  exit 0
fi
mkdir -p "$(dirname "$DEST")"

curl_config() {
  if [ -n "${HF_TOKEN:-}" ]; then
    printf 'header = "Authorization: Bearer %s"\n' "$HF_TOKEN"
  fi
}

total=$(curl_config | curl --config - -sSLI --retry 3 "$URL" 2>/dev/null |
  tr -d '\r' | awk 'tolower($1)=="content-length:" {n=$2} END {print n+0}')
say "downloading $(basename "$DEST") ($((total / 1048576)) MiB) from ${URL%%\?*}"

curl_config | curl --config - -fsSL --retry 5 --retry-delay 3 -C - -o "$PART" "$URL" &
pid=$!
start=$(date +%s)
last=$start
while kill -0 "$pid" 2>/dev/null; do
  sleep 0.5
  kill -0 "$pid" 2>/dev/null || break
  [ $(($(date +%s) - last)) -ge "$INTERVAL" ] || continue
  last=$(date +%s)
  have=$(stat -c %s "$PART" 2>/dev/null || echo 0)
  elapsed=$(($(date +%s) - start))
  rate=$((have / (elapsed > 0 ? elapsed : 1) / 1048576))
  if [ "$total" -gt 0 ]; then
    say "$((have / 1048576)) / $((total / 1048576)) MiB ($((have * 100 / total))%), ${rate} MiB/s"
  else
    say "$((have / 1048576)) MiB, ${rate} MiB/s"
  fi
done
rc=0
wait "$pid" || rc=$?
if [ "$rc" != 0 ]; then
  echo "fetch: error: download of ${URL%%\?*} failed (curl exit $rc)" >&2
  [ "$rc" = 22 ] && echo "fetch:   fix: check the repository and file name, and HF_TOKEN for gated models" >&2
  exit "$rc"
fi
mv -f "$PART" "$DEST"
say "done: $DEST ($(du -h "$DEST" | cut -f1)) in $(($(date +%s) - start))s"
