"""cloud-init user_data for a droplet, and the ed25519 key pairs it carries.

The template is `mistral_lab/infra/cloud-init.yaml.j2`. Rendering checks the result parses as cloud-config, fits
DigitalOcean's 64 KiB limit, and contains none of the secrets the caller names (the API token, the client's
private key): user_data stays readable on the droplet for its whole life.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mistral_lab import infra_files
from mistral_lab.errors import BadInput

TEMPLATE = "cloud-init.yaml.j2"
MAX_USER_DATA = 64 * 1024
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # PEM text in OpenSSH's own private-key format
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    @property
    def public_key(self) -> str:
        """The public key without its comment: `ssh-ed25519 AAAA...`, what a host-key pin compares."""
        return " ".join(self.public_openssh.split()[:2])


def generate_ed25519(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, f"{public} {comment}".strip())


def md5_fingerprint(public_key: str) -> str:
    """DigitalOcean's SSH key id: MD5 of the key blob as colon hex, like `ssh-keygen -l -E md5`."""
    digest = hashlib.md5(base64.b64decode(public_key.split()[1])).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def public_from_private(private_openssh: str, comment: str = "") -> str:
    key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{public} {comment}".strip()


def check_user(user: str) -> str:
    if not USER_RE.match(user):
        raise BadInput(f"invalid user name {user!r}", field="ssh_user",
                       fix="use lowercase letters, digits, '_' and '-', starting with a letter, e.g. mistral")
    if user == "root":
        raise BadInput("the droplet's login user must not be root: cloud-init turns root login off", field="ssh_user",
                       fix="leave the default (mistral) or pick another non-root name")
    return user


def render_user_data(*, hostname: str, user: str, host_key: KeyPair, authorized_key: str, service_user: str,
                     forbidden: Iterable[str] = ()) -> str:
    """Render and check the droplet's cloud-config. `forbidden` are secret values that must not appear in it."""
    if check_user(service_user) == user:
        raise BadInput("the server's user must not be the login user", field="service_user",
                       fix="leave the default (mlserve): the server runs without the login user's sudo")
    text = infra_files.render(TEMPLATE, hostname=hostname, user=check_user(user), service_user=service_user,
                              host_key_private=host_key.private_openssh, host_key_public=host_key.public_openssh,
                              authorized_key=authorized_key.strip())
    data = yaml.safe_load(text)
    if not text.startswith("#cloud-config\n") or not isinstance(data, dict):
        raise AssertionError("cloud-init template did not render a cloud-config mapping")
    if data["ssh_keys"]["ed25519_private"] != host_key.private_openssh:
        raise AssertionError("cloud-init template mangled the host key")
    if len(text.encode()) > MAX_USER_DATA:
        raise AssertionError(f"user_data is {len(text.encode())} bytes; DigitalOcean takes at most {MAX_USER_DATA}")
    for secret in forbidden:
        if secret and secret.strip() and secret.strip() in text:
            # Never say which secret or show the text: the message itself could end up in a log.
            raise AssertionError("refusing to send user_data that contains a secret")
    return text
