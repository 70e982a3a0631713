"""Deployment records on disk, found again by name.

One folder per deployment under `$MISTRAL_LAB_HOME` (default `~/.local/state/mistral-lab`):
`deployments/<name>/deployment.json` holds the plan, host facts, versions, endpoint and step timings; secrets
(the server's API key, the droplet's SSH keys) sit beside it in files only the user can read. The JSON refers
to secrets by file name and never holds one.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import HostFacts, HostRecord
from mistral_lab.paths import home, write_atomic
from mistral_lab.planning.resolve import Plan

__all__ = ["Companion", "Deployment", "Endpoint", "HostRecord", "Service", "Status", "StepTiming", "check_name",
           "deployment_dir", "dumps_public", "exists", "home", "installation_id", "load", "load_all", "lock", "names",
           "new_api_key", "now", "read_secret", "record_step", "remove", "save", "write_atomic", "write_secret"]

Status = Literal["provisioning", "installing", "starting", "up", "failed", "stopped", "destroyed"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")




def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StepTiming(BaseModel):
    step: str
    seconds: float
    started_at: str
    skipped: bool = Field(default=False, description="true when the step found its work already done")


class Endpoint(BaseModel):
    remote_port: int
    served_model: str
    api_key_file: str = Field(description="file name beside deployment.json holding the key")
    health_path: str = "/health"

    def base_url(self, local_port: int) -> str:
        return f"http://127.0.0.1:{local_port}/v1"


class Service(BaseModel):
    kind: Literal["systemd", "process"]
    unit: str | None = None
    pid_file: str | None = None
    log_file: str
    root: str = Field(description="the deployment's folder on the host")
    user: str | None = Field(default=None, description="the user the server runs as on the host")


class Companion(BaseModel):
    """A service that lives and dies with a deployment on its host (a workshop's TLS proxy)."""

    name: str
    root: str
    mode: Literal["systemd", "process"]
    engine: str = "?"
    user: str | None = Field(default=None, description="who it runs as when not the login user (root: a deadline)")
    instance: str | None = Field(default=None, description="its name on the host (its unit's), when not `name`")


class Deployment(BaseModel):
    name: str
    status: Status
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    plan: Plan
    host: HostRecord
    facts: HostFacts | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    service: Service | None = None
    endpoint: Endpoint | None = None
    timings: list[StepTiming] = Field(default_factory=list)
    error: str | None = None
    instance: str | None = Field(default=None, description="the deployment's name on its host: <name>-<id>")
    serve_command: str | None = Field(default=None, description="the command that started the server, as it ran")
    model_ref: str | None = Field(default=None, description="what the server loads: a path on the host or a hub ref")
    tools: dict[str, str] = Field(default_factory=dict, description="the engine's other binaries, e.g. llama-bench")
    served_context: int | None = Field(default=None, description="the context the server reports serving")
    companions: list[Companion] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_extra(cls, data: Any) -> Any:
        """Records written before these fields were typed kept them in `extra`: read them from there."""
        if isinstance(data, dict) and isinstance(data.get("extra"), dict):
            data = dict(data)
            extra = data.pop("extra")
            renames = {"max_model_len": "served_context"}
            for key, value in extra.items():
                data.setdefault(renames.get(key, key), value)
        return data

    @property
    def folder(self) -> Path:
        return deployment_dir(self.name)

    def api_key(self) -> str:
        if self.endpoint is None:
            raise BadInput(f"deployment {self.name} has no endpoint yet", field="name",
                           fix=f"deploy it first: mistral-lab deploy {self.plan.model} --name {self.name}")
        return read_secret(self.name, self.endpoint.api_key_file)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise BadInput(f"invalid deployment name {name!r}", field="name",
                       fix="use lowercase letters, digits and dashes, up to 41 characters, starting with a letter or digit")
    return name


def deployment_dir(name: str) -> Path:
    return home() / "deployments" / check_name(name)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def save(dep: Deployment) -> Path:
    folder = _private_dir(deployment_dir(dep.name))
    dep.updated_at = now()
    return write_atomic(folder / "deployment.json", dep.model_dump_json(indent=2))


@contextmanager
def lock(name: str, *, wait_note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the deployment's lock: one deploy (or revoke, or teardown) of a name at a time in this installation.
    A second one waits here, then re-reads the record."""
    locks = _private_dir(home() / "locks")
    with open(locks / f"{check_name(name)}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_note:
                wait_note(f"… another process is working on {name}; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def installation_id() -> str:
    """This installation's random id, made once: what DigitalOcean resources are tagged with as their owner."""
    path = _private_dir(home()) / "installation-id"
    if not path.is_file():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(4))
        except FileExistsError:  # another process made it first: use theirs
            pass
    return path.read_text().strip()


def names() -> list[str]:
    root = home() / "deployments"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "deployment.json").is_file())


def exists(name: str) -> bool:
    return (deployment_dir(name) / "deployment.json").is_file()


def load(name: str) -> Deployment:
    path = deployment_dir(name) / "deployment.json"
    if not path.is_file():
        known = names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if close:
            fix = f"did you mean {', '.join(close)}?"
        elif known:
            fix = f"known deployments: {', '.join(known)}"
        else:
            fix = "no deployments yet: run `mistral-lab deploy MODEL`"
        raise BadInput(f"unknown deployment {name!r}", field="name", fix=fix)
    return Deployment.model_validate_json(path.read_text())


def load_all() -> list[Deployment]:
    return [load(n) for n in names()]


def remove(name: str) -> None:
    folder = deployment_dir(name)
    if folder.is_dir():
        for p in sorted(folder.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        folder.rmdir()


def write_secret(name: str, file: str, value: str) -> Path:
    return write_atomic(_private_dir(deployment_dir(name)) / file, value)


def read_secret(name: str, file: str) -> str:
    return (deployment_dir(name) / file).read_text().strip()


def new_api_key() -> str:
    return "ml-" + secrets.token_urlsafe(32)


def record_step(dep: Deployment, step: str, seconds: float, started_at: str, *, skipped: bool = False) -> None:
    dep.timings.append(StepTiming(step=step, seconds=round(seconds, 3), started_at=started_at, skipped=skipped))


def dumps_public(dep: Deployment) -> str:
    """The record as JSON for `status --json`: nothing secret is in it to begin with."""
    return json.dumps(dep.model_dump(mode="json"), indent=2)
