"""Random-weight models: the tokenizer, the chat template, the GGUF and HF files, read back with their own readers."""

from __future__ import annotations

import json
import subprocess
import sys

import jinja2
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType, TokenType, quants
from safetensors.numpy import load_file
from tokenizers import Tokenizer

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


def test_make_model_refuses_moe_and_mla_with_a_fix():
    with pytest.raises(BadInput) as e:
        modelgen.make_model("mistral-small-4", "F16", "/nonexistent/x.gguf")
    assert e.value.fix and "dense" in e.value.fix


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
