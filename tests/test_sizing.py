"""Memory arithmetic, checked by hand-computed figures and against the published requirements in the catalog."""

from __future__ import annotations

import pytest

from mistral_lab import hardware, sizing
from mistral_lab.catalog import get_model, load_catalog
from mistral_lab.catalog.schema import Architecture


def _arch(**kw) -> Architecture:
    base = dict(source="test", kind="dense", total_params_b=1.0, active_params_b=1.0, layers=10, hidden_size=1024,
                heads=8, kv_heads=2, head_dim=128, vocab_size=1000)
    base.update(kw)
    return Architecture(**base)


def test_gqa_kv_bytes_per_token_is_k_and_v_for_every_layer_and_kv_head():
    arch = get_model("ministral-3b").architecture
    expected = 2 * arch.layers * arch.kv_heads * arch.head_dim * 2
    assert sizing.kv_bytes_per_token(arch) == expected
    assert sizing.kv_bytes_per_token(arch, "fp8") == expected / 2


def test_mla_caches_one_latent_per_layer():
    arch = _arch(attention="mla", kv_heads=None, head_dim=None, kv_lora_rank=512, qk_rope_head_dim=64, layers=61)
    assert sizing.kv_bytes_per_token(arch) == 61 * (512 + 64) * 2


def test_fp8_keeps_embeddings_and_vision_in_bf16():
    model = get_model("ministral-3b")
    fp8 = next(w for w in model.default_variant.weights if w.precision == "fp8")
    arch = model.architecture
    emb = arch.vocab_size * arch.hidden_size / 1e9  # tied embeddings: one copy
    text = arch.total_params_b - arch.vision_params_b
    expected = (text - emb) * 1.0 + emb * 2 + arch.vision_params_b * 2
    assert sizing.weights_gb(model, fp8) == pytest.approx(expected)
    assert sizing.weights_gb(model, fp8, vision=False) == pytest.approx(expected - arch.vision_params_b * 2)


def test_gguf_uses_bits_per_weight_when_the_file_size_is_unknown():
    model = get_model("ministral-3b")
    gguf = next(w for v in model.variants for w in v.weights if w.precision == "gguf")
    text = model.architecture.total_params_b - model.architecture.vision_params_b
    q8 = sizing.weights_gb(model, gguf, "Q8_0", vision=False)
    q4 = sizing.weights_gb(model, gguf, "Q4_K_M", vision=False)
    assert q8 == pytest.approx(text * 8.5 / 8)
    assert q4 < q8


def test_largest_context_fills_the_room_and_respects_the_model_maximum():
    model = get_model("ministral-3b")
    fp8 = model.default_variant.weights[0]
    small = hardware.resolve_size("rtx4000ada")
    big = hardware.resolve_size("h200")
    c_small = sizing.largest_context(model, fp8, small, engine="vllm", concurrency=1)
    c_big = sizing.largest_context(model, fp8, big, engine="vllm", concurrency=1)
    assert 0 < c_small < c_big == model.capabilities.max_context
    assert c_small % 1024 == 0
    # The context found fits, one more step does not.
    fits = sizing.estimate(model, fp8, small, engine="vllm", context=c_small, concurrency=1)
    over = sizing.estimate(model, fp8, small, engine="vllm", context=c_small + 1024, concurrency=1)
    assert fits.fits and not over.fits
    # Four sequences share the same room.
    c4 = sizing.largest_context(model, fp8, small, engine="vllm", concurrency=4)
    assert c4 <= c_small // 4 + 1024


def test_cheapest_fit_is_the_cheapest_size_that_holds_it():
    model = get_model("ministral-3b")
    fp8 = model.default_variant.weights[0]
    sizes = list(hardware.DO_SIZES.values())
    size, mem = sizing.cheapest_fit(model, fp8, sizes, engine="vllm", context=4096, concurrency=1)
    assert size.slug == "gpu-4000adax1-20gb" and mem.fits
    size, mem = sizing.cheapest_fit(model, fp8, sizes, engine="vllm", context=131072, concurrency=8)
    cheaper = [s for s in sizes if s.hourly_usd < size.hourly_usd]
    assert mem.fits and cheaper
    assert all(not sizing.estimate(model, fp8, s, engine="vllm", context=131072, concurrency=8).fits for s in cheaper)


def test_nvfp4_is_never_placed_on_amd():
    assert not hardware.GPUS["mi300x"].runs("nvfp4")
    assert hardware.GPUS["h100"].runs("nvfp4")
    assert hardware.GPUS["mi300x"].runs("fp8")


def _requirement_cases():
    for m in load_catalog().models:
        for r in m.requirements:
            yield pytest.param(m.id, r, id=f"{m.id}-{r.precision}{'-' + r.quant if r.quant else ''}-{r.memory_gb:g}GB")


# Published figures are rough ("about 16 GB", "at least 8 GB"): our estimate must land within this share of them.
TOLERANCE = 0.25


@pytest.mark.parametrize(("model_id", "req"), list(_requirement_cases()))
def test_estimates_agree_with_published_figures(model_id, req):
    model = get_model(model_id)
    weights = next(w for v in model.variants for w in v.weights if w.precision == req.precision)
    engine = "llamacpp" if req.precision == "gguf" else "vllm"
    context = req.context or 4096
    if req.gpus:
        # "runs on 8xH200": it must fit there.
        size = hardware.resolve_size(req.gpus)
        mem = sizing.estimate(model, weights, size, engine=engine, context=context, concurrency=1, quant=req.quant)
        assert mem.fits, f"{model_id} {req.precision} should fit {req.gpus}: {mem.as_dict()}"
        return
    size = hardware.Size("published", hardware.GPUS["h100"], 1, None)
    mem = sizing.estimate(model, weights, size, engine=engine, context=context, concurrency=1, quant=req.quant)
    assert abs(mem.total_gb - req.memory_gb) <= TOLERANCE * req.memory_gb, (
        f"{model_id} {req.precision} {req.quant or ''}: estimated {mem.total_gb:.1f} GB vs published {req.memory_gb} GB "
        f"({req.source})"
    )
