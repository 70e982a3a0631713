"""Benchmark pieces that need no server: workloads, metrics (the chunk/token rule, repeats and their spread), the
server as witness (a miscounted run caught), the knee of a sweep, roofline and prediction arithmetic, parsers, the
load generator's portability, its SSE accounting, its worker processes and its time bound."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import selectors
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mistral_lab.bench import loadgen, metrics, native, peers, roofline, saturation, witness, workloads
from mistral_lab.bench.runner import sweep_levels
from mistral_lab.errors import BadInput
from mistral_lab.planning import PlanRequest, predict, resolve

LOADGEN = Path(loadgen.__file__)


def test_the_load_generator_is_python_3_8_and_standard_library_only():
    tree = ast.parse(LOADGEN.read_text(), feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported
    assert "mistral_lab" not in LOADGEN.read_text().split('"""', 2)[2]  # uploaded alone: no package imports


def test_ttft_counts_the_first_chunk_with_text_not_the_role_delta():
    rec = {"content_times": [], "usage": None, "timings": None, "finish_reason": None, "error": None}
    loadgen._event({"choices": [{"delta": {"role": "assistant", "content": None}}]}, 1.0, rec)
    loadgen._event({"choices": [{"delta": {"content": ""}}]}, 1.5, rec)
    assert rec["content_times"] == []
    loadgen._event({"choices": [{"delta": {"reasoning_content": "hm"}}]}, 2.0, rec)
    loadgen._event({"choices": [{"delta": {"content": "Hi"}, "finish_reason": "length"}]}, 2.5, rec)
    loadgen._event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, 2.6, rec)
    assert rec["content_times"] == [2.0, 2.5]
    assert rec["finish_reason"] == "length" and rec["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("event", [
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": " dan"}}], "object": "chunk"},  # llama.cpp
    {"id": "x", "choices": [{"index": 0, "delta": {"content": "\"q\""}, "finish_reason": None}]},  # escaped quote
    {"choices": [{"delta": {"reasoning_content": "hm"}}]},
    {"choices": [{"delta": {"role": "assistant", "content": None}}]},
    {"choices": [{"delta": {"content": ""}}]},
    {"choices": [{"delta": {"content": "end"}, "finish_reason": "length"}]},  # vLLM: last token with its reason
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]},
])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_the_byte_level_fast_path_agrees_with_the_full_parse(event, separators):
    # The fast path may only take events the full parse would count as text and nothing more; anything else
    # (a finish reason, usage, a server that writes spaces) must fall through to the full parse.
    payload = json.dumps(event, separators=separators).encode()
    full = {"content_times": [], "usage": None, "timings": None, "finish_reason": None, "error": None}
    loadgen._event(event, 1.0, full)
    if loadgen._text_only(payload):
        assert full["content_times"] == [1.0] and full["finish_reason"] is None and full["usage"] is None
    # Through the response parser, a chunked body of that event alone gives the same record either way.
    rec = loadgen._record()
    done = _Future()
    r = loadgen.Response(rec, done)
    body = b"data: " + payload + b"\n\ndata: [DONE]\n\n"
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0.5)
    r.feed(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), 1.0)
    assert done.value is True and rec["content_times"] == full["content_times"]
    assert rec["finish_reason"] == full["finish_reason"] and rec["usage"] == full["usage"]


class _Future:
    """Stands in for the asyncio future a Response resolves (no event loop needed to parse bytes)."""

    value = None

    def done(self) -> bool:
        return self.value is not None

    def set_result(self, value: bool) -> None:
        self.value = value

    def set_exception(self, e: BaseException) -> None:
        raise e


