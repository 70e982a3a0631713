"""Random-weight models: the tokenizer, the chat template, the GGUF and HF files, read back with their own readers."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time

import httpx
import jinja2
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType, TokenType, quants
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from llamacpp_fixtures import free_port
from mistral_lab import modelgen
from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import Architecture
from mistral_lab.errors import BadInput

TINY = get_model("tiny-random").architecture


@pytest.fixture(scope="module")
def vocab() -> modelgen.Vocab:
    return modelgen.build_vocab(TINY.vocab_size)


def _field(reader: GGUFReader, key: str):
    return reader.get_field(key).contents()


# ---- tokenizer -------------------------------------------------------------------------------------------------


def test_vocab_has_catalog_size_and_mistral_control_tokens_first(vocab):
    assert len(vocab.tokens) == TINY.vocab_size == 1024
    assert vocab.tokens[:5] == ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    for name in (
        "[TOOL_CALLS]",
        "[AVAILABLE_TOOLS]",
        "[SYSTEM_PROMPT]",
        "[ARGS]",
        "[THINK]",
        "[/THINK]",
        "[IMG]",
    ):
        assert vocab.token_types[vocab.tokens.index(name)] == TokenType.CONTROL
    assert vocab.tokens.index("[TOOL_CALLS]") == 9 and vocab.tokens.index("[ARGS]") == 32
    assert vocab.token_types.count(TokenType.CONTROL) == len(modelgen.CONTROL_TOKENS)
    assert len(set(vocab.tokens)) == len(vocab.tokens)


def test_vocab_is_deterministic(vocab):
    assert modelgen.build_vocab(TINY.vocab_size) == vocab


def test_any_text_round_trips_through_the_tokenizer(vocab):
    tok = Tokenizer.from_str(vocab.tokenizer_json)
    text = 'Grüße aus Köln! 東京 😀 {"city": "Paris"}\n\tdef f(x): return x**2'
    enc = tok.encode(text, add_special_tokens=False)
    assert max(enc.ids) < TINY.vocab_size
    assert tok.decode(enc.ids) == text


def test_control_tokens_are_single_tokens_and_bos_is_added(vocab):
    tok = Tokenizer.from_str(vocab.tokenizer_json)
    enc = tok.encode("[INST]hi[/INST][TOOL_CALLS]get_weather[ARGS]{}")
    assert enc.tokens[0] == "<s>"
    assert {"[INST]", "[/INST]", "[TOOL_CALLS]", "[ARGS]"} <= set(enc.tokens)


def test_too_small_vocab_names_the_field():
    with pytest.raises(BadInput) as e:
        modelgen.build_vocab(100)
    assert e.value.field == "architecture.vocab_size"


def test_big_vocab_is_padded_to_the_exact_size():
    v = modelgen.build_vocab(4096)
    assert len(v.tokens) == 4096 and v.tokens[-1].startswith("<unused_")
    tok = Tokenizer.from_str(v.tokenizer_json)
    assert tok.get_vocab_size() == 4096


# ---- chat template ---------------------------------------------------------------------------------------------


def _render(messages, tools=None) -> str:
    def raise_exception(msg):
        raise jinja2.TemplateError(msg)

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
    tmpl = env.from_string(modelgen.CHAT_TEMPLATE)
    kwargs = {"tools": tools} if tools is not None else {}
    return tmpl.render(
        messages=messages, bos_token="<s>", eos_token="</s>", raise_exception=raise_exception, **kwargs
    )


def test_template_triggers_llamacpp_ministral3_handler():
    src = modelgen.CHAT_TEMPLATE
    # common/chat.cpp: [SYSTEM_PROMPT] + [TOOL_CALLS] + [ARGS] and no [CALL_ID] -> Ministral 3 tool-call grammar.
    assert "[SYSTEM_PROMPT]" in src and "[TOOL_CALLS]" in src and "[ARGS]" in src
    assert "[CALL_ID]" not in src


def test_template_renders_a_tool_conversation_in_mistral_format():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image_url"}]},
    ]
    out = _render(messages, tools)
    assert out == (
        "<s>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT]"
        '[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]'
        "[/AVAILABLE_TOOLS][INST]Weather in Paris?[/INST]"
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>'
        "[TOOL_RESULTS]sunny[/TOOL_RESULTS]Sunny.</s>[INST]And this?[IMG][/INST]"
    )


def test_template_rejects_unknown_roles():
    with pytest.raises(jinja2.TemplateError, match="Only user, assistant and tool roles"):
        _render([{"role": "robot", "content": "x"}])


# ---- GGUF ------------------------------------------------------------------------------------------------------


def test_tiny_gguf_has_mistral3_keys_tokenizer_and_tensors(tmp_path, vocab):
    path = modelgen.write_gguf(TINY, tmp_path / "tiny.gguf", "F16", context_length=4096, name="tiny-random")
    r = GGUFReader(path)
    assert _field(r, "general.architecture") == "mistral3"
    assert _field(r, "mistral3.block_count") == 2
    assert _field(r, "mistral3.embedding_length") == 256
    assert _field(r, "mistral3.attention.head_count_kv") == 2
    assert _field(r, "mistral3.attention.key_length") == 64
    assert _field(r, "mistral3.context_length") == 4096
    assert _field(r, "general.file_type") == LlamaFileType.MOSTLY_F16
    assert _field(r, "tokenizer.ggml.pre") == "tekken"
    assert _field(r, "tokenizer.ggml.tokens") == vocab.tokens
    assert _field(r, "tokenizer.chat_template") == modelgen.CHAT_TEMPLATE
    names = {t.name: t for t in r.tensors}
    assert len(names) == 1 + 9 * TINY.layers + 2
    assert names["token_embd.weight"].tensor_type == GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert list(names["blk.1.attn_k.weight"].shape) == [256, 128]  # GGUF order: (in, out)
    assert sum(int(t.n_elements) for t in r.tensors) == modelgen.param_count(TINY) == 1_705_216
    weights = names["blk.0.ffn_up.weight"].data.astype(np.float32)
    assert abs(float(weights.std()) - modelgen.WEIGHT_STD) < 0.002 and abs(float(weights.mean())) < 0.002


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = modelgen.write_gguf(TINY, tmp_path / "a.gguf", "Q8_0", seed=0)
    b = modelgen.write_gguf(TINY, tmp_path / "b.gguf", "Q8_0", seed=0)
    c = modelgen.write_gguf(TINY, tmp_path / "c.gguf", "Q8_0", seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes() and a.stat().st_size == c.stat().st_size


@pytest.mark.parametrize("quant", ["Q8_0", "BF16"])
def test_quantized_weights_decode_to_the_f16_weights(tmp_path, quant):
    f16 = {t.name: t for t in GGUFReader(modelgen.write_gguf(TINY, tmp_path / "f.gguf", "F16")).tensors}
    q = GGUFReader(modelgen.write_gguf(TINY, tmp_path / "q.gguf", quant))
    assert _field(q, "general.file_type") == LlamaFileType[f"MOSTLY_{quant}"]
    t = next(t for t in q.tensors if t.name == "blk.0.attn_v.weight")
    assert t.tensor_type == GGMLQuantizationType[quant]
    decoded = quants.dequantize(t.data, t.tensor_type)
    np.testing.assert_allclose(decoded, f16[t.name].data.astype(np.float32), atol=0.002)


def test_gguf_and_hf_hold_the_same_model(tmp_path):
    """Same seed, same numbers: q/k carry llama.cpp's RoPE permutation, everything else is equal."""
    g = {t.name: t for t in GGUFReader(modelgen.write_gguf(TINY, tmp_path / "t.gguf", "F32")).tensors}
    hf_dir = modelgen.write_hf(TINY, tmp_path / "hf")
    hf = load_file(str(hf_dir / "model.safetensors"))
    up = hf["model.layers.1.mlp.up_proj.weight"].astype(np.float32)
    np.testing.assert_allclose(g["blk.1.ffn_up.weight"].data, up, atol=1e-3)
    q = hf["model.layers.0.self_attn.q_proj.weight"].astype(np.float32)
    np.testing.assert_allclose(
        g["blk.0.attn_q.weight"].data, modelgen._rope_permute(q, TINY.heads), atol=1e-3
    )
    assert not np.allclose(g["blk.0.attn_q.weight"].data, q, atol=1e-3)


