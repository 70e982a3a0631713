"""A benchmark run end to end, as named stages over one `BenchSpec`:

    spec = BenchSpec.build(...)            the arguments, checked once (spec.py)
    open_target                            the deployment's Connection, or a bare URL (target.py)
    size_prompts                           synthetic prompts calibrated on the server's tokenizer (workloads.py)
    place                                  where the load generator runs, uploaded once (placement.py)
    drive                                  per level: warm-up, then each repeat's timed point, the server's
                                           counters read around it, peers interleaved; stops at the knee
    summarize                              points, levels with their spread, the server as witness (metrics.py)
    compare                                roofline, the plan's prediction, the engine's own benchmark
    save                                   one folder per run (results.py), plots

`run()` keeps the keyword arguments the CLI, the notebook and the panel pass; `run_spec()` takes a BenchSpec.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mistral_lab import state
from mistral_lab._version import __version__ as ml_version
from mistral_lab.bench import (
    efficiency,
    loadgen,
    metrics,
    native,
    peers,
    results,
    roofline,
    saturation,
    witness,
)
from mistral_lab.bench import workloads as wl
from mistral_lab.bench.metrics import SLO, Level, Point
from mistral_lab.bench.peers import PeerRun, PeerTools
from mistral_lab.bench.placement import Placement, Progress, children_cpu_s, core_warning, place, run_batch
from mistral_lab.bench.results import PredictionRow, Run, RunMeta, WorkloadInfo
from mistral_lab.bench.spec import (
    DEFAULT_DURATION_S,
    DEFAULT_READ_WINDOW_S,
    DEFAULT_REPEATS,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_CONSECUTIVE_ERRORS,
    BenchSpec,
    Where,
    sweep_levels,
)
from mistral_lab.bench.target import Target, engine_version, open_target, server_root
from mistral_lab.catalog import get_model
from mistral_lab.errors import BadInput, MistralLabError
from mistral_lab.hosts.local import LocalHost
from mistral_lab.planning.predict import predict

__all__ = ["BenchSpec", "run", "run_spec", "sweep_levels"]

Printer = Callable[[str], None]

# One process near a full core parses every streamed token; past this share it may set the pace itself.
CLIENT_BOUND_SHARE = 0.8
# Engines that take `ignore_eos` in a chat request, so `max_tokens` is the exact output length.
FORCES_OUTPUT = ("llamacpp", "vllm")


def run(
    deployment: str | None = None,
    *,
    workload: str | list[str] = "128/128",
    concurrency: list[int] | None = None,
    rate: list[float] | None = None,
    max_concurrency: int | None = None,
    requests: int | None = None,
    duration_s: float = DEFAULT_DURATION_S,
    warmup: int | None = None,
    repeats: int = DEFAULT_REPEATS,
    where: Where | None = None,
    seed: int = 0,
    slo: SLO | None = None,
    stop_at_knee: bool = True,
    peers: list[str] | tuple[str, ...] | None = None,
    peer_tools: PeerTools | dict | None = None,
    native_bench: bool = True,
    hourly_usd: float | None = None,
    bandwidth_gbs: float | None = None,
    bandwidth_source: str | None = None,
    weights_gb: float | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    key_env: str | None = None,
    model: str | None = None,
    engine: str | None = None,
    catalog_id: str | None = None,
    context: int | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    workers: int | None = None,
    read_window_s: float = DEFAULT_READ_WINDOW_S,
    results_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
    say: Printer = print,
) -> Run:
    """Benchmark a deployment (or any OpenAI-compatible `base_url`) and save the run; see the module docstring.

    `concurrency` sweeps closed-loop load levels (default 1, 2, 4, ... up to the plan's parallel slots); `rate`
    sweeps open-loop Poisson arrival rates (requests/s) instead. Each point runs `duration_s` seconds (a
    `requests` count caps it), after `warmup` requests that are not counted, `repeats` times per level; the
    sweep stops at its knee unless `stop_at_knee=False`. `peers` ("vllm", "guidellm") run beside ours on equal
    terms, with the tools `peer_tools` names where a deployment did not record them.

    `where` defaults to the host for a deployment and to this machine for a `base_url` run, whose key is `api_key`
    or else read from the environment variable `key_env`. `workers` fixes the load generator's processes (default:
    as many as the load needs); `read_window_s` trades timing resolution after the first token for client CPU
    (TTFT stays exact; 0: every byte read as it arrives, for ITL studies).
    """
    spec = BenchSpec.build(
        deployment, where=where, api_key=api_key, key_env=key_env, workload=workload, concurrency=concurrency,
        rate=rate, requests=requests, duration_s=duration_s, repeats=repeats, slo=slo, peers=peers,
        peer_tools=peer_tools, results_dir=results_dir, read_window_s=read_window_s, workers=workers,
        base_url=base_url, model=model, engine=engine, catalog_id=catalog_id, context=context,
        max_concurrency=max_concurrency, warmup=warmup, seed=seed, stop_at_knee=stop_at_knee,
        native_bench=native_bench, hourly_usd=hourly_usd, bandwidth_gbs=bandwidth_gbs,
        bandwidth_source=bandwidth_source, weights_gb=weights_gb, request_timeout_s=request_timeout_s,
        plots=plots, progress=progress)
    return run_spec(spec, say=say)


# ---- stages ---------------------------------------------------------------------------------------------------


@dataclass
class Sized:
    workloads: list[wl.Workload]
    specs: dict[str, dict[str, Any]]
    infos: list[WorkloadInfo]
    notes: list[str]


def size_prompts(spec: BenchSpec, target: Target, context: int, say: Printer) -> Sized:
    """The workloads for the served context, synthetic prompts sized with the server's tokenizer."""
    has_vision = bool(target.plan.vision) if target.plan else False
    wls = wl.resolve(spec.workload, context, vision=has_vision)
    notes = [f"{w.name}: {w.note}" for w in wls if w.note]
    if wl.skipped_vision(spec.workload, has_vision):
        notes.append("vision: skipped, the deployment serves no vision encoder")
    if not wls:
        raise BadInput("no workload left to run", field="workload", fix="pick one the deployment can serve, e.g. 128/128")
    counter = wl.Counter(target.base_url, target.api_key, target.served_model)
    specs, infos = {}, []
    try:
        for w in wls:
            cal = None
            if w.kind == "synthetic":
                say(f"▶ sizing {w.label} prompts against the server's tokenizer")
                assert w.input_tokens is not None
                cal = wl.calibrate(w.input_tokens, counter.count, seed=spec.seed)
                if cal.prompt_tokens != w.input_tokens:
                    notes.append(f"{w.name}: prompts have {cal.prompt_tokens} tokens (asked {w.input_tokens})")
            specs[w.name] = wl.to_spec(w, calibrated=cal, seed=spec.seed)
            infos.append(WorkloadInfo(name=w.name, label=w.label, kind=w.kind, output_tokens=w.output_tokens,
                                      input_tokens=cal.prompt_tokens if cal else None, note=w.note))
    finally:
        counter.close()
    return Sized(workloads=wls, specs=specs, infos=infos, notes=notes)


