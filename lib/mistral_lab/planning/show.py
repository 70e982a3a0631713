"""A plan, shown: as a table, as JSON, as HTML's data, with the serve command its engine previews (the engine is
its one author). Above the engines in the flow, so the planning package itself does not import this module:
`from mistral_lab.planning.show import ...` (or the public face, `mistral_lab.show_plan`)."""

from __future__ import annotations

import shlex
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mistral_lab import engines
from mistral_lab.planning.predict import predict_plan
from mistral_lab.planning.resolve import Plan

__all__ = ["plan_json", "plan_table", "serve_preview", "show_plan"]


def serve_preview(plan: Plan, options: dict[str, Any] | None = None) -> str:
    """The serve command the plan's engine would run, before any host exists (paths relative to the deployment)."""
    return shlex.join(engines.get_engine(plan.engine, options).serve_argv(plan))


def plan_json(plan: Plan, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`plan --json`: the plan and the engine's preview of its serve command."""
    return {**plan.model_dump(mode="json"), "serve_command": serve_preview(plan, options)}


def plan_table(plan: Plan, options: dict[str, Any] | None = None) -> Table:
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
    t.add_row("fits", Text("yes", style="green") if plan.fits else Text("no", style="red"))
    if plan.hourly_usd:
        t.add_row("price", f"${plan.hourly_usd:.2f}/hour ({plan.price_source})")
    t.add_row("sampling", f"temperature {plan.temperature:g}" + (f", top_p {plan.top_p:g}" if plan.top_p else ""))
    t.add_row("predicted", _prediction(plan))
    t.add_row("serve", serve_preview(plan, options))
    for n in plan.notes:
        t.add_row("note", n)
    return t


def _prediction(plan: Plan) -> str:
    p = predict_plan(plan)
    if p is None:
        return "no forecast: no memory bandwidth known for this hardware (a benchmark with bandwidth_gbs= gives one)"
    cost = f", ${p.usd_per_mtok:.2f}/Mtok" if p.usd_per_mtok is not None else ""
    return (f"{p.decode_tokens_per_s:.0f} tok/s single stream at {p.context_tokens:,} tokens of context "
            f"(roofline {p.roofline_tokens_per_s:.0f} x {p.efficiency:.2g} for {p.engine} on {p.hw_class}), "
            f"{p.throughput_tokens_per_s:.0f} tok/s at {p.concurrency} sequences{cost}")


def show_plan(plan: Plan, options: dict[str, Any] | None = None, console: Console | None = None) -> None:
    (console or Console(markup=False, highlight=False)).print(plan_table(plan, options))