def test_a_response_split_at_every_byte_parses_the_same():
    # Chunk framing, event lines and headers cut anywhere by the network: the parser keeps what it has not used.
    events = [{"choices": [{"delta": {"content": w}}]} for w in ("a", "b", "c")]
    events.append({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for k in range(0, len(body), 7):  # several chunks of 7 bytes each, cutting events apart
        piece = body[k:k + 7]
        raw += b"%x\r\n%s\r\n" % (len(piece), piece)
    raw += b"0\r\n\r\n"
    rec, done = loadgen._record(), _Future()
    r = loadgen.Response(rec, done)
    for i in range(len(raw)):
        r.feed(raw[i:i + 1], float(i))
    assert done.value is True and len(rec["content_times"]) == 3 and rec["usage"]["completion_tokens"] == 3


def test_synthetic_prompts_differ_per_request_but_keep_their_words():
    wl = {"kind": "synthetic", "prefix": "Text:", "words": ["alpha", "beta", "gamma", "delta", "eps"] * 4,
          "max_tokens": 8}
    import random

    texts = {loadgen.build_messages(wl, random.Random(i), str(i))[0]["content"] for i in range(10)}
    assert len(texts) == 10
    assert all(t.startswith("Text: ") and sorted(t[5:].split()) == sorted(wl["words"]) for t in texts)
    payload = loadgen.build_payload({"model": "m", "extra_body": {"ignore_eos": True}}, wl, random.Random(0), "t")
    assert payload["stream"] and payload["stream_options"] == {"include_usage": True}
    assert payload["max_tokens"] == 8 and payload["ignore_eos"] is True


def test_workloads_scale_to_the_context_and_say_so():
    wls = workloads.resolve("standard", 4096, vision=False)
    by = {w.name: w for w in wls}
    assert by["128/128"].input_tokens == 128 and by["1024/256"].input_tokens == 1024
    room = 4096 - workloads.margin(4096)
    assert by["4096/512"].input_tokens + 512 == room and "scaled" in by["4096/512"].note
    assert by["long"].input_tokens + by["long"].output_tokens == room and by["long"].label == "long (3776/256)"
    assert by["chat"].kind == "chat" and by["chat"].output_tokens == workloads.DEFAULT_CHAT_OUTPUT
    big = {w.name: w for w in workloads.resolve("4096/512,long,vision", 262144, vision=True)}
    assert big["4096/512"].note is None and big["long"].input_tokens > 250000 and big["vision"].kind == "vision"
    assert workloads.skipped_vision("128/128,vision", vision=False)
    with pytest.raises(BadInput) as e:
        workloads.parse("fast")
    assert e.value.field == "workload" and "1024/256" in e.value.fix


def test_calibration_reaches_the_exact_count_of_an_additive_tokenizer():
    # A stand-in tokenizer with the property calibration relies on: each " word" is its own pre-token.
    def count(text: str) -> int:
        head, *words = text.split(" ")
        return 3 + len(head) + sum(1 + (len(w) > 5) for w in words)  # 3 = a chat template's share

    for target in (40, 128, 1000):
        cal = workloads.calibrate(target, count, seed=1)
        assert cal.prompt_tokens == target == count(workloads.text_of(cal.words))
    assert workloads.calibrate(128, count, seed=1).words == workloads.calibrate(128, count, seed=1).words


def test_png_is_a_valid_image():
    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(workloads.png(64, 48, seed=3)), format="png")
    assert img.shape == (48, 64, 3) and img.std() > 0.05
    assert workloads.image_data_url().startswith("data:image/png;base64,iVBOR")


def _rec(i, ttft, e2e, out=10, err=None, warm=False, prompt=100):
    return {"type": "request", "point": 0, "i": i, "warmup": warm, "error": err, "ttft_s": ttft, "e2e_s": e2e,
            "completion_tokens": None if err else out, "prompt_tokens": None if err else prompt, "max_tokens": out,
            "itl_s": [] if err else [(e2e - ttft) / (out - 1)] * (out - 1), "chunks": 0 if err else out,
            "timings": None if err else {"predicted_n": out, "predicted_ms": (e2e - ttft) * 1000}}


def test_point_figures_from_records():
    recs = [_rec(i, 0.1 * (i + 1), 1.0 + 0.1 * i) for i in range(10)]
    recs += [_rec(10, None, None, err="HTTP 500: boom"), _rec(11, 5.0, 9.0, warm=True)]
    head = {"type": "point", "point": 0, "workload": "128/128", "concurrency": 2, "duration_s": 4.0, "cpu_s": 0.01}
    slo = metrics.SLO(ttft_s=0.55)
    p = metrics.summarize(head, recs, slo=slo, hourly_usd=3.6)
    assert (p.requests, p.errors) == (11, 1) and p.error_samples == ["HTTP 500: boom"]
    assert p.output_tokens_per_s == pytest.approx(100 / 4.0) and p.request_per_s == pytest.approx(10 / 4.0)
    assert p.total_tokens_per_s == pytest.approx(1100 / 4.0)
    assert p.ttft_s.p50 <= p.ttft_s.p90 <= p.ttft_s.p99 <= p.ttft_s.max
    assert p.goodput == pytest.approx(5 / 4.0) and p.goodput_share == pytest.approx(5 / 11)
    # $3.60/hour at 25 output tokens/s: 3.6 / 3600 / 25 * 1e6 = $40 per million.
    assert p.usd_per_mtok == pytest.approx(40.0)
    assert p.forced_output_ok == 1.0
    assert p.decode_tokens_per_s == pytest.approx(p.server_decode_tokens_per_s)  # same time base by construction
    assert p.tpot_s.p50 == pytest.approx(p.itl_s.p50)
    assert p.client_cpu_ms_per_1k_tokens == pytest.approx(10 / 100 * 1000)
    assert p.client_cpu_share == pytest.approx(0.01 / 4.0)


def test_summarize_all_groups_by_point_and_skips_the_run_level_line():
    docs = [{"type": "point", "point": 0, "workload": "a", "concurrency": 1, "duration_s": 1.0},
            _rec(0, 0.1, 0.5), {**_rec(0, 0.1, 0.5), "point": 1},
            {"type": "point", "point": 1, "workload": "a", "concurrency": 2, "duration_s": 1.0},
            {"type": "point", "point": -1, "aborted": "limit"}]
    pts = metrics.summarize_all(docs)
    assert [(p.index, p.concurrency, p.requests) for p in pts] == [(0, 1, 1), (1, 2, 1)]


def test_sweep_levels_go_up_to_the_servers_slots():
    assert sweep_levels(1) == [1]
    assert sweep_levels(4) == [1, 2, 4]
    assert sweep_levels(6) == [1, 2, 4, 6]


def test_roofline_matches_the_hand_computed_ceiling():
    # Ministral 3 8B at Q4_K_M on one H100 SXM (3350 GB/s): research/anchors.md §3 puts 8B Q4_K_M at about 4.9 GB
    # and the ceiling near 680 tokens/s before the KV cache.
    plan = resolve(PlanRequest(model="ministral-8b", engine="llamacpp", quant="Q4_K_M", gpu="h100",
                               target="digitalocean", context=32768))
    from mistral_lab.catalog import get_model

    model = get_model("ministral-8b")
    line0 = roofline.decode_roofline(model, plan, 0)
    assert line0 is not None and line0.bandwidth_gbs == 3350
    assert 4.0 < line0.weights_gb < 5.5 and 600 < line0.max_tokens_per_s < 850
    line = roofline.decode_roofline(model, plan, 32768)
    kv = 2 * 34 * 8 * 128 * 2 * 32768 / 1e9  # 2 x layers x KV heads x head dim x bf16 x tokens
    assert line.kv_gb == pytest.approx(kv) and line.max_tokens_per_s == pytest.approx(3350 / (line0.weights_gb + kv))
    assert line.achieved_pct(line.max_tokens_per_s / 2) == pytest.approx(50.0)
    cpu_plan = plan.model_copy(update={"gpu": "cpu", "gpu_name": "CPU (25 GB RAM)"})
    assert roofline.decode_roofline(model, cpu_plan, 100) is None
    given = roofline.decode_roofline(model, cpu_plan, 100, bandwidth_gbs=50.0)
    assert given.bandwidth_source == "given" and given.max_tokens_per_s < 50 / line0.weights_gb


def test_llama_bench_json_is_parsed():
    out = json.dumps([
        {"n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ts": 1000.5, "stddev_ts": 10.0, "build_commit": "abc"},
        {"n_prompt": 0, "n_gen": 128, "n_depth": 4096, "avg_ts": 250.0, "stddev_ts": 2.5, "build_commit": "abc"},
    ])
    figs = native.parse_llama_bench("ggml log noise\n" + out)
    assert [(f.test, f.tokens_per_s) for f in figs] == [("pp512", 1000.5), ("tg128 @ d4096", 250.0)]
    argv = native.llama_bench_argv("/b/llama-bench", "/m.gguf", gpu=True, depth=4096)
    assert argv[argv.index("-ngl") + 1] == "999" and argv[argv.index("-d") + 1] == "4096" and "json" in argv


@contextlib.contextmanager
def _stub_server(handler: type) -> Iterator[str]:
    """A threaded stand-in server on loopback, for the load generator's own behaviour; yields its base URL."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_loadgen(tmp_path: Path, spec: dict) -> list[dict]:
    out = tmp_path / "records.jsonl"
    assert loadgen.run(spec, str(out), None) is None
    return [json.loads(line) for line in out.read_text().splitlines()]


class _OneRequestPerConnection(socketserver.BaseRequestHandler):
    """Answers the first request on a connection with a short SSE stream, then closes the connection when the next
    request arrives, without answering it and without having said `Connection: close` (HTTP/1.1 allows it)."""

    def handle(self) -> None:
        f = self.request.makefile("rb")
        for n in range(2):
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line or n == 1:
                return
            f.read(length)
            events = [{"choices": [{"delta": {"content": w}}]} for w in ("a", "b", "c")]
            events.append({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
            body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


def test_a_kept_alive_connection_closed_under_us_is_retried_on_a_new_one(tmp_path):
    with _stub_server(_OneRequestPerConnection) as url:
        docs = _run_loadgen(tmp_path, {
            "model": "m", "base_url": url + "/v1", "points": [
                {"index": 0, "workload": "w", "concurrency": 1, "max_requests": 12, "max_duration_s": 30,
                 "warmup": 4}],
            "workloads": {"w": {"kind": "chat", "prompts": ["hi"], "max_tokens": 3}}, "max_total_s": 60})
    recs = [d for d in docs if d["type"] == "request" and not d["warmup"]]
    # The warm-up leaves four idle connections, all of which the server drops on their next request: a retry that
    # took another one from the pool would fail again.
    assert len(recs) == 12 and [r["error"] for r in recs] == [None] * 12
    assert all(r["completion_tokens"] == 3 and r["chunks"] == 3 for r in recs)


@pytest.mark.parametrize(("argv", "field", "fix"), [
    (["bench", "some-name", "--concurrency", "1,two"], "--concurrency", "1,2,4,8"),
    (["bench", "some-name", "--rate", "fast"], "--rate", "0.5,1,2"),
    (["bench", "some-name", "--concurrency", "1", "--rate", "1"], "rate", "drop --concurrency or --rate"),
    (["bench", "some-name", "--duration", "0"], "duration_s", "duration_s=60"),
    (["bench", "some-name", "--where", "moon"], "where", "host"),
    (["bench", "some-name", "--repeats", "0"], "repeats", "3 gives a spread"),
    (["bench", "some-name", "--peers", "locust"], "peers", "vllm, guidellm"),
    (["bench", "compare"], "RUN", "bench compare RUN"),
    (["bench", "compare", "no-such-run"], "run", "DEPLOYMENT/RUN-ID"),
])
def test_bad_bench_input_names_the_field_and_the_fix(argv, field, fix, capsys):
    from mistral_lab.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = " ".join(capsys.readouterr().err.split())
    assert e.value.code != 0 and f"error {field}:" in err and fix in err, err


def test_requests_carry_no_sampling_seed():
    import random

    wl = {"kind": "chat", "prompts": ["hi"], "max_tokens": 4}
    payload = loadgen.build_payload({"model": "m", "seed": 7}, wl, random.Random(0), "t")
    assert "seed" not in payload and payload["messages"][0]["content"].endswith("hi")


def _saved_run(deployment: str, run_id: str, points: list[metrics.Point]):
    from mistral_lab.bench import results

    meta = results.RunMeta(
        run_id=run_id, deployment=deployment, model=None, served_model="m", engine="llamacpp", context=4096,
        where="client", where_detail="here", base_url="http://127.0.0.1:1/v1", seed=0, mode="concurrency",
        loads=[1.0], workloads=[results.WorkloadInfo(name="long", label="long (3776/256)", kind="synthetic",
                                                     input_tokens=3776, output_tokens=256)],
        requests_per_point=None, duration_s_per_point=1.0, warmup=None, slo={}, forced_output=True, hourly_usd=None,
        started_at="2026-01-01T00:00:00+00:00")
    run = results.Run(meta=meta, points=points)
    results.save(run, results.root() / deployment / run_id)
    return run


def test_a_run_is_compared_with_the_runs_named_or_else_its_deployments_latest(tmp_path, monkeypatch):
    from mistral_lab import bench

    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path))
    point = metrics.summarize({"point": 0, "workload": "long", "concurrency": 1, "duration_s": 1.0}, [])
    old = [_saved_run("d", f"2026010{i}-000000-client", [point]) for i in range(1, 4)]
    other = _saved_run("e", "20260101-000000-client", [point])
    run = _saved_run("d", "20260109-000000-client", [point])
    assert [r.ref for r in bench.compared_with(run)] == [r.ref for r in old[-2:]]
    assert [r.ref for r in bench.compared_with(run, latest=5)] == [r.ref for r in old]
    assert [r.ref for r in bench.compared_with(run, [other.ref])] == [other.ref]
    assert run.workload_label("long") == "long (3776/256)" and run.workload_label("chat") == "chat"


def test_points_order_by_their_load_level():
    def at(**load):
        return metrics.summarize({"point": 0, "workload": "w", "duration_s": 1.0, **load}, [])

    assert [p.level for p in (at(concurrency=4), at(rate=0.5), at())] == [4, 0.5, 0.0]


# ---- the chunk/token rule --------------------------------------------------------------------------------------


def _stream(i: int, tokens: int, chunks: int, gap: float = 0.01, point: int = 0) -> dict:
    """A completed request of `tokens` output tokens streamed in `chunks` chunks `gap` seconds apart."""
    return {"type": "request", "point": point, "i": i, "warmup": False, "error": None, "ttft_s": 0.1,
            "e2e_s": 0.1 + gap * (chunks - 1), "completion_tokens": tokens, "prompt_tokens": 100,
            "max_tokens": tokens, "itl_s": [gap] * (chunks - 1), "chunks": chunks}


def test_itl_comes_from_streams_with_a_chunk_per_token_and_tpot_otherwise():
    head = {"type": "point", "point": 0, "workload": "w", "concurrency": 1, "duration_s": 10.0}
    # llama.cpp: ~113 chunks per 128 tokens (multi-byte characters merged): 0.88 < 0.9, not per-token gaps.
    merged = metrics.summarize(head, [_stream(i, 128, 113) for i in range(4)])
    assert merged.chunks_per_token == pytest.approx(113 / 128)
    assert merged.itl_s is None and "not measurable" in merged.itl_note and "TPOT" in merged.itl_note
    assert merged.tpot_s is not None and merged.tpot_s.p50 == pytest.approx(0.01 * 112 / 127)
    # One chunk per token: the gaps are token gaps.
    exact = metrics.summarize(head, [_stream(i, 128, 128) for i in range(4)])
    assert exact.chunks_per_token == 1.0 and exact.itl_note is None and exact.itl_s.p50 == pytest.approx(0.01)
    # 0.9 exactly still counts as a token stream.
    edge = metrics.summarize(head, [_stream(i, 100, 90) for i in range(4)])
    assert edge.itl_s is not None
    # Chunks read in bursts (gaps of zero): their gaps time our reads, not the server's tokens.
    bursty = [_stream(i, 64, 64) for i in range(4)]
    for r in bursty:
        r["itl_s"] = [0.0, 0.0, 0.02] * 21
    b = metrics.summarize(head, bursty)
    assert b.itl_s is None and "together" in b.itl_note
    # A client reading every 2 ms cannot resolve 1 ms gaps.
    coarse = metrics.summarize({**head, "read_window_s": 0.002}, [_stream(i, 64, 64, gap=0.001) for i in range(4)])
    assert coarse.itl_s is not None and "read window" in coarse.itl_note


# ---- repeats and their spread ----------------------------------------------------------------------------------


def test_a_level_pools_its_repeats_and_reports_their_spread():
    heads, recs = [], []
    rates = [100.0, 110.0, 90.0]  # output tokens/s of three repeats of one level
    for k, rate in enumerate(rates):
        heads.append({"type": "point", "point": k, "workload": "w", "concurrency": 2, "repeat": k,
                      "duration_s": 100 / rate, "cpu_s": 0.1 * (k + 1)})
        recs += [_stream(10 * k + i, 10, 10, point=k) for i in range(10)]  # 100 tokens per repeat
    heads.append({"type": "point", "point": 3, "workload": "w", "concurrency": 4, "repeat": 0, "duration_s": 1.0})
    recs.append(_stream(99, 10, 10, point=3))
    pts = metrics.summarize_all(heads + recs)
    (two, four) = metrics.levels(pts, recs, heads=heads)
    assert (two.concurrency, two.repeats, two.requests) == (2, 3, 30) and (four.repeats, four.requests) == (1, 1)
    s = two.spread["output_tokens_per_s"]
    assert s.n == 3 and s.mean == pytest.approx(100.0) and s.stdev == pytest.approx(10.0)
    assert (s.min, s.max) == (pytest.approx(90.0), pytest.approx(110.0)) and s.rel == pytest.approx(0.1)
    # The level's own figures pool the requests: 300 tokens over the three spans added up.
    assert two.output_tokens_per_s == pytest.approx(300 / sum(h["duration_s"] for h in heads[:3]))
    assert two.client_cpu_ms_per_1k_tokens == pytest.approx(0.6 / 300 * 1e6)
    assert four.spread["output_tokens_per_s"].stdev == 0.0


# ---- the server as witness -------------------------------------------------------------------------------------

LLAMACPP_METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total {prompt}
llamacpp:prompt_tokens_cached_total {cached}
llamacpp:tokens_predicted_total {predicted}
llamacpp:tokens_predicted_seconds_total {seconds}
llamacpp:requests_processing 0
"""

VLLM_METRICS = """# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen}
vllm:prompt_tokens_total{{engine="0",model_name="m"}} {prompt}
vllm:request_success_total{{engine="0",finished_reason="length",model_name="m"}} {done}
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="m"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="m"}} {done}
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {ttft_sum}
vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {done}
vllm:request_time_per_output_token_seconds_sum{{engine="0",model_name="m"}} {tpot_sum}
vllm:request_time_per_output_token_seconds_count{{engine="0",model_name="m"}} {done}
vllm:num_requests_running{{engine="0",model_name="m"}} 0.0
"""


def test_prometheus_text_is_read_into_summed_series():
    doc = loadgen.parse_metrics(VLLM_METRICS.format(gen=1000, prompt=500, done=8, ttft_sum=0.8, tpot_sum=0.08))
    assert doc["vllm:generation_tokens_total"] == 1000 and doc["vllm:request_success_total"] == 8  # labels summed
    assert doc["vllm:time_to_first_token_seconds_bucket{le=0.1}"] == 8
    assert "vllm:num_requests_running" not in doc  # not a series the witness reads
    llama = loadgen.parse_metrics(LLAMACPP_METRICS.format(prompt=1, cached=2, predicted=3, seconds=0.5))
    assert llama["llamacpp:tokens_predicted_seconds_total"] == 0.5 and llama["llamacpp:prompt_tokens_cached_total"] == 2


def _llama_point(recs: list[dict], predicted: float, prompt: float, seconds: float, cached: float = 0.0) -> dict:
    before = loadgen.parse_metrics(LLAMACPP_METRICS.format(prompt=1000, cached=0, predicted=5000, seconds=10.0))
    after = loadgen.parse_metrics(LLAMACPP_METRICS.format(prompt=1000 + prompt, cached=cached, predicted=5000 + predicted,
                                                          seconds=10.0 + seconds))
    return {"type": "point", "point": 0, "workload": "w", "concurrency": 1, "duration_s": 10.0,
            "server_before": before, "server_after": after}


def test_the_server_cross_check_agrees_with_an_honest_run_and_catches_a_miscounted_one():
    recs = [_stream(i, 128, 128) for i in range(8)]  # 8 x 128 tokens, 127 steps of 10 ms each
    honest = metrics.summarize(_llama_point(recs, predicted=1024, prompt=800, seconds=8 * 1.27), recs)
    w = honest.witness
    assert w is not None and w.engine == "llamacpp" and not w.flagged, w.summary()
    assert {c.quantity: c.gap for c in w.checks} == {"output tokens": 0.0, "prompt tokens": 0.0,
                                                     "decode tok/s per stream": pytest.approx(0.0)}
    # Deliberately miscounted: the server generated tokens for 10 requests, our records hold 8 (a worker's records
    # lost, or warm-up requests inside the window): the witness names the gap.
    short = metrics.summarize(_llama_point(recs, predicted=1280, prompt=1000, seconds=10 * 1.27), recs)
    flagged = {c.quantity for c in short.witness.flagged}
    assert flagged == {"output tokens", "prompt tokens"}
    assert short.witness.checks[0].gap == pytest.approx(-0.2) and "-20.0%" in short.witness.summary()
    # Prompts served from the prefix cache are counted, and said.
    cached = metrics.summarize(_llama_point(recs, predicted=1024, prompt=400, cached=400, seconds=8 * 1.27), recs)
    assert not cached.witness.flagged and "prefix cache" in cached.witness.notes[0]
    # A server without /metrics: no witness, nothing invented.
    assert metrics.summarize({"point": 0, "workload": "w", "duration_s": 1.0}, recs).witness is None


def test_vllm_counters_check_requests_tokens_and_mean_latencies():
    recs = [_stream(i, 32, 32) for i in range(4)]  # TTFT 0.1 s, TPOT 10 ms
    before = loadgen.parse_metrics(VLLM_METRICS.format(gen=0, prompt=0, done=0, ttft_sum=0, tpot_sum=0))
    after = loadgen.parse_metrics(VLLM_METRICS.format(gen=128, prompt=400, done=4, ttft_sum=0.38, tpot_sum=0.04))
    w = witness.check({"server_before": before, "server_after": after}, recs)
    gaps = {c.quantity: c.gap for c in w.checks}
    assert gaps["requests"] == 0 and gaps["output tokens"] == 0 and gaps["prompt tokens"] == 0
    assert gaps["TPOT mean (s)"] == pytest.approx(0.0) and gaps["TTFT mean (s)"] == pytest.approx(0.1 / 0.095 - 1)
    assert [c.quantity for c in w.flagged] == ["TTFT mean (s)"]  # 5.3% longer: ours includes the HTTP round trip
    assert witness.server_decode(w) == pytest.approx(1 / 0.01)  # decode on the server's clock: 1 / its TPOT
    merged = witness.merge([w, w])
    assert merged.checks[1].ours == 256 and merged.checks[3].ours == pytest.approx(0.1)  # counts add, means average


# ---- the knee of a sweep ---------------------------------------------------------------------------------------


def _level(c: float, tps: float, *, rate: bool = False, good: float = 1.0, rel: float = 0.0,
           served: float | None = None) -> metrics.Level:
    p = metrics.summarize({"point": 0, "workload": "w", **({"rate": c} if rate else {"concurrency": int(c)}),
                           "duration_s": 1.0}, [_stream(0, 10, 10)])
    sp = metrics.Spread(n=3, mean=tps, stdev=tps * rel, min=tps, max=tps)
    return metrics.Level(**{**p.model_dump(exclude={"witness"}), "output_tokens_per_s": tps, "goodput_share": good,
                            "request_per_s": served if served is not None else c, "spread": {"output_tokens_per_s": sp}})


def test_a_sweep_stops_at_the_knee_and_names_it():
    rising = [_level(1, 100), _level(2, 190), _level(4, 350)]
    assert saturation.knee(rising) is None
    k = saturation.knee([*rising, _level(8, 360)])
    assert (k.load, k.value, k.past) == ("c=4", 4, "c=8") and "no longer rising" in k.reason
    # Noisy repeats raise the bar: a 15% gain inside a 10% repeat-to-repeat noise is not a rise.
    noisy = saturation.knee([_level(1, 100, rel=0.1), _level(2, 115, rel=0.1)])
    assert noisy is not None and noisy.load == "c=1" and "under 20%" in noisy.reason
    # Latency past the SLO: the level before is the knee.
    slo = metrics.SLO(ttft_s=0.5)
    k = saturation.knee([_level(1, 100), _level(2, 190, good=0.7)], slo)
    assert k.load == "c=1" and "missed the SLO" in k.reason
    first = saturation.knee([_level(1, 100, good=0.5)], slo)
    assert first.load is None and "already at c=1" in first.reason
    # A rate the server cannot keep up with.
    k = saturation.knee([_level(1.0, 100, rate=True), _level(4.0, 200, rate=True, served=3.0)])
    assert k.load == "1 req/s" and "served 3.00 of 4 req/s" in k.reason


# ---- prediction beside measurement ------------------------------------------------------------------------------


def test_the_plan_predicts_decode_throughput_and_cost_from_the_roofline_and_an_efficiency_factor():
    from mistral_lab.catalog import get_model

    plan = resolve(PlanRequest(model="ministral-8b", engine="llamacpp", quant="Q4_K_M", gpu="h100",
                               target="digitalocean", context=32768, concurrency=8))
    model = get_model("ministral-8b")
    p = predict.predict(model, plan, context_tokens=0)
    line = roofline.decode_roofline(model, plan, 0)
    factor = predict.factor_for("llamacpp", "nvidia")
    assert p.hw_class == "nvidia" and p.efficiency == factor.factor and "llama.cpp" in p.efficiency_source
    assert p.roofline_tokens_per_s == pytest.approx(line.max_tokens_per_s)
    assert p.decode_tokens_per_s == pytest.approx(line.max_tokens_per_s * factor.factor)
    # No KV at context 0: eight streams read the weights once per step, eight times the tokens.
    assert p.throughput_tokens_per_s == pytest.approx(8 * p.decode_tokens_per_s) and not p.compute_bound
    assert p.usd_per_mtok == pytest.approx(plan.hourly_usd / 3600 / p.throughput_tokens_per_s * 1e6)
    deep = predict.predict(model, plan, context_tokens=32768)
    assert deep.kv_gb_per_sequence > 4 and deep.throughput_tokens_per_s < 8 * deep.decode_tokens_per_s
    # A CPU plan has no bandwidth on record: no prediction unless one is given.
    cpu = plan.model_copy(update={"gpu": "cpu", "gpu_name": "CPU (25 GB RAM)", "gpu_vendor": "cpu"})
    assert predict.predict(model, cpu) is None
    given = predict.predict(model, cpu, bandwidth_gbs=20.0, concurrency=1)
    assert given.hw_class == "cpu" and given.decode_tokens_per_s == pytest.approx(given.throughput_tokens_per_s)
    # Fitted factors replace the built-in ones.
    mine = [predict.Efficiency("llamacpp", "nvidia", 0.5, "fitted", 3)]
    assert predict.predict(model, plan, factors=mine).efficiency == 0.5
    assert predict.factor_for("vllm", "tpu").factor == 1.0  # unknown: the roofline itself, said so


def test_efficiency_factors_are_refitted_from_saved_runs(tmp_path, monkeypatch):
    from mistral_lab.bench import efficiency, results

    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path))
    plan = resolve(PlanRequest(model="ministral-8b", engine="llamacpp", quant="Q4_K_M", gpu="h100",
                               target="digitalocean"))
    from mistral_lab.catalog import get_model

    line = roofline.decode_roofline(get_model("ministral-8b"), plan, 100)
    for i, share in enumerate((0.5, 0.6, 0.7)):
        run = _saved_run("gpu", f"2026010{i + 1}-000000-host", [])
        run.meta.plan = plan.model_dump(mode="json")
        run.roofline = [results.RooflineRow(workload="long", concurrency=1, roofline=line,
                                            achieved_tokens_per_s=share * line.max_tokens_per_s, achieved_pct=None)]
        results.save(run, results.root() / "gpu" / run.meta.run_id)
    (fit,) = efficiency.fit([results.load(p) for p in results.list_runs()])
    assert (fit.engine, fit.hw_class, fit.runs) == ("llamacpp", "nvidia", 3) and fit.factor == pytest.approx(0.6)
    now = efficiency.current()
    assert predict.factor_for("llamacpp", "nvidia", now).factor == pytest.approx(0.6)
    assert predict.factor_for("vllm", "nvidia", now) == predict.factor_for("vllm", "nvidia")  # built-in kept


