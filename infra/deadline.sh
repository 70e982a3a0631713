#!/usr/bin/env bash
# A workshop droplet keeps its own deadline: at its end (EXPIRES_AT) or after IDLE_S seconds with no request
# (ACTIVITY's mtime, the proxy's access log), it removes its firewall, its SSH key and its tags, then itself,
# through the API with a token scoped to just that. It runs as root: the token file is root's alone (0600), never
# the model server's, never in a command line or an environment a user can read (/proc/PID/environ is root's).
# Env: API_URL, TOKEN_FILE, DROPLET_ID, FIREWALL_ID, SSH_KEY, TAGS (space-separated), EXPIRES_AT (unix seconds),
#      IDLE_S (0: no idle end), ACTIVITY (file), INTERVAL (seconds between looks).
set -uo pipefail
: "${API_URL:?}" "${TOKEN_FILE:?}" "${DROPLET_ID:?}" "${EXPIRES_AT:?}" "${INTERVAL:=30}" "${IDLE_S:=0}"
STARTED=$(date +%s)

api_delete() {  # path -> HTTP status; the token goes in on stdin (a header file), never on curl's command line
  printf 'Authorization: Bearer %s\n' "$(cat "$TOKEN_FILE")" \
    | curl -s -o /dev/null -w '%{http_code}' -X DELETE -H @- --max-time 30 "$API_URL$1" || echo 000
}

remove_all() {
  echo "deadline: $1: removing this droplet and what belongs to it"
  [ -n "${FIREWALL_ID:-}" ] && echo "firewall $FIREWALL_ID: $(api_delete "/v2/firewalls/$FIREWALL_ID")"
  [ -n "${SSH_KEY:-}" ] && echo "ssh key: $(api_delete "/v2/account/keys/$SSH_KEY")"
  # The deployment's own tags before the droplet, which takes this script with it. The droplet keeps the
  # owner's tags, so `mistral-lab sweep` still finds it should its delete be refused five times.
  for tag in ${TAGS:-}; do echo "tag $tag: $(api_delete "/v2/tags/$tag")"; done
  for attempt in 1 2 3 4 5; do
    status=$(api_delete "/v2/droplets/$DROPLET_ID")
    echo "droplet $DROPLET_ID: $status"
    case "$status" in 204|404|422) return ;; esac  # 422: a destroy already under way
    sleep $((attempt * 5))
  done
}

while :; do
  now=$(date +%s)
  if [ "$now" -ge "$EXPIRES_AT" ]; then
    remove_all "the workshop's time is over"
    exit 0
  fi
  if [ "$IDLE_S" -gt 0 ]; then
    last=$(stat -c %Y "${ACTIVITY:-/nonexistent}" 2>/dev/null || echo "$STARTED")
    [ "$last" -lt "$STARTED" ] && last=$STARTED
    if [ $((now - last)) -ge "$IDLE_S" ]; then
      remove_all "no request for $((now - last)) s"
      exit 0
    fi
  fi
  sleep "$INTERVAL"
done