def _point(spec: BenchSpec, index: int, w: wl.Workload, load: float, level: int, repeat: int) -> dict[str, Any]:
    if spec.mode == "rate":
        p: dict[str, Any] = {"rate": float(load), "max_concurrency": spec.max_concurrency,
                             "warmup": 2 if spec.warmup is None else spec.warmup}
    else:
        c = int(load)
        p = {"concurrency": c, "warmup": c if spec.warmup is None else spec.warmup}
    p.update(index=index, workload=w.name, level=level, repeat=repeat, max_requests=spec.request_cap,
             max_duration_s=spec.duration_s)
    return p


def _loadgen_spec(spec: BenchSpec, target: Target, sized: Sized, where: Placement, run_id: str,
                  points: list[dict[str, Any]]) -> dict[str, Any]:
    forced = target.engine in FORCES_OUTPUT
    return {
        "run_id": run_id, "model": target.served_model, "seed": spec.seed, "workloads": sized.specs,
        "points": points, "extra_body": {"ignore_eos": True} if forced else {},
        "request_timeout_s": spec.request_timeout_s, "max_consecutive_errors": MAX_CONSECUTIVE_ERRORS,
        "api_key_env": loadgen.KEY_ENV, "base_url": where.base_url, "metrics_url": where.metrics_url,
        "workers": spec.workers, "read_window_s": spec.read_window_s,
        "max_total_s": sum(p["max_duration_s"] + spec.request_timeout_s + 60 for p in points) + 60,
    }