# ---- the spec, peers ------------------------------------------------------------------------------------------


def test_the_spec_fills_time_bounded_repeated_defaults():
    from mistral_lab.bench.spec import DEFAULT_DURATION_S, DEFAULT_REPEATS, MAX_REQUESTS_PER_POINT, BenchSpec

    base = {"where": None, "api_key": None, "key_env": None, "workload": "128/128", "concurrency": None, "rate": None,
            "requests": None, "duration_s": DEFAULT_DURATION_S, "repeats": DEFAULT_REPEATS, "slo": None,
            "peers": None, "peer_tools": None, "results_dir": None, "read_window_s": 0.0, "workers": None}
    spec = BenchSpec.build("dep", **base)
    assert 20 <= spec.duration_s <= 30 and spec.repeats >= 3 and spec.request_cap == MAX_REQUESTS_PER_POINT
    assert spec.where == "host" and spec.stop_at_knee and spec.loads(6) == [1, 2, 4, 6]
    url = BenchSpec.build(None, **{**base, "base_url": "http://x/v1", "rate": [0.5, 1]})
    assert url.where == "client" and url.mode == "rate" and url.loads(4) == [0.5, 1.0]
    with pytest.raises(BadInput) as e:
        BenchSpec.build(None, **base)
    assert e.value.field == "deployment"
    with pytest.raises(BadInput) as e:
        BenchSpec.build("dep", **{**base, "read_window_s": -1})
    assert e.value.field == "read_window_s"


