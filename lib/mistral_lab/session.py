"""Reaching a deployment again from its saved record: its host, and a live way to its server.

A notebook kernel that ends takes its tunnel with it, so query, benchmark, status, logs and teardown reopen what
they need here: `open_host` for the host alone (closed on the way out, whatever happens), `connect` for the host
plus a tunnel to the server's port, the one `Connection` deploy, the Client and the benchmark all use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from mistral_lab import state
from mistral_lab.errors import BadInput, MistralLabError
from mistral_lab.hosts import get_target
from mistral_lab.hosts.base import Host, Tunnel
from mistral_lab.planning.resolve import Plan

__all__ = ["Connection", "connect", "healthy", "open_host", "reconnect", "served_context"]


def reconnect(dep: state.Deployment) -> Host:
    """The deployment's host, reconnected from the record (pinned host key, key file); the caller closes it."""
    return get_target(dep.plan.target).reconnect(dep.host)


@contextmanager
def open_host(dep: state.Deployment) -> Iterator[Host]:
    """The deployment's host, reconnected from the record, closed on the way out."""
    host = reconnect(dep)
    try:
        yield host
    finally:
        host.close()


@dataclass
class Connection:
    """A live way to a deployment's server: for remote hosts, an SSH tunnel that lives as long as this object."""

    deployment: state.Deployment
    base_url: str
    api_key: str = field(repr=False)
    host: Host
    tunnel: Tunnel

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def plan(self) -> Plan:
        return self.deployment.plan

    @property
    def engine(self) -> str:
        return self.plan.engine

    @property
    def catalog_id(self) -> str:
        return self.plan.model

    @property
    def served_model(self) -> str:
        assert self.deployment.endpoint is not None
        return self.deployment.endpoint.served_model

    @property
    def context(self) -> int:
        """What the server really serves (vLLM with max_model_len auto fits its own), else what was planned."""
        return self.deployment.served_context or self.plan.context

    @property
    def host_base_url(self) -> str:
        """The server's URL as seen on its own host (no tunnel)."""
        assert self.deployment.endpoint is not None
        return self.deployment.endpoint.base_url(self.deployment.endpoint.remote_port)

    def close(self) -> None:
        try:
            self.tunnel.close()
        finally:
            self.host.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(dep: state.Deployment) -> Connection:
    if dep.endpoint is None:
        raise BadInput(f"deployment {dep.name} has no endpoint ({dep.status})", field="name",
                       fix=f"deploy it again: mistral-lab deploy {dep.plan.model} --name {dep.name}")
    host = get_target(dep.plan.target).reconnect(dep.host)
    try:
        tunnel = host.forward(dep.endpoint.remote_port)
    except BaseException:
        host.close()
        raise
    return Connection(deployment=dep, base_url=dep.endpoint.base_url(tunnel.local_port), api_key=dep.api_key(),
                      host=host, tunnel=tunnel)


def connect(name: str | state.Deployment) -> Connection:
    """Reopen the way to a deployment from its saved record (host, pinned key, port, API key)."""
    dep = state.load(name) if isinstance(name, str) else name
    if dep.status != "up":
        raise BadInput(f"deployment {dep.name} is {dep.status}, not up", field="name",
                       fix=f"deploy it again: mistral-lab deploy {dep.plan.model} --name {dep.name}")
    return _open(dep)


def healthy(dep: state.Deployment) -> bool:
    """Whether a recorded deployment still serves: reconnect, tunnel, /v1/models with its key."""
    if dep.status != "up" or dep.endpoint is None:
        return False
    try:
        with _open(dep) as conn:
            r = httpx.get(conn.base_url + "/models", headers={"Authorization": f"Bearer {conn.api_key}"}, timeout=10)
            return r.status_code == 200
    except (MistralLabError, httpx.HTTPError, OSError):
        return False


def served_context(host: Host, endpoint: state.Endpoint, api_key: str) -> int | None:
    """The context the server really serves: vLLM lists it as max_model_len in /v1/models (with
    `--max-model-len auto` it is only known once the server has measured its memory)."""
    tunnel = host.forward(endpoint.remote_port)
    try:
        r = httpx.get(endpoint.base_url(tunnel.local_port) + "/models",
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        value = ((r.json().get("data") or [{}])[0]).get("max_model_len")
        return int(value) if value else None
    except (httpx.HTTPError, ValueError, TypeError, AttributeError, OSError):
        return None
    finally:
        tunnel.close()
