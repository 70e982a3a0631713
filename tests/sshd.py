"""A real OpenSSH sshd for tests, on a loopback address, with a fresh host key and client key per server.

Stable API (other tests import it: the fake DigitalOcean API backs its droplets with these):

    from sshd import start_sshd, SshdServer

    server = start_sshd(tmp_dir)                       # 127.0.0.1, a free port, new host and client keys
    server = start_sshd(tmp_dir, address="127.0.0.5", port=2222,
                        host_key_private=PEM,           # an OpenSSH ed25519 private key (e.g. from cloud-init)
                        authorized_keys=["ssh-ed25519 AAAA..."],   # accepted besides server.client_key_path
                        user="root")                    # default: the user running the tests
    server.port, server.address, server.user
    server.host_key_pub          # "ssh-ed25519 AAAA..." (no comment), what a client pins
    server.host_key_fingerprint  # "SHA256:..." as ssh-keygen -lf prints it
    server.client_key_path       # private key file (0600) the server accepts for `user`
    server.known_hosts_line      # "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    server.record(**extra)       # a mistral_lab HostRecord that reaches it with the key pinned
    server.drop_connections()    # kill the sshd processes serving open connections (clients see a drop)
    server.stop()                # stop the server and everything it serves; safe to call twice

How it runs: `/usr/sbin/sshd -D -e -f <dir>/sshd_config` as the current user, with its own config only
(UsePAM no, StrictModes no, password logins off, authorized keys in the server's directory, internal-sftp,
TCP forwarding on). As root it may log in any existing user with the client key (root included, by key only), if
that account is not locked (without PAM, sshd refuses a password field starting with "!": `useradd -p '*'`); as
another user, sshd can only log in that same user, so `user` must be left at its default. Its log is
`<dir>/sshd.log`. Needs openssh-server (/usr/sbin/sshd); tests are skipped with a reason when it is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

__all__ = ["SSHD", "SshdServer", "available", "generate_ed25519", "start_sshd"]


def available() -> str | None:
    """None if a real sshd can run here, else why not (for pytest.skip)."""
    if not os.path.exists(SSHD):
        return f"{SSHD} not found: install openssh-server"
    return None


def generate_ed25519(comment: str = "") -> tuple[str, str]:
    """(private key in OpenSSH PEM format, public key line 'ssh-ed25519 AAAA... comment')."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}".strip()


