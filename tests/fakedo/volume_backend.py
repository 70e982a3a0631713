"""Fake volumes as real block devices: each volume a sparse image file, attached as a loop device whose link appears
in a folder standing in for the droplet's /dev/disk/by-id when an attach completes, and goes at detach.

The fake droplet is this machine, so a client that mounts `<device_dir>/scsi-0DO_Volume_<name>` mounts a real
filesystem there, formats it with the real mkfs, and finds its files again at the next attach: nothing of the
volume is simulated above the block layer. DigitalOcean's naming of the link:
https://docs.digitalocean.com/products/volumes/details/naming-conventions/ (read 2026-12-07).

Confined to two temporary folders (the images' and the links'); needs root (losetup). A detach while the
filesystem is still mounted does what pulling the disk does: the mount is lazily taken away (`umount -l`), and
`unplug` says so, so a test can tell a clean detach from one under a mounted filesystem. `close` detaches every
loop device and deletes the images.

`seed`: a folder whose files every new volume starts with (an ext4 filesystem made with `mkfs.ext4 -d`), as a
volume restored from a prepared snapshot would; without it a new volume is blank, as a new DigitalOcean volume is.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

LINK_PREFIX = "scsi-0DO_Volume_"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout.strip()


class LoopVolumes:
    def __init__(self, workdir: Path, device_dir: Path, *, seed: Path | None = None):
        if os.geteuid() != 0:
            raise PermissionError("loop devices need root")
        self.workdir = Path(workdir)
        self.device_dir = Path(device_dir)
        self.seed = seed
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device_dir.mkdir(parents=True, exist_ok=True)
        self._loops: dict[str, str] = {}  # volume id -> /dev/loopN while attached
        self._lock = threading.Lock()

    def image(self, volume_id: str) -> Path:
        return self.workdir / f"{volume_id}.img"

    def link(self, name: str) -> Path:
        return self.device_dir / f"{LINK_PREFIX}{name}"

    def create(self, volume_id: str, name: str, size_gib: int) -> None:
        image = self.image(volume_id)
        with open(image, "wb") as f:
            f.truncate(size_gib << 30)  # sparse: a 100 GiB volume costs the disk only what is written
        if self.seed is not None:
            # Lazy inode tables and journal: the image is sparse, so unwritten blocks already read as zeros.
            _run("mkfs.ext4", "-q", "-F", "-L", "seeded", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                 "-d", str(self.seed), str(image))

    def plug(self, volume_id: str, name: str) -> str:
        with self._lock:
            loop = _run("losetup", "--find", "--show", str(self.image(volume_id)))
            self._loops[volume_id] = loop
            link = self.link(name)
            link.unlink(missing_ok=True)
            link.symlink_to(loop)
            return str(link)

    def unplug(self, volume_id: str, name: str) -> bool:
        with self._lock:
            self.link(name).unlink(missing_ok=True)
            loop = self._loops.pop(volume_id, None)
            if loop is None:
                return False
            mounts = subprocess.run(["findmnt", "-rn", "-S", loop, "-o", "TARGET"], capture_output=True,
                                    text=True, timeout=30).stdout.split()
            for target in mounts:
                subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
            subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)
            return bool(mounts)

    def attached(self) -> dict[str, str]:
        with self._lock:
            return dict(self._loops)

    def delete(self, volume_id: str) -> None:
        self.image(volume_id).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            loops = dict(self._loops)
        for volume_id in loops:
            self.unplug(volume_id, "")
        for link in self.device_dir.glob(f"{LINK_PREFIX}*"):
            link.unlink(missing_ok=True)
        for image in self.workdir.glob("*.img"):
            image.unlink(missing_ok=True)
