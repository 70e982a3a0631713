"""`mistral-lab models` and `mistral-lab plan`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mistral_lab.catalog import load_catalog
from mistral_lab.planning import make_plan, request, require_fit
from mistral_lab.planning.show import plan_json, plan_table

from ._app import app, console


def _models_rows() -> list[dict]:
    rows = []
    for m in load_catalog().models:
        rows.append({
            "id": m.id,
            "name": m.name,
            "variants": [v.id for v in m.variants],
            "precisions": sorted({w.precision for v in m.variants for w in v.weights}),
            "total_params_b": m.architecture.total_params_b,
            "active_params_b": m.architecture.active_params_b,
            "max_context": m.capabilities.max_context,
            "modalities": list(m.capabilities.modalities),
            "tools": m.capabilities.tools,
            "reasoning_effort": list(m.capabilities.reasoning_effort),
            "engines": [e for e in ("vllm", "llamacpp") if getattr(m.engines, e) is not None],
            "generated": m.generated,
        })
    return rows


@app.command("models")
def models_cmd(as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False) -> None:
    """List the catalog's models."""
    rows = _models_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("id", "name", "params (active)", "context", "variants", "precisions", "engines", "vision", "reasoning")
    for r in rows:
        params = f"{r['total_params_b']:g}B" + (f" ({r['active_params_b']:g}B)" if r["active_params_b"] != r["total_params_b"] else "")
        t.add_row(r["id"], r["name"], params, f"{r['max_context']:,}", ",".join(r["variants"]), ",".join(r["precisions"]),
                  ",".join(r["engines"]), "yes" if "image" in r["modalities"] else "", ",".join(r["reasoning_effort"]))
    console.print(t)


@app.command("plan")
def plan_cmd(
    model: Annotated[str, typer.Argument(help="catalog id, e.g. ministral-3b")],
    target: Annotated[str, typer.Option(help="local | ssh | digitalocean")] = "local",
    engine: Annotated[str, typer.Option(help="auto | vllm | llamacpp")] = "auto",
    gpu: Annotated[str, typer.Option(help="DigitalOcean size slug, GPU name (h100, l40s, h100x8), cpu, or auto")] = "auto",
    variant: Annotated[str | None, typer.Option(help="instruct | reasoning | base")] = None,
    precision: Annotated[str | None, typer.Option(help="bf16 | fp8 | nvfp4 | gguf")] = None,
    quant: Annotated[str | None, typer.Option(help="GGUF quant, e.g. Q4_K_M")] = None,
    context: Annotated[int | None, typer.Option(help="tokens per sequence")] = None,
    concurrency: Annotated[int | None, typer.Option(help="sequences served at once")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Resolve a model into a plan: variant, engine, hardware, memory, price and the exact serve command."""
    req = request(model=model, target=target, engine=engine, gpu=gpu, variant=variant, precision=precision,
                   quant=quant, context=context, concurrency=concurrency)
    plan = make_plan(req)
    if as_json:
        print(json.dumps(plan_json(plan), indent=2))
    else:
        console.print(plan_table(plan))
    require_fit(plan)