def _public_from_private(private_pem: str) -> str:
    key = serialization.load_ssh_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _fingerprint(public_line: str) -> str:
    import base64
    import hashlib

    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _is_sshd(pid: int) -> bool:
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(SSHD)
    except OSError:
        return False


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# prctl(PR_SET_CHILD_SUBREAPER): processes its sessions detach (setsid, nohup: a server started as a service) are
# reparented to sshd instead of init, so they stay its descendants and `stop` takes them along, as switching off
# a machine would. Looked up before any fork: the child only makes the call.
_PR_SET_CHILD_SUBREAPER = 36
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _become_subreaper() -> None:
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@dataclass
class SshdServer:
    address: str
    port: int
    user: str
    host_key_pub: str
    client_key_path: Path
    client_key_pub: str
    dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def host_key_fingerprint(self) -> str:
        return _fingerprint(self.host_key_pub)

    @property
    def host_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.host_name} {self.host_key_pub}"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def record(self, **extra: object):
        """A HostRecord for mistral_lab's SSH host with this server's key pinned."""
        from mistral_lab.hosts.base import HostRecord

        fields: dict[str, object] = dict(target="ssh", address=self.address, port=self.port, user=self.user,
                                         key_path=str(self.client_key_path), host_key=self.host_key_pub)
        fields.update(extra)
        return HostRecord(**fields)

    def connection_pids(self) -> list[int]:
        """The sshd processes serving open connections (not the listener, not the users' commands)."""
        return [p for p in _descendants(self.process.pid) if _is_sshd(p)]

    def drop_connections(self) -> int:
        """SIGKILL every sshd process serving a connection: clients see the TCP connection drop. Commands those
        connections started are left running, as after a real network drop. Returns how many were killed."""
        pids = self.connection_pids()
        _kill(pids)
        return len(pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            everything = _descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            _kill(everything)
        with contextlib.suppress(OSError):
            (self.dir / "sshd.pid").unlink(missing_ok=True)

    def __enter__(self) -> SshdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _authorized_keys_config(d: Path) -> list[str]:
    keys = d / "authorized_keys"
    if os.geteuid() != 0:
        return [f"AuthorizedKeysFile {keys}"]
    # sshd reads AuthorizedKeysFile as the user logging in, who may not reach our 0700 temp directory;
    # a command run as root reads it for any user.
    return ["AuthorizedKeysFile none", f"AuthorizedKeysCommand {shutil.which('cat') or '/bin/cat'} {keys}",
            "AuthorizedKeysCommandUser root"]


def _config(d: Path, address: str, port: int) -> str:
    return "\n".join([
        f"ListenAddress {address}:{port}",
        f"HostKey {d / 'host_ed25519'}",
        f"PidFile {d / 'sshd.pid'}",
        *_authorized_keys_config(d),
        "HostKeyAlgorithms ssh-ed25519",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "PermitUserEnvironment no",
        "PrintMotd no",
        "PrintLastLog no",
        # Tests open connections in bursts and many sessions per connection.
        "MaxStartups 64",
        "MaxSessions 64",
        "LoginGraceTime 30",
        "LogLevel VERBOSE",
        "Subsystem sftp internal-sftp",
        "",
    ])


def start_sshd(tmpdir: str | Path, *, address: str = "127.0.0.1", port: int = 0, host_key_private: str | None = None,
               authorized_keys: list[str] | tuple[str, ...] = (), user: str | None = None,
               timeout: float = 15.0, machine: bool = False) -> SshdServer:
    """Start sshd in `tmpdir` (created if needed; one server per directory) and wait until it answers.

    machine=True: sshd stands for a whole machine (a fake droplet): its `stop` also ends every service its users
    started, detached or not. Otherwise `stop` is sshd alone going away, as after a restart."""
    reason = available()
    if reason:
        raise RuntimeError(reason)
    me = getpass.getuser()
    user = user or me
    if user != me and os.geteuid() != 0:
        raise ValueError(f"a non-root sshd can only log in its own user ({me}), not {user!r}")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no user {user!r} on this machine: sshd can only log in existing users") from None
    d = Path(tmpdir)
    d.mkdir(parents=True, exist_ok=True)
    if host_key_private is None:
        host_key_private, _ = generate_ed25519("test-host")
    _write_secret(d / "host_ed25519", host_key_private)
    host_pub = _public_from_private(host_key_private)
    (d / "host_ed25519.pub").write_text(host_pub + "\n")
    client_private, client_pub = generate_ed25519("test-client")
    _write_secret(d / "client_ed25519", client_private)
    (d / "client_ed25519.pub").write_text(client_pub + "\n")
    (d / "authorized_keys").write_text("".join(k.strip() + "\n" for k in [client_pub, *authorized_keys]))
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    last_error = ""
    for _ in range(5):  # a free port can be taken by someone else before sshd binds it: pick another
        chosen = port or _free_port(address)
        (d / "sshd_config").write_text(_config(d, address, chosen))
        log = open(d / "sshd.log", "ab")  # noqa: SIM115 (the child holds it; closed below)
        try:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True,
                                    preexec_fn=_become_subreaper if machine else None)
        finally:
            log.close()
        server = SshdServer(address=address, port=chosen, user=user, host_key_pub=host_pub,
                            client_key_path=d / "client_ed25519", client_key_pub=client_pub, dir=d, process=proc)
        if _wait_banner(server, timeout):
            return server
        server.stop()
        last_error = server.log()[-2000:]
        if port:
            break
    raise RuntimeError(f"sshd did not start on {address}:{port or '<free port>'}; its log:\n{last_error}")


def _wait_banner(server: SshdServer, timeout: float) -> bool:
    """True once the port answers with an SSH banner; False if sshd exited or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with socket.create_connection((server.address, server.port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False
