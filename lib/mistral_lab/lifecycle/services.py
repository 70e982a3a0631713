"""The services a deployment runs on its host, as the record knows them: its model server and its companions
(a workshop's proxy), so stop, status and logs find them again from any later process."""

from __future__ import annotations

from mistral_lab import state
from mistral_lab.engines.service import Mode, ServiceSpec

__all__ = ["add_companion", "bare", "companions", "mode_for", "server"]


def mode_for(systemd: bool, service: str, *, local: bool = False) -> Mode:
    """systemd where it runs, unless the `service` option asks for a supervised process. On this machine a
    supervised process, running as the invoking user, unless systemd is asked for: a system unit needs root (or
    sudo, which a desktop user may not have without a password)."""
    if service == "systemd" or (service == "auto" and systemd and not local):
        return "systemd" if systemd else "process"
    return "process"


def bare(dep: state.Deployment, root: str, mode: Mode, user: str | None = None) -> ServiceSpec:
    """Enough of the server's spec to stop it, ask its status or read its log."""
    return ServiceSpec(name=dep.name, model=dep.plan.model, engine=dep.plan.engine, root=root, argv=[],
                       port=dep.plan.port, key_var="", mode=mode, instance=dep.instance, user=user,
                       owner=dep.host.user)


def server(dep: state.Deployment) -> ServiceSpec:
    """The recorded model server."""
    assert dep.service is not None
    return bare(dep, dep.service.root, dep.service.kind, dep.service.user)


def companions(dep: state.Deployment) -> list[ServiceSpec]:
    return [ServiceSpec(name=c.name, model=dep.plan.model, engine=c.engine, root=c.root, argv=[], port=0,
                        key_var="", mode=c.mode, user=c.user, owner=dep.host.user, instance=c.instance)
            for c in dep.companions]


def add_companion(name: str, spec: ServiceSpec) -> None:
    """Record a service that lives and dies with deployment `name`, so that a plain `teardown` stops it too and
    leaves nothing running on the host."""
    dep = state.load(name)
    dep.companions = [c for c in dep.companions if c.root != spec.root]
    dep.companions.append(state.Companion(name=spec.name, root=spec.root, mode=spec.mode, engine=spec.engine,
                                          user=spec.user, instance=spec.instance))
    state.save(dep)
