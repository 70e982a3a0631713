"""`mistral-lab bench` (measure a deployment, compare saved runs, list them) and `mistral-lab make-model`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mistral_lab.errors import BadInput

from ._app import app, console, console_err

Opt = typer.Option


def _numbers(text: str | None, field: str, kind: type[int] | type[float]) -> list | None:
    if not text:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        what, example = ("integers", "1,2,4,8") if kind is int else ("numbers", "0.5,1,2")
        raise BadInput(f"{text!r} is not a comma-separated list of {what}", field=field, fix=f"e.g. {example}") from None


def _compare(refs: list[str], plot: str | None, as_json: bool) -> None:
    from mistral_lab import bench

    if len(refs) < 1:
        raise BadInput("nothing to compare", field="RUN", fix="mistral-lab bench compare RUN RUN ... (see bench runs)")
    runs = [bench.load(r) for r in refs]
    if as_json:
        print(json.dumps(bench.compare_rows(runs), indent=2))
    else:
        bench.report.show_compare(runs)
    if plot:
        from mistral_lab.bench import plots

        path = plots.save(plots.compare_chart(runs), plot)
        plots.save(plots.throughput_latency(runs), Path(plot).with_name(Path(plot).stem + "-curves.png"))
        console_err.print(f"plots: {path} and {Path(plot).stem}-curves.png")


def _list(deployment: str | None, as_json: bool) -> None:
    from mistral_lab import bench

    rows = []
    for folder in bench.list_runs(deployment):
        run = bench.load(folder)
        best = max((p.output_tokens_per_s for p in run.levels), default=0.0)
        rows.append({"run": run.ref, "model": run.meta.model or run.meta.served_model, "engine": run.meta.engine,
                     "gpu": run.meta.gpu_name, "where": run.meta.where,
                     "workloads": [w.label for w in run.meta.workloads], "best_output_tokens_per_s": best,
                     "aborted": run.meta.aborted, "folder": str(folder)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no saved benchmark runs yet: mistral-lab bench NAME")
    for r in rows:
        console.print(Text.assemble(f"{r['run']}  {r['model']} {r['engine']} · {r['gpu']} · {r['where']}  "
                                    f"{', '.join(r['workloads'])}  best {r['best_output_tokens_per_s']:.1f} tok/s",
                                    ("  ended early", "red") if r["aborted"] else ""))


@app.command("bench")
def bench_cmd(
    target: Annotated[list[str] | None, typer.Argument(
        help="deployment NAME; or `compare RUN...`; or `runs [NAME]` to list saved runs")] = None,
    workload: Annotated[str, Opt("--workload", "-w", help="IN/OUT (e.g. 1024/256), chat, long, vision, or standard; "
                                 "comma-separated")] = "128/128",
    concurrency: Annotated[str | None, Opt("--concurrency", "--sweep", "-c",
                                           help="concurrency levels, e.g. 1,4,16 (default 1,2,4,... up to the "
                                                "server's parallel slots)")] = None,
    rate: Annotated[str | None, Opt("--rate", help="Poisson request rates in requests/s instead, e.g. 0.5,1,2")] = None,
    requests: Annotated[int | None, Opt("--requests", "-n", help="requests per load point at most: a safety cap, the "
                                        "duration ends a point (default 5000)")] = None,
    duration: Annotated[float, Opt("--duration", help="seconds per load point")] = 25.0,
    repeats: Annotated[int, Opt("--repeats", "-r", help="times each load level is measured (its spread)")] = 3,
    warmup: Annotated[int | None, Opt("--warmup", help="warm-up requests per point, not counted (default: one per "
                                      "concurrent slot)")] = None,
    knee: Annotated[bool, Opt("--knee/--full-sweep", help="stop a sweep at its knee (throughput no longer rising, "
                              "latency past the SLO)")] = True,
    peers: Annotated[str | None, Opt("--peers", help="peer clients to run on equal terms: vllm, guidellm "
                                     "(comma-separated)")] = None,
    vllm_python: Annotated[str | None, Opt("--vllm-python", help="a Python with vLLM, for the vllm peer (a vLLM "
                                           "deployment records its own)")] = None,
    guidellm: Annotated[str | None, Opt("--guidellm", help="the guidellm command, for the guidellm peer")] = None,
    tokenizer: Annotated[str | None, Opt("--tokenizer", help="a Hugging Face tokenizer folder the peers count "
                                         "tokens with")] = None,
    workers: Annotated[int | None, Opt("--workers", help="load generator processes (default: as the load needs)")] = None,
    read_window: Annotated[float, Opt("--read-window", help="seconds between the client's reads once every stream "
                                      "has its first token: less client CPU, ITL resolved down to twice it; TTFT "
                                      "stays exact (0: every byte as it arrives)")] = 0.002,
    where: Annotated[str | None, Opt("--where", help="host: next to the server (the default for a deployment); client: "
                                     "from here through the tunnel (always for --base-url)")] = None,
    seed: Annotated[int, Opt("--seed")] = 0,
    slo_ttft: Annotated[float | None, Opt("--slo-ttft", help="goodput: TTFT limit in seconds")] = None,
    slo_tpot: Annotated[float | None, Opt("--slo-tpot", help="goodput: time per output token limit in seconds")] = None,
    native: Annotated[bool, Opt("--native/--no-native", help="also run llama-bench on a llama.cpp deployment")] = True,
    hourly: Annotated[float | None, Opt("--hourly-usd", help="price for $/Mtok (default: the plan's)")] = None,
    bandwidth: Annotated[float | None, Opt("--bandwidth-gbs", help="memory bandwidth for the roofline where the "
                                          "GPU table has none (CPU hosts)")] = None,
    compare: Annotated[list[str] | None, Opt("--compare", help="saved runs to put beside this one")] = None,
    plot: Annotated[str | None, Opt("--plot", help="write the comparison (or this run's curves) to this PNG")] = None,
    base_url: Annotated[str | None, Opt("--base-url", help="any OpenAI-compatible URL instead of a deployment "
                                        "(measured from here)")] = None,
    key_env: Annotated[str, Opt("--key-env", help="variable holding the key for --base-url")] = "MISTRAL_API_KEY",
    model: Annotated[str | None, Opt("--model", help="served model name for --base-url")] = None,
    as_json: Annotated[bool, Opt("--json", help="print the figures as JSON")] = False,
) -> None:
    """Measure a deployment under load: latency percentiles, throughput, goodput, $/Mtok, roofline; saved and plotted.

    \b
    mistral-lab bench tiny-local --workload 128/128,1024/256 --concurrency 1,2,4
    mistral-lab bench my-h100 --workload standard --slo-ttft 0.5 --slo-tpot 0.05
    mistral-lab bench my-vllm --concurrency 1,4,16 --peers vllm
    mistral-lab bench compare my-h100 my-l40s --plot compare.png
    mistral-lab bench runs
    """
    from mistral_lab import bench
    from mistral_lab.bench.metrics import SLO

    args = list(target or [])
    if args and args[0] == "compare":
        _compare(args[1:] + list(compare or []), plot, as_json)
        return
    if args and args[0] == "runs":
        _list(args[1] if len(args) > 1 else None, as_json)
        return
    if len(args) > 1:
        raise BadInput(f"one deployment at a time, got {' '.join(args)}", field="NAME",
                       fix="mistral-lab bench NAME, or mistral-lab bench compare RUN RUN")
    name = args[0] if args else None
    if not name and not base_url:
        from mistral_lab.lifecycle.notebook import the_only

        name = the_only(up=True)
        if not name:
            raise BadInput("no deployment is up", field="NAME", fix="mistral-lab deploy MODEL first, or --base-url URL")
    quiet = as_json
    run = bench.run(
        name if not base_url else None,
        workload=workload, concurrency=_numbers(concurrency, "--concurrency", int), rate=_numbers(rate, "--rate", float),
        requests=requests, duration_s=duration, repeats=repeats, warmup=warmup, where=where,  # type: ignore[arg-type]
        seed=seed, slo=SLO(ttft_s=slo_ttft, tpot_s=slo_tpot), stop_at_knee=knee,
        peers=[x.strip() for x in peers.split(",") if x.strip()] if peers else None,
        peer_tools=bench.PeerTools(vllm_python=vllm_python, guidellm=guidellm, tokenizer=tokenizer),
        workers=workers, read_window_s=read_window, native_bench=native, hourly_usd=hourly,
        bandwidth_gbs=bandwidth, bandwidth_source="given (--bandwidth-gbs)" if bandwidth else None,
        base_url=base_url, key_env=key_env, model=model,
        progress=not quiet, say=(lambda line: console_err.print(line, highlight=False, markup=False)),
    )
    if as_json:
        print(json.dumps(bench.to_json(run), indent=2))
    else:
        bench.show(run)
    if compare:
        others = [bench.load(r) for r in compare]
        if not as_json:
            bench.report.show_compare([run, *others])
        if plot:
            from mistral_lab.bench import plots

            plots.save(plots.compare_chart([run, *others]), plot)
    elif plot:
        from mistral_lab.bench import plots

        plots.save(plots.throughput_latency(run), plot)
    if run.meta.aborted:
        raise typer.Exit(3)


@app.command("make-model")
def make_model_cmd(
    like: Annotated[str, Opt("--like", help="catalog id whose architecture to copy, e.g. ministral-3b")],
    quant: Annotated[str, Opt("--quant", help="GGUF type (F16, BF16, Q8_0, Q4_K_M, ...) or hf for a Hugging Face "
                              "folder")] = "Q4_K_M",
    out: Annotated[str | None, Opt("--out", "-o", help="file (or folder for hf); default: the model cache")] = None,
    seed: Annotated[int, Opt("--seed")] = 0,
    layers: Annotated[int | None, Opt("--layers", help="write only the first N layers, real-shaped (default: all; "
                                      "2 for MLA + MoE models such as mistral-small-4 and mistral-large-3)")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="print the architecture and the size, write nothing")] = False,
    as_json: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Write a random-weight model with a catalog model's exact architecture, to measure speed without a download.

    K-quants (Q4_K_M, ...) are made with the cached llama.cpp build's llama-quantize."""
    from mistral_lab import modelgen
    from mistral_lab.catalog import get_model

    model = get_model(like)
    arch = model.architecture
    if quant.lower() != "hf":
        quant = modelgen.check_quant(quant)
    depth = modelgen.plan_depth(arch, layers if layers is not None else modelgen.default_layers(arch))
    specs = modelgen.tensor_specs(arch, depth.layers)
    params = sum(math.prod(s.shape) for s in specs)
    full = params if not depth.reduced else sum(math.prod(s.shape) for s in modelgen.tensor_specs(arch))
    info = {"like": model.id, "quant": quant, "layers": arch.layers, "hidden_size": arch.hidden_size,
            "heads": arch.heads, "kv_heads": arch.kv_heads, "head_dim": arch.head_dim,
            "intermediate_size": arch.intermediate_size, "vocab_size": arch.vocab_size,
            "experts": arch.experts, "attention": arch.attention, "depth": depth.label,
            "layers_written": depth.layers, "tensors": len(specs), "parameters": params,
            "parameters_full_depth": full, "context_length": model.capabilities.max_context}
    if not dry_run:
        path = modelgen.make_model(model.id, quant, out, seed=seed, layers=depth.layers)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        info.update(path=str(path), bytes=size)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    attention = (f"MLA (KV rank {arch.kv_lora_rank}), {arch.experts} experts" if arch.attention == "mla" else
                 f"{arch.heads} heads / {arch.kv_heads} KV heads x {arch.head_dim}")
    ffn = f", FFN {arch.intermediate_size}" if arch.intermediate_size else ""
    written = (f"{depth.label}: {params / 1e9:.3f} B of its {full / 1e9:.3f} B parameters" if depth.reduced
               else f"{params / 1e9:.3f} B parameters")
    console.print(f"{model.name} architecture: {arch.layers} layers, hidden {arch.hidden_size}, {attention}{ffn}, "
                  f"vocab {arch.vocab_size}; {written} in {len(specs)} tensors (text model, random weights)")
    if dry_run:
        console.print("dry run: nothing written")
    else:
        console.print(f"wrote {info['path']} ({info['bytes'] / 1e9:.3f} GB, {quant})")
