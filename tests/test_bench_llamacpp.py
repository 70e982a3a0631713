"""The benchmark against a real llama-server on the tiny model: a sweep and its records, agreement with the server's
own timings and counters (and a miscounted run caught), repeats with their spread, the chunk/token rule, Poisson
arrivals, a server that dies mid-run, the on-host mode through a deployment with llama-bench and the plan's
prediction, saved runs, comparisons, the CLI, and random-weight models made with --like."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import mistral_lab as ml
from llamacpp_fixtures import free_port
from mistral_lab import bench, state
from mistral_lab.bench import metrics, results
from mistral_lab.cli import main
from mistral_lab.planning import PlanRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _run(server, tmp_path: Path, **kw):
    lines: list[str] = []
    kw = {"repeats": 1, "stop_at_knee": False, **kw}
    run = bench.run(base_url=server.v1, api_key=server.api_key, where="client", results_dir=tmp_path,
                    progress=False, say=lines.append, **kw)
    return run, lines


def _start_server(llamacpp_bin: Path, gguf: Path, log: Path, key: str, threads: int = 2) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [str(llamacpp_bin / "llama-server"), "-m", str(gguf), "--jinja", "--host", "127.0.0.1", "--port",
            str(port), "-c", "4096", "-np", "2", "--alias", "tiny-random", "-t", str(threads), "--metrics"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "LLAMA_API_KEY": key},
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"llama-server did not start:\n{log.read_text()[-2000:]}")


def test_a_sweep_completes_and_its_records_are_consistent(llama_server, tmp_path):
    # The count must be what stops each point: the time bound is only a safety net, set far out because a busy
    # CI machine (vLLM's CPU engine spinning in the other worker) can slow the server many times over.
    run, lines = _run(llama_server, tmp_path, workload="128/128,long,chat", concurrency=[1, 2], requests=6,
                      duration_s=600, catalog_id="tiny-random")
    meta = run.meta
    assert meta.engine == "llamacpp" and meta.context == 1024 and meta.forced_output and meta.where == "client"
    assert "b1-0c1e57098" in (meta.engine_version or "")
    assert [w.label for w in meta.workloads] == ["128/128", "long (752/256)", "chat"]
    assert [w.input_tokens for w in meta.workloads] == [128, 752, None]
    assert [(p.workload, p.concurrency) for p in run.points] == [
        ("128/128", 1), ("128/128", 2), ("long", 1), ("long", 2), ("chat", 1), ("chat", 2)]
    targets = {w.name: w for w in meta.workloads}
    records = run.records()
    assert len(records) == 6 * 6 and not any(r["warmup"] for r in records)
    assert len(run.records(warmup=True)) == 36 + 1 + 2 + 1 + 2 + 1 + 2  # one warm-up per concurrent slot
    for r in records:
        w = targets[r["workload"]]
        assert r["error"] is None and r["status"] == 200
        assert r["completion_tokens"] == r["max_tokens"] == w.output_tokens  # forced by ignore_eos
        if w.input_tokens:
            assert r["prompt_tokens"] == w.input_tokens  # sized with the server's tokenizer
            assert r["cached_tokens"] < 0.1 * r["prompt_tokens"]  # every prompt differs: no prefix-cache hit
        assert 0 < r["ttft_s"] < r["e2e_s"]
        assert 0 < r["chunks"] <= r["completion_tokens"] and len(r["itl_s"]) == r["chunks"] - 1
        assert sum(r["itl_s"]) <= r["e2e_s"] - r["ttft_s"] + 1e-3
        assert r["timings"]["predicted_n"] == r["completion_tokens"]
    for p in run.points:
        mine = [r for r in records if r["point"] == p.index]
        assert p.requests == 6 and p.errors == 0 and p.stopped_by == "count" and p.forced_output_ok == 1.0
        assert p.output_tokens_per_s == pytest.approx(sum(r["completion_tokens"] for r in mine) / p.duration_s)
        for d in (p.ttft_s, p.tpot_s, p.e2e_s):
            assert d.min <= d.p50 <= d.p90 <= d.p99 <= d.max
        assert p.itl_s is not None or p.itl_note  # ITL only from a stream of tokens, else said why
        assert p.goodput == pytest.approx(p.request_per_s)  # no SLO: every completed request counts
    # Saved, and it reloads with no server involved.
    again = bench.load(run.folder)
    assert again.model_dump() == run.model_dump() and len(again.records()) == 36
    assert {f.name for f in run.folder.iterdir()} >= {"summary.json", "requests.jsonl", "throughput_latency.png",
                                                      "distributions.png"}
    assert any("sizing long (752/256)" in line for line in lines)


def test_single_stream_decode_speed_agrees_with_llama_servers_own_timings(llamacpp_bin, tiny_gguf, tmp_path):
    # Same requests, two clocks: ours (first to last streamed token) and llama-server's `timings`. 4 x 767 decode
    # steps keep a few ms of scheduling noise at each end far below 10%. One compute thread leaves a core for the
    # server's HTTP thread and for us on a 2-core machine, so tokens reach us as they are made, not in bursts.
    key = "ml-test-agree-key"
    proc, base = _start_server(llamacpp_bin, tiny_gguf, tmp_path / "server.log", key, threads=1)
    try:
        run = bench.run(base_url=base + "/v1", api_key=key, where="client", workload="64/768", concurrency=[1],
                        requests=4, duration_s=120, repeats=1, results_dir=tmp_path, progress=False,
                        say=lambda _line: None)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    (p,) = run.points
    assert p.errors == 0 and p.decode_tokens_per_s and p.server_decode_tokens_per_s
    assert p.decode_tokens_per_s == pytest.approx(p.server_decode_tokens_per_s, rel=0.10), (
        f"ours {p.decode_tokens_per_s:.0f} tok/s, llama-server's timings {p.server_decode_tokens_per_s:.0f} tok/s")
    # Its /metrics, read around the point, count exactly our requests' tokens.
    checks = {c.quantity: c for c in p.witness.checks}
    assert checks["output tokens"].gap == 0 and checks["prompt tokens"].gap == 0


def test_repeats_give_a_spread_and_the_server_catches_a_miscounted_run(llama_server, tmp_path):
    # Time bounds, not counts, end these points: 1.5 s each, three repeats of one level.
    run, _ = _run(llama_server, tmp_path, workload="32/64", concurrency=[2], duration_s=1.5, repeats=3,
                  requests=100000)
    assert [p.repeat for p in run.points] == [0, 1, 2] and all(p.stopped_by == "duration" for p in run.points)
    (level,) = run.levels
    assert level.repeats == 3 and level.requests == sum(p.requests for p in run.points)
    s = level.spread["output_tokens_per_s"]
    assert s.n == 3 and s.min <= s.mean <= s.max and s.stdev >= 0
    assert s.mean == pytest.approx(sum(p.output_tokens_per_s for p in run.points) / 3)
    # The server's own counters saw exactly our requests, point by point.
    for p in run.points:
        checks = {c.quantity: c for c in p.witness.checks}
        assert checks["output tokens"].gap == 0 and checks["prompt tokens"].gap == 0, p.witness.summary()
    # The chunk/token rule on llama.cpp's real stream: a multi-byte character goes out as one chunk of two tokens.
    records = run.records()
    ratio = sum(r["chunks"] for r in records) / sum(r["completion_tokens"] for r in records)
    assert level.chunks_per_token == pytest.approx(ratio) and ratio < 1
    if ratio < 0.9:
        assert level.itl_s is None and "chunk per output token" in level.itl_note
    # Deliberately miscounted, twice. A client that counts streamed chunks as tokens (the bug behind ITL from
    # chunks): the server's count shows the gap exactly. A client that lost every fourth record: flagged.
    docs = results.read_jsonl(run.folder / results.RECORDS)
    as_chunks = [{**d, "completion_tokens": d["chunks"]} if d.get("type") == "request" else d for d in docs]
    for p in metrics.summarize_all(as_chunks):
        mine = [r for r in records if r["point"] == p.index]
        gap = next(c for c in p.witness.checks if c.quantity == "output tokens").gap
        assert gap == pytest.approx(sum(r["chunks"] for r in mine) / sum(r["completion_tokens"] for r in mine) - 1)
    # Every second request of each point is lost (each point has at least two: two streams start at its clock),
    # so the gap is what those carried, however few requests a slow machine fits in 1.5 s.
    measured = [d for d in docs if d.get("type") == "request" and not d["warmup"]]
    dropped = {(d["point"], d["i"]) for d in measured
               if sorted(x["i"] for x in measured if x["point"] == d["point"]).index(d["i"]) % 2 == 1}
    lost = [d for d in docs if not (d.get("type") == "request" and (d["point"], d.get("i")) in dropped)]
    for p in metrics.summarize_all(lost):
        mine = [r for r in records if r["point"] == p.index]
        share = sum(r["completion_tokens"] for r in mine if (r["point"], r["i"]) in dropped) / sum(
            r["completion_tokens"] for r in mine)
        flagged = {c.quantity: c.gap for c in p.witness.flagged}
        assert share > 0.05 and flagged["output tokens"] == pytest.approx(-share, abs=0.01), p.witness.summary()


def test_poisson_arrivals_stop_by_count_or_by_time(llama_server, tmp_path):
    run, _ = _run(llama_server, tmp_path, workload="32/16", rate=[20.0], requests=10, duration_s=300, warmup=0)
    (p,) = run.points
    assert p.rate == 20.0 and p.requests == 10 and p.stopped_by == "count" and run.meta.mode == "rate"
    # Records are written as requests finish; in arrival order (i) their start times only grow.
    starts = [r["t_start_s"] for r in sorted(run.records(), key=lambda r: r["i"])]
    assert len(starts) == 10 and starts == sorted(starts)

    # The arrival times are drawn from the run's seed: about 8 of them fall inside 2 s at 4/s, far from 1000.
    run, _ = _run(llama_server, tmp_path, workload="32/16", rate=[4.0], requests=1000, duration_s=2.0, warmup=0)
    (p,) = run.points
    assert p.stopped_by == "duration" and 1 <= p.requests < 40


def test_a_server_stopped_mid_run_is_counted_and_the_run_ends_with_a_clear_report(llamacpp_bin, tiny_gguf, tmp_path):
    key = "ml-test-stop-key"
    proc, base = _start_server(llamacpp_bin, tiny_gguf, tmp_path / "server.log", key)
    stop = threading.Event()

    def kill_when_under_way() -> None:
        # 2 warm-up requests of 16 tokens, then more than 3 x 384 generated tokens over 2 streams: at least two
        # measured requests are complete, whatever the machine's speed. Then the server dies mid-point.
        while not stop.wait(0.1):
            try:
                text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=5).text
            except httpx.HTTPError:
                continue
            done = next((float(line.split()[1]) for line in text.splitlines()
                         if line.startswith("llamacpp:tokens_predicted_total ")), 0.0)
            if done > 2 * 16 + 3 * 384:
                os.killpg(proc.pid, signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_when_under_way, daemon=True)
    killer.start()
    try:
        lines: list[str] = []
        run = bench.run(base_url=base + "/v1", api_key=key, where="client", workload="16/384", concurrency=[2, 1],
                        requests=500, duration_s=600, repeats=1, stop_at_knee=False, results_dir=tmp_path,
                        progress=False, say=lines.append)
    finally:
        stop.set()
        killer.join()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (first,) = run.points  # the level after it was never started
    assert first.requests > first.errors > 0 and first.stopped_by is None
    assert "consecutive errors" in first.aborted and "Connect" in first.aborted
    assert any("c=1: not run" in n for n in run.meta.notes)
    assert run.meta.aborted == first.aborted
    assert any(line.startswith("✘ the run ended early") for line in lines)
    assert bench.load(run.folder).meta.aborted == first.aborted  # the partial run is saved like any other


@pytest.fixture
def bench_deployment(llamacpp_bin):
    name = "bench-host"
    dep = ml.deploy(PlanRequest(model="tiny-random", target="local", name=name, concurrency=2),
                        say=lambda _line: None)
    try:
        yield dep
    finally:
        ml.teardown(name, say=lambda _line: None)


def test_on_the_host_with_llama_bench_then_from_the_client_then_compared(bench_deployment, capsys, tmp_path):
    name = bench_deployment.name
    # A CPU host is not in the GPU table: the roofline runs on a bandwidth given by hand.
    code = main(["bench", name, "--requests", "4", "--repeats", "2", "--concurrency", "1,2", "--slo-ttft", "10",
                 "--bandwidth-gbs", "50", "--json"])
    assert code is None or code == 0
    doc = json.loads(capsys.readouterr().out)
    # The shape issue 7 gives, plus the workload a point belongs to (a run may sweep several).
    assert set(doc) == {"points", "run"}
    assert [p["concurrency"] for p in doc["points"]] == [1, 2]
    for p in doc["points"]:
        assert set(p) >= {"concurrency", "workload", "requests", "errors", "output_tokens_per_s", "ttft_s", "itl_s",
                          "e2e_s", "goodput", "usd_per_mtok", "repeats", "spread", "server_check", "tpot_s"}
        for key in ("ttft_s", "tpot_s", "e2e_s"):
            assert set(p[key]) == {"p50", "p90", "p99"} and 0 < p[key]["p50"] <= p[key]["p90"] <= p[key]["p99"]
        assert p["itl_s"] is not None or p["itl_note"]
        assert p["workload"] == "128/128" and p["output_tokens_per_s"] > 0 and p["goodput"] > 0
        assert p["repeats"] == 2 and p["spread"]["output_tokens_per_s"]["min"] <= p["spread"]["output_tokens_per_s"]["max"]
        assert p["requests"] == 8 and p["errors"] == 0 and p["usd_per_mtok"] == 0.0  # the local target is free
        assert p["server_check"]["engine"] == "llamacpp" and "output tokens" not in p["server_check"]["flagged"]
    run_doc = doc["run"]
    api_key = state.load(name).api_key()
    saved = "".join(f.read_text() for f in Path(run_doc["folder"]).glob("*.json*"))
    assert api_key and api_key not in json.dumps(doc) and api_key not in saved  # the key stays out of the results
    assert run_doc["where"] == "host" and "next to the server" in run_doc["where_detail"]
    assert run_doc["engine"] == "llamacpp" and run_doc["engine_version"].startswith("llama.cpp ")
    assert run_doc["model"] == "tiny-random" and run_doc["quant"] == "F16" and run_doc["slo"]["ttft_s"] == 10
    assert "llama-server" in run_doc["flags"] and "-np 2" in run_doc["flags"]
    (roof,) = run_doc["roofline"]
    assert roof["concurrency"] == 1 and roof["roofline"]["bandwidth_gbs"] == 50
    assert roof["roofline"]["context_tokens"] > 128  # prompt plus half the output, on average
    assert roof["achieved_pct"] == pytest.approx(100 * roof["achieved_tokens_per_s"] / roof["roofline"]["max_tokens_per_s"])
    # The plan's prediction at the run's context, beside the measurement, with the error.
    (pred,) = run_doc["predictions"]
    assert pred["prediction"]["engine"] == "llamacpp" and pred["prediction"]["hw_class"] == "cpu"
    assert pred["prediction"]["bandwidth_gbs"] == 50 and pred["measured_decode_tokens_per_s"] > 0
    assert pred["decode_error"] == pytest.approx(pred["prediction"]["decode_tokens_per_s"]
                                                 / pred["measured_decode_tokens_per_s"] - 1)
    (lb,) = run_doc["native"]
    assert lb["tool"] == "llama-bench" and [f["test"] for f in lb["figures"]] == ["pp512", "tg128"]
    assert all(f["tokens_per_s"] > 0 for f in lb["figures"])
    # Nothing left behind in the deployment's folder on the host.
    assert not list(Path(state.load(name).service.root).glob("bench/*"))

    client = bench.run(name, where="client", concurrency=[1], requests=4, repeats=1, native_bench=False,
                       progress=False, say=lambda _line: None)
    assert client.meta.where == "client" and "no tunnel" in client.meta.where_detail

    host_ref = run_doc["ref"]
    out = tmp_path / "cmp.png"
    main(["bench", "compare", host_ref, client.ref, "--plot", str(out), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["where"] for r in rows} == {"host", "client"} and all(r["best_output_tokens_per_s"] > 0 for r in rows)
    assert out.stat().st_size > 10_000 and (tmp_path / "cmp-curves.png").stat().st_size > 10_000
    main(["bench", "runs", name, "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in listed] == [host_ref, client.ref]
    assert results.load(name).ref == client.ref  # a deployment name finds its latest run


def _gguf_fields(path: Path) -> tuple[dict, dict]:
    """The GGUF's key/values (scalars and strings; arrays by length) and its tensors' shapes and types."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for key, f in reader.fields.items():
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            fields[key] = len(f.data)
        elif f.types and f.types[0] == gguf.GGUFValueType.STRING:
            fields[key] = bytes(f.parts[f.data[0]]).decode()
        elif f.data:
            fields[key] = f.parts[f.data[0]].tolist()[0]
    # GGUF lists dimensions fastest first; ours are numpy order.
    tensors = {t.name: (tuple(int(x) for x in reversed(t.shape.tolist())), t.tensor_type) for t in reader.tensors}
    return fields, tensors