@dataclass
class Driven:
    docs: list[dict[str, Any]] = field(default_factory=list)
    peers: list[PeerRun] = field(default_factory=list)
    knees: list[saturation.Knee] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runner_cpu_s: float = 0.0
    tree_cpu_s: float = 0.0  # the load generator's whole process trees, start to exit, where measurable
    aborted: str | None = None


def drive(spec: BenchSpec, target: Target, sized: Sized, where: Placement, run_id: str, loads: list[float],
          out: Path, say: Printer) -> Driven:
    """Every level of every workload: its repeats (each a warm-up, then a timed point, in the load generator),
    each followed by the peers at the same level; then the knee test, which may end the workload's sweep."""
    d = Driven()
    tools = _peer_tools(spec, target)
    runnable, skipped = _runnable_peers(spec, target, tools, where)
    d.notes += skipped
    labels: dict[int, str] = {}
    progress = Progress(labels, spec.progress)
    cpu0 = time.process_time()
    index = batch = 0
    for w in sized.workloads:
        done: list[Level] = []
        for li, load in enumerate(loads):
            repeats = [_point(spec, index + r, w, load, li, r) for r in range(spec.repeats)]
            index += spec.repeats
            for p in repeats:
                labels[p["index"]] = (f"{w.label} " + (f"c={p['concurrency']}" if "concurrency" in p else f"{load:g}/s")
                                      + (f" #{p['repeat'] + 1}" if spec.repeats > 1 else ""))
            # Peers interleave with our repeats; without peers the repeats run in one go of the load generator.
            batches = [[p] for p in repeats] if runnable else [repeats]
            level_docs: list[dict[str, Any]] = []
            for chunk in batches:
                docs, tree = run_batch(where, _loadgen_spec(spec, target, sized, where, run_id, chunk),
                                       target.api_key, batch, out, progress)
                batch += 1
                if tree is not None:
                    d.tree_cpu_s += tree
                d.docs += docs
                level_docs += docs
                d.aborted = d.aborted or _aborted(docs)
                if d.aborted:
                    break
                for tool in runnable:
                    d.peers += _peer(tool, spec, target, sized, where, tools, w, load, chunk[0], docs, batch, d, say)
            if d.aborted:
                d.notes += [f"{w.label} {_load_label(spec, x)}: not run (the run ended early)" for x in loads[li + 1:]]
                break
            done += _levels_of(level_docs, w.name, spec)  # this level alone: the earlier ones are summarized
            if spec.stop_at_knee and len(loads) > 1:
                k = saturation.knee(done, spec.slo)
                if k is not None:
                    d.knees.append(k)
                    say(f"▶ {w.label}: knee at {k.load or 'the lowest level'} ({k.reason}); sweep stopped")
                    break
        if d.aborted:
            break
    d.runner_cpu_s = time.process_time() - cpu0
    return d


def _load_label(spec: BenchSpec, load: float) -> str:
    return f"c={int(load)}" if spec.mode == "concurrency" else f"{load:g} req/s"


def _aborted(docs: list[dict[str, Any]]) -> str | None:
    for doc in docs:
        if doc.get("type") == "point" and doc.get("aborted"):
            return str(doc["aborted"])
    return None


def _levels_of(docs: list[dict[str, Any]], workload: str, spec: BenchSpec) -> list[Level]:
    heads = [h for h in docs if h.get("type") == "point" and h.get("workload") == workload and h.get("point", -1) >= 0]
    recs = [r for r in docs if r.get("type") == "request" and not r.get("warmup") and r.get("workload") == workload]
    pts = [metrics.summarize(h, [r for r in recs if r["point"] == h["point"]], slo=spec.slo) for h in heads]
    return metrics.levels(pts, recs, slo=spec.slo, heads=heads)


# ---- peers ----------------------------------------------------------------------------------------------------


def _peer_tools(spec: BenchSpec, target: Target) -> PeerTools:
    given = spec.peer_tools
    dep = target.deployment
    if dep is None:
        return given
    tools = dict(dep.tools)
    recorded_python = tools.get("python") if tools.get("vllm") else None
    tokenizer = dep.model_ref if target.engine == "vllm" and dep.model_ref and dep.model_ref.startswith("/") else None
    return PeerTools(vllm_python=given.vllm_python or recorded_python, guidellm=given.guidellm,
                     tokenizer=given.tokenizer or tokenizer)


