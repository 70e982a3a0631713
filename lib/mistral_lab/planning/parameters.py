"""Parameters from presets (`parameters/*.yaml`), papermill and CLI flags, split into the plan and the options.

A preset is the same YAML papermill reads with `-f`, so one file drives a notebook and the CLI alike. The keys
accepted beside the plan's own fields are the options `mistral_lab.options` declares; secrets are refused here,
by `options.refuse_secrets`: they come from the environment only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mistral_lab.errors import BadInput
from mistral_lab.options import ALL as OPTION_MODELS
from mistral_lab.options import declared, refuse_secrets
from mistral_lab.planning.request import PlanRequest, request

__all__ = ["NOTEBOOK_ONLY", "collect", "load_preset", "option_pairs", "split"]

# Notebook-only knobs that are neither plan fields nor options: a preset may set them for its notebook, and the
# CLI reading the same preset leaves them alone.
NOTEBOOK_ONLY = {"dry_run", "deployment", "base_url", "workload", "sweep", "duration", "prompt", "reasoning_effort",
                 "rate", "requests", "seed", "slo_ttft_s", "slo_tpot_s", "confirm", "keep_on_failure"}
def load_preset(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"no parameters file at {p}", field="-f", fix="see parameters/ for presets")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise BadInput(f"{p} must hold a mapping of parameter: value", field="-f")
    return data


def split(values: dict[str, Any]) -> tuple[PlanRequest, dict[str, Any]]:
    """Plan fields into a PlanRequest, options into a dict of declared keys; unknown names and secrets are refused.

    Each target and engine reads its own typed model from the dict (`mistral_lab.options`)."""
    refuse_secrets(values)
    plan_fields = set(PlanRequest.model_fields)
    options = declared() - plan_fields
    unknown = sorted(k for k in values if k not in plan_fields | options | NOTEBOOK_ONLY)
    if unknown:
        raise BadInput(f"unknown parameter {unknown[0]!r}", field=unknown[0],
                       fix=f"plan parameters: {', '.join(sorted(plan_fields))}; options: {', '.join(sorted(options))}")
    req = request(**{k: v for k, v in values.items() if k in plan_fields})
    chosen = {k: v for k, v in values.items() if k in options and v is not None}
    for model in OPTION_MODELS:  # a wrong type fails here, naming the field, before anything is made
        model.of(chosen)
    return req, chosen


def collect(namespace: dict[str, Any]) -> tuple[PlanRequest, dict[str, Any]]:
    """Plan and options from a notebook's variables (its parameters cell), ignoring everything else."""
    known = set(PlanRequest.model_fields) | declared()
    return split({k: v for k, v in namespace.items() if k in known and v is not None})


def option_pairs(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` options from the command line (values parsed as YAML: numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"not KEY=VALUE: {pair!r}", field="option", fix="e.g. --option host_cache=/srv/cache")
        out[key] = yaml.safe_load(value)
    refuse_secrets(out)
    return out
