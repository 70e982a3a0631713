"""From a deployment back to nothing: stop its services, destroy what its target created, forget the record.

What a target keeps on purpose (a DigitalOcean cache volume: the weights for the next deploy in the region) is kept
and said, with what it costs; `drop_cache=True` deletes it as well."""

from __future__ import annotations

from dataclasses import dataclass, field

from mistral_lab import session, state
from mistral_lab.engines import service
from mistral_lab.errors import MistralLabError
from mistral_lab.hosts import get_target
from mistral_lab.hosts.base import LineSink
from mistral_lab.lifecycle import services
from mistral_lab.lifecycle.status import cost_so_far, hours_up
from mistral_lab.lifecycle.steps import print_line

__all__ = ["TeardownReport", "teardown"]


@dataclass
class TeardownReport:
    name: str
    stopped: bool
    destroyed: bool
    hours: float
    cost_usd: float
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # kept on purpose, each with its cost (a cache volume)
    dropped: list[str] = field(default_factory=list)  # what drop_cache deleted


def _stop_services(dep: state.Deployment, say: LineSink) -> tuple[bool, list[str]]:
    """Stop the companions and the server on one connection; on hosts that outlive the deployment, check that
    nothing of it still runs. (stopped, what still runs)"""
    with session.open_host(dep) as host:
        for companion in services.companions(dep):
            service.stop(host, companion)
            say(f"✔ stopped {companion.name}")
        server = services.server(dep)
        service.stop(host, server)
        say(f"✔ stopped the server of {dep.name}")
        if dep.plan.target == "digitalocean":  # the droplet goes next, and everything on it
            return True, []
        left = [f"the server of {dep.name} still runs on {dep.host.address}"] if service.status(host, server) != "stopped" else []
        return True, left + [f"{c.name} still runs on {dep.host.address}" for c in services.companions(dep)
                             if service.status(host, c) != "stopped"]


def teardown(name: str, *, say: LineSink = print_line, drop_cache: bool = False) -> TeardownReport:
    """Stop the server, destroy what the target created, and forget the deployment. Safe to repeat.

    A cache volume (DigitalOcean, option `cache_volume`) is detached and kept for the next deploy in its region;
    `drop_cache=True` deletes it too (a workshop's `down --drop-cache`)."""
    dep = state.load(name)
    target = get_target(dep.plan.target)
    notes: list[str] = []
    stopped, left = False, []
    if dep.service is not None:
        try:
            stopped, left = _stop_services(dep, say)
        except MistralLabError as e:
            notes.append(f"could not reach the host to stop the server: {e}")
            say(f"… could not reach the host to stop the server ({e.message}); destroying anyway")
    target.destroy(dep.host, on_line=lambda line: say("  " + line))
    finder = getattr(target, "leftovers", None)
    if finder is not None:
        left += finder(dep.host)
    dropper, keeper = getattr(target, "drop_cache", None), getattr(target, "kept", None)
    dropped = dropper(dep.host, on_line=lambda line: say("  " + line)) if drop_cache and dropper else []
    kept = keeper(dep.host) if keeper and not dropped else []  # a dropped volume is not read again
    report = TeardownReport(name=name, stopped=stopped, destroyed=True, hours=round(hours_up(dep), 3),
                            cost_usd=cost_so_far(dep), leftovers=left, notes=notes, kept=kept, dropped=dropped)
    dep.status = "destroyed"
    state.save(dep)
    state.remove(name)
    say(f"✔ {name} torn down after {report.hours:.2f} h" + (f", about ${report.cost_usd:.2f}" if report.cost_usd else ""))
    for what in kept:
        say(f"  kept {what} for the next deploy in its region (--drop-cache deletes it; `mistral-lab sweep` lists it)")
    return report
