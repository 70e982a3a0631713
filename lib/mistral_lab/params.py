"""Parameters from presets (`parameters/*.yaml`), papermill and CLI flags, split into the plan and the host options.

A preset is the same YAML papermill reads with `-f`, so one file drives a notebook and the CLI alike.
Secrets are refused here: they come from the environment only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from mistral_lab.errors import BadInput
from mistral_lab.plan import PlanRequest

# Host options each target understands (everything else in a preset must be a PlanRequest field).
TARGET_OPTIONS = {
    "host", "ssh_port", "user", "key", "known_hosts", "host_key", "trust_on_first_use",  # ssh (user, key: DO too)
    "api_url", "allow_from", "image",  # digitalocean
    "host_root", "host_cache", "service", "extra_args",  # all targets
    "llamacpp_source", "llamacpp_version", "llamacpp_tarball", "llamacpp_backend", "llamacpp_arch",  # llama.cpp
    "model_source", "hf_endpoint", "pypi_url",  # llama.cpp
    "vllm_install", "vllm_spec", "vllm_image", "vllm_python", "vllm_extra_packages", "max_model_len",  # vLLM
    "find_links", "index_url", "extra_index_url", "torch_backend", "cpu_kv_cache_gib", "hf_revision",  # vLLM
}
# Notebook-only knobs that are neither plan fields nor host options.
NOTEBOOK_ONLY = {"dry_run", "deployment", "base_url", "workload", "sweep", "duration", "prompt", "reasoning_effort",
                 "rate", "requests", "seed", "slo_ttft_s", "slo_tpot_s", "confirm", "keep_on_failure"}
SECRET_NAMES = {"token", "do_token", "digitalocean_token", "hf_token", "api_key", "password"}


def load_preset(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"no parameters file at {p}", field="-f", fix="see parameters/ for presets")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise BadInput(f"{p} must hold a mapping of parameter: value", field="-f")
    return data


def split(values: dict[str, Any]) -> tuple[PlanRequest, dict[str, Any]]:
    """Plan fields into a PlanRequest, host options into a dict; unknown names and secrets are refused."""
    secrets = sorted(k for k in values if k.lower() in SECRET_NAMES)
    if secrets:
        raise BadInput(f"secrets are not parameters: {', '.join(secrets)}", field=secrets[0],
                       fix="set DIGITALOCEAN_TOKEN / HF_TOKEN in the environment instead")
    plan_fields = set(PlanRequest.model_fields)
    unknown = sorted(k for k in values if k not in plan_fields | TARGET_OPTIONS | NOTEBOOK_ONLY)
    if unknown:
        raise BadInput(f"unknown parameter {unknown[0]!r}", field=unknown[0],
                       fix=f"plan parameters: {', '.join(sorted(plan_fields))}; host options: "
                           f"{', '.join(sorted(TARGET_OPTIONS))}")
    from mistral_lab.planning import request

    req = request(**{k: v for k, v in values.items() if k in plan_fields})
    options = {k: v for k, v in values.items() if k in TARGET_OPTIONS and v is not None}
    return req, options


def env_secrets() -> dict[str, str]:
    """Secrets deploy needs, from the environment only (never logged, never in a record)."""
    out = {}
    if os.environ.get("HF_TOKEN"):
        out["hf_token"] = os.environ["HF_TOKEN"]
    return out


def collect(namespace: dict[str, Any]) -> tuple[PlanRequest, dict[str, Any]]:
    """Plan and host options from a notebook's variables (its parameters cell), ignoring everything else."""
    known = set(PlanRequest.model_fields) | TARGET_OPTIONS
    return split({k: v for k, v in namespace.items() if k in known and v is not None})
