"""Planning at the edge: look up what the pure planner needs, then resolve. `resolve` never does I/O; this is
where the local facts probe and DigitalOcean's live prices are read, so the CLI, the notebooks and `deploy` plan
the same way."""

from __future__ import annotations

from mistral_lab import hardware, paths
from mistral_lab.catalog import get_model
from mistral_lab.hosts.local import LocalHost
from mistral_lab.planning.prices import live_sizes
from mistral_lab.planning.request import PlanRequest
from mistral_lab.planning.resolve import Plan, resolve

__all__ = ["local_size", "make_plan"]


def local_size() -> hardware.Size:
    """This machine's hardware, from the same facts probe a remote host gets."""
    return hardware.size_from_facts(LocalHost().facts())


def make_plan(req: PlanRequest, *, host: hardware.Size | None = None, api_url: str | None = None) -> Plan:
    """The plan, with what the pure planner needs looked up first: this machine's hardware for a local plan,
    DigitalOcean's live prices (with a token in the environment) for a droplet."""
    get_model(req.model)  # a typo should fail before probing the machine
    if host is None and req.target == "local" and req.gpu in ("auto", "cpu"):
        host = local_size()
    if req.target != "digitalocean":
        return resolve(req, host=host)
    sizes, note = live_sizes(paths.home() / "cache", api_url=api_url)
    plan = resolve(req, host=host, sizes=sizes)
    return plan.model_copy(update={"notes": [*plan.notes, note]}) if note else plan
