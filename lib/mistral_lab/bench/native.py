"""The engine's own benchmark, run on the host beside ours: `llama-bench` on the served GGUF. Its figures are shown
next to ours, not mixed into them: llama-bench times the model without HTTP, sampling or scheduling. (vLLM's own
client, `vllm bench serve`, runs as a peer on equal terms: bench/peers.py.)

The argv builder and the parser are pure; `run_llama_bench` takes a Host and runs there.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pydantic import BaseModel, Field

from mistral_lab.errors import EngineError
from mistral_lab.hosts.base import Host

LLAMA_BENCH_TIMEOUT_S = 1800


class NativeFigure(BaseModel):
    test: str = Field(description="pp512 (prompt processing), tg128 (generation), or a vllm bench serve run")
    tokens_per_s: float
    stddev: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class NativeResult(BaseModel):
    tool: str  # llama-bench | vllm bench serve
    command: str
    figures: list[NativeFigure]
    version: str | None = None


# ---- llama-bench ----------------------------------------------------------------------------------------------


def llama_bench_argv(binary: str, model_path: str, *, prompt: int = 512, gen: int = 128, reps: int = 3,
                     depth: int = 0, gpu: bool = False, threads: int | None = None) -> list[str]:
    argv = [binary, "-m", model_path, "-p", str(prompt), "-n", str(gen), "-r", str(reps), "-o", "json"]
    if depth:
        argv += ["-d", str(depth)]  # generation measured with this many tokens already in the KV cache
    if gpu:
        argv += ["-ngl", "999"]
    if threads:
        argv += ["-t", str(threads)]
    return argv


def parse_llama_bench(stdout: str) -> list[NativeFigure]:
    """llama-bench `-o json`: one object per test with avg_ts/stddev_ts (tokens/s)."""
    start = stdout.find("[")
    if start < 0:
        raise EngineError("llama-bench printed no JSON", field="llama-bench",
                          fix="run it by hand with -o json and read its error output")
    rows = json.loads(stdout[start:])
    figures = []
    for row in rows:
        n_p, n_g, depth = row.get("n_prompt", 0), row.get("n_gen", 0), row.get("n_depth", 0)
        test = f"pp{n_p}" if n_p and not n_g else f"tg{n_g}" if n_g and not n_p else f"pp{n_p}+tg{n_g}"
        if depth:
            test += f" @ d{depth}"
        figures.append(NativeFigure(
            test=test, tokens_per_s=float(row["avg_ts"]), stddev=float(row.get("stddev_ts") or 0.0),
            detail={k: row.get(k) for k in ("build_commit", "backends", "model_type", "model_size", "n_threads",
                                             "n_gpu_layers", "type_k", "flash_attn", "samples_ts", "gpu_info")},
        ))
    return figures


def run_llama_bench(host: Host, binary: str, model_path: str, *, timeout: float = LLAMA_BENCH_TIMEOUT_S,
                    **kw: Any) -> NativeResult:
    argv = llama_bench_argv(binary, model_path, **kw)
    command = shlex.join(argv)
    r = host.run(command, timeout=timeout, check=False)
    if r.returncode != 0:
        err = "\n".join(r.stderr.strip().splitlines()[-5:])  # not a second run: a failure can take minutes
        raise EngineError(f"llama-bench failed (exit {r.returncode}): {err}", field="llama-bench",
                          fix="check that the model file is there and the build has llama-bench")
    figures = parse_llama_bench(r.stdout)
    version = figures[0].detail.get("build_commit") if figures else None
    return NativeResult(tool="llama-bench", command=command, figures=figures, version=version)
