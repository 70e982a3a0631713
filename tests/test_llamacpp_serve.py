"""A real llama-server (our cached CPU build) serving the generated tiny-random GGUF with the flags a deployment uses.

The weights are random, so the model never *chooses* to call a tool or to skip its optional [THINK] block: the
tool tests bias the [TOOL_CALLS] token and the JSON test bans [THINK] through `logit_bias`. What is under test is
llama.cpp's handling of our GGUF and template: the Ministral 3 grammar, the tool-call parser, JSON-schema output.
"""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import jsonschema
import pytest
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType
from openai import OpenAI

from llamacpp_fixtures import (  # noqa: F401  (fixtures)
    CACHE,
    LLAMACPP_KEY,
    LlamaServer,
    llama_server,
    llamacpp_bin,
    run_build,
    tiny_gguf,
)
from mistral_lab import modelgen
from mistral_lab.catalog import get_model
from mistral_lab.engines import llamacpp_build as lb
from mistral_lab.errors import MistralLabError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

TOOL_CALLS_ID = modelgen.CONTROL_TOKENS.index("[TOOL_CALLS]")
THINK_ID = modelgen.CONTROL_TOKENS.index("[THINK]")
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather", "parameters": WEATHER_PARAMS},
    }
]
# Bounded strings and numbers: random weights would otherwise write a string until the context ends.
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "population": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(llama_server: LlamaServer) -> OpenAI:  # noqa: F811
    return OpenAI(base_url=llama_server.v1, api_key=llama_server.api_key, max_retries=0, timeout=60)


def _chat(client: OpenAI, **kw):
    return client.chat.completions.create(model="tiny-random", **kw)


# ---- the build -----------------------------------------------------------------------------------------------


def test_second_build_is_a_cache_hit_with_the_vendored_commit(llamacpp_bin):  # noqa: F811
    start = time.monotonic()
    r = run_build()
    assert r.returncode == 0, r.stderr
    assert lb.was_cached(r.stdout) and time.monotonic() - start < 30
    assert lb.parse_bin_dir(r.stdout) == str(llamacpp_bin)
    record = json.loads((llamacpp_bin.parent / "build.json").read_text())
    assert record["llama_cpp_commit"] == "0c1e57098"  # read from the sdist's CHANGELOG, not hard-coded
    assert (record["source"], record["version"], record["backend"], record["arch"]) == (
        "pypi",
        lb.DEFAULT_VERSION,
        "cpu",
        "native",
    )
    assert {"-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"} <= set(
        record["cmake_flags"]
    )
    assert set(lb.DEFAULT_TARGETS) <= set(record["targets"]) and record["build_seconds"] > 0
    version = subprocess.run(
        [str(llamacpp_bin / "llama-server"), "--version"], capture_output=True, text=True
    )
    assert "0c1e57098" in version.stdout + version.stderr
    assert (CACHE / "llama.cpp" / "src" / f"llama_cpp_python-{lb.DEFAULT_VERSION}.tar.gz").is_file()
    assert llamacpp_bin.parent.name == LLAMACPP_KEY.dirname