def _runnable_peers(spec: BenchSpec, target: Target, tools: PeerTools, where: Placement) -> tuple[list[str], list[str]]:
    ok, notes = [], []
    asked = list(spec.peers)
    if spec.native_bench and target.engine == "vllm" and target.deployment is not None and "vllm" not in asked:
        asked.append("vllm")  # a vLLM deployment's own client, as the engine's native benchmark
    for name in asked:
        have = tools.vllm_python if name == "vllm" else tools.guidellm
        if not have or not tools.tokenizer:
            missing = "a Python with vLLM" if name == "vllm" and not have else "the guidellm command" if not have else \
                "a Hugging Face tokenizer folder"
            notes.append(f"{peers.PEER_NAMES[name]}: skipped, no {missing} where the load generator runs "
                         "(peer_tools=...)")
        else:
            ok.append(name)
    return ok, notes


def _server_counters(target: Target, *, settled: bool = False) -> dict[str, float] | None:
    """The server's counters, read from this process around a peer's run (the peer reads none itself); once the
    peer is done, read until two reads agree, as the load generator does: servers book a request just after it."""
    url = server_root(target.base_url) + "/metrics"
    read = loadgen.settled_metrics if settled else loadgen.read_metrics
    return read(url, target.api_key)


def _peer(tool: str, spec: BenchSpec, target: Target, sized: Sized, where: Placement, tools: PeerTools,
          w: wl.Workload, load: float, point: dict[str, Any], ours: list[dict[str, Any]], batch: int, d: Driven,
          say: Printer) -> list[PeerRun]:
    """One peer run at our point's level, as long as ours, with as many fresh prompts as ours completed."""
    done = [r for r in ours if r.get("type") == "request" and not r.get("warmup") and not r.get("error")]
    rate = point.get("rate")
    conc = point.get("concurrency") or spec.max_concurrency
    # As many requests as ours got done in the same time (+10%, so the peer's own duration is not cut short).
    n = max(2 * (conc or 1), math.ceil(len(done) * 1.1))
    rng = random.Random(f"{spec.seed}/peer/{tool}/{point['index']}")
    wspec = sized.specs[w.name]
    texts = []
    for i in range(n + (conc or 1)):
        msgs = loadgen.build_messages(wspec, rng, f"peer-{tool}-{point['index']}-{i}")
        texts.append(msgs[0]["content"] if isinstance(msgs[0]["content"], str) else msgs[0]["content"][0]["text"])
    data = f"{where.folder}/peer-{batch}-{tool}.jsonl"
    where.host.put_text(peers.prompts_jsonl(texts, w.output_tokens), data, mode=0o600)
    root = server_root(where.base_url)
    result = f"{where.folder}/peer-{batch}-{tool}.json"
    assert tools.tokenizer is not None
    if tool == "vllm":
        assert tools.vllm_python is not None
        argv = peers.vllm_peer_argv(tools.vllm_python, base_url=root, model=target.served_model, tokenizer=tools.tokenizer,
                               dataset=data, num_prompts=n, output_tokens=w.output_tokens, concurrency=conc, rate=rate,
                               warmups=conc or 1, seed=spec.seed, result_dir=where.folder,
                               result_file=Path(result).name)
        env = {"OPENAI_API_KEY": target.api_key or ""}
    else:
        assert tools.guidellm is not None
        # Its warm-up: as long as ours took at this level (the point's warm-up requests, before its clock).
        warm = [r for r in ours if r.get("type") == "request" and r.get("warmup") and r.get("e2e_s")]
        argv = peers.guidellm_argv(tools.guidellm, base_url=root, api_key=target.api_key, model=target.served_model,
                                   tokenizer=tools.tokenizer, dataset=data, duration_s=spec.duration_s,
                                   concurrency=conc, rate=rate, warmup_s=max((r["e2e_s"] for r in warm), default=0.0),
                                   out_path=result)
        env = peers.guidellm_env(target.api_key)
    say(f"▶ {peers.PEER_NAMES[tool]} at {w.label} " + (f"c={conc}" if rate is None else f"{rate:g}/s"))
    before = _server_counters(target)
    cpu0 = children_cpu_s()
    try:
        fig = peers.run_peer(where.host, tool, argv, result, env=env)
        if isinstance(where.host, LocalHost):
            fig["client_cpu_s"] = children_cpu_s() - cpu0
            fig["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except MistralLabError as e:
        d.notes.append(f"{peers.PEER_NAMES[tool]} at {point['index']}: {e.message}")
        return []
    after = _server_counters(target, settled=True)
    check = None
    if before and after and tool == "vllm":
        # A peer reports totals only, and the server's window also holds its ready check and warm-up requests,
        # which it does not report: shown beside the server's count, not compared.
        per = fig["output_tokens"] / max(1, fig["requests"])
        check = witness.check({"server_before": before, "server_after": after},
                              [{"completion_tokens": per} for _ in range(fig["requests"])])
        if check is not None:
            check.checks = [c.model_copy(update={"compared": False}) for c in check.checks
                            if c.quantity in ("output tokens", "requests")]
            check.notes.insert(0, f"the server's counts also hold the peer's ready check and {conc or 1} warm-up "
                                  "request(s), which it does not report")
    cmd = peers.redacted(argv, target.api_key)
    return [PeerRun(tool=peers.PEER_NAMES[tool], workload=w.name, concurrency=None if rate else conc, rate=rate,
                    repeat=point["repeat"], command=cmd, witness=check, **fig)]


# ---- summarize and compare ------------------------------------------------------------------------------------


def summarize(spec: BenchSpec, docs: list[dict[str, Any]], hourly_usd: float | None) -> tuple[list[Point], list[Level]]:
    records = [d for d in docs if d.get("type") == "request" and not d.get("warmup")]
    heads = [d for d in docs if d.get("type") == "point" and int(d.get("point", -1)) >= 0]
    pts = metrics.summarize_all(docs, slo=spec.slo, hourly_usd=hourly_usd)
    return pts, metrics.levels(pts, records, slo=spec.slo, hourly_usd=hourly_usd, heads=heads)


def roofline_rows(spec: BenchSpec, target: Target, levels: list[Level], records: list[dict]
                  ) -> tuple[list[results.RooflineRow], list[str], dict[str, int]]:
    """Batch-1 decode (the lowest level measured) against the bandwidth roofline; also the context it ran at."""
    if target.plan is None or target.catalog_id is None:
        return [], ["roofline: needs a deployment's plan (precision, GPU); a base_url run has none"], {}
    model = get_model(target.catalog_id)
    rows, notes, contexts = [], [], {}
    for name in dict.fromkeys(lv.workload for lv in levels):
        pts = [lv for lv in levels if lv.workload == name and lv.decode_tokens_per_s is not None]
        if not pts:
            continue
        lv = min(pts, key=lambda x: x.level)
        recs = [r for r in records if r["workload"] == name and not r.get("error") and r.get("prompt_tokens")
                and (r.get("concurrency") in (None, lv.concurrency))]
        ctx = int(sum(r["prompt_tokens"] + (r.get("completion_tokens") or 0) / 2 for r in recs) / len(recs)) if recs else 0
        contexts[name] = ctx
        line = roofline.decode_roofline(model, target.plan, ctx, bandwidth_gbs=spec.bandwidth_gbs,
                                        bandwidth_source=spec.bandwidth_source, weights_gb=spec.weights_gb)
        if line is None:
            notes.append(f"roofline: no memory bandwidth known for {target.plan.gpu_name}; pass bandwidth_gbs=")
            break
        rows.append(results.RooflineRow(
            workload=name, concurrency=lv.concurrency, roofline=line, achieved_tokens_per_s=lv.decode_tokens_per_s,
            achieved_pct=line.achieved_pct(lv.decode_tokens_per_s),
            server_tokens_per_s=lv.server_decode_tokens_per_s or witness.server_decode(lv.witness)))
    return rows, notes, contexts


def predictions(spec: BenchSpec, target: Target, levels: list[Level], contexts: dict[str, int],
                hourly_usd: float | None, exclude: Path) -> list[PredictionRow]:
    """The plan's prediction at each workload's context, beside the measured decode speed (lowest level) and
    throughput (at the planned concurrency, else the highest level measured)."""
    plan = target.plan
    if plan is None or target.catalog_id is None:
        return []
    model = get_model(target.catalog_id)
    factors = efficiency.current(base=spec.results_dir, exclude=exclude)
    rows = []
    for name, ctx in contexts.items():
        mine = sorted((lv for lv in levels if lv.workload == name and lv.requests > lv.errors), key=lambda x: x.level)
        if not mine:
            continue
        at = next((lv for lv in mine if lv.concurrency == plan.concurrency), mine[-1])
        pred = predict(model, plan, context_tokens=ctx, concurrency=at.concurrency or plan.concurrency,
                       bandwidth_gbs=spec.bandwidth_gbs, bandwidth_source=spec.bandwidth_source,
                       weights_gb=spec.weights_gb, hourly_usd=hourly_usd, factors=factors)
        if pred is None:
            continue
        # Decode as the server clocks it where it says (llama.cpp's timings, vLLM's TPOT): a client's view of it
        # shifts with how the stream is chunked, which is no part of what the roofline bounds.
        server = mine[0].server_decode_tokens_per_s or witness.server_decode(mine[0].witness)
        rows.append(PredictionRow(workload=name, prediction=pred,
                                  measured_decode_tokens_per_s=server or mine[0].decode_tokens_per_s,
                                  decode_measured_by="server" if server else "client",
                                  measured_throughput_tokens_per_s=at.output_tokens_per_s, measured_at=at.load,
                                  measured_usd_per_mtok=at.usd_per_mtok))
    return rows


def native_results(spec: BenchSpec, target: Target, say: Printer) -> tuple[list[native.NativeResult], list[str]]:
    """llama-bench on the served file (llama.cpp deployments); vLLM's client runs as a peer instead."""
    dep = target.deployment
    if not spec.native_bench or dep is None or target.host is None or target.engine != "llamacpp":
        return [], []
    tools, ref = dict(dep.tools), dep.model_ref
    gpu = bool(target.plan and target.plan.gpu_vendor in ("nvidia", "amd"))
    if not tools.get("llama-bench") or not ref or not str(ref).startswith("/"):
        return [], ["llama-bench: skipped (no llama-bench or no local model file recorded for the deployment)"]
    say("▶ llama-bench on the same model file")
    try:
        return [native.run_llama_bench(target.host, tools["llama-bench"], ref, gpu=gpu)], []
    except MistralLabError as e:
        return [], [f"llama-bench failed: {e.message}"]


def client_notes(levels: list[Level]) -> list[str]:
    notes = []
    for lv in levels:
        share = lv.client_worker_share_max or 0.0
        if share > CLIENT_BOUND_SHARE:
            notes.append(f"{lv.workload} {lv.load}: a load worker kept {share:.0%} of a core busy, so this level may "
                         "show the client's limit rather than the server's")
        if lv.itl_note:
            notes.append(f"{lv.workload} {lv.load}: {lv.itl_note}")
        if lv.witness is not None and lv.witness.flagged:
            notes.append(f"{lv.workload} {lv.load}: the server's counters disagree: {lv.witness.summary()}")
    return notes


# ---- the whole run --------------------------------------------------------------------------------------------


def run_spec(spec: BenchSpec, say: Printer = print) -> Run:
    started = state.now()
    with ExitStack() as stack:
        target = open_target(spec.deployment, spec.base_url, spec.api_key, model=spec.model, engine=spec.engine,
                             catalog_id=spec.catalog_id, context=spec.context, stack=stack)
        context = spec.context or target.context
        sized = size_prompts(spec, target, context, say)
        slots = target.plan.concurrency if target.plan else 1
        loads = spec.loads(slots)
        run_id, folder = results.new_run_dir(spec.deployment, spec.where, spec.results_dir)
        where = place(spec.where, target, run_id, stack)
        notes = list(sized.notes)
        forced = target.engine in FORCES_OUTPUT
        if not forced:
            notes.append(f"output length not forced: {target.engine or 'this server'} takes no ignore_eos")
        gpu = bool(target.plan and target.plan.gpu_vendor in ("nvidia", "amd"))
        warn = core_warning(where, target.engine, gpu, spec.workers or 1)
        if warn:
            say(f"⚠ {warn}")
            notes.append(warn)
        say(f"▶ {len(loads)} load level(s) × {spec.repeats} repeat(s) of {spec.duration_s:g} s ({spec.mode}: "
            f"{', '.join(f'{x:g}' for x in loads)}) × {', '.join(w.label for w in sized.workloads)} — {where.detail}")
        t0 = time.monotonic()
        driven = drive(spec, target, sized, where, run_id, loads, folder / results.RECORDS, say)
        say(f"✔ load finished in {time.monotonic() - t0:.0f} s")
        if driven.aborted:
            say(f"✘ the run ended early: {driven.aborted}")
        notes += driven.notes

        price = spec.hourly_usd if spec.hourly_usd is not None else (target.plan.hourly_usd if target.plan else None)
        pts, levels = summarize(spec, driven.docs, price)
        notes += client_notes(levels)
        records = [r for r in driven.docs if r.get("type") == "request" and not r.get("warmup")]
        for r in records:
            r["concurrency"] = next((p.concurrency for p in pts if p.index == r["point"]), None)
        rows, more, contexts = roofline_rows(spec, target, levels, records)
        notes += more
        preds = predictions(spec, target, levels, contexts, price, exclude=folder)
        natives, more = ([], []) if driven.aborted else native_results(spec, target, say)
        notes += more
        heads = [d for d in driven.docs if d.get("type") == "point" and int(d.get("point", -1)) >= 0]
        tokens = sum(r.get("completion_tokens") or 0 for r in records if not r.get("error"))
        lg_cpu = sum(h.get("cpu_s") or 0.0 for h in heads)
        client_cpu = {"load_generator_s": lg_cpu, "runner_s": driven.runner_cpu_s, "output_tokens": float(tokens),
                      "span_s": sum(h.get("duration_s") or 0.0 for h in heads)}
        if driven.tree_cpu_s:
            client_cpu["load_generator_tree_s"] = driven.tree_cpu_s
        meta = _meta(spec, target, run_id, where, loads, sized, forced, price, started, notes, client_cpu,
                     driven.aborted, context)
    out = Run(meta=meta, points=pts, levels=levels, roofline=rows, native=natives, peers=driven.peers,
              knees=driven.knees, predictions=preds)
    results.save(out, folder)
    if spec.plots and pts:
        from mistral_lab.bench import plots as _plots

        _plots.save_all(out, folder)
    say(f"✔ saved {out.ref} in {folder}")
    return out


def _meta(spec: BenchSpec, target: Target, run_id: str, where: Placement, loads: list[float], sized: Sized,
          forced: bool, price: float | None, started: str, notes: list[str], client_cpu: dict[str, float],
          aborted: str | None, context: int) -> RunMeta:
    dep, plan = target.deployment, target.plan
    return RunMeta(
        run_id=run_id, deployment=spec.deployment, model=target.catalog_id,
        model_name=plan.model_name if plan else None, served_model=target.served_model,
        variant=plan.variant if plan else None, engine=target.engine, engine_version=engine_version(target),
        precision=plan.precision if plan else None, quant=plan.quant if plan else None,
        gpu=plan.gpu if plan else None, gpu_name=plan.gpu_name if plan else None,
        gpu_count=plan.gpu_count if plan else None,
        driver=(dep.versions.get("driver") or (dep.facts.driver_version if dep.facts else None)) if dep else None,
        flags=dep.serve_command if dep else None,
        context=context, plan=plan.model_dump(mode="json") if plan else None,
        where=spec.where, where_detail=where.detail, base_url=where.base_url, seed=spec.seed, mode=spec.mode,
        loads=loads, workloads=sized.infos, requests_per_point=spec.requests, duration_s_per_point=spec.duration_s,
        warmup=spec.warmup, repeats=spec.repeats, stop_at_knee=spec.stop_at_knee, read_window_s=spec.read_window_s,
        client_cpu=client_cpu, slo=spec.slo.as_dict(), forced_output=forced, hourly_usd=price,
        price_source=plan.price_source if plan else None, started_at=started, ended_at=state.now(),
        versions={"mistral_lab": ml_version, "loadgen": loadgen.VERSION, "client_python": sys.version.split()[0]},
        aborted=aborted, notes=notes,
    )