@pytest.mark.parametrize(("quant", "matrix_type"), [("Q4_K_M", "Q4_K"), ("Q8_0", "Q8_0"), ("BF16", "BF16")])
def test_make_model_like_writes_the_catalog_architecture(llamacpp_bin, capsys, tmp_path, quant, matrix_type):
    import gguf

    from mistral_lab import modelgen
    from mistral_lab.bench import native
    from mistral_lab.catalog import get_model
    from mistral_lab.hosts.local import LocalHost

    out = tmp_path / f"tiny-{quant}.gguf"
    main(["make-model", "--like", "tiny-random", "--quant", quant.lower(), "--out", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(out) and info["bytes"] == out.stat().st_size and info["quant"] == quant

    fields, tensors = _gguf_fields(out)
    model = get_model("tiny-random")
    arch = model.architecture
    assert fields["general.architecture"] == "mistral3"
    assert {k.removeprefix("mistral3."): v for k, v in fields.items() if k.startswith("mistral3.") and
            not k.startswith("mistral3.rope.freq")} == {
        "block_count": arch.layers, "embedding_length": arch.hidden_size, "feed_forward_length": arch.intermediate_size,
        "attention.head_count": arch.heads, "attention.head_count_kv": arch.kv_heads,
        "attention.key_length": arch.head_dim, "attention.value_length": arch.head_dim,
        "rope.dimension_count": arch.head_dim, "attention.layer_norm_rms_epsilon": pytest.approx(modelgen.RMS_EPS),
        "vocab_size": arch.vocab_size, "context_length": model.capabilities.max_context}
    assert fields["tokenizer.ggml.tokens"] == arch.vocab_size
    assert fields["general.file_type"] == int(gguf.LlamaFileType[f"MOSTLY_{quant}"])
    specs = modelgen.tensor_specs(arch)
    assert {n: shape for n, (shape, _t) in tensors.items()} == {s.gguf_name: s.shape for s in specs}
    assert {tensors[s.gguf_name][1].name for s in specs if s.kind != "norm"} <= {matrix_type, "Q6_K"}  # Q4_K_M keeps some Q6_K
    assert any(tensors[s.gguf_name][1].name == matrix_type for s in specs)

    # The file runs: llama-bench loads it through the same code path as a deployment's llama-bench step.
    res = native.run_llama_bench(LocalHost(tmp_path), str(llamacpp_bin / "llama-bench"), str(out), prompt=32, gen=16,
                                 reps=1)
    assert [f.test for f in res.figures] == ["pp32", "tg16"] and all(f.tokens_per_s > 0 for f in res.figures)


def test_make_model_names_the_bad_field_and_the_fix(capsys):
    with pytest.raises(SystemExit) as e:
        main(["make-model", "--like", "ministral-3b", "--quant", "Q4_X", "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "quant" in err and "Q4_K_M" in err and "BF16" in err
    with pytest.raises(SystemExit):  # one dense and one MoE layer need two
        main(["make-model", "--like", "mistral-large-3", "--layers", "1", "--dry-run"])
    assert "layers" in capsys.readouterr().err
    # MLA + MoE: written at a reduced depth by default, and the output says so beside the full size.
    main(["make-model", "--like", "mistral-large-3", "--dry-run", "--json"])
    large = json.loads(capsys.readouterr().out)
    assert large["depth"] == "reduced depth 2 of 61 layers" and large["layers_written"] == 2
    assert large["parameters"] < large["parameters_full_depth"] and 6.6e11 < large["parameters_full_depth"] < 6.8e11
    main(["make-model", "--like", "mistral-small-4", "--dry-run"])
    said = capsys.readouterr().out
    assert "reduced depth 2 of 36 layers" in said and "MLA" in said and "None" not in said

    main(["make-model", "--like", "ministral-3b", "--quant", "Q4_K_M", "--dry-run", "--json"])
    arch = json.loads(capsys.readouterr().out)
    assert (arch["layers"], arch["hidden_size"], arch["heads"], arch["kv_heads"], arch["head_dim"],
            arch["intermediate_size"], arch["vocab_size"], arch["experts"]) == (26, 3072, 32, 8, 128, 9216, 131072, None)
    assert 3.3e9 < arch["parameters"] < 3.5e9 and "path" not in arch


def test_prompts_are_sized_to_the_context_the_server_reports_serving(bench_deployment, tmp_path):
    # deploy records the context vLLM fitted (max_model_len auto) next to the plan's; the run must use it.
    dep = state.load(bench_deployment.name)
    assert dep.served_context is None  # llama.cpp serves the planned context
    planned = bench.run(bench_deployment.name, workload="32/16", concurrency=[1], requests=2, repeats=1,
                        where="client", results_dir=tmp_path, progress=False, plots=False, native_bench=False,
                        say=lambda _l: None)
    assert planned.meta.context == dep.plan.context
    dep.served_context = dep.plan.context // 2
    state.save(dep)
    served = bench.run(bench_deployment.name, workload="32/16", concurrency=[1], requests=2, repeats=1,
                       where="client", results_dir=tmp_path, progress=False, plots=False, native_bench=False,
                       say=lambda _l: None)
    assert served.meta.context == dep.plan.context // 2
