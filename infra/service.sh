#!/usr/bin/env bash
# Start, stop or inspect a deployment's server on this host, as a systemd unit when systemd runs and we may use
# it, otherwise as a supervised background process with a pid file. One script per step: one SSH round trip.
# Env: ACTION (start|stop|status|logs), ROOT (deployment folder), UNIT (unit name), MODE (systemd|process), LINES,
#      SERVICE_USER (process mode: the server's own user when it is not the login user; the unit says it itself).
set -euo pipefail
: "${ACTION:?}" "${ROOT:?}" "${UNIT:?}" "${MODE:?}"
LOG="$ROOT/serve.log"
PID_FILE="$ROOT/serve.pid"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
# The server's own user: started through sudo as it, signalled through sudo (another user's processes).
AS=()
SIGNAL=""
HOME_OF_SERVER=$HOME
if [ -n "${SERVICE_USER:-}" ] && [ "$SERVICE_USER" != "$(id -un)" ]; then
  AS=(sudo -n -u "$SERVICE_USER")
  SIGNAL=$SUDO
  HOME_OF_SERVER=$(getent passwd "$SERVICE_USER" | cut -d: -f6)
fi

process_alive() {  # ps, not kill -0: the process may be another user's
  [ -f "$PID_FILE" ] && ps -p "$(cat "$PID_FILE")" >/dev/null 2>&1
}

case "$ACTION:$MODE" in
  start:systemd)
    $SUDO install -m 0644 "$ROOT/$UNIT.service" "/etc/systemd/system/$UNIT.service"
    $SUDO systemctl daemon-reload
    $SUDO systemctl enable --now "$UNIT.service" >/dev/null 2>&1 || $SUDO systemctl restart "$UNIT.service"
    echo "started $UNIT.service"
    ;;
  start:process)
    if process_alive; then
      echo "already running (pid $(cat "$PID_FILE"))"
      exit 0
    fi
    # setsid: its own process group, so stop can take the server and every child with it. env -i: the server gets
    # a clean environment (what its 0600 env file sets, plus these), never the caller's tokens.
    setsid nohup "${AS[@]}" env -i PATH="$PATH" HOME="$HOME_OF_SERVER" USER="${SERVICE_USER:-$(id -un)}" \
      LANG="${LANG:-C.UTF-8}" TMPDIR="${TMPDIR:-/tmp}" "$ROOT/serve.sh" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    echo "started pid $(cat "$PID_FILE")"
    ;;
  stop:systemd)
    if [ -f "/etc/systemd/system/$UNIT.service" ]; then
      $SUDO systemctl disable --now "$UNIT.service" >/dev/null 2>&1 || true
      $SUDO rm -f "/etc/systemd/system/$UNIT.service"
      $SUDO systemctl daemon-reload
    fi
    echo "stopped $UNIT.service"
    ;;
  stop:process)
    if process_alive; then
      pid=$(cat "$PID_FILE")
      $SIGNAL kill -TERM -- "-$pid" 2>/dev/null || $SIGNAL kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 60); do
        ps -p "$pid" >/dev/null 2>&1 || break
        sleep 0.5
      done
      $SIGNAL kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    echo "stopped"
    ;;
  status:systemd)
    if $SUDO systemctl is-active --quiet "$UNIT.service"; then echo running; else echo stopped; fi
    ;;
  status:process)
    if process_alive; then echo running; else echo stopped; fi
    ;;
  logs:*)
    tail -n "${LINES:-200}" "$LOG" 2>/dev/null || echo "(no log yet at $LOG)"
    ;;
  *)
    echo "unknown ACTION:MODE $ACTION:$MODE" >&2
    exit 2
    ;;
esac
