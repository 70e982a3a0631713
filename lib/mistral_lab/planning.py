"""Planning at the edge: gather what the pure planner needs (this machine's hardware) and show the result.

`plan.resolve` never does I/O; this module is where the local facts probe happens, so the CLI, the notebooks
and `deploy` plan the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from mistral_lab import hardware
from mistral_lab.catalog import get_model
from mistral_lab.errors import BadInput
from mistral_lab.plan import Plan, PlanRequest, resolve


def request(**fields: Any) -> PlanRequest:
    """A PlanRequest from loose parameters (CLI flags, papermill parameters), with errors that name the field."""
    try:
        return PlanRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        expected = err.get("ctx", {}).get("expected")
        raise BadInput(err["msg"], field=field, fix=f"use {expected}" if expected else None) from None


def local_size() -> hardware.Size:
    """This machine's hardware, from the same facts probe a remote host gets."""
    from mistral_lab.hosts.local import LocalHost

    return hardware.size_from_facts(LocalHost().facts())


def make_plan(req: PlanRequest, *, host: hardware.Size | None = None) -> Plan:
    get_model(req.model)  # a typo should fail before probing the machine
    if host is None and req.target == "local" and req.gpu in ("auto", "cpu"):
        host = local_size()
    return resolve(req, host=host)


def plan_table(plan: Plan) -> Table:
    m = plan.memory
    t = Table(show_header=False, box=None, title=f"plan {plan.name}", title_justify="left")
    t.add_row("model", f"{plan.model} ({plan.model_name}), variant {plan.variant}")
    t.add_row("weights", f"{plan.repo} [{plan.precision}{' ' + plan.quant if plan.quant else ''}]")
    t.add_row("engine", plan.engine)
    t.add_row("target", plan.target + (f", region {plan.region}" if plan.region else ""))
    t.add_row("hardware", f"{plan.gpu} ({plan.gpu_name})" + (" [assumed]" if plan.gpu_assumed else ""))
    t.add_row("context", f"{plan.context:,} tokens x {plan.concurrency} sequences "
                         f"(largest that fits: {plan.max_context_that_fits:,})")
    t.add_row("memory", f"weights {m['weights_gb']:.1f} + KV cache {m['kv_cache_gb']:.1f} + overhead "
                        f"{m['overhead_gb']:.1f} = {m['total_gb']:.1f} GB of {m['available_gb']:.1f} GB usable")
    t.add_row("fits", "[green]yes[/green]" if plan.fits else "[red]no[/red]")
    if plan.hourly_usd:
        t.add_row("price", f"${plan.hourly_usd:.2f}/hour (list price: {plan.price_source})")
    t.add_row("sampling", f"temperature {plan.temperature:g}" + (f", top_p {plan.top_p:g}" if plan.top_p else ""))
    t.add_row("serve", plan.serve_command)
    for n in plan.notes:
        t.add_row("note", n)
    return t


def show_plan(plan: Plan, console: Console | None = None) -> None:
    (console or Console()).print(plan_table(plan))
