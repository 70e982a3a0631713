"""Benchmark pieces that need no server: workloads, metrics, roofline arithmetic, parsers, the load generator's
portability and its SSE accounting."""

from __future__ import annotations

import ast
import io
import json
import socketserver
import sys
import threading
from pathlib import Path

import pytest

from mistral_lab.bench import loadgen, metrics, native, roofline, workloads
from mistral_lab.bench.runner import sweep_levels
from mistral_lab.errors import BadInput
from mistral_lab.planning import PlanRequest, resolve

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
    rec = {"content_times": [], "chars": 0, "usage": None, "timings": None, "finish_reason": None, "error": None}
    loadgen._event({"choices": [{"delta": {"role": "assistant", "content": None}}]}, 1.0, rec)
    loadgen._event({"choices": [{"delta": {"content": ""}}]}, 1.5, rec)
    assert rec["content_times"] == []
    loadgen._event({"choices": [{"delta": {"reasoning_content": "hm"}}]}, 2.0, rec)
    loadgen._event({"choices": [{"delta": {"content": "Hi"}, "finish_reason": "length"}]}, 2.5, rec)
    loadgen._event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, 2.6, rec)
    assert rec["content_times"] == [2.0, 2.5] and rec["chars"] == 4
    assert rec["finish_reason"] == "length" and rec["usage"]["completion_tokens"] == 2


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


def test_vllm_bench_serve_command_forces_length_and_saves():
    argv = native.vllm_bench_argv(["vllm", "bench", "serve"], base_url="http://127.0.0.1:8000", model="ministral-3b",
                                  tokenizer="/models/m", input_tokens=1024, output_tokens=256, num_prompts=64,
                                  concurrency=8, seed=0, result_dir="/r", result_file="x.json",
                                  tokenizer_mode="mistral", goodput={"ttft_s": 0.5, "tpot_s": None})
    joined = " ".join(argv)
    assert joined.startswith("vllm bench serve --backend openai-chat")
    for flag in ("--ignore-eos", "--save-result", "--max-concurrency 8", "--random-input-len 1024",
                 "--random-output-len 256", "--tokenizer-mode mistral", "--goodput ttft:500"):
        assert flag in joined
    py = native.vllm_bench_prefix({"python": "/v/bin/python", "vllm": "/v/bin/vllm"})
    assert py[:2] == ["/v/bin/python", "-c"] and "vllm.benchmarks.serve" in py[2]
    assert native.vllm_bench_prefix({"vllm": "/v/bin/vllm"}) == ["/v/bin/vllm", "bench", "serve"]
    assert native.vllm_bench_prefix({"python": "/usr/bin/python3"}) is None  # docker: vLLM is in the container
    fig = native.parse_vllm_bench({"output_throughput": 900.0, "median_ttft_ms": 40.0, "completed": 64}, 8)
    assert fig.tokens_per_s == 900.0 and fig.detail["completed"] == 64


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
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OneRequestPerConnection)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = {"model": "m", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1", "points": [
            {"index": 0, "workload": "w", "concurrency": 1, "max_requests": 12, "max_duration_s": 30, "warmup": 4}],
            "workloads": {"w": {"kind": "chat", "prompts": ["hi"], "max_tokens": 3}}, "max_total_s": 60}
        out = tmp_path / "records.jsonl"
        assert loadgen.run(spec, str(out), None) is None
    finally:
        server.shutdown()
        server.server_close()
    docs = [json.loads(line) for line in out.read_text().splitlines()]
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
