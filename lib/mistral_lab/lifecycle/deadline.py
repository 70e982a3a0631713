"""A workshop droplet that keeps its own deadline: at its end, or after a while with no request, it removes itself
(droplet, firewall, SSH key, tags) through the API, even with the instructor's machine off.

It uses a second token the instructor makes with only the scopes this needs (`SCOPES`), given in the environment
(`TOKEN_ENV`), checked at `up` by the very calls it will make, and kept on the droplet in a file only root can
read: not the model server's user, not a command line, not a log. The loop is `infra/deadline.sh`, run as root
beside the deployment as one of its companion services (a plain teardown stops it).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from mistral_lab import infra_files
from mistral_lab.engines import service
from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import Host, HostRecord
from mistral_lab.hosts.do_api import DOApi, TokenRefused
from mistral_lab.hosts.do_resources import expiry_tag

__all__ = ["SCOPES", "TOKEN_ENV", "Deadline", "check_token", "cron_line", "install", "token_from_env"]

TOKEN_ENV = "MISTRAL_LAB_DEADLINE_TOKEN"
# What the droplet's own removal calls need, and nothing more (DigitalOcean custom scopes).
SCOPES = ("droplet:delete", "firewall:delete", "ssh_key:delete", "tag:delete")
SCRIPT = "deadline.sh"


@dataclass(frozen=True)
class Deadline:
    expires_at: int  # unix seconds: the workshop's end
    idle_s: int = 0  # 0: no end for idleness
    activity: str = ""  # a file whose mtime is the last request (the proxy's access log)
    interval_s: int = 30


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def cron_line() -> str:
    """What keeps the deadline when the droplet cannot: the instructor's machine, every five minutes."""
    return "*/5 * * * * DIGITALOCEAN_TOKEN=... mistral-lab sweep --expired"


def check_token(token: str, api_url: str | None = None) -> None:
    """Make each delete the deadline will make, on things that cannot exist: 404 says the token holds the scope,
    403 that it does not. Nothing is removed."""
    api = DOApi(api_url, token=token, max_attempts=2)
    probes = {"droplet:delete": lambda: api.destroy_droplet(1),
              "firewall:delete": lambda: api.delete_firewall("00000000-0000-4000-8000-000000000000"),
              "ssh_key:delete": lambda: api.delete_ssh_key(1),
              "tag:delete": lambda: api.delete_tag("mistral-lab-scope-check")}
    missing = []
    for scope, call in probes.items():
        try:
            call()
        except TokenRefused as e:
            if e.status != 403:
                raise
            missing.append(scope)
    if missing:
        raise BadInput(f"the deadline token lacks {', '.join(missing)}", field=TOKEN_ENV,
                       fix=f"make a custom-scoped token with {', '.join(SCOPES)} (nothing else is needed)")


def install(host: Host, record: HostRecord, *, name: str, instance: str, mode: service.Mode, token: str,
            deadline: Deadline, api_url: str, host_root: str) -> service.ServiceSpec:
    """Put the loop and its token on the droplet and start it, as root. Returns its service, for the record."""
    root = f"{host_root}/deadline/{instance}"
    ids = record.resource_ids
    tags = [str(ids["tag"])] if ids.get("tag") else []
    if record.extra.get("expires_at"):
        tags.append(expiry_tag(int(record.extra["expires_at"])))
    config = {"API_URL": api_url.rstrip("/"), "TOKEN_FILE": f"{root}/token", "DROPLET_ID": str(ids["droplet"]),
              "FIREWALL_ID": str(ids.get("firewall") or ""), "SSH_KEY": str(ids.get("ssh_key") or ""),
              "TAGS": " ".join(dict.fromkeys(tags)), "EXPIRES_AT": str(deadline.expires_at),
              "IDLE_S": str(deadline.idle_s), "ACTIVITY": deadline.activity, "INTERVAL": str(deadline.interval_s)}
    spec = service.ServiceSpec(name=f"{name}-deadline", model="-", engine="deadline", root=root,
                               argv=["bash", f"{root}/{SCRIPT}"], port=0, key_var="", mode=mode, user="root",
                               owner=record.user, secret_env=config, instance=f"{instance}-deadline")
    service.install(host, spec)
    host.put_text(infra_files.read(SCRIPT), f"{root}/{SCRIPT}", mode=0o700)
    # The token on stdin, into a file root creates 0600: never an argument, never the login user's file.
    host.run_script(f"printf %s \"$DEADLINE_TOKEN\" | sudo -n sh -c 'umask 077 && cat > \"$1\"' sh "
                    f"{shlex.quote(root)}/token", env={"DEADLINE_TOKEN": token})
    service.stop(host, spec)  # what an earlier attempt may have left
    service.start(host, spec, wait=False)
    return spec