def test_peers_run_with_our_prompts_duration_and_warm_up():
    argv = peers.vllm_peer_argv("/v/bin/python", base_url="http://127.0.0.1:8000", model="m", tokenizer="/models/m",
                           dataset="/r/p.jsonl", num_prompts=40, output_tokens=128, concurrency=4, rate=None,
                           warmups=4, seed=0, result_dir="/r", result_file="v.json")
    joined = " ".join(argv[3:])
    for flag in ("--dataset-name custom", "--dataset-path /r/p.jsonl", "--skip-chat-template", "--num-prompts 40",
                 "--custom-output-len 128", "--num-warmups 4", "--ignore-eos", "--max-concurrency 4",
                 "--request-rate inf", "--backend openai-chat"):
        assert flag in joined
    assert argv[:2] == ["/v/bin/python", "-c"] and "vllm.benchmarks.serve" in argv[2]
    rate = " ".join(peers.vllm_peer_argv("p", base_url="u", model="m", tokenizer="t", dataset="d", num_prompts=8,
                                    output_tokens=8, concurrency=None, rate=2.0, warmups=1, seed=0, result_dir="r",
                                    result_file="f"))
    assert "--request-rate 2" in rate and "--max-concurrency" not in rate
    g = peers.guidellm_argv("/g/bin/guidellm", base_url="http://h:1", api_key="sk-secret", model="m", tokenizer="/t",
                            dataset="/d.jsonl", duration_s=25, concurrency=4, rate=None, warmup_s=1.5, out_path="/o.json")
    joined = " ".join(g)
    assert "kind=max_duration,seconds=25" in joined and "kind=concurrent,streams=4,warmup=1.5" in joined
    assert "kind=json_file,path=/d.jsonl" in joined and "sk-secret" not in joined  # never on a command line
    assert g[:2] == ["/g/bin/python", "-c"] and f"api_key={peers.KEY_MARK}" in joined
    assert peers.guidellm_env("sk-secret")[peers.KEY_ENV] == "sk-secret"
    saved = peers.redacted(g, "sk-secret")  # what the run keeps: no key, no launcher
    assert "sk-secret" not in saved and "<guidellm>" in saved
    assert "<vllm bench serve script>" in peers.redacted(argv, None)
    lines = peers.prompts_jsonl(["a b", "b a"], 16).splitlines()
    assert [json.loads(x) for x in lines] == [{"prompt": p, "output_tokens": 16, "output_tokens_count": 16}
                                              for p in ("a b", "b a")]
    fig = peers.parse_vllm({"completed": 10, "duration": 5.0, "total_output_tokens": 1280, "output_throughput": 256.0,
                            "request_throughput": 2.0, "median_ttft_ms": 40.0, "median_tpot_ms": 5.0})
    assert fig["ttft_p50_s"] == 0.04 and fig["output_tokens"] == 1280 and fig["itl_p50_s"] is None