def test_llama_bench_reports_prompt_and_generation_speed(llamacpp_bin, tiny_gguf):  # noqa: F811
    argv = [
        str(llamacpp_bin / "llama-bench"),
        "-m",
        str(tiny_gguf),
        "-p",
        "32",
        "-n",
        "16",
        "-o",
        "json",
        "-t",
        "2",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {(row["n_prompt"], row["n_gen"]) for row in rows} == {(32, 0), (0, 16)}
    assert all(row["avg_ts"] > 0 and row["model_n_params"] == 1_705_216 for row in rows)
    assert rows[0]["build_commit"] == "0c1e57098" and rows[0]["model_type"].startswith("mistral3")


def test_q4_k_m_is_made_with_the_built_llama_quantize(llamacpp_bin, tmp_path):  # noqa: F811
    arch = get_model("tiny-random").architecture
    out = modelgen.write_gguf(
        arch, tmp_path / "tiny-q4km.gguf", "Q4_K_M", llama_quantize=llamacpp_bin / "llama-quantize"
    )
    reader = GGUFReader(out)
    assert reader.get_field("general.file_type").contents() == LlamaFileType.MOSTLY_Q4_K_M
    types = {t.tensor_type for t in reader.tensors}
    assert GGMLQuantizationType.Q4_K in types
    assert out.stat().st_size < 0.5 * modelgen.write_gguf(arch, tmp_path / "f16.gguf", "F16").stat().st_size
    assert not list(tmp_path.glob(".*")), "the F16 intermediate and the partial file are gone"
    bench = [str(llamacpp_bin / "llama-bench"), "-m", str(out), "-p", "8", "-n", "4", "-r", "1", "-o", "json"]
    r = subprocess.run(bench, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Q4_K" in json.loads(r.stdout)[0]["model_type"], r.stderr


def test_unknown_quant_is_refused_by_llama_quantize_and_leaves_nothing(llamacpp_bin, tmp_path):  # noqa: F811
    arch = get_model("tiny-random").architecture
    with pytest.raises(MistralLabError) as e:
        modelgen.write_gguf(arch, tmp_path / "x.gguf", "Q9_Z", llama_quantize=llamacpp_bin / "llama-quantize")
    assert e.value.field == "quant" and "Q4_K_M" in e.value.fix
    assert not list(tmp_path.iterdir())


# ---- the server ----------------------------------------------------------------------------------------------


def test_health_is_open_and_the_api_needs_the_key(llama_server):  # noqa: F811
    assert httpx.get(f"{llama_server.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{llama_server.v1}/models").status_code == 401
    wrong = httpx.get(f"{llama_server.v1}/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.get(f"{llama_server.v1}/models", headers={"Authorization": f"Bearer {llama_server.api_key}"})
    assert ok.status_code == 200
    model = ok.json()["data"][0]
    assert model["id"] == "tiny-random" and model["meta"]["n_vocab"] == 1024


def test_server_uses_our_template_and_metrics_need_the_key(llama_server):  # noqa: F811
    auth = {"Authorization": f"Bearer {llama_server.api_key}"}
    props = httpx.get(f"{llama_server.base_url}/props", headers=auth).json()
    assert props["chat_template"].strip() == modelgen.CHAT_TEMPLATE.strip()
    assert httpx.get(f"{llama_server.base_url}/metrics").status_code == 401
    metrics = httpx.get(f"{llama_server.base_url}/metrics", headers=auth)
    assert metrics.status_code == 200 and "llamacpp:prompt_tokens_total" in metrics.text


def test_chat_completion_answers(client):
    r = _chat(
        client,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=16,
        temperature=0,
        seed=1,
    )
    assert r.model == "tiny-random" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content


def test_streaming_arrives_in_chunks_and_matches_the_full_reply(client):
    kw = {
        "messages": [{"role": "user", "content": "Tell me a story"}],
        "max_tokens": 12,
        "temperature": 0,
        "seed": 3,
    }
    full = _chat(client, **kw).choices[0].message.content
    chunks = list(_chat(client, stream=True, stream_options={"include_usage": True}, **kw))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2
    assert "".join(texts) == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_json_schema_reply_parses_and_validates(client):
    r = _chat(
        client,
        messages=[{"role": "user", "content": "Describe Paris as JSON"}],
        max_tokens=300,
        seed=1,
        logit_bias={str(THINK_ID): -100},
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA},
        },
    )
    assert r.choices[0].finish_reason == "stop"
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, CITY_SCHEMA)


def test_required_tool_call_is_parsed_into_tool_calls(client):
    r = _chat(
        client,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        max_tokens=200,
        seed=1,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        logit_bias={str(TOOL_CALLS_ID): 20},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def test_streamed_tool_call_reassembles(client):
    stream = _chat(
        client,
        messages=[{"role": "user", "content": "Weather in Nice?"}],
        max_tokens=200,
        seed=2,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        logit_bias={str(TOOL_CALLS_ID): 20},
        stream=True,
    )
    name, args, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    jsonschema.validate(json.loads(args), WEATHER_PARAMS)


def test_tool_results_render_through_the_template(client):
    messages = [
        {"role": "system", "content": "You check the weather."},
        {"role": "user", "content": "Weather in Lyon?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call0",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": json.dumps({"city": "Lyon", "unit": "celsius"}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call0", "content": json.dumps({"temperature": 21})},
    ]
    r = _chat(client, messages=messages, tools=TOOLS, max_tokens=8, temperature=0)
    # The prompt holds the tool list, the call and its result: far more tokens than the bare question.
    assert r.usage.prompt_tokens > 100 and r.choices[0].finish_reason in ("stop", "length", "tool_calls")
