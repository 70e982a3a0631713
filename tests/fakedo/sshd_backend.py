"""Droplet machines for the fake: one real OpenSSH sshd (tests/sshd.py) per active droplet.

What cloud-init would do with the droplet's user_data, this does with sshd: the host key is `ssh_keys.ed25519_*`
(no key there: sshd makes its own, as an image would, and a client pinning a key will refuse it), the login user is
the first of `users:` and its keys are that user's `ssh_authorized_keys`. The sshd listens on the droplet's public
address (127.0.0.N) and the fake's SSH port.

Users: cloud-init creates the users, groups and sudo rules of `groups:` and `users:`; so does this when the tests
run as root (`useradd -m -p '*'`: sshd without PAM refuses locked accounts, `*` is not locked; a `sudo:` line
becomes a file in /etc/sudoers.d, as cloud-init writes it). As another user sshd can only log in that same user,
so tests ask for `droplet_user()` as the droplet's user.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import subprocess
import threading
from pathlib import Path

import sshd

from .state import DropletBoot


def droplet_user() -> str:
    """The user a droplet's cloud-config should create so this machine's sshd can log it in."""
    return "mistral" if os.geteuid() == 0 else getpass.getuser()


def _ensure_user(name: str, spec: dict | None = None) -> str:
    spec = spec or {}
    try:
        pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise ValueError(f"cannot create user {name!r} without root; give droplets the user "
                             f"{getpass.getuser()!r}") from None
        cmd = ["useradd", "-p", "*", "-s", str(spec.get("shell") or "/bin/bash")]
        if spec.get("system"):
            cmd += ["--system", "-d", str(spec.get("homedir") or f"/var/lib/{name}"), "-m"]
        else:
            cmd += ["-m"]
        if spec.get("primary_group"):
            cmd += ["-g", str(spec["primary_group"])]
        # Parallel test workers may race to create it: whoever loses finds it there.
        subprocess.run([*cmd, name], capture_output=True, check=False)
        pwd.getpwnam(name)
    if os.geteuid() == 0:
        for group in spec.get("groups") or []:
            subprocess.run(["usermod", "-aG", str(group), name], capture_output=True, check=False)
        if spec.get("sudo"):
            rules = spec["sudo"] if isinstance(spec["sudo"], list) else [spec["sudo"]]
            path = Path("/etc/sudoers.d") / f"90-fakedo-{name}"
            path.write_text("".join(f"{name} {rule}\n" for rule in rules))
            path.chmod(0o440)
    return name


def _ensure_group(name: str) -> None:
    if os.geteuid() == 0:
        subprocess.run(["groupadd", "-f", name], capture_output=True, check=False)


class SshdBackend:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.servers: list[sshd.SshdServer] = []
        self._lock = threading.Lock()

    @property
    def user(self) -> str:
        return droplet_user()

    def start(self, boot: DropletBoot) -> sshd.SshdServer:
        users = boot.users
        for group in boot.cloud_config.get("groups") or []:
            _ensure_group(str(group))
        for spec in users[1:]:  # the others first: the login user may join their groups
            _ensure_user(str(spec["name"]), spec)
        name = _ensure_user(str(users[0]["name"]), users[0]) if users else getpass.getuser()
        server = sshd.start_sshd(self.workdir / f"droplet-{boot.droplet_id}", address=boot.address, port=boot.port,
                                 host_key_private=boot.host_key_private, authorized_keys=boot.authorized_keys,
                                 user=name, machine=True)
        with self._lock:
            self.servers.append(server)
        return server

    def ssh_counts(self) -> dict[str, int]:
        """SSH connections and sessions (one per command, script or SFTP channel) all droplets served so far."""
        with self._lock:
            logs = [s.log() for s in self.servers]
        text = "\n".join(logs)
        # start_sshd's own readiness probe connects and leaves before the key exchange: not a client's round trip.
        probes = len(re.findall(r"kex_exchange_identification: Connection closed", text))
        return {"connections": len(re.findall(r"^Connection from ", text, re.M)) - probes,
                "sessions": len(re.findall(r"Starting session: ", text))}