# ---- the load generator: time-bounded points, worker processes, coarse reads -------------------------------------


class _SlowStream(socketserver.BaseRequestHandler):
    """Answers every request on a kept-alive connection with 8 tokens, 5 ms apart, and llama-style metrics."""

    served = 0

    def handle(self) -> None:
        import time as _t

        f = self.request.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                return
            path = line.split()[1] if len(line.split()) > 1 else b""
            length = 0
            while (h := f.readline()) not in (b"\r\n", b""):
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            f.read(length)
            if path.endswith(b"/metrics"):
                text = LLAMACPP_METRICS.format(prompt=0, cached=0, predicted=_SlowStream.served * 8, seconds=0).encode()
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text))
                continue
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for w in range(8):
                e = b"data: " + json.dumps({"choices": [{"delta": {"content": f"t{w}"}}]}).encode() + b"\n\n"
                self.request.sendall(b"%x\r\n%s\r\n" % (len(e), e))
                _t.sleep(0.005)
            _SlowStream.served += 1
            e = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 8}}).encode()
            e += b"\n\ndata: [DONE]\n\n"
            self.request.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(e), e))


def test_one_worker_takes_hundreds_of_streams_unless_told(monkeypatch):
    # A second process halves the tokens each wake-up gathers and cost 2.5-3x the CPU at 64-128 paced streams
    # (benchmarks/results/bench_loadgen_overhead.json): it starts only past 256 streams, or when one is busy.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [loadgen.workers_for({"concurrency": c}, {}) for c in (1, 64, 128, 256, 257, 1024)] == [1, 1, 1, 1, 2, 4]
    assert loadgen.workers_for({"max_concurrency": 600}, {}) == 3
    assert loadgen.workers_for({"concurrency": 128}, {"workers": 3}) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert loadgen.workers_for({"concurrency": 4096}, {}) == 2


