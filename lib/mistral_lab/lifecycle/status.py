"""What a deployment costs and how it is doing: uptime and cost from its record, health and logs from its host."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mistral_lab import session, state
from mistral_lab.engines import service
from mistral_lab.lifecycle import services

__all__ = ["cost_so_far", "hours_up", "logs", "status"]


def hours_up(dep: state.Deployment, now: datetime | None = None) -> float:
    created = datetime.fromisoformat(dep.created_at)
    return max(((now or datetime.now(UTC)) - created).total_seconds() / 3600, 0.0)


def cost_so_far(dep: state.Deployment, now: datetime | None = None) -> float:
    return round(hours_up(dep, now) * (dep.plan.hourly_usd or 0.0), 4)


def status(name: str) -> dict[str, Any]:
    dep = state.load(name)
    info = dep.model_dump(mode="json")
    info["healthy"] = session.healthy(dep)
    info["hours_up"] = round(hours_up(dep), 3)
    info["cost_usd"] = cost_so_far(dep)
    if dep.service is not None:
        info["runs_as"] = f"{dep.service.user or '?'} ({'systemd unit' if dep.service.kind == 'systemd' else 'process'})"
    if dep.endpoint is not None:
        info["endpoint"] = {"base_url": dep.endpoint.base_url(dep.plan.port) if dep.plan.target == "local"
                            else f"ssh tunnel to 127.0.0.1:{dep.endpoint.remote_port} on {dep.host.address}",
                            "served_model": dep.endpoint.served_model,
                            "api_key_file": str(dep.folder / dep.endpoint.api_key_file)}
    return info


def logs(name: str, lines: int = 200) -> str:
    dep = state.load(name)
    if dep.service is None:
        return f"(no server started for {name} yet)"
    with session.open_host(dep) as host:
        return service.logs(host, services.server(dep), lines)
