#!/usr/bin/env bash
# Wait until the server answers /health and /v1/models (with its API key), printing progress. Fails fast when the
# process has died, and prints the log tail either way, so the caller can say why.
# Env: ROOT, PORT, TIMEOUT (seconds), MODE (systemd|process), UNIT, KEY_VAR (name of the key variable in ROOT/env).
set -euo pipefail
: "${ROOT:?}" "${PORT:?}" "${TIMEOUT:?}" "${MODE:?}" "${UNIT:?}" "${KEY_VAR:?}"
set -a
# shellcheck disable=SC1091
. "$ROOT/env"
set +a
KEY="${!KEY_VAR}"
BASE="http://127.0.0.1:$PORT"

fetch() {  # fetch URL [auth] -> prints HTTP status
  if command -v curl >/dev/null; then
    if [ "${2:-}" = auth ]; then
      # The header goes in on stdin (printf is a builtin), so the key never shows in curl's argv / ps.
      printf 'Authorization: Bearer %s\n' "$KEY" | curl -s -o /dev/null -w '%{http_code}' -H @- "$1" || true
    else
      curl -s -o /dev/null -w '%{http_code}' "$1" || true
    fi
  else
    python3 - "$1" "${2:-}" <<'PY' || true
import os, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
if sys.argv[2] == "auth":
    req.add_header("Authorization", "Bearer " + os.environ["KEY"])
try:
    print(urllib.request.urlopen(req, timeout=5).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
PY
  fi
}

alive() {
  if [ "$MODE" = systemd ]; then
    state=$(systemctl is-active "$UNIT.service" 2>/dev/null || true)
    [ "$state" = active ] || [ "$state" = activating ]
  else
    [ -f "$ROOT/serve.pid" ] && ps -p "$(cat "$ROOT/serve.pid")" >/dev/null 2>&1  # maybe another user's
  fi
}

export KEY
start=$(date +%s)
last=""
while :; do
  elapsed=$(( $(date +%s) - start ))
  # With the key: a server may guard /health too (vLLM does, through infra/vllm_guard.py).
  health=$(fetch "$BASE/health" auth)
  if [ "$health" = 200 ]; then
    models=$(fetch "$BASE/v1/models" auth)
    if [ "$models" = 200 ]; then
      echo "ready after ${elapsed}s"
      exit 0
    fi
    msg="health ok, /v1/models answered $models"
  else
    msg="waiting for the server (health: $health)"
  fi
  if [ "$msg" != "$last" ] || [ $((elapsed % 15)) = 0 ]; then
    echo "[${elapsed}s] $msg"
    last=$msg
  fi
  if ! alive; then
    echo "the server process exited; last log lines:"
    tail -n 60 "$ROOT/serve.log" 2>/dev/null || true
    exit 3
  fi
  if [ "$elapsed" -ge "$TIMEOUT" ]; then
    echo "not ready after ${TIMEOUT}s; last log lines:"
    tail -n 60 "$ROOT/serve.log" 2>/dev/null || true
    exit 4
  fi
  sleep 1
done