@pytest.mark.parametrize(("workers", "window"), [(1, 0.0), (2, 0.0), (2, 0.004)])
def test_points_are_bounded_by_time_and_split_over_workers(tmp_path, workers, window):
    with _stub_server(_SlowStream) as url:
        docs = _run_loadgen(tmp_path, {
            "model": "m", "base_url": url + "/v1", "metrics_url": url + "/metrics", "workers": workers,
            "read_window_s": window, "workloads": {"w": {"kind": "chat", "prompts": ["hi"], "max_tokens": 8}},
            "points": [{"index": 0, "workload": "w", "concurrency": 4, "max_requests": 100000,
                        "max_duration_s": 1.0, "warmup": 4},
                       {"index": 1, "workload": "w", "concurrency": 2, "max_requests": 3,
                        "max_duration_s": 30.0, "warmup": 0}], "max_total_s": 120})
    timed, capped = (d for d in docs if d["type"] == "point")
    recs = [d for d in docs if d["type"] == "request" and not d["warmup"] and d["point"] == 0]
    # The clock, not a count, ended the first point; every request started inside it, none was lost.
    assert timed["stopped_by"] == "duration" and timed["workers"] == workers and len(timed["worker_cpu_s"]) == workers
    assert recs and all(r["error"] is None and r["chunks"] == 8 for r in recs)
    assert max(r["t_start_s"] for r in recs) < 1.0 and timed["requests"] == len(recs)
    ids = [r["i"] for r in recs]
    assert len(set(ids)) == len(ids)  # each request index (so each prompt) once, over all workers
    # Warm-up requests came before the clock: none of them is inside the point's window.
    assert len([d for d in docs if d["type"] == "request" and d["warmup"] and d["point"] == 0]) == 4
    assert timed["cpu_s"] == pytest.approx(sum(timed["worker_cpu_s"]) + timed["coordinator_cpu_s"], abs=1e-5)
    # The server's counters were read around the point: exactly our requests' tokens in between.
    served = timed["server_after"]["llamacpp:tokens_predicted_total"] - timed["server_before"]["llamacpp:tokens_predicted_total"]
    assert served == 8 * len(recs)
    assert timed["read_window_s"] == window
    # The cap still stops a point when it comes first.
    assert capped["stopped_by"] == "count" and capped["requests"] == 3


