"""Resolve parameters into a Plan: model variant, engine, hardware, context, flags and cost. Pure, no I/O.

Whatever the caller did not choose is decided here, and every decision is visible in the Plan so it can be
printed, diffed and tested without a network. Host facts (RAM, GPUs of an SSH host or this machine) come in
as a `Size`; looking them up is the caller's job.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mistral_lab import hardware, sizing
from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import Model, Variant, Weights
from mistral_lab.errors import BadInput, DoesNotFit
from mistral_lab.planning.request import PlanRequest, Target

__all__ = ["DEFAULT_CONTEXT", "DEFAULT_PORT", "MIN_CONTEXT", "Plan", "require_fit", "resolve"]

DEFAULT_CONTEXT = 32768  # long enough for documents and agents, short enough to leave room for concurrency
MIN_CONTEXT = 2048
DEFAULT_PORT = {"vllm": 8000, "llamacpp": 8080}


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    model: str
    model_name: str
    variant: str
    engine: Literal["vllm", "llamacpp"]
    target: Target
    precision: str
    quant: str | None
    repo: str
    weight_formats: list[str]
    gguf_file: str | None
    mmproj_file: str | None
    gpu: str
    gpu_name: str
    gpu_count: int
    gpu_vendor: str
    gpu_arch: str | None
    gpu_assumed: bool = Field(description="true when the host's GPU is not known yet and the plan assumed one")
    tensor_parallel: int
    region: str | None
    context: int
    concurrency: int
    max_context_that_fits: int
    vision: bool
    tools: bool
    reasoning: bool
    kv_cache_dtype: str
    gpu_memory_utilization: float
    port: int
    fits: bool
    memory: dict[str, float]
    hourly_usd: float | None
    price_source: str | None
    temperature: float
    top_p: float | None
    notes: list[str] = Field(default_factory=list)


def _pick_variant(model: Model, variant: str | None) -> Variant:
    if variant is None:
        return model.default_variant
    try:
        return model.variant(variant)
    except KeyError:
        ids = ", ".join(v.id for v in model.variants)
        raise BadInput(f"{model.id} has no variant {variant!r}", field="variant", fix=f"one of: {ids}") from None


def _pick_engine(req: PlanRequest, model: Model, size: hardware.Size | None) -> str:
    if req.engine != "auto":
        if getattr(model.engines, req.engine) is None:
            have = [e for e in ("vllm", "llamacpp") if getattr(model.engines, e) is not None]
            raise BadInput(f"{model.id} has no {req.engine} recipe", field="engine", fix=f"use {' or '.join(have)}")
        return req.engine
    wants_gguf = req.precision == "gguf" or req.quant is not None
    on_cpu = size is not None and size.gpu.vendor == "cpu"
    llama_ok = model.engines.llamacpp is not None and model.engines.llamacpp.supported
    if (wants_gguf or on_cpu) and llama_ok:
        return "llamacpp"
    if model.engines.vllm is not None:
        return "vllm"
    return "llamacpp"


def _pick_weights(req: PlanRequest, model: Model, variant: Variant, engine: str) -> Weights:
    precision = req.precision or ("gguf" if req.quant else None)
    usable = [w for w in variant.weights if (w.precision == "gguf") == (engine == "llamacpp")]
    if precision:
        usable = [w for w in usable if w.precision == precision]
    if not usable:
        have = ", ".join(sorted({w.precision for w in variant.weights}))
        what = f"{precision} weights" if precision else "weights"
        fix = f"{model.id} {variant.id} ships {have}"
        if engine == "llamacpp":
            fix += "; llama.cpp needs gguf (use --engine vllm for the others)"
        else:
            fix += "; vLLM serves bf16/fp8/nvfp4 (use --engine llamacpp for gguf)"
        raise BadInput(f"no {what} of {model.id} {variant.id} for {engine}", field="precision", fix=fix)
    w = usable[0]
    if req.quant and req.quant not in w.quants and req.quant not in sizing.GGUF_BPW:
        raise BadInput(f"unknown quant {req.quant!r}", field="quant", fix=f"one of: {', '.join(w.quants)}")
    return w


def _size_for(req: PlanRequest, host: hardware.Size | None,
              sizes: list[hardware.Size] | None) -> tuple[hardware.Size | None, bool]:
    """The hardware the plan targets: the host's own when known, a named GPU, or None (choose the cheapest)."""
    if req.gpu == "auto":
        if host is not None:
            return host, False
        return None, req.target != "digitalocean"
    if req.gpu == "cpu":
        if host is not None and host.gpu.vendor == "cpu":
            return host, False
        raise BadInput("cpu needs the host's RAM", field="gpu", fix="plan with --target local, or pass host facts")
    size = hardware.resolve_size(req.gpu)
    if req.target == "digitalocean" and size.slug not in hardware.DO_SIZES:
        raise BadInput(f"DigitalOcean sells no {req.gpu}", field="gpu", fix=f"one of: {', '.join(hardware.DO_SIZES)}")
    live = {s.slug: s for s in sizes or []}
    return live.get(size.slug, size), False


