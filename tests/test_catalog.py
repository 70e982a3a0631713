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


# Facts the seeds (shared/seeds, the ground truth) state, with the words they use; the catalog must agree.
def _m(model_id: str) -> Model:
    return next(m for m in MODELS if m.id == model_id)


def _repos(model_id: str) -> set[str]:
    return {w.repo for w in _all_weights(_m(model_id))}


SEED_FACTS = [
    ("seed 002: the three Ministral models have vision and a 256k context",
     lambda: {(_m(i).capabilities.max_context, _m(i).has_vision) for i in ("ministral-3b", "ministral-8b",
                                                                          "ministral-14b")}, {(262144, True)}),
    ("seed 002: vllm serve mistralai/Ministral-3-8B-Instruct-2512",
     lambda: "mistralai/Ministral-3-8B-Instruct-2512" in _repos("ministral-8b"), True),
    ("seed 002: Large 3 is a MoE of 675B parameters, 41B active, with images, 256k and function calling",
     lambda: (_m("mistral-large-3").architecture.kind, _m("mistral-large-3").architecture.total_params_b,
              _m("mistral-large-3").architecture.active_params_b, _m("mistral-large-3").has_vision,
              _m("mistral-large-3").capabilities.max_context, _m("mistral-large-3").capabilities.tools),
     ("moe", 675, 41, True, 262144, True)),
    ("seed 001: Small 3.1 is 24B dense with a 128K context, native vision and function calling",
     lambda: (_m("mistral-small-3.1").architecture.kind, _m("mistral-small-3.1").architecture.total_params_b,
              _m("mistral-small-3.1").capabilities.max_context, _m("mistral-small-3.1").has_vision,
              _m("mistral-small-3.1").capabilities.tools), ("dense", 24, 131072, True, True)),
    ("seed 001 and 004: temperature=0.15 for Small 3.1",
     lambda: _m("mistral-small-3.1").sampling.default.temperature, 0.15),
    ("seed 001: vllm serve mistralai/Mistral-Small-3.1-24B-Instruct-2503 --tool-call-parser mistral",
     lambda: ("mistralai/Mistral-Small-3.1-24B-Instruct-2503" in _repos("mistral-small-3.1"),
              _m("mistral-small-3.1").engines.vllm.tool_parser), (True, "mistral")),
    ("seed 003: Small 4 has 128 experts, 4 active, 119B parameters, 6.5B active per token, 256k",
     lambda: (_m("mistral-small-4").architecture.experts, _m("mistral-small-4").architecture.experts_per_token,
              _m("mistral-small-4").architecture.total_params_b, _m("mistral-small-4").architecture.active_params_b,
              _m("mistral-small-4").capabilities.max_context), (128, 4, 119, 6.5, 262144)),
    ("seed 003: reasoning_effort 'none' or 'high'; temperature 0.7 with high",
     lambda: (_m("mistral-small-4").capabilities.reasoning_effort,
              _m("mistral-small-4").sampling.reasoning_high.temperature), (["none", "high"], 0.7)),
    ("seed 003: the custom Docker image mistralllm/vllm-ms4:latest",
     lambda: _m("mistral-small-4").engines.vllm.docker_image, "mistralllm/vllm-ms4:latest"),
    ("seed 003: vllm serve mistralai/Mistral-Small-4-119B-2603-NVFP4 --tensor-parallel-size 2 --attention-backend "
     "TRITON_MLA",
     lambda: ("mistralai/Mistral-Small-4-119B-2603-NVFP4" in _repos("mistral-small-4"),
              _m("mistral-small-4").engines.vllm.tensor_parallel,
              _m("mistral-small-4").engines.vllm.extra_flags.get("nvfp4")),
     (True, 2, ["--attention-backend", "TRITON_MLA"])),
    ("seed 000: Medium 3.5 is a dense 128B with text and image input and a 256K context",
     lambda: (_m("mistral-medium-3.5").architecture.kind, round(_m("mistral-medium-3.5").architecture.total_params_b),
              _m("mistral-medium-3.5").has_vision, _m("mistral-medium-3.5").capabilities.max_context),
     ("dense", 128, True, 262144)),
    ("seed 000: reasoning_effort 'none' / 'high', temperature = 0.7 for high",
     lambda: (_m("mistral-medium-3.5").capabilities.reasoning_effort,
              _m("mistral-medium-3.5").sampling.reasoning_high.temperature,
              _m("mistral-medium-3.5").engines.llamacpp.reasoning_kwarg), (["none", "high"], 0.7, True)),
    ("seed 000: llama-server -hf unsloth/Mistral-Medium-3.5-128B-GGUF:UD-Q4_K_XL --mmproj mmproj-BF16.gguf",
     lambda: next((w.recommended_quant, w.mmproj) for w in _all_weights(_m("mistral-medium-3.5"))
                  if w.repo == "unsloth/Mistral-Medium-3.5-128B-GGUF"), ("UD-Q4_K_XL", "mmproj-BF16.gguf")),
]


@pytest.mark.parametrize(("words", "read", "expected"), SEED_FACTS, ids=[f[0][:60] for f in SEED_FACTS])
def test_the_catalog_agrees_with_the_seeds(words, read, expected):
    assert read() == expected, words


def test_every_model_carries_the_recipes_and_sampling_the_issue_asks_for():
    for m in REAL:
        if m.engines.vllm is not None:
            v = m.engines.vllm
            assert re.fullmatch(r"\d+\.\d+\.\d+", v.min_version) and v.pip_spec.startswith("vllm"), m.id
            assert v.tool_parser == "mistral" or not m.capabilities.tools, m.id
        if m.engines.llamacpp is not None and m.engines.llamacpp.supported:
            assert "--jinja" in m.engines.llamacpp.flags, m.id
            assert any(w.precision == "gguf" for w in _all_weights(m)), f"{m.id}: llama.cpp needs a GGUF repo"
        assert 0 <= m.sampling.default.temperature <= 1, m.id
    ministral = [m for m in REAL if m.family == "ministral-3"]
    assert {m.id for m in ministral} == {"ministral-3b", "ministral-8b", "ministral-14b"}
    for m in ministral:
        assert {"instruct", "reasoning"} <= {v.id for v in m.variants}, m.id
        assert {w.precision for w in m.variant("instruct").weights} >= {"fp8", "bf16", "gguf"}, m.id


# Blocks quoting a third party whose figures a primary source corroborates, so nothing is left unconfirmed.
CORROBORATED = {
    "mistral-medium-3.5.variants[0].weights[0]": "the recipe's '~134 GB raw' confirms the third party's 124.4 GiB",
}


def test_figures_quoted_from_third_parties_are_marked_unverified():
    """The catalog's rule (models.yaml header): what only a third party states stays in `unverified`."""
    for m in MODELS:
        for path, block in _sourced_blocks(m, m.id):
            if re.search(r"third[- ]part", block.source.lower()) and path not in CORROBORATED:
                assert block.unverified, f"{path} quotes a third party but marks nothing unverified"
            assert len(block.unverified) == len(set(block.unverified)), path
