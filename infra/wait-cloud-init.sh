#!/usr/bin/env bash
# Wait until cloud-init has finished configuring this host, then say how it went.
# A host without cloud-init (a plain SSH host, a test sshd) has nothing to wait for.
set -u

if ! command -v cloud-init >/dev/null 2>&1; then
  echo "cloud-init: not installed here, nothing to wait for"
  exit 0
fi

cloud-init status --wait >/dev/null 2>&1
rc=$?
cloud-init status --long 2>/dev/null || true
case "$rc" in
  0) echo "cloud-init: done" ;;
  2) echo "cloud-init: done, with recoverable errors (listed above)"; rc=0 ;;
  *)
    echo "cloud-init: failed (exit $rc); the end of its log:"
    sudo -n tail -n 40 /var/log/cloud-init-output.log 2>/dev/null || tail -n 40 /var/log/cloud-init-output.log 2>/dev/null || true
    ;;
esac
exit "$rc"
