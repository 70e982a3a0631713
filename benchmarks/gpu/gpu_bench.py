"""The Python half of benchmarks/gpu_run.sh: copy bandwidth, the served sweep, the rooflines, one JSON and one PNG.

Subcommands (each reads and writes files in the run's work folder, so the shell script stays a list of steps):

    bandwidth OUT.json [--fake GBS]     device-to-device copy through torch, bytes read + written per second
    sweep URL NAME OUT.json ...         our benchmark (mistral_lab.bench.run, base_url=) at 1, 4, 16 streams
    entry OUT.json LIKE QUANT ...       one model's record: its GGUF facts, llama-bench and sweep files
    cuda-libs                           the folders holding libcudart / libcublas (CUDA wheels beside torch)
    report WORK OUT.json OUT.png        every model's llama-bench and sweep against the memory roofline

Roofline: one decode step of c streams reads the weights once and each stream's KV cache, so a stream makes at
most bandwidth / (weight bytes + c x KV bytes per token x context) tokens/s. Weight bytes are the GGUF tensors a
token reads (an untied input embedding is one row per token, so it is left out); KV is llama.cpp's default f16
cache at the context the test reaches on average. Prefill (pp512) reads the weights once per 512-token batch, so
its memory ceiling is 512 times higher and it is compute-bound instead: its row also shows the datasheet's dense
BF16 rate, at 2 FLOPs per weight per token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KV_BYTES = 2  # llama.cpp's default cache type, f16
TG_CONTEXT = 64  # tg128 from an empty prompt: 64 tokens in the cache on average
SWEEP_IN, SWEEP_OUT = 128, 128  # the sweep's workload: the cache holds 128 + 64 tokens on average
PP_BATCH = 512


# ---- pure: model facts and rooflines ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    file_bytes: int
    read_bytes_per_token: int  # weights one decode token reads
    matmul_params: int  # weights multiplied per token (2 FLOPs each)
    kv_bytes_per_token: int  # per token of context, all layers, K and V
    tied_embeddings: bool


def model_facts(tensors: list[tuple[str, tuple[int, ...], int]], meta: dict, file_bytes: int) -> ModelFacts:
    """From (name, shape, bytes) of every tensor and the GGUF metadata."""
    arch = meta["general.architecture"]
    untied = any(name == "output.weight" for name, _, _ in tensors)
    read = sum(b for name, _, b in tensors if not (untied and name == "token_embd.weight"))
    params = sum(_elements(shape) for name, shape, _ in tensors
                 if len(shape) >= 2 and not (untied and name == "token_embd.weight"))
    layers = int(meta[f"{arch}.block_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", meta[f"{arch}.attention.head_count"]))
    heads = int(meta[f"{arch}.attention.head_count"])
    k_len = int(meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // heads))
    v_len = int(meta.get(f"{arch}.attention.value_length", k_len))
    return ModelFacts(file_bytes=file_bytes, read_bytes_per_token=read, matmul_params=params,
                      kv_bytes_per_token=layers * kv_heads * (k_len + v_len) * KV_BYTES, tied_embeddings=not untied)


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def decode_ceiling(bandwidth_gbs: float, facts: ModelFacts, streams: int, context: float) -> float:
    """Tokens/s one of `streams` concurrent streams can make at most, with `context` tokens cached each."""
    step_bytes = facts.read_bytes_per_token + streams * facts.kv_bytes_per_token * context
    return bandwidth_gbs * 1e9 / step_bytes


def prefill_ceilings(bandwidth_gbs: float, bf16_tflops: float | None, facts: ModelFacts) -> dict:
    memory = PP_BATCH * bandwidth_gbs * 1e9 / facts.read_bytes_per_token
    compute = bf16_tflops * 1e12 / (2 * facts.matmul_params) if bf16_tflops else None
    return {"memory_tokens_per_s": memory, "compute_tokens_per_s": compute}


def pct(value: float | None, ceiling: float | None) -> float | None:
    if value is None or not ceiling:
        return None
    return round(100.0 * value / ceiling, 1)


def llama_bench_rows(records: list[dict]) -> dict[str, dict]:
    """llama-bench -o json -> {"pp512": {...}, "tg128": {...}}."""
    out = {}
    for r in records:
        test = f"pp{r['n_prompt']}" if r.get("n_gen", 0) == 0 else f"tg{r['n_gen']}"
        out[test] = {"tokens_per_s": r["avg_ts"], "stddev": r.get("stddev_ts"), "n_params": r.get("model_n_params"),
                     "model_size": r.get("model_size"), "backends": r.get("backends"), "gpu_info": r.get("gpu_info"),
                     "n_gpu_layers": r.get("n_gpu_layers"), "build_commit": r.get("build_commit")}
    return out


@dataclass(frozen=True)
class Bandwidth:
    measured_gbs: float
    method: str
    datasheet_gbs: float | None
    datasheet_source: str | None
    fake: bool


def model_row(entry: dict, facts: ModelFacts, bw: Bandwidth, bf16_tflops: float | None) -> dict:
    """One model's figures, each beside its ceiling at the measured and at the datasheet bandwidth."""
    row: dict = {**entry, "facts": asdict(facts)}
    lb = entry.get("llama_bench") or {}
    tests = {}
    for name, fig in lb.items():
        tps = fig["tokens_per_s"]
        if name.startswith("tg"):
            ceil_m = decode_ceiling(bw.measured_gbs, facts, 1, TG_CONTEXT)
            ceil_d = decode_ceiling(bw.datasheet_gbs, facts, 1, TG_CONTEXT) if bw.datasheet_gbs else None
            tests[name] = {"tokens_per_s": tps, "roofline_measured_bw": round(ceil_m, 1),
                           "pct_measured_bw": pct(tps, ceil_m), "roofline_datasheet_bw": _r(ceil_d),
                           "pct_datasheet_bw": pct(tps, ceil_d)}
        else:
            m = prefill_ceilings(bw.measured_gbs, bf16_tflops, facts)
            d = prefill_ceilings(bw.datasheet_gbs, bf16_tflops, facts) if bw.datasheet_gbs else {}
            tests[name] = {"tokens_per_s": tps, "roofline_measured_bw": round(m["memory_tokens_per_s"], 1),
                           "pct_measured_bw": pct(tps, m["memory_tokens_per_s"]),
                           "roofline_datasheet_bw": _r(d.get("memory_tokens_per_s")),
                           "pct_datasheet_bw": pct(tps, d.get("memory_tokens_per_s")),
                           "roofline_bf16_compute": _r(m["compute_tokens_per_s"]),
                           "pct_bf16_compute": pct(tps, m["compute_tokens_per_s"])}
    row["llama_bench"] = tests
    sweep = []
    for p in entry.get("sweep") or []:
        c = p["concurrency"]
        ctx = SWEEP_IN + SWEEP_OUT / 2
        ceil_m = decode_ceiling(bw.measured_gbs, facts, c, ctx)
        ceil_d = decode_ceiling(bw.datasheet_gbs, facts, c, ctx) if bw.datasheet_gbs else None
        per_stream = p.get("decode_tokens_per_s")
        sweep.append({**p, "roofline_per_stream_measured_bw": round(ceil_m, 1),
                      "pct_measured_bw": pct(per_stream, ceil_m),
                      "roofline_per_stream_datasheet_bw": _r(ceil_d), "pct_datasheet_bw": pct(per_stream, ceil_d)})
    row["sweep"] = sweep
    return row


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# ---- I/O: GGUF, torch, the benchmark --------------------------------------------------------------------------