def test_the_read_window_waits_only_once_every_stream_has_its_first_token(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(loadgen.time, "sleep", slept.append)
    sel = loadgen.Coalescing(0.002)
    a, b = socket.socketpair()
    try:
        sel.register(a, selectors.EVENT_READ)
        b.send(b"x")
        assert sel.select(1.0) and slept == []  # idle before: the first byte is read at once
        assert sel.select(1.0) and 0 < slept[-1] <= 0.002  # busy: the next read waits out the window
        sel.awaiting_first = 1
        n = len(slept)
        assert sel.select(1.0) and len(slept) == n  # a request waits for its first token: no waiting
        sel.awaiting_first = 0
        assert sel.select(0) and len(slept) == n  # asyncio polling (timeout 0) never waits
    finally:
        sel.close()
        a.close()
        b.close()
    # A response marks its request as waiting until the first text arrives, then releases it.
    counts: list[int] = []
    r = loadgen.Response(loadgen._record(), _Future(), counts.append)
    r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0.0)
    assert counts == [1]
    e = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    r.feed(b"%x\r\n%s\r\n" % (len(e), e), 1.0)
    r.feed(b"%x\r\n%s\r\n0\r\n\r\n" % (len(e), e), 2.0)
    assert counts == [1, -1]  # released once, not again at the second token or the end