def resolve(req: PlanRequest, *, host: hardware.Size | None = None, sizes: list[hardware.Size] | None = None) -> Plan:
    """Turn a request into a Plan. `host` is the machine's hardware when known (local facts, SSH facts);
    `sizes` the DigitalOcean sizes with live prices when the caller fetched them."""
    model = get_model(req.model)
    variant = _pick_variant(model, req.variant)
    size, assumed = _size_for(req, host, sizes)
    engine = _pick_engine(req, model, size)
    weights = _pick_weights(req, model, variant, engine)
    quant = (req.quant or weights.recommended_quant) if weights.precision == "gguf" else None
    vision = model.has_vision if req.vision is None else req.vision
    if vision and not model.has_vision:
        raise BadInput(f"{model.id} has no vision encoder", field="vision", fix="drop vision or pick a vision model")
    kv_dtype = "bf16" if req.kv_cache_dtype == "auto" else req.kv_cache_dtype
    if kv_dtype not in sizing.KV_BYTES:
        raise BadInput(f"unknown KV cache dtype {req.kv_cache_dtype!r}", field="kv_cache_dtype",
                       fix=f"one of: {', '.join(sizing.KV_BYTES)}")
    concurrency = req.concurrency or (1 if (size and size.gpu.vendor == "cpu") else 4)
    max_ctx = model.capabilities.max_context
    for w in variant.weights:
        if w is weights and w.max_context:
            max_ctx = min(max_ctx, w.max_context)
    if req.context and req.context > max_ctx:
        raise BadInput(f"context {req.context} is over {model.id}'s maximum {max_ctx}", field="context",
                       fix=f"use --context {max_ctx} or less")
    recipe = model.engines.vllm if engine == "vllm" else None
    utilization = recipe.gpu_memory_utilization if recipe else None
    sized = dict(engine=engine, concurrency=concurrency, quant=quant, kv_dtype=kv_dtype, vision=vision)
    notes: list[str] = []

    found_here = size is None  # the planner picks a size that fits: nothing to fall back from
    if size is None:
        pool = sizes or list(hardware.DO_SIZES.values())
        want_ctx = req.context or min(max_ctx, DEFAULT_CONTEXT)
        found = sizing.cheapest_fit(model, weights, pool, context=want_ctx, **sized)
        if found is None:
            need = sizing.estimate(model, weights, max(pool, key=lambda s: s.memory_gb), context=want_ctx, **sized)
            raise DoesNotFit(
                f"{model.id} {weights.precision} at context {want_ctx} x {concurrency} needs {need.total_gb:.1f} GB; "
                f"the largest size holds {need.available_gb:.1f} GB usable",
                field="gpu",
                fix="lower --context or --concurrency, or pick a smaller precision/quant",
            )
        size = found[0]
        if assumed:
            notes.append(f"host GPU unknown: planned for the cheapest that fits ({size.label}); deploy re-plans from host facts")

    if not size.gpu.runs(weights.precision):
        raise BadInput(f"{size.gpu.name} cannot run {weights.precision} weights", field="precision",
                       fix="pick bf16 or fp8 on this GPU, or an NVIDIA GPU for nvfp4")

    fit_ctx = sizing.largest_context(model, weights, size, utilization=utilization, **sized)
    context = req.context or min(max_ctx, DEFAULT_CONTEXT, fit_ctx) or min(max_ctx, MIN_CONTEXT)
    memory = sizing.estimate(model, weights, size, context=context, utilization=utilization, **sized)
    if not memory.fits and not found_here and req.precision is None and req.quant is None:
        smaller = _other_weights_that_fit(req, host, sizes, variant, engine, weights, memory)
        if smaller is not None:
            return smaller
    if req.context is None and fit_ctx < MIN_CONTEXT:
        notes.append(f"does not fit even at context {MIN_CONTEXT}")

    tp = size.count if engine == "vllm" else 1
    price = size.hourly_usd if req.target == "digitalocean" else 0.0
    gguf = weights.quants[quant].file if (quant and quant in weights.quants) else None
    reasoning = bool(model.capabilities.reasoning_effort) or variant.thinks
    sampling = model.sampling_for(variant.id)
    return Plan(
        name=req.name or f"{model.id}-{engine}",
        model=model.id,
        model_name=model.name,
        variant=variant.id,
        engine=engine,
        target=req.target,
        precision=weights.precision,
        quant=quant,
        repo=weights.repo,
        weight_formats=list(weights.formats),
        gguf_file=gguf,
        mmproj_file=weights.mmproj if (vision and weights.precision == "gguf") else None,
        gpu=size.slug,
        gpu_name=size.label,
        gpu_count=size.count,
        gpu_vendor=size.gpu.vendor,
        gpu_arch=size.gpu.arch,
        gpu_assumed=assumed,
        tensor_parallel=tp,
        region=req.region,
        context=context,
        concurrency=concurrency,
        max_context_that_fits=fit_ctx,
        vision=vision,
        tools=model.capabilities.tools,
        reasoning=reasoning,
        kv_cache_dtype=kv_dtype,
        gpu_memory_utilization=utilization or sizing.DEFAULT_UTILIZATION[engine],
        port=req.port or DEFAULT_PORT[engine],
        fits=memory.fits,
        memory=memory.as_dict(),
        hourly_usd=price,
        price_source=size.price_source if req.target == "digitalocean" else None,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        notes=notes,
    )