def read_facts(path: Path) -> ModelFacts:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("general.architecture") or ".attention." in key or key.endswith(
                (".block_count", ".embedding_length")):
            meta[key] = field.contents()
    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes)) for t in reader.tensors]
    return model_facts(tensors, meta, path.stat().st_size)


def measure_bandwidth(gib: float = 2.0, reps: int = 20) -> tuple[float, str]:
    """Median device-to-device copy rate over `reps` copies of `gib` GiB, counting bytes read plus written."""
    import torch

    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    med = times[len(times) // 2]
    name = torch.cuda.get_device_name(0)
    return 2 * n / med / 1e9, (f"torch {torch.__version__} device-to-device copy of {gib:g} GiB on {name}, "
                               f"median of {reps}, bytes read + written")


def cmd_bandwidth(args: argparse.Namespace) -> None:
    if args.fake is not None:
        doc = {"measured_gbs": args.fake, "method": "FAKE: a dry run's stand-in figure, not a measurement",
               "fake": True}
    else:
        gbs, method = measure_bandwidth()
        doc = {"measured_gbs": round(gbs, 1), "method": method, "fake": False}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"gpu-run: bandwidth {doc['measured_gbs']} GB/s ({doc['method']})", flush=True)


def sweep_points(points: list[dict]) -> list[dict]:
    """One row per concurrency: the median of its repeats (the benchmark may measure each level several times)."""
    by_c: dict[int, list[dict]] = {}
    for p in points:
        by_c.setdefault(p["concurrency"], []).append(p)
    rows = []
    for c, reps in sorted(by_c.items()):
        row: dict = {"concurrency": c, "repeats": len(reps), "requests": sum(p["requests"] for p in reps),
                     "errors": sum(p["errors"] for p in reps)}
        for key in ("output_tokens_per_s", "decode_tokens_per_s", "server_decode_tokens_per_s", "ttft_s_p50"):
            values = sorted(p[key] for p in reps if p.get(key) is not None)
            row[key] = values[len(values) // 2] if values else None
        rows.append(row)
    return rows


def bench_kwargs(params: set[str], *, duration: float, requests: int | None) -> dict:
    """The benchmark's options for a short, complete sweep, passed only where this version of bench.run has
    them: one repeat per level, every level measured (no stop at the knee), points of `duration` seconds."""
    wanted = {"repeats": 1, "stop_at_knee": False, "duration_s": duration, "requests": requests,
              "native_bench": False, "plots": False, "progress": False}
    return {k: v for k, v in wanted.items() if k in params}


def cmd_sweep(args: argparse.Namespace) -> None:
    import inspect

    from mistral_lab import bench

    levels = [int(x) for x in args.concurrency.split(",")]
    t0 = time.monotonic()
    extra = bench_kwargs(set(inspect.signature(bench.run).parameters), duration=args.duration,
                         requests=args.requests)
    run = bench.run(base_url=args.url, model=args.name, workload=f"{SWEEP_IN}/{SWEEP_OUT}", concurrency=levels,
                    results_dir=args.results, say=lambda _line: None, **extra)
    raw = [{"concurrency": p.concurrency, "requests": p.requests, "errors": p.errors,
            "output_tokens_per_s": p.output_tokens_per_s, "decode_tokens_per_s": p.decode_tokens_per_s,
            "server_decode_tokens_per_s": p.server_decode_tokens_per_s,
            "ttft_s_p50": p.ttft_s.p50 if p.ttft_s else None}
           for p in run.points]
    points = sweep_points(raw)
    Path(args.out).write_text(json.dumps({"points": points, "aborted": run.meta.aborted, "options": extra,
                                          "seconds": round(time.monotonic() - t0, 1)}, indent=2))
    print("gpu-run: sweep " + ", ".join(f"c={p['concurrency']}: {p['output_tokens_per_s']:.0f} tok/s"
                                        for p in points), flush=True)


def _load(path: str | None) -> object:
    if not path or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    return json.loads(Path(path).read_text())


def cmd_entry(args: argparse.Namespace) -> None:
    entry: dict = {"like": args.like, "quant": args.quant, "make": args.made_by, "make_s": args.make_s}
    if args.gguf and Path(args.gguf).is_file():
        entry["facts"] = asdict(read_facts(Path(args.gguf)))
    lb = _load(args.llama_bench)
    entry["llama_bench"] = llama_bench_rows(lb) if isinstance(lb, list) else {}
    sweep = _load(args.sweep)
    entry["sweep"] = sweep["points"] if isinstance(sweep, dict) else []
    if isinstance(sweep, dict):
        entry["sweep_seconds"] = sweep.get("seconds")
        entry["sweep_aborted"] = sweep.get("aborted")
    if args.skipped:
        entry["skipped"] = args.skipped
    Path(args.out).write_text(json.dumps(entry, indent=2))


def gpu_facts(work: Path) -> dict:
    """What gpu_run.sh wrote about the GPU (nvidia-smi's CSV line), with the datasheet entry it matches."""
    from mistral_lab import hardware

    line = (work / "gpu.csv").read_text().strip() if (work / "gpu.csv").exists() else ""
    if not line:
        return {"name": None}
    name, mem, driver = [x.strip() for x in line.split(",")][:3]
    size = hardware.size_from_gpus([name], [int(float(mem.split()[0]))])
    return {"name": name, "memory_mib": mem, "driver": driver, "datasheet": {
        "key": size.gpu.key, "name": size.gpu.name, "bandwidth_gbs": size.gpu.bandwidth_gbs,
        "bf16_tflops": size.gpu.bf16_tflops, "source": size.gpu.source}}


def cuda_lib_dirs(paths: list[str]) -> list[str]:
    """Folders under `paths` (sys.path) holding the CUDA runtime or cuBLAS: nvidia/cu13/lib for CUDA 13 wheels,
    nvidia/cublas/lib and nvidia/cuda_runtime/lib for CUDA 12 ones; the system toolkit's last."""
    import glob

    found: list[str] = []
    for base in paths:
        for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
            if (glob.glob(d + "/libcublas.so.*") or glob.glob(d + "/libcudart.so.*")) and d not in found:
                found.append(d)
    # The driver's libcuda.so.1 sits where the image put it (the device mounts /usr/local/nvidia).
    found += [d for d in ("/usr/local/cuda/lib64", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib")
              if os.path.isdir(d)]
    return found


def _json_or_none(path: Path) -> object:
    return json.loads(path.read_text()) if path.is_file() else None


def cmd_report(args: argparse.Namespace) -> None:
    work = Path(args.work)
    gpu = gpu_facts(work)
    sheet = gpu.get("datasheet") or {}
    bwdoc = json.loads((work / "bandwidth.json").read_text())
    bw = Bandwidth(measured_gbs=bwdoc["measured_gbs"], method=bwdoc["method"],
                   datasheet_gbs=sheet.get("bandwidth_gbs"), datasheet_source=sheet.get("source"),
                   fake=bool(bwdoc.get("fake")))
    rows = []
    for entry_file in sorted((work / "models").glob("*.entry.json")):
        entry = json.loads(entry_file.read_text())
        facts = ModelFacts(**entry.pop("facts")) if entry.get("facts") else None
        rows.append(model_row(entry, facts, bw, sheet.get("bf16_tflops")) if facts else entry)
    rows.sort(key=row_order)
    doc = {
        "what": "random-weight Ministral 3 models (make-model --like) on llama.cpp CUDA: llama-bench pp512/tg128 "
                "and a served concurrency sweep through mistral_lab.bench, against the memory-bandwidth roofline",
        "dry_run": args.dry_run,
        "gpu": gpu,
        "bandwidth": asdict(bw),
        "roofline_method": __doc__.split("\n\n")[2].replace("\n", " "),
        "run": _json_or_none(work / "run.json") or {},
        "llama_cpp_build": _json_or_none(work / "build.json"),
        "pack": _json_or_none(work / "pack.json"),
        "models": rows,
    }
    Path(args.out_json).write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, Path(args.out_png))
    print(f"gpu-run: wrote {args.out_json} and {args.out_png}", flush=True)


QUANT_ORDER = ("BF16", "Q8_0", "Q4_K_M")


def row_order(row: dict) -> tuple:
    q = row.get("quant", "")
    return (row.get("like", ""), QUANT_ORDER.index(q) if q in QUANT_ORDER else len(QUANT_ORDER), q)


def plot_series(rows: list[dict], key: str) -> dict[str, list[float]]:
    """{"tg128": [...], "c=1": [...], ...}: each model's % of its decode roofline under `key`."""
    levels = sorted({p["concurrency"] for r in rows for p in r.get("sweep", [])})
    series: dict[str, list[float]] = {"tg128 (llama-bench)": []}
    series.update({f"c={c} (served, per stream)": [] for c in levels})
    for r in rows:
        series["tg128 (llama-bench)"].append((r.get("llama_bench", {}).get("tg128") or {}).get(key) or 0.0)
        by_c = {p["concurrency"]: p for p in r.get("sweep", [])}
        for c in levels:
            series[f"c={c} (served, per stream)"].append((by_c.get(c) or {}).get(key) or 0.0)
    return series


def plot(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["models"] if r.get("llama_bench") or r.get("sweep")]
    labels = [f"{r['like']}\n{r['quant']}" for r in rows]
    bw = doc["bandwidth"]
    fake = " FAKE (dry run)" if bw["fake"] else ""
    panels = [("pct_measured_bw", f"at {bw['measured_gbs']:g} GB/s measured{fake}"),
              ("pct_datasheet_bw", f"at {bw['datasheet_gbs'] or '?'} GB/s datasheet")]
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 2.4 * len(rows)), 4.8), sharey=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        series = plot_series(rows, key)
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ax.bar([x + i * width for x in range(len(rows))], values, width, label=name)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(rows))], labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% of the decode roofline")
    axes[0].legend(fontsize=7)
    gpu = doc["gpu"].get("name") or "no GPU"
    fig.suptitle(f"llama.cpp (CUDA) on {gpu}\ndecode speed as a share of the memory-bandwidth ceiling", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bandwidth")
    b.add_argument("out")
    b.add_argument("--fake", type=float, help="a stand-in figure for a dry run without a GPU, labelled FAKE")
    s = sub.add_parser("sweep")
    s.add_argument("url")
    s.add_argument("name")
    s.add_argument("out")
    s.add_argument("--concurrency", default="1,4,16")
    s.add_argument("--requests", type=int, default=None)
    s.add_argument("--duration", type=float, default=8.0, help="seconds per load point")
    s.add_argument("--results", default=None)
    f = sub.add_parser("facts")
    f.add_argument("gguf")
    e = sub.add_parser("entry")
    e.add_argument("out")
    e.add_argument("like")
    e.add_argument("quant")
    e.add_argument("--gguf")
    e.add_argument("--llama-bench")
    e.add_argument("--sweep")
    e.add_argument("--made-by", default="")
    e.add_argument("--make-s", type=float, default=None)
    e.add_argument("--skipped", default=None)
    sub.add_parser("cuda-libs")
    r = sub.add_parser("report")
    r.add_argument("work")
    r.add_argument("out_json")
    r.add_argument("out_png")
    r.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "bandwidth":
        cmd_bandwidth(args)
    elif args.cmd == "sweep":
        cmd_sweep(args)
    elif args.cmd == "facts":
        print(json.dumps(asdict(read_facts(Path(args.gguf)))))
    elif args.cmd == "entry":
        cmd_entry(args)
    elif args.cmd == "cuda-libs":
        print(":".join(cuda_lib_dirs(sys.path)))
    else:
        cmd_report(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