# ---- Hugging Face folder ---------------------------------------------------------------------------------------


def test_hf_folder_is_a_mistral_causal_lm_with_tokenizer_and_template(tmp_path):
    out = modelgen.write_hf(TINY, tmp_path / "tiny-hf", context_length=4096)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"]
    assert (config["num_key_value_heads"], config["head_dim"], config["vocab_size"]) == (2, 64, 1024)
    tensors = load_file(str(out / "model.safetensors"))
    assert sum(v.size for v in tensors.values()) == modelgen.param_count(TINY)
    assert str(tensors["lm_head.weight"].dtype) == "bfloat16"
    tk = json.loads((out / "tokenizer_config.json").read_text())
    assert tk["chat_template"] == modelgen.CHAT_TEMPLATE and tk["eos_token"] == "</s>"
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == 1024
    assert all(oct(p.stat().st_mode)[-3:] == "644" for p in out.iterdir())
    assert not list(tmp_path.glob(".tiny-hf.*")), "the temporary folder was moved into place"


def test_hf_folder_shards_beyond_the_shard_size(tmp_path):
    out = modelgen.write_hf(TINY, tmp_path / "sharded", shard_bytes=1_000_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and all((out / f).exists() for f in files)
    loaded = {}
    for f in files:
        loaded.update(load_file(str(out / f)))
    assert set(loaded) == set(index["weight_map"]) and len(loaded) == len(modelgen.tensor_specs(TINY))


# ---- catalog hook and limits -----------------------------------------------------------------------------------


def test_make_model_caches_by_fingerprint(tmp_path):
    first = modelgen.make_model("tiny-random", "Q8_0", cache=tmp_path)
    assert first.parent == tmp_path / "models" and first.name.startswith("tiny-random-Q8_0-")
    mtime = first.stat().st_mtime_ns
    assert modelgen.make_model("tiny-random", "Q8_0", cache=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime, "a cached model is reused, not rewritten"
    assert _field(GGUFReader(first), "general.name").startswith("tiny-random")
    hf = modelgen.make_model("tiny-random", "hf", cache=tmp_path)
    assert (hf / "config.json").exists()


def test_make_model_explicit_out(tmp_path):
    out = modelgen.make_model("tiny-random", "BF16", tmp_path / "x" / "tiny.gguf")
    assert out == tmp_path / "x" / "tiny.gguf" and _field(GGUFReader(out), "general.file_type") == 32


def test_make_model_refuses_hf_folders_for_mla_moe_with_a_fix(tmp_path):
    with pytest.raises(BadInput) as e:
        modelgen.make_model("mistral-small-4", "hf", tmp_path / "x")
    assert e.value.fix and "GGUF" in e.value.fix
    assert not list(tmp_path.iterdir()), "refused before writing anything"


def test_unsupported_combinations_name_what_is_supported():
    mixtral_like = TINY.model_copy(update={"kind": "moe", "experts": 8, "experts_per_token": 2})
    with pytest.raises(BadInput) as e:
        modelgen.tensor_specs(mixtral_like)
    assert "mistral-small-4" in (e.value.fix or "") and "moe/gqa" in str(e.value)


def test_make_model_unknown_id_suggests_names():
    with pytest.raises(BadInput, match="unknown model"):
        modelgen.make_model("ministral-3", "F16")


def test_catalog_tiny_numbers_match_what_is_generated():
    model = get_model("tiny-random")
    assert round(modelgen.param_count(model.architecture) / 1e9, 4) == model.architecture.total_params_b
    assert model.generated


@pytest.mark.parametrize(("model_id", "billions"), [("ministral-3b", 3.43), ("ministral-8b", 8.49)])
def test_realistic_architectures_have_the_language_model_size(model_id, billions):
    arch = get_model(model_id).architecture
    lm = modelgen.param_count(arch) / 1e9
    assert lm == pytest.approx(billions, abs=0.01)
    assert lm == pytest.approx(arch.total_params_b - arch.vision_params_b, abs=0.1)


_PEAK_RSS = """
import resource, sys
from mistral_lab import modelgen
from mistral_lab.catalog.schema import Architecture
arch = Architecture.model_validate_json(sys.argv[1])
modelgen.write_gguf(arch, sys.argv[2], "F16")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_large_model_is_streamed_not_held_in_memory(tmp_path):
    # 131k vocab like the real models: two 256 MiB matrices and 8 more layers' worth, 0.6 GB of F16 in all.
    arch = Architecture(
        source="test",
        kind="dense",
        total_params_b=0.3,
        active_params_b=0.3,
        layers=8,
        hidden_size=1024,
        heads=8,
        kv_heads=2,
        head_dim=128,
        intermediate_size=4096,
        vocab_size=131072,
    )
    out = tmp_path / "mid.gguf"
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, arch.model_dump_json(), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    peak = int(run.stdout.strip().splitlines()[-1])
    size = out.stat().st_size
    assert size > 600_000_000
    # One tensor (256 MiB F16) plus a float32 block and the interpreter: well under the whole file.
    assert peak < 0.8 * size, f"peak RSS {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


# ---- MLA + MoE (Mistral Small 4, Mistral Large 3) ----------------------------------------------------------

SMALL4 = get_model("mistral-small-4").architecture
LARGE3 = get_model("mistral-large-3").architecture

# Three layers (one dense, two MoE), eight experts: the deepseek2 layout in a few MB, written in milliseconds.
TINY_MLA = Architecture(
    source="test", kind="moe", attention="mla", total_params_b=0.01, active_params_b=0.005, layers=3,
    hidden_size=256, heads=4, kv_lora_rank=64, qk_rope_head_dim=32, intermediate_size=64, vocab_size=1024,
    experts=8, experts_per_token=2, shared_experts=1, rope_theta=10000.0,
)  # fmt: skip
TINY_MLA_DETAILS = modelgen.MlaMoe(
    gguf_arch="deepseek2", q_lora_rank=64, qk_nope_head_dim=32, v_head_dim=32, dense_layers=1, dense_ffn=128,
    rms_eps=1e-6, routed_scale=1.0, norm_topk=True, expert_groups=(1, 1), fused_gate_up=False, source="test",
)  # fmt: skip
LLAMACPP_MOE_TIMEOUT_S = 300


def _ggml_shape(shape: tuple[int, ...]) -> list[int]:
    return list(reversed(shape))  # GGUFReader gives llama.cpp's order: (in, out[, experts])


@pytest.mark.parametrize(("arch", "billions", "active"), [(SMALL4, 118.97, 6.10), (LARGE3, 673.42, 39.01)])
def test_full_depth_mla_moe_has_the_catalog_size(arch, billions, active):
    # The catalog's totals include the vision encoder, which is not generated.
    assert modelgen.param_count(arch) / 1e9 == pytest.approx(billions, abs=0.01)
    language_model = arch.total_params_b - arch.vision_params_b
    assert modelgen.param_count(arch) / 1e9 == pytest.approx(language_model, rel=0.01)
    assert modelgen.active_param_count(arch) / 1e9 == pytest.approx(active, abs=0.01)
    assert modelgen.active_param_count(arch) / 1e9 == pytest.approx(
        arch.active_params_b - arch.vision_params_b, rel=0.02
    )


def test_dense_models_read_every_weight_per_token_and_cut_only_in_gguf(tmp_path):
    ministral = get_model("ministral-3b").architecture  # tied: the embedding is read in full as the output
    assert modelgen.active_param_count(ministral) == modelgen.param_count(ministral)
    h, kv, ff = 256, 2 * 64, 512  # one tiny-random layer: 2 norms, q/o, k/v, gate/up/down
    assert modelgen.param_count(TINY) - modelgen.param_count(TINY, 1) == 2 * h + 2 * h * h + 2 * kv * h + 3 * ff * h
    with pytest.raises(BadInput) as e:
        modelgen.make_model("tiny-random", "hf", tmp_path / "hf", layers=1)
    assert e.value.field == "layers"


def test_depth_keeps_a_dense_and_a_moe_layer_and_avoids_llamacpp_lite_depths():
    depth = modelgen.plan_depth
    assert depth(LARGE3, 2) == modelgen.Depth(layers=2, full=61, dense_layers=1)
    assert [depth(LARGE3, n).dense_layers for n in (3, 30, 41, 60, 61)] == [1, 1, 2, 3, 3]
    assert depth(LARGE3).label == "61 layers" and not depth(LARGE3).reduced
    assert depth(SMALL4, 2).label == "reduced depth 2 of 36 layers" and depth(SMALL4, 2).dense_layers == 0
    assert depth(TINY, 1) == modelgen.Depth(layers=1, full=2)
    for arch, bad in [(LARGE3, 1), (LARGE3, 26), (LARGE3, 27), (SMALL4, 0), (SMALL4, 37)]:
        with pytest.raises(BadInput) as e:
            depth(arch, bad)
        assert e.value.field == "layers" and e.value.fix


def test_mla_moe_numbers_fill_only_what_the_catalog_lacks():
    for arch in (SMALL4, LARGE3):
        mla = modelgen.mla_moe_details(arch)
        assert not (arch.rope_theta and mla.rope_theta)
        assert not (arch.yarn_factor and mla.yarn_factor) and (arch.yarn_factor or mla.yarn_factor)
        assert mla.source.count("https://") >= 1 and "read 2026-12-07" in mla.source
    assert modelgen.mla_moe_details(SMALL4).gguf_arch == "mistral4"
    assert modelgen.mla_moe_details(LARGE3).gguf_arch == "deepseek2"
    with pytest.raises(BadInput, match="q_lora_rank"):
        modelgen.mla_moe_details(TINY_MLA)


@pytest.mark.parametrize(("arch", "layers"), [(SMALL4, 2), (LARGE3, 2)])
def test_reduced_specs_have_the_real_shapes_and_llamacpp_names(arch, layers):
    import gguf

    mla = modelgen.mla_moe_details(arch)
    specs = {s.gguf_name: s for s in modelgen.tensor_specs(arch, layers)}
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[mla.gguf_arch.upper()]]}
    assert {re.sub(r"^blk\.\d+\.", "blk.{bid}.", n.removesuffix(".weight")) for n in specs} <= known
    h, ff, n_exp = arch.hidden_size, arch.intermediate_size, arch.experts
    moe = modelgen.plan_depth(arch, layers).dense_layers  # the first MoE layer
    assert specs[f"blk.{moe}.ffn_down_exps.weight"].shape == (n_exp, h, ff)
    assert specs[f"blk.{moe}.ffn_gate_inp.weight"].shape == (n_exp, h)
    assert specs[f"blk.{moe}.ffn_up_shexp.weight"].shape == (ff * arch.shared_experts, h)
    if mla.fused_gate_up:
        assert specs[f"blk.{moe}.ffn_gate_up_exps.weight"].shape == (n_exp, 2 * ff, h)
    else:
        assert specs[f"blk.{moe}.ffn_up_exps.weight"].shape == (n_exp, ff, h)
    if moe:
        assert specs["blk.0.ffn_gate.weight"].shape == (mla.dense_ffn, h)
    assert specs["blk.0.attn_kv_a_mqa.weight"].shape == (arch.kv_lora_rank + arch.qk_rope_head_dim, h)
    assert specs["blk.0.attn_q_b.weight"].shape == (
        arch.heads * (mla.qk_nope_head_dim + arch.qk_rope_head_dim), mla.q_lora_rank
    )
    assert specs["blk.0.attn_k_b.weight"].shape == (arch.heads, arch.kv_lora_rank, mla.qk_nope_head_dim)
    assert specs["blk.0.attn_v_b.weight"].shape == (arch.heads, mla.v_head_dim, arch.kv_lora_rank)
    assert specs["output.weight"].shape == (arch.vocab_size, h)
    assert f"blk.{layers}.attn_norm.weight" not in specs


def test_tiny_mla_moe_gguf_has_deepseek2_keys_types_and_depth_label(tmp_path):
    path = modelgen.write_gguf(TINY_MLA, tmp_path / "mla.gguf", "Q4_0", layers=2, mla=TINY_MLA_DETAILS,
                               context_length=4096, name="tiny-mla")
    r = GGUFReader(path)
    want = {
        "block_count": 2, "leading_dense_block_count": 1, "expert_count": 8, "expert_used_count": 2,
        "expert_shared_count": 1, "expert_feed_forward_length": 64, "feed_forward_length": 128,
        "attention.q_lora_rank": 64, "attention.kv_lora_rank": 64, "attention.key_length": 96,
        "attention.value_length": 64, "attention.key_length_mla": 64, "attention.value_length_mla": 32,
        "attention.head_count_kv": 1, "rope.dimension_count": 32, "expert_gating_func": 1,
    }  # fmt: skip
    assert {k: _field(r, f"deepseek2.{k}") for k in want} == want
    assert _field(r, "general.architecture") == "deepseek2"
    assert _field(r, "general.name").endswith("reduced depth 2 of 3 layers)")
    assert _field(r, "general.description").startswith("reduced depth 2 of 3 layers, the first 1 with a")
    assert modelgen.model_depth(path) == modelgen.Depth(layers=2, full=3, dense_layers=1)
    t = {x.name: x for x in r.tensors}
    assert list(t["blk.1.ffn_gate_exps.weight"].shape) == [256, 64, 8]
    assert list(t["blk.0.attn_k_b.weight"].shape) == [32, 64, 4]
    assert t["blk.1.ffn_gate_inp.weight"].tensor_type == GGMLQuantizationType.F32
    assert t["blk.0.attn_kv_a_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert t["blk.1.ffn_down_exps.weight"].tensor_type == GGMLQuantizationType.Q4_0
    assert "blk.0.ffn_gate_exps.weight" not in t and "blk.0.ffn_gate.weight" in t
    assert sum(int(x.n_elements) for x in r.tensors) == modelgen.param_count(TINY_MLA, 2, TINY_MLA_DETAILS)


@pytest.mark.parametrize("quant", ["Q4_0", "Q8_0"])
def test_random_codes_are_seeded_noise_of_the_weight_std(tmp_path, quant):
    a = modelgen.write_gguf(TINY_MLA, tmp_path / "a.gguf", quant, seed=0, mla=TINY_MLA_DETAILS)
    b = modelgen.write_gguf(TINY_MLA, tmp_path / "b.gguf", quant, seed=0, mla=TINY_MLA_DETAILS)
    c = modelgen.write_gguf(TINY_MLA, tmp_path / "c.gguf", quant, seed=1, mla=TINY_MLA_DETAILS)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    t = next(x for x in GGUFReader(a).tensors if x.name == "blk.2.ffn_up_exps.weight")
    w = quants.dequantize(t.data, t.tensor_type)
    assert w.shape == (8, 64, 256)
    assert abs(float(w.std()) - modelgen.WEIGHT_STD) < 0.001 and abs(float(w.mean())) < 0.002
    assert len(np.unique(w)) > 8  # codes, not a constant


def test_mistral4_layout_fuses_gate_and_up_experts(tmp_path):
    mla = dataclasses.replace(TINY_MLA_DETAILS, gguf_arch="mistral4", fused_gate_up=True, dense_layers=0)
    r = GGUFReader(modelgen.write_gguf(TINY_MLA, tmp_path / "m4.gguf", "F16", mla=mla))
    names = {x.name: x for x in r.tensors}
    assert _field(r, "general.architecture") == "mistral4"
    assert list(names["blk.0.ffn_gate_up_exps.weight"].shape) == [256, 128, 8]
    assert "blk.0.ffn_gate_exps.weight" not in names and "general.description" not in r.fields


def test_make_model_writes_mla_moe_at_the_default_reduced_depth(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(modelgen, "write_gguf", lambda _arch, out, *_a, **kw: calls.append((out, kw)) or out)
    path = modelgen.make_model("mistral-large-3", "Q4_0", cache=tmp_path)
    assert path.name.startswith("mistral-large-3-2of61layers-Q4_0-")
    assert calls[0][1]["layers"] == modelgen.DEFAULT_REDUCED_LAYERS == 2
    assert calls[0][1]["mla"] == modelgen.mla_moe_details(LARGE3)
    deeper = modelgen.make_model("mistral-large-3", "Q4_0", cache=tmp_path, layers=3)
    assert deeper.name.startswith("mistral-large-3-3of61layers-Q4_0-") and deeper != path
    assert modelgen.make_model("tiny-random", "Q8_0", cache=tmp_path).name.startswith("tiny-random-Q8_0-")


def test_scale_to_full_depth_recovers_a_linear_cost():
    fixed, per_layer = 0.010, 0.002
    measured = [(n, 1 / (fixed + per_layer * n)) for n in (1, 2, 4)]
    s = modelgen.scale_to_full_depth(measured, 36)
    assert s.fixed_s == pytest.approx(fixed) and s.per_layer_s == pytest.approx(per_layer)
    assert s.tokens_per_s == pytest.approx(1 / (fixed + per_layer * 36)) and not s.lower_bound
    assert "36 layers" in s.formula


def test_scale_to_full_depth_with_one_depth_is_a_lower_bound():
    s = modelgen.scale_to_full_depth([(2, 10.0)], 36)  # 0.1 s for 2 layers, all of it taken as per-layer
    assert s.lower_bound and s.fixed_s == 0 and s.tokens_per_s == pytest.approx(10.0 * 2 / 36)
    true_rate = 1 / (0.06 + 0.02 * 36)  # any split of 0.1 s with a fixed part is faster at full depth
    assert s.tokens_per_s < true_rate


def test_scale_to_full_depth_refuses_noise_and_nonsense():
    with pytest.raises(ValueError, match="does not grow with depth"):
        modelgen.scale_to_full_depth([(1, 10.0), (2, 11.0)], 36)
    with pytest.raises(ValueError):
        modelgen.scale_to_full_depth([(0, 10.0)], 36)
    # Noise that puts the intercept below zero: the line goes through the origin instead.
    s = modelgen.scale_to_full_depth([(1, 1 / 0.009), (2, 1 / 0.020)], 10)
    assert s.fixed_s == 0 and s.per_layer_s == pytest.approx((0.009 + 2 * 0.020) / 5)


def _generate(bin_dir, gguf_path, log) -> tuple[dict, dict, dict]:
    """Load the GGUF in llama-server and generate 4 tokens: the completion, /v1/models' meta, print_info."""
    port = free_port()
    # No repacking: the CPU backend would otherwise copy Q4_0 weights into a second layout, doubling memory.
    argv = [str(bin_dir / "llama-server"), "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(port),
            "-c", "256", "-np", "1", "-t", "2", "--no-repack", "-lv", "4"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + LLAMACPP_MOE_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"llama-server not up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        body = {"prompt": "The weather in Paris", "n_predict": 4, "ignore_eos": True, "temperature": 0}
        done = httpx.post(f"{base}/completion", json=body, timeout=LLAMACPP_MOE_TIMEOUT_S).json()
        meta = httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["meta"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    info = dict(re.findall(r"print_info: (\w+)\s+= (\S+)", log.read_text()))
    return done, meta, info


def test_tiny_mla_moe_runs_in_llamacpp(llamacpp_bin, tmp_path):
    path = modelgen.write_gguf(TINY_MLA, tmp_path / "mla.gguf", "Q8_0", mla=TINY_MLA_DETAILS, name="tiny-mla")
    done, meta, info = _generate(llamacpp_bin, path, tmp_path / "server.log")
    assert done["tokens_predicted"] == 4 and done["content"]
    assert meta["n_params"] == modelgen.param_count(TINY_MLA, mla=TINY_MLA_DETAILS)
    got = (info["arch"], info["n_expert"], info["n_layer_dense_lead"], info["n_lora_q"])
    assert got == ("deepseek2", "8", "1", "64")


@pytest.mark.parametrize(
    ("model_id", "layers"),
    [
        ("mistral-small-4", 1),  # 2.45 GB at Q4_0, written in ~15 s here
        # 7.9 GB at Q4_0: one MoE layer of Large 3 holds 11.3 G expert weights (6.3 GB at 4.5 bits), and the
        # smallest real-shaped file needs it plus a dense layer; slow for its size, ~1 min here all told.
        pytest.param("mistral-large-3", 2, marks=pytest.mark.slow),
    ],
)
def test_reduced_depth_mla_moe_runs_in_llamacpp_with_the_catalog_shapes(
    llamacpp_bin, tmp_path, model_id, layers
):
    model = get_model(model_id)
    arch, mla = model.architecture, modelgen.mla_moe_details(model.architecture)
    depth = modelgen.plan_depth(arch, layers)
    path = modelgen.make_model(model_id, "Q4_0", tmp_path / f"{model_id}.gguf", layers=layers)
    try:
        r = GGUFReader(path)
        a = mla.gguf_arch
        assert _field(r, "general.architecture") == a
        assert f"reduced depth {layers} of {arch.layers} layers" in _field(r, "general.name")
        assert (_field(r, f"{a}.block_count"), _field(r, f"{a}.leading_dense_block_count")) == (
            layers, depth.dense_layers
        )
        assert (_field(r, f"{a}.expert_count"), _field(r, f"{a}.expert_used_count")) == (
            arch.experts, arch.experts_per_token
        )
        assert _field(r, f"{a}.expert_shared_count") == arch.shared_experts
        assert _field(r, f"{a}.expert_feed_forward_length") == arch.intermediate_size
        assert _field(r, f"{a}.attention.kv_lora_rank") == arch.kv_lora_rank
        assert _field(r, f"{a}.rope.dimension_count") == arch.qk_rope_head_dim
        assert (_field(r, f"{a}.embedding_length"), _field(r, f"{a}.attention.head_count")) == (
            arch.hidden_size, arch.heads
        )
        tensors = {t.name: t for t in r.tensors}
        specs = modelgen.tensor_specs(arch, layers)
        written = {n: list(t.shape) for n, t in tensors.items()}
        assert written == {s.gguf_name: _ggml_shape(s.shape) for s in specs}
        down = tensors[f"blk.{depth.dense_layers}.ffn_down_exps.weight"]
        assert list(down.shape) == [arch.intermediate_size, arch.hidden_size, arch.experts]
        assert down.tensor_type == GGMLQuantizationType.Q4_0
        del r, tensors, down  # the reader maps the whole file

        done, meta, info = _generate(llamacpp_bin, path, tmp_path / "server.log")
        assert done["tokens_predicted"] == 4 and done["content"]
        assert meta["n_params"] == modelgen.param_count(arch, layers) and meta["ftype"] == "Q4_0"
        assert (info["arch"], info["n_layer"]) == (a, str(layers))
        assert info["n_layer_dense_lead"] == str(depth.dense_layers)
        assert (info["n_expert"], info["n_expert_used"], info["n_expert_shared"]) == (
            str(arch.experts), str(arch.experts_per_token), str(arch.shared_experts)
        )
        assert (info["n_lora_q"], info["n_lora_kv"], info["n_ff_exp"]) == (
            str(mla.q_lora_rank), str(arch.kv_lora_rank), str(arch.intermediate_size)
        )
    finally:
        path.unlink(missing_ok=True)  # pytest keeps the last runs' tmp folders: not gigabytes of them


def test_llama_quantize_is_one_that_starts_here(tmp_path):
    """A CUDA build on a machine without the GPU driver cannot start (libcuda.so.1 missing): the newest build
    that loads is taken instead of the newest build."""
    old, new = tmp_path / "llama.cpp" / "0.1-cpu" / "bin", tmp_path / "llama.cpp" / "0.2-cuda-90" / "bin"
    for folder, script in ((old, "#!/bin/sh\necho usage\nexit 1\n"),
                           (new, "#!/bin/sh\necho 'error while loading shared libraries: libcuda.so.1' >&2\n"
                                 "exit 127\n")):
        folder.mkdir(parents=True)
        (folder / "llama-quantize").write_text(script)
        (folder / "llama-quantize").chmod(0o755)
        time.sleep(0.01)
    assert modelgen.find_llama_quantize(tmp_path) == old / "llama-quantize"
