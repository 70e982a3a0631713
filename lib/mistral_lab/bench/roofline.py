"""The physical ceiling on single-stream decode speed, and how close a measurement came to it. Pure.

At batch 1 every generated token reads all active weights and the whole KV cache of the sequence once, and the
arithmetic is small next to that, so decode is memory-bound:

    tokens/s <= memory bandwidth / (active weight bytes at the deployed precision + KV bytes at that context)

KV bytes at a context = KV bytes per token (2 x layers x KV heads x head dim x bytes, or the MLA latent) x tokens
in the sequence. Weights are the deployed file (GGUF quant or checkpoint precision) without the vision encoder;
an untied input embedding is left out (a token reads one row of it, not all), and a MoE model counts its active
share. Bandwidths are the vendor's peak figures from `hardware.GPUS` (each with its datasheet URL); real
kernels reach a fraction of them, which is what the percentage shows.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mistral_lab import hardware, sizing
from mistral_lab.catalog.schema import Model, Weights
from mistral_lab.planning import Plan


class Roofline(BaseModel):
    gpu: str
    bandwidth_gbs: float
    bandwidth_source: str
    weights_gb: float = Field(description="weight bytes read per token, GB")
    kv_bytes_per_token: float
    context_tokens: int
    kv_gb: float = Field(description="KV cache bytes read per token at that context, GB")
    max_tokens_per_s: float
    notes: list[str] = Field(default_factory=list)

    @property
    def bytes_per_token_gb(self) -> float:
        return self.weights_gb + self.kv_gb

    def achieved_pct(self, tokens_per_s: float | None) -> float | None:
        if tokens_per_s is None or self.max_tokens_per_s <= 0:
            return None
        return 100.0 * tokens_per_s / self.max_tokens_per_s


def max_tokens_per_s(bandwidth_gbs: float, weights_gb: float, kv_gb: float) -> float:
    return bandwidth_gbs / (weights_gb + kv_gb)


def plan_weights(model: Model, plan: Plan) -> Weights:
    variant = model.variant(plan.variant)
    for w in variant.weights:
        if w.repo == plan.repo and w.precision == plan.precision:
            return w
    return next(w for w in variant.weights if w.precision == plan.precision)


def active_weights_gb(model: Model, plan: Plan) -> tuple[float, list[str]]:
    """Weight bytes one decode step reads, in GB, and how they were counted."""
    arch = model.architecture
    weights = plan_weights(model, plan)
    total = sizing.weights_gb(model, weights, plan.quant, vision=False)
    text_params_b = arch.total_params_b - arch.vision_params_b
    notes = [f"weights: {plan.precision}{' ' + plan.quant if plan.quant else ''}, {total:.3g} GB without vision"]
    per_param = total / text_params_b  # GB per billion parameters, i.e. bytes per parameter
    if arch.kind == "moe":
        share = arch.active_params_b / arch.total_params_b
        total *= share
        notes.append(f"MoE: {share:.1%} of the weights are active per token")
    if not arch.tie_embeddings:
        emb = arch.vocab_size * arch.hidden_size / 1e9 * per_param
        total -= emb
        notes.append(f"untied input embedding ({emb:.3g} GB) not counted: a token reads one row of it")
    return total, notes


def bandwidth_of(plan: Plan) -> tuple[float, str] | None:
    """Peak memory bandwidth the decode of this plan can use, GB/s; None for CPUs and unknown GPUs."""
    gpu = None
    size = hardware.DO_SIZES.get(plan.gpu)
    if size is not None:
        gpu = size.gpu
    else:
        for g in hardware.GPUS.values():
            if plan.gpu_name == g.name or plan.gpu_name.endswith("x " + g.name):
                gpu = g
    if gpu is None or gpu.bandwidth_gbs is None:
        return None
    # Tensor parallelism splits every layer over the GPUs, so their bandwidths add up; llama.cpp's layer split
    # runs the GPUs one after another, so a token still sees one GPU's bandwidth at a time.
    n = plan.tensor_parallel if plan.engine == "vllm" else 1
    src = f"{gpu.name} peak {gpu.bandwidth_gbs:g} GB/s ({gpu.source})"
    return gpu.bandwidth_gbs * n, (f"{n} x " + src) if n > 1 else src


def decode_roofline(
    model: Model,
    plan: Plan,
    context_tokens: int,
    *,
    bandwidth_gbs: float | None = None,
    bandwidth_source: str | None = None,
    weights_gb: float | None = None,
) -> Roofline | None:
    """The batch-1 decode ceiling at `context_tokens` tokens in the sequence; None when the bandwidth is unknown
    (a CPU host, an unlisted GPU) and none was given."""
    if bandwidth_gbs is None:
        found = bandwidth_of(plan)
        if found is None:
            return None
        bandwidth_gbs, bandwidth_source = found
    notes: list[str] = []
    if weights_gb is None:
        weights_gb, notes = active_weights_gb(model, plan)
    else:
        notes.append(f"weights: {weights_gb:.3g} GB as given")
    kv_dtype = plan.kv_cache_dtype if plan.kv_cache_dtype in sizing.KV_BYTES else "bf16"
    per_token = sizing.kv_bytes_per_token(model.architecture, kv_dtype)
    kv_gb = per_token * context_tokens / hardware.GB
    return Roofline(
        gpu=plan.gpu_name,
        bandwidth_gbs=bandwidth_gbs,
        bandwidth_source=bandwidth_source or "given",
        weights_gb=weights_gb,
        kv_bytes_per_token=per_token,
        context_tokens=int(context_tokens),
        kv_gb=kv_gb,
        max_tokens_per_s=max_tokens_per_s(bandwidth_gbs, weights_gb, kv_gb),
        notes=notes,
    )
