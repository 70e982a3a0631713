#!/usr/bin/env bash
# Print the first TCP port from START upwards that nothing listens on at 127.0.0.1.
#
# Two deployments (or a deployment and anything else) on one host must not fight over a port; bash's /dev/tcp
# needs no extra tools on a fresh droplet.
set -euo pipefail
START="${START:?START is required}"
TRIES="${TRIES:-100}"
for ((port = START; port < START + TRIES; port++)); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$port"
    exit 0
  fi
done
echo "free-port: error: ports $START-$((START + TRIES - 1)) are all in use" >&2
exit 1