def _other_weights_that_fit(req: PlanRequest, host: hardware.Size | None, sizes: list[hardware.Size] | None,
                            variant: Variant, engine: str, tried: Weights, memory: sizing.Memory) -> Plan | None:
    """When the hardware is fixed and the default precision does not fit it, the first other precision of the same
    variant that does (the cards' own advice: Large 3 FP8 needs 8x H200, NVFP4 runs on 8x H100)."""
    for w in variant.weights:
        if w is tried or (w.precision == "gguf") != (engine == "llamacpp"):
            continue
        try:
            alt = resolve(req.model_copy(update={"precision": w.precision, "engine": engine}), host=host, sizes=sizes)
        except BadInput:  # e.g. a context over that file's maximum, or a precision this GPU cannot run
            continue
        if alt.fits:
            note = (f"{tried.precision} needs {memory.total_gb:.1f} GB of the {memory.available_gb:.1f} GB usable "
                    f"here: planned {w.precision} ({w.repo}) instead; pass --precision to choose")
            return alt.model_copy(update={"notes": [note, *alt.notes]})
    return None


def require_fit(plan: Plan, *, sizes: list[hardware.Size] | None = None) -> Plan:
    """Raise DoesNotFit with the numbers and the smallest size that would fit."""
    if plan.fits:
        return plan
    m = plan.memory
    model = get_model(plan.model)
    weights = next(w for w in model.variant(plan.variant).weights if w.repo == plan.repo)
    found = sizing.cheapest_fit(
        model, weights, sizes or list(hardware.DO_SIZES.values()), engine=plan.engine, context=plan.context,
        concurrency=plan.concurrency, quant=plan.quant, kv_dtype=plan.kv_cache_dtype, vision=plan.vision,
    )
    if found:
        price = f", ${found[0].hourly_usd:.2f}/hour" if found[0].hourly_usd else ""
        hint = f"the cheapest size that fits is {found[0].slug} ({found[0].label}{price})"
    else:
        hint = "no single size fits"
    if plan.max_context_that_fits >= MIN_CONTEXT:
        hint += f"; on {plan.gpu} the largest context that fits is {plan.max_context_that_fits}"
    raise DoesNotFit(
        f"{plan.model} {plan.precision}{' ' + plan.quant if plan.quant else ''} at context {plan.context} x "
        f"{plan.concurrency} needs {m['total_gb']:.1f} GB (weights {m['weights_gb']:.1f} + KV cache "
        f"{m['kv_cache_gb']:.1f} + overhead {m['overhead_gb']:.1f}) but {plan.gpu_name} has {m['available_gb']:.1f} GB usable",
        field="gpu",
        fix=hint,
    )