def test_the_guidellm_launcher_puts_the_key_in_its_argument_inside_the_process(tmp_path):
    """GuideLLM takes its key only as an argument: the launcher puts it there from the environment after exec, so
    the process's command line (what `ps` shows) never holds it. A stand-in `guidellm` package reports what its
    CLI received and what its own /proc/self/cmdline says."""
    pkg = tmp_path / "guidellm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import json, os, sys\n"
        "def cli():\n"
        "    cmdline = open('/proc/self/cmdline', 'rb').read().decode()\n"
        "    print(json.dumps({'argv': sys.argv, 'cmdline': cmdline, 'env': os.environ.get('MISTRAL_LAB_PEER_KEY')}))\n"
        "    return 0\n")
    argv = peers.guidellm_argv(f"{sys.executable.rsplit('/', 1)[0]}/guidellm", base_url="http://h:1",
                               api_key="sk-secret", model="m", tokenizer="/t", dataset="/d", duration_s=5,
                               concurrency=1, rate=None, warmup_s=0, out_path="/o")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), **peers.guidellm_env("sk-secret")}
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    backend = seen["argv"][seen["argv"].index("--backend") + 1]
    assert backend.endswith(",api_key=sk-secret") and seen["argv"][:2] == ["guidellm", "run"]
    assert "sk-secret" not in seen["cmdline"] and seen["env"] is None  # out of the environment once read
