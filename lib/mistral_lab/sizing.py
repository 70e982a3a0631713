"""How much memory a model needs, and which hardware holds it. Pure arithmetic, no I/O.

needed = weights + KV cache + runtime overhead, compared with usable memory (the engine's share of it).

- weights: the published file size where the catalog knows it, otherwise parameters x bytes per parameter for
  the precision. FP8/NVFP4 checkpoints keep embeddings and the vision encoder in BF16, so those are counted at
  2 bytes. GGUF: bits per weight of the quant (llama.cpp's own figures) for the text model, plus the mmproj.
- KV cache: bytes per token x context x concurrent sequences. GQA: 2 (K and V) x layers x KV heads x head dim x
  bytes; MLA (Large 3, Small 4) caches one latent per layer: (kv_lora_rank + qk_rope_head_dim) x bytes.
- overhead: a fixed runtime share per device (CUDA context, CUDA graphs, compute buffers) plus a share of the
  weights for activations and fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mistral_lab.catalog.schema import Architecture, Model, Weights
from mistral_lab.hardware import GB, Size

BYTES_PER_PARAM = {"bf16": 2.0, "fp8": 1.0, "nvfp4": 0.5625}  # NVFP4: 4 bits + one FP8 scale per 16 values

# Bits per weight of llama.cpp quant types, as llama-quantize reports them for 7B-class models
# (tools/quantize/README.md); Unsloth's dynamic "UD-" quants land a little above their base type.
GGUF_BPW = {
    "Q2_K": 2.96, "Q3_K_S": 3.50, "Q3_K_M": 3.91, "Q3_K_L": 4.27, "IQ4_XS": 4.25, "Q4_0": 4.55, "Q4_K_S": 4.58,
    "Q4_K_M": 4.89, "Q5_K_S": 5.54, "Q5_K_M": 5.70, "Q6_K": 6.56, "Q8_0": 8.50, "F16": 16.0, "BF16": 16.0,
    "UD-Q2_K_XL": 3.0, "UD-Q3_K_XL": 4.0, "UD-Q4_K_XL": 5.0, "UD-Q5_K_XL": 5.9, "UD-Q6_K_XL": 6.9, "UD-Q8_K_XL": 9.0,
}

KV_BYTES = {"bf16": 2.0, "fp16": 2.0, "auto": 2.0, "fp8": 1.0, "q8_0": 1.0625, "q4_0": 0.5625}

# Engine-specific runtime costs. vLLM reserves gpu_memory_utilization of each GPU and lives inside it.
ENGINE_OVERHEAD_GB = {"vllm": 1.0, "llamacpp": 0.5}
ACTIVATION_SHARE = {"vllm": 0.05, "llamacpp": 0.03}
DEFAULT_UTILIZATION = {"vllm": 0.90, "llamacpp": 0.95}


@dataclass(frozen=True)
class Memory:
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    available_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.kv_cache_gb + self.overhead_gb

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.available_gb

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "weights_gb": round(self.weights_gb, 2),
            "kv_cache_gb": round(self.kv_cache_gb, 2),
            "overhead_gb": round(self.overhead_gb, 2),
            "total_gb": round(self.total_gb, 2),
            "available_gb": round(self.available_gb, 2),
        }


def kv_bytes_per_token(arch: Architecture, kv_dtype: str = "bf16") -> float:
    b = KV_BYTES[kv_dtype]
    if arch.attention == "mla":
        return arch.layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * b
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * b


def _embedding_params_b(arch: Architecture) -> float:
    copies = 1 if arch.tie_embeddings else 2
    return arch.vocab_size * arch.hidden_size * copies / 1e9


def weights_gb(model: Model, weights: Weights, quant: str | None = None, *, vision: bool = True) -> float:
    """Bytes the engine loads, in GB. Prefers the catalog's published sizes over estimates."""
    arch = model.architecture
    text_params = arch.total_params_b - arch.vision_params_b
    vision_gb = arch.vision_params_b * 2.0 if vision else 0.0
    if weights.precision == "gguf":
        q = weights.quants.get(quant or weights.recommended_quant)
        name = quant or weights.recommended_quant
        if q is not None and q.size_gb:
            text_gb = q.size_gb
        else:
            bpw = GGUF_BPW.get(name or "", GGUF_BPW["Q4_K_M"])
            text_gb = text_params * bpw / 8
        mmproj_gb = (weights.mmproj_size_gb or vision_gb) if (vision and model.has_vision) else 0.0
        return text_gb + mmproj_gb
    if weights.size_gb:
        return weights.size_gb if vision else max(weights.size_gb - vision_gb, 0.0)
    bpp = BYTES_PER_PARAM[weights.precision]
    if weights.precision == "bf16":
        return text_params * bpp + vision_gb
    kept_bf16 = min(_embedding_params_b(arch), text_params)
    return (text_params - kept_bf16) * bpp + kept_bf16 * 2.0 + vision_gb


