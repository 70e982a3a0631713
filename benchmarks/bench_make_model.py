"""A random-weight Ministral 3 3B (the catalog's exact architecture: 26 layers, hidden 3072, 32 heads / 8 KV heads
x 128, FFN 9216, vocabulary 131,072, tied embeddings) made with `make-model`, read back, and measured with
llama-bench on this machine's CPU at Q4_K_M and BF16: batch-1 decode tokens/s and its share of the memory-bandwidth
roofline. The issue asks for this on a GPU; there is none in this task, so the CPU stands in, with its bandwidth
measured here (two threads reading a 2 GB array, as llama-bench's two threads read the weights). Writes
benchmarks/results/bench_make_model.json.

    .venv/bin/python benchmarks/bench_make_model.py      # about 10 minutes on 2 cores; 9 GB of scratch disk

The files are written to a scratch folder and removed at the end.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "bench_make_model.json"
LIKE = "ministral-3b"
QUANTS = ("Q4_K_M", "BF16")


def read_bandwidth_gbs(threads: int = 2, gb: float = 2.0, reps: int = 5) -> float:
    """Best of `reps` sums of a `gb` GB array split over `threads` threads (numpy drops the GIL in the loop)."""
    a = np.ones(int(gb * 1e9 / 8))
    parts = np.array_split(a, threads)
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def header(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key: str):
        f = reader.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    keys = ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
            "attention.key_length", "feed_forward_length", "vocab_size")
    return {k: value(f"mistral3.{k}") for k in keys} | {"tensors": len(reader.tensors),
                                                         "output.weight": any(t.name == "output.weight" for t in reader.tensors)}


def main() -> None:
    from mistral_lab import modelgen
    from mistral_lab.bench import native, roofline
    from mistral_lab.catalog import get_model
    from mistral_lab.engines import llamacpp_build as lb
    from mistral_lab.hosts.local import LocalHost
    from mistral_lab.plan import PlanRequest
    from mistral_lab.planning import make_plan

    bench_bin = Path(lb.bin_dir(lb.BuildKey(source="pypi", version=lb.DEFAULT_VERSION, backend="cpu", arch="native"),
                                str(modelgen.DEFAULT_CACHE))) / "llama-bench"
    model = get_model(LIKE)
    arch = model.architecture
    plan = make_plan(PlanRequest(model=LIKE, target="local", engine="llamacpp", quant="Q4_K_M", context=4096))
    bandwidth = read_bandwidth_gbs()
    print(f"read bandwidth: {bandwidth:.1f} GB/s (2 threads)", flush=True)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="ml-make-model-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    try:
        for quant in QUANTS:
            t0 = time.monotonic()
            path = modelgen.make_model(LIKE, quant, scratch / f"{LIKE}-{quant}.gguf")
            made_s = time.monotonic() - t0
            got = header(path)
            want = {"block_count": arch.layers, "embedding_length": arch.hidden_size, "attention.head_count": arch.heads,
                    "attention.head_count_kv": arch.kv_heads, "attention.key_length": arch.head_dim,
                    "feed_forward_length": arch.intermediate_size, "vocab_size": arch.vocab_size}
            assert {k: got[k] for k in want} == want, (got, want)
            print(f"{quant}: {path.stat().st_size / 1e9:.2f} GB written in {made_s:.0f} s; header {got}", flush=True)
            res = native.run_llama_bench(LocalHost(scratch), str(bench_bin), str(path), prompt=64, gen=32, reps=2)
            tg = next(f for f in res.figures if f.test.startswith("tg"))
            # The plan gives the KV cache's shape and type; the weights are the file's own bytes (tied embeddings: the
            # one matrix is read in full as the output layer, so the whole file is read per token).
            line = roofline.decode_roofline(model, plan, 64 + 16, bandwidth_gbs=bandwidth,
                                            bandwidth_source="measured: 2 threads reading 2 GB",
                                            weights_gb=path.stat().st_size / 1e9)
            rows.append({"quant": quant, "file_gb": round(path.stat().st_size / 1e9, 3), "make_s": round(made_s, 1),
                         "header": got, "llama_bench": [f.model_dump() for f in res.figures],
                         "decode_tokens_per_s": tg.tokens_per_s, "roofline_tokens_per_s": round(line.max_tokens_per_s, 2),
                         "roofline_pct": round(line.achieved_pct(tg.tokens_per_s), 1), "command": res.command})
            print(f"{quant}: tg32 {tg.tokens_per_s:.2f} tok/s; roofline {line.max_tokens_per_s:.2f} tok/s "
                  f"({line.achieved_pct(tg.tokens_per_s):.0f}%)", flush=True)
            path.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"what": f"random-weight {model.name} ({LIKE}) via make-model, llama-bench on this CPU", "rows": rows,
              "bandwidth_gbs": round(bandwidth, 2), "parameters": modelgen.param_count(arch),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                          "gpu": None, "loadavg": [round(x, 2) for x in os.getloadavg()]},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
