"""`mistral-lab deploy`, `status`, `logs`, `teardown`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mistral_lab import planning, state
from mistral_lab.lifecycle.deploy import deploy
from mistral_lab.lifecycle.status import logs, status
from mistral_lab.lifecycle.teardown import teardown
from mistral_lab.planning.parameters import option_pairs

from . import _options as flags
from ._app import app, console

Opt = typer.Option


@app.command("deploy")
def deploy_cmd(
    model: Annotated[str | None, typer.Argument(help="catalog id (or set `model` in -f)")] = None,
    target: Annotated[str | None, Opt(help="local | ssh | digitalocean")] = None,
    name: Annotated[str | None, Opt(help="deployment name (default: model-engine)")] = None,
    preset: Annotated[str | None, Opt("-f", "--file", help="parameters YAML, e.g. parameters/local-demo.yaml")] = None,
    engine: Annotated[str | None, Opt(help="auto | vllm | llamacpp")] = None,
    gpu: Annotated[str | None, Opt(help="size slug, GPU name or auto")] = None,
    variant: Annotated[str | None, Opt()] = None,
    precision: Annotated[str | None, Opt()] = None,
    quant: Annotated[str | None, Opt()] = None,
    context: Annotated[int | None, Opt()] = None,
    concurrency: Annotated[int | None, Opt()] = None,
    region: Annotated[str | None, Opt(help="DigitalOcean region")] = None,
    port: Annotated[int | None, Opt(help="server port on the host")] = None,
    host: flags.Host = None,
    ssh_port: flags.SSHPort = None,
    user: flags.User = None,
    key: flags.Key = None,
    known_hosts: flags.KnownHosts = None,
    host_key: flags.HostKey = None,
    trust_on_first_use: flags.TrustOnFirstUse = False,
    api_url: flags.ApiUrl = None,
    allow_from: flags.AllowFrom = None,
    cache_volume: flags.CacheVolume = None,
    option: flags.Option = None,
    timeout: Annotated[float, Opt(help="seconds to wait for the server to become ready")] = 900,
    keep_on_failure: Annotated[bool, Opt(help="keep a billed droplet when deploy fails")] = False,
) -> None:
    """Deploy a model: provision the host, install the engine, fetch the model, start the server."""
    values = planning.load_preset(preset) if preset else {}
    plan_flags = dict(model=model, target=target, name=name, engine=engine, gpu=gpu, variant=variant,
                      precision=precision, quant=quant, context=context, concurrency=concurrency, region=region,
                      port=port)
    values.update({k: v for k, v in plan_flags.items() if v is not None})
    values.update(flags.host_options(host=host, ssh_port=ssh_port, user=user, key=key, known_hosts=known_hosts,
                                     host_key=host_key, trust_on_first_use=trust_on_first_use, api_url=api_url,
                                     allow_from=allow_from, cache_volume=cache_volume))
    values.update(option_pairs(option or []))
    req, options = planning.split(values)
    dep = deploy(req, options=options, start_timeout=timeout, keep_on_failure=keep_on_failure)
    console.print(Text.assemble(("up", "green"), f" {dep.name}: {dep.plan.model} on {dep.plan.engine} "
                                                 f"({dep.plan.gpu_name})"))


@app.command("status")
def status_cmd(
    name: Annotated[str | None, typer.Argument(help="deployment name; all when omitted")] = None,
    as_json: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Show deployments: state, health, endpoint, cost so far."""
    if name:
        info = status(name)
        if as_json:
            print(json.dumps(info, indent=2))
            return
        t = Table(show_header=False, box=None)
        for k in ("name", "status", "healthy", "hours_up", "cost_usd", "runs_as"):
            if k in info:
                t.add_row(k.replace("_", " "), str(info[k]))
        t.add_row("model", f"{info['plan']['model']} on {info['plan']['engine']} ({info['plan']['gpu_name']})")
        if info.get("endpoint"):
            t.add_row("endpoint", info["endpoint"]["base_url"])
            t.add_row("api key file", info["endpoint"]["api_key_file"])
        for s in info["timings"]:
            t.add_row(f"  {s['step']}", f"{s['seconds']:.1f}s" + (" (cached)" if s["skipped"] else ""))
        if info.get("error"):
            t.add_row("error", info["error"])
        console.print(t)
        return
    deps = [status(n) for n in state.names()]
    if as_json:
        print(json.dumps(deps, indent=2))
        return
    t = Table("name", "status", "healthy", "model", "engine", "target", "hardware", "hours", "cost $")
    for d in deps:
        p = d["plan"]
        t.add_row(d["name"], d["status"], "yes" if d["healthy"] else "no", p["model"], p["engine"], p["target"],
                  p["gpu_name"], f"{d['hours_up']:.2f}", f"{d['cost_usd']:.2f}")
    console.print(t if deps else "no deployments")


@app.command("logs")
def logs_cmd(
    name: Annotated[str, typer.Argument()],
    lines: Annotated[int, Opt("-n", "--lines")] = 200,
) -> None:
    """The server's log on its host."""
    print(logs(name, lines), end="")


@app.command("teardown")
def teardown_cmd(
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, Opt("--yes", "-y", help="do not ask")] = False,
    drop_cache: Annotated[bool, Opt(help="digitalocean: delete the cache volume too (kept otherwise, billed "
                                         "monthly)")] = False,
) -> None:
    """Stop the server and destroy what deploy created (the droplet, its firewall and key on DigitalOcean); a cache
    volume is kept for the next deploy in its region unless --drop-cache."""
    dep = state.load(name)
    if not yes:
        typer.confirm(f"tear down {name} ({dep.plan.model} on {dep.plan.target}, {dep.host.address})?", abort=True)
    report = teardown(name, drop_cache=drop_cache)
    console.print(Text.assemble(("torn down", "green"), f" {name}: {report.hours:.2f} h, about ${report.cost_usd:.2f}"))