def kv_cache_gb(arch: Architecture, context: int, concurrency: int, kv_dtype: str = "bf16") -> float:
    return kv_bytes_per_token(arch, kv_dtype) * context * concurrency / GB


def overhead_gb(engine: str, weights: float, devices: int) -> float:
    return ENGINE_OVERHEAD_GB[engine] * devices + ACTIVATION_SHARE[engine] * weights


def usable_gb(size: Size, engine: str, utilization: float | None = None) -> float:
    u = utilization if utilization is not None else DEFAULT_UTILIZATION[engine]
    return size.memory_gb * u


def estimate(
    model: Model,
    weights: Weights,
    size: Size,
    *,
    engine: str,
    context: int,
    concurrency: int,
    quant: str | None = None,
    kv_dtype: str = "bf16",
    vision: bool = True,
    utilization: float | None = None,
) -> Memory:
    w = weights_gb(model, weights, quant, vision=vision)
    return Memory(
        weights_gb=w,
        kv_cache_gb=kv_cache_gb(model.architecture, context, concurrency, kv_dtype),
        overhead_gb=overhead_gb(engine, w, size.count),
        available_gb=usable_gb(size, engine, utilization),
    )


def largest_context(
    model: Model,
    weights: Weights,
    size: Size,
    *,
    engine: str,
    concurrency: int,
    quant: str | None = None,
    kv_dtype: str = "bf16",
    vision: bool = True,
    utilization: float | None = None,
    step: int = 1024,
) -> int:
    """The longest context (a multiple of `step`, at most the model's maximum) that fits; 0 if none does."""
    base = estimate(model, weights, size, engine=engine, context=0, concurrency=concurrency, quant=quant,
                    kv_dtype=kv_dtype, vision=vision, utilization=utilization)
    room = base.available_gb - base.total_gb
    per_token = kv_bytes_per_token(model.architecture, kv_dtype) * concurrency / GB
    if room <= 0:
        return 0
    tokens = min(int(room / per_token), model.capabilities.max_context)
    if tokens >= model.capabilities.max_context:
        return model.capabilities.max_context
    return (tokens // step) * step


def cheapest_fit(
    model: Model,
    weights: Weights,
    sizes: list[Size],
    *,
    engine: str,
    context: int,
    concurrency: int,
    quant: str | None = None,
    kv_dtype: str = "bf16",
    vision: bool = True,
) -> tuple[Size, Memory] | None:
    """The cheapest size that can run this precision and holds the model at this context and concurrency."""
    candidates = sorted(
        (s for s in sizes if s.gpu.runs(weights.precision)),
        key=lambda s: (s.hourly_usd if s.hourly_usd is not None else math.inf, s.memory_gb),
    )
    for s in candidates:
        mem = estimate(model, weights, s, engine=engine, context=context, concurrency=concurrency, quant=quant,
                       kv_dtype=kv_dtype, vision=vision)
        if mem.fits:
            return s, mem
    return None
