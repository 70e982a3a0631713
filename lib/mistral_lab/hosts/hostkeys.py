"""SSH host key trust: what we accept for a host (a pinned key, or a known_hosts file), and clear refusals.

paramiko (and fabric, which sets AutoAddPolicy) would otherwise accept any key. Here an unknown key is refused
unless trust-on-first-use was asked for explicitly, and a changed key is always refused. Fingerprints are shown the
way OpenSSH prints them (`SHA256:` + unpadded base64), so they can be compared with `ssh-keygen -lf`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from mistral_lab.errors import BadInput, TargetError

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")


class HostKeyError(TargetError):
    """The host did not prove it is the host we meant. The CLI exits with 3 on this."""

    exit_code = 3

    def __init__(self, message: str, *, host: str, seen: paramiko.PKey, expected: paramiko.PKey | None,
                 source: str, fix: str):
        self.host = host
        self.seen_key = openssh_line(seen)
        self.seen_fingerprint = fingerprint(seen)
        self.expected_fingerprint = fingerprint(expected) if expected is not None else None
        self.source = source
        super().__init__(message, field="host_key", fix=fix)


class HostKeyMismatch(HostKeyError):
    """The host showed a different key than the one pinned or in known_hosts."""


class HostKeyUnknown(HostKeyError):
    """Nothing is known about this host's key and trust-on-first-use was not asked for."""


def fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:..." exactly as `ssh-keygen -lf` prints it


def describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {fingerprint(key)}"


def openssh_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


def parse_public_key(text: str, *, field: str = "host_key") -> paramiko.PKey:
    """'ssh-ed25519 AAAA... [comment]' (a .pub file's content or a known_hosts entry without the host)."""
    parts = text.strip().split()
    if len(parts) < 2:
        raise BadInput(f"{text.strip()[:40]!r} is not an OpenSSH public key", field=field,
                       fix="give it as 'ssh-ed25519 AAAA...' (the content of the host's .pub file)")
    kind, b64 = parts[0], parts[1]
    try:
        return paramiko.PKey.from_type_string(kind, base64.b64decode(b64, validate=True))
    except (binascii.Error, paramiko.SSHException, ValueError) as e:
        raise BadInput(f"cannot read the {kind} key: {e}", field=field,
                       fix="copy the whole line of the host's .pub file, e.g. /etc/ssh/ssh_host_ed25519_key.pub"
                       ) from e


def host_name(address: str, port: int) -> str:
    """How OpenSSH and paramiko name a host in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


def append_known_hosts(path: Path, address: str, port: int, key: paramiko.PKey) -> None:
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    with open(path, "a", encoding="utf-8") as f:
        if existing and not existing.endswith("\n"):
            f.write("\n")
        f.write(f"{host_name(address, port)} {openssh_line(key)}\n")


@dataclass
class Trust:
    """The keys we accept for one host and where they came from; records the key when TOFU accepts one."""

    address: str
    port: int
    keys: paramiko.HostKeys
    source: str
    trust_on_first_use: bool = False
    record_to: Path | None = None
    accepted: paramiko.PKey | None = field(default=None, init=False)

    @classmethod
    def of(cls, address: str, port: int, *, host_key: str | None = None, known_hosts: str | Path | None = None,
           trust_on_first_use: bool = False) -> Trust:
        keys = paramiko.HostKeys()
        name = host_name(address, port)
        if host_key:
            key = parse_public_key(host_key)
            keys.add(name, key.get_name(), key)
            return cls(address, port, keys, "the pinned host key", trust_on_first_use)
        if known_hosts:
            path = Path(known_hosts).expanduser()
            if path.exists():
                keys.load(str(path))
            elif not trust_on_first_use:
                raise BadInput(f"the known_hosts file {path} does not exist", field="known_hosts",
                               fix="give an existing file, pin the key with host_key, or add trust_on_first_use "
                                   "to create it with the key the host shows")
            return cls(address, port, keys, f"known_hosts file {path}", trust_on_first_use, record_to=path)
        path = DEFAULT_KNOWN_HOSTS.expanduser()
        if path.exists():
            keys.load(str(path))
        return cls(address, port, keys, f"{path} (no key was pinned)", trust_on_first_use)

    @property
    def name(self) -> str:
        return host_name(self.address, self.port)

    def expected(self) -> paramiko.PKey | None:
        known = self.keys.lookup(self.name)
        return next(iter(known.values()), None) if known else None

    def policy(self) -> paramiko.MissingHostKeyPolicy:
        return _Policy(self)

    def mismatch(self, seen: paramiko.PKey, expected: paramiko.PKey | None) -> HostKeyMismatch:
        expected = expected or self.expected()
        exp = describe(expected) if expected is not None else "another key"
        return HostKeyMismatch(
            f"the host key of {self.name} has CHANGED, refusing to connect.\n"
            f"  expected: {exp}  (from {self.source})\n"
            f"  seen:     {describe(seen)}\n"
            "  Either the host was rebuilt or re-keyed, or someone is intercepting the connection.",
            host=self.name, seen=seen, expected=expected, source=self.source,
            fix="if the host was rebuilt on purpose, check the new fingerprint on the host "
                "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and pin it; otherwise do not connect",
        )

    def unknown(self, seen: paramiko.PKey) -> HostKeyUnknown:
        return HostKeyUnknown(
            f"the host key of {self.name} is unknown, refusing to connect.\n"
            f"  expected: nothing known for this host (looked in {self.source})\n"
            f"  seen:     {describe(seen)}\n"
            f"  key:      {openssh_line(seen)}",
            host=self.name, seen=seen, expected=None, source=self.source,
            fix="check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then pin "
                "it (--host-key / host_key) or add it to a known_hosts file; or pass --trust-on-first-use to "
                "accept and record it",
        )


class _Policy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when it has no key of the offered type for the host."""

    def __init__(self, trust: Trust):
        self.trust = trust

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.trust.expected() is not None:
            # We know this host by a key of another type: that is a changed key, not a new host.
            raise self.trust.mismatch(key, None)
        if not self.trust.trust_on_first_use:
            raise self.trust.unknown(key)
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.trust.keys.add(hostname, key.get_name(), key)
        self.trust.accepted = key
        if self.trust.record_to is not None:
            append_known_hosts(self.trust.record_to, self.trust.address, self.trust.port, key)
