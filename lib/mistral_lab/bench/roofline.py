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
from mistral_lab.catalog.schema import Model
from mistral_lab.planning import Plan
from mistral_lab.planning.predict import active_weights_gb, bandwidth_of, plan_weights, roofline_tokens_per_s

__all__ = ["Roofline", "active_weights_gb", "bandwidth_of", "decode_roofline", "max_tokens_per_s", "plan_weights"]


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
    return roofline_tokens_per_s(bandwidth_gbs, weights_gb, kv_gb)


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
