"""`mistral-lab deploy`, `status`, `logs`, `teardown`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mistral_lab import deploy as deploy_mod
from mistral_lab import params, state

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
    host: Annotated[str | None, Opt(help="ssh: host name or address")] = None,
    ssh_port: Annotated[int | None, Opt(help="ssh/digitalocean: SSH port")] = None,
    user: Annotated[str | None, Opt(help="ssh/digitalocean: login user")] = None,
    key: Annotated[str | None, Opt(help="ssh/digitalocean: private key file")] = None,
    known_hosts: Annotated[str | None, Opt(help="ssh: known_hosts file with the host's key")] = None,
    host_key: Annotated[str | None, Opt(help="ssh: the host's public key, 'ssh-ed25519 AAAA...'")] = None,
    trust_on_first_use: Annotated[bool, Opt(help="ssh: accept and record an unknown host key")] = False,
    api_url: Annotated[str | None, Opt(help="digitalocean: API base URL (default DIGITALOCEAN_API_URL or DO's)")] = None,
    allow_from: Annotated[str | None, Opt(help="digitalocean: CIDR allowed to SSH in")] = None,
    timeout: Annotated[float, Opt(help="seconds to wait for the server to become ready")] = 900,
    keep_on_failure: Annotated[bool, Opt(help="keep a billed droplet when deploy fails")] = False,
) -> None:
    """Deploy a model: provision the host, install the engine, fetch the model, start the server."""
    values = params.load_preset(preset) if preset else {}
    flags = dict(model=model, target=target, name=name, engine=engine, gpu=gpu, variant=variant, precision=precision,
                 quant=quant, context=context, concurrency=concurrency, region=region, port=port, host=host,
                 ssh_port=ssh_port, user=user, key=key, known_hosts=known_hosts, host_key=host_key,
                 trust_on_first_use=trust_on_first_use or None, api_url=api_url, allow_from=allow_from)
    values.update({k: v for k, v in flags.items() if v is not None})
    req, options = params.split(values)
    options.update(params.env_secrets())
    dep = deploy_mod.deploy(req, options=options, start_timeout=timeout, keep_on_failure=keep_on_failure)
    console.print(f"[green]up[/green] {dep.name}: {dep.plan.model} on {dep.plan.engine} ({dep.plan.gpu_name})")


@app.command("status")
def status_cmd(
    name: Annotated[str | None, typer.Argument(help="deployment name; all when omitted")] = None,
    as_json: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Show deployments: state, health, endpoint, cost so far."""
    if name:
        info = deploy_mod.status(name)
        if as_json:
            print(json.dumps(info, indent=2))
            return
        t = Table(show_header=False, box=None)
        for k in ("name", "status", "healthy", "hours_up", "cost_usd"):
            t.add_row(k, str(info[k]))
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
    deps = [deploy_mod.status(n) for n in state.names()]
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
    print(deploy_mod.logs(name, lines), end="")


@app.command("teardown")
def teardown_cmd(
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, Opt("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Stop the server and destroy what deploy created (the droplet, its firewall and key on DigitalOcean)."""
    dep = state.load(name)
    if not yes:
        typer.confirm(f"tear down {name} ({dep.plan.model} on {dep.plan.target}, {dep.host.address})?", abort=True)
    report = deploy_mod.teardown(name)
    console.print(f"[green]torn down[/green] {name}: {report.hours:.2f} h, about ${report.cost_usd:.2f}")
