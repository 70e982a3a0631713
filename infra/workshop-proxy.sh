#!/usr/bin/env bash
# The workshop's TLS proxy (nginx) on this host: find or install nginx, check and reload its config, wait until it
# listens. Starting and stopping go through service.sh like every other server we run.
# Env: ACTION (install|check|reload|wait), ROOT (the proxy's folder), MODE (systemd|process), UNIT, PORT (wait),
#      TIMEOUT (seconds, wait and reload).
set -euo pipefail
: "${ACTION:?}" "${ROOT:?}" "${MODE:=process}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
# Under systemd the master runs as root and owns its log and pid files; checking and signalling it needs root too.
RUN_AS_MASTER=""
if [ "$MODE" = systemd ]; then RUN_AS_MASTER=$SUDO; fi

lua_modules() {  # the folder holding nginx's Lua module, empty when it is not installed
  for d in /usr/lib/nginx/modules /usr/lib64/nginx/modules /usr/share/nginx/modules; do
    if [ -e "$d/ngx_http_lua_module.so" ] && [ -e "$d/ndk_http_module.so" ]; then echo "$d"; return; fi
  done
}

has_cjson() {
  ls /usr/lib/*/lua/5.1/cjson.so /usr/lib/lua/5.1/cjson.so /usr/local/lib/lua/5.1/cjson.so >/dev/null 2>&1
}

find_nginx() {
  # Not on a non-root user's PATH on Debian and Ubuntu.
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

nginx_cmd() {
  # -e: the compiled-in error log (/var/log/nginx) may not be writable by us; this config logs to stderr.
  $RUN_AS_MASTER "$(find_nginx)" -e stderr -p "$ROOT/" -c "$ROOT/nginx.conf" "$@"
}

workers() {  # the worker pids of the running master, one per line
  ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' | sort || true
}

case "$ACTION" in
  install)
    # nginx and its Lua module (which checks each learner's request), from the distribution's packages.
    if [ -z "$(find_nginx)" ] || [ -z "$(lua_modules)" ] || ! has_cjson; then
      if ! command -v apt-get >/dev/null; then
        echo "workshop-proxy: nginx with its Lua module is not installed and there is no apt-get to install it" >&2
        exit 1
      fi
      echo "installing nginx and its Lua module from the distribution's packages"
      pkgs=(nginx libnginx-mod-http-lua lua-cjson)
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null \
        || { $SUDO apt-get update -qq \
             && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null; }
      # The package starts the distribution's own site on port 80; we run our own instance, not that one.
      if [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now nginx.service >/dev/null 2>&1 || true
      fi
    fi
    mkdir -p "$ROOT/tmp"
    chmod 700 "$ROOT"
    "$(find_nginx)" -v 2>&1
    lua_modules
    find_nginx
    ;;
  check)
    nginx_cmd -t -q
    ;;
  reload)
    # A config nginx rejects would be ignored by the reload; say why instead.
    nginx_cmd -t -q
    master=$($RUN_AS_MASTER cat "$ROOT/nginx.pid")
    before=$(workers "$master")
    $RUN_AS_MASTER kill -HUP "$master"
    # Reloaded once a worker exists that was not there before: new workers run the new config, and the old ones
    # stop accepting connections as the master tells them to finish.
    for _ in $(seq 1 $((${TIMEOUT:-30} * 10))); do
      now=$(workers "$master")
      if [ -n "$(comm -13 <(echo "$before") <(echo "$now"))" ]; then
        sleep 0.2
        echo "reloaded (master $master)"
        exit 0
      fi
      sleep 0.1
    done
    echo "workshop-proxy: nginx did not start new workers within ${TIMEOUT:-30}s of the reload" >&2
    tail -n 20 "$ROOT/serve.log" >&2 2>/dev/null || true
    exit 1
    ;;
  wait)
    : "${PORT:?}" "${UNIT:?}"
    for _ in $(seq 1 $((${TIMEOUT:-30} * 10))); do
      # nginx writes its pid file only once every listen socket is bound: a port that answers while there is no
      # pid file is someone else's.
      master=$($RUN_AS_MASTER cat "$ROOT/nginx.pid" 2>/dev/null || true)
      if [ -n "$master" ] && $RUN_AS_MASTER kill -0 "$master" 2>/dev/null \
        && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        echo "listening on port $PORT (master $master)"
        exit 0
      fi
      if [ "$MODE" = systemd ]; then
        state=$(systemctl is-active "$UNIT.service" 2>/dev/null || true)
        alive=$([ "$state" = active ] || [ "$state" = activating ] && echo yes || echo no)
      else
        alive=$([ -f "$ROOT/serve.pid" ] && kill -0 "$(cat "$ROOT/serve.pid")" 2>/dev/null && echo yes || echo no)
      fi
      if [ "$alive" = no ]; then
        echo "nginx exited during start; its log:"
        tail -n 30 "$ROOT/serve.log" 2>/dev/null || true
        exit 3
      fi
      sleep 0.1
    done
    echo "nginx was not listening on port $PORT after ${TIMEOUT:-30}s; its log:"
    tail -n 30 "$ROOT/serve.log" 2>/dev/null || true
    exit 4
    ;;
  *)
    echo "workshop-proxy: unknown ACTION $ACTION" >&2
    exit 2
    ;;
esac
