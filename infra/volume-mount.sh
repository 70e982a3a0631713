#!/usr/bin/env bash
# A DigitalOcean cache volume mounted at the host cache (hosts/do_volumes.py), formatted ext4 on first use.
# Runs as the login user; what needs root goes through its sudo (-n: never a prompt). Env: DEVICE (the volume's
# by-id link), MOUNT (the host cache), OWNER (the login user), LABEL (ext4 label), OPTIONS (mount options),
# WAIT (seconds for the link).
# Output: "volume: ..." lines, "volume: formatted" when it made the filesystem. Exit 3: no device, 4: something
# else is mounted there, 5: the device cannot be read.
set -euo pipefail
DEVICE="${DEVICE:?}" MOUNT="${MOUNT:?}" OWNER="${OWNER:?}" LABEL="${LABEL:-mistral-cache}" WAIT="${WAIT:-60}"
OPTIONS="${OPTIONS:?}"
say() { echo "volume: $*"; }
# The link appears once the attach has reached the kernel (udev), a little after the API says completed.
for _ in $(seq "$WAIT"); do [ -e "$DEVICE" ] && break; sleep 1; done
[ -e "$DEVICE" ] || { echo "volume: error: $DEVICE did not appear within ${WAIT}s" >&2; exit 3; }
dev=$(readlink -f "$DEVICE")
if mountpoint -q "$MOUNT"; then
  src=$(findmnt -n -o SOURCE --mountpoint "$MOUNT")
  if [ "$(readlink -f "$src")" != "$dev" ]; then
    echo "volume: error: $MOUNT already has $src mounted" >&2
    exit 4
  fi
  say "already mounted at $MOUNT"
else
  # blkid -p reads the device itself: exit 2 means no filesystem and no partition table, a new volume.
  rc=0
  sudo -n blkid -p "$dev" >/dev/null 2>&1 || rc=$?
  if [ "$rc" = 2 ]; then
    say "formatting $DEVICE as ext4 (first use)"
    sudo -n mkfs.ext4 -q -L "$LABEL" "$dev"
    say "formatted"
  elif [ "$rc" != 0 ]; then
    echo "volume: error: cannot read $DEVICE (blkid exit $rc)" >&2
    exit 5
  fi
  sudo -n mkdir -p "$MOUNT"
  sudo -n mount -o "$OPTIONS" "$dev" "$MOUNT"
fi
# The volume's root becomes the login user's, as the plain cache folder is; builds and weights are not secret.
sudo -n chown "$OWNER:" "$MOUNT"
sudo -n chmod 0755 "$MOUNT"
say "mounted at $MOUNT: $(df -h --output=used,size "$MOUNT" | tail -n 1 | awk '{print $1 " used of " $2}')"
