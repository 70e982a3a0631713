"""The shipped catalog (`catalog/models.yaml`): it loads, every fact is sourced, and the entries are consistent
enough for planning and serving to rely on them."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from mistral_lab import hardware
from mistral_lab.catalog import load_catalog
from mistral_lab.catalog.schema import Model, Sourced, Weights

EXPECTED_IDS = {
    "tiny-random",
    "ministral-3b",
    "ministral-8b",
    "ministral-14b",
    "mistral-small-3.1",
    "mistral-small-3.2",
    "mistral-small-4",
    "mistral-medium-3.5",
    "mistral-large-3",
}
HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
MODELS = load_catalog().models
REAL = [m for m in MODELS if not m.generated]


def _by_id(models: list[Model]) -> list:
    return [pytest.param(m, id=m.id) for m in models]


def _sourced_blocks(node: object, path: str) -> Iterator[tuple[str, Sourced]]:
    """Every Sourced block anywhere inside a model, with a readable path for failure messages."""
    if isinstance(node, Sourced):
        yield path, node
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _sourced_blocks(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            yield from _sourced_blocks(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _sourced_blocks(item, f"{path}[{key}]")


def _all_weights(model: Model) -> list[Weights]:
    return [w for v in model.variants for w in v.weights]


def test_the_catalog_holds_exactly_the_agreed_ids():
    ids = [m.id for m in MODELS]
    assert len(ids) == len(set(ids))
    assert set(ids) == EXPECTED_IDS


@pytest.mark.parametrize("model", _by_id(MODELS))
def test_every_block_names_its_source(model):
    blocks = list(_sourced_blocks(model, model.id))
    # architecture, capabilities, weights, recipes and sampling at least
    assert len(blocks) >= 5
    for path, block in blocks:
        assert block.source.strip(), f"{path} has an empty source"


@pytest.mark.parametrize("model", _by_id(MODELS))
def test_unverified_names_fields_of_its_own_block(model):
    """`unverified` lists field names (dotted into quants where needed); a typo would silently mark nothing."""
    for path, block in _sourced_blocks(model, model.id):
        fields = set(type(block).model_fields)
        for name in block.unverified:
            assert name.split(".")[0] in fields, f"{path}.unverified names {name!r}, not a field of that block"


@pytest.mark.parametrize("model", _by_id(REAL))
def test_every_downloadable_model_has_a_serving_recipe(model):
    assert model.engines.vllm is not None or model.engines.llamacpp is not None


@pytest.mark.parametrize("model", _by_id(REAL))
def test_repo_ids_are_hugging_face_owner_slash_name(model):
    for w in _all_weights(model):
        assert HF_REPO.fullmatch(w.repo), f"{model.id}: {w.repo!r} is not owner/name"
        assert not w.repo.startswith("local/"), f"{model.id}: {w.repo} is a generated-model path"


@pytest.mark.parametrize("model", _by_id(MODELS))
def test_formats_match_the_precision(model):
    for w in _all_weights(model):
        if w.precision == "gguf":
            assert w.formats == ["gguf"], f"{w.repo}: a GGUF repo ships only gguf files"
        else:
            assert "gguf" not in w.formats and set(w.formats) <= {"mistral", "hf"}, w.repo


@pytest.mark.parametrize("model", _by_id(MODELS))
def test_gguf_weights_name_a_recommended_quant_file(model):
    for w in (w for w in _all_weights(model) if w.precision == "gguf"):
        assert w.recommended_quant in w.quants, f"{w.repo}: recommended quant {w.recommended_quant!r} not listed"
        for name, quant in w.quants.items():
            assert quant.file.endswith(".gguf"), f"{w.repo} {name}: {quant.file}"
            if "-of-" in quant.file:
                # llama.cpp opens a split model by its first shard and finds the rest beside it.
                assert re.search(r"-00001-of-\d{5}\.gguf$", quant.file), f"{w.repo} {name}: not the first shard"
            assert quant.size_gb is None or quant.size_gb > 0


@pytest.mark.parametrize("model", _by_id([m for m in REAL if m.has_vision]))
def test_vision_models_ship_an_mmproj_with_every_gguf(model):
    ggufs = [w for w in _all_weights(model) if w.precision == "gguf"]
    for w in ggufs:
        assert w.mmproj and w.mmproj.endswith(".gguf"), f"{w.repo}: a vision model's GGUF needs its mmproj"


@pytest.mark.parametrize("model", _by_id([m for m in REAL if m.capabilities.reasoning_effort or any(v.thinks for v in m.variants)]))
def test_reasoning_models_have_a_reasoning_parser(model):
    if model.engines.vllm is not None:
        assert model.engines.vllm.reasoning_parser, f"{model.id}: vLLM needs --reasoning-parser for a reasoning model"
    if model.capabilities.reasoning_effort and model.engines.llamacpp is not None:
        # llama.cpp takes reasoning_effort through the chat template kwargs.
        assert model.engines.llamacpp.reasoning_kwarg
    assert model.sampling.reasoning_high is not None


@pytest.mark.parametrize("model", _by_id([m for m in REAL if not m.capabilities.reasoning_effort and not any(v.thinks for v in m.variants)]))
def test_models_that_never_reason_get_no_reasoning_parser(model):
    if model.engines.vllm is not None:
        assert model.engines.vllm.reasoning_parser is None


@pytest.mark.parametrize("model", _by_id(REAL))
def test_requirements_point_at_weights_and_gpus_that_exist(model):
    precisions = {w.precision for w in _all_weights(model)}
    for r in model.requirements:
        assert r.precision in precisions, f"{model.id}: requirement for {r.precision} but no such weights"
        if r.gpus:
            assert hardware.resolve_size(r.gpus).count >= 1


@pytest.mark.parametrize("model", _by_id([m for m in MODELS if m.system_prompt]))
def test_system_prompts_format_with_the_card_placeholders_only(model):
    text = model.system_prompt.format(name="Model-Name", today="2026-01-02", yesterday="2026-01-01")
    assert "{" not in text and "2026-01-02" in text


def test_one_variant_per_model_is_the_default_and_ships_server_weights():
    for m in REAL:
        default = m.default_variant
        assert any(w.precision != "gguf" for w in default.weights) or m.engines.vllm is None, m.id


def test_moe_and_mla_models_carry_the_numbers_sizing_needs():
    for m in REAL:
        a = m.architecture
        if a.kind == "moe":
            assert a.experts_per_token < a.experts and a.active_params_b < a.total_params_b, m.id
        if a.attention == "mla":
            assert a.kv_heads is None and a.head_dim is None, f"{m.id}: MLA caches a latent, not per-head K/V"
