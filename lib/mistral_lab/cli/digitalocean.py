"""`mistral-lab hosts preflight --target digitalocean` and `mistral-lab sweep`.

Neither ever prints the token: it is read from the environment inside the API client, and every error we raise
about it says "the token was refused" and nothing more.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

import click
import typer
from rich.table import Table

from mistral_lab import state
from mistral_lab.errors import BadInput
from mistral_lab.hosts.digitalocean import DigitalOceanTarget, sweep

from ._app import app, console, console_err
from .hosts import hosts_app


@hosts_app.command("preflight")
def preflight_cmd(
    gpu: Annotated[str, typer.Option(help="DigitalOcean size slug, e.g. gpu-h100x1-80gb")],
    target: Annotated[str, typer.Option(help="only digitalocean has a preflight")] = "digitalocean",
    region: Annotated[str | None, typer.Option(help="region slug; default: the first region offering the size")] = None,
    api_url: Annotated[str | None, typer.Option(help="DigitalOcean-compatible API base URL "
                                                     "(default: env DIGITALOCEAN_API_URL or the real API)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Check the DigitalOcean token, the size and its regions, and show the hourly price. Creates nothing."""
    if target != "digitalocean":
        raise BadInput(f"preflight checks cloud accounts; target {target!r} has none", field="target",
                       fix="use --target digitalocean")
    result = DigitalOceanTarget({"api_url": api_url}).preflight(gpu, region)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    t = Table(show_header=False, box=None)
    gpu_text = f"{result.gpu_count}x {result.gpu_model} ({result.vram_gib} GiB)" if result.gpu_model else "none"
    for label, value in (("size", result.size), ("region", result.region),
                         ("offered in", ", ".join(result.regions)), ("gpu", gpu_text),
                         ("cpu / ram", f"{result.vcpus} vCPUs, {result.memory_gib:g} GiB"), ("image", result.image),
                         ("price", f"${result.hourly_usd:.2f}/hour (${result.monthly_usd:,.0f}/month)"),
                         ("api", result.api_url)):
        t.add_row(label, value)
    console.print(t)
    console.print(f"✔ the token works; {result.size} costs ${result.hourly_usd:.2f}/hour in {result.region} "
                  "until destroyed (a powered-off droplet still bills)", highlight=False)


@app.command("sweep")
def sweep_cmd(
    yes: Annotated[bool, typer.Option("--yes", help="destroy what is listed, without asking")] = False,
    api_url: Annotated[str | None, typer.Option(help="DigitalOcean-compatible API base URL")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the resources as JSON")] = False,
    expired: Annotated[bool, typer.Option(
        "--expired", help="destroy, without asking, only the droplets past their expiry tag (workshops) and their "
                          "firewalls and keys; for a cron job")] = False,
    all_owners: Annotated[bool, typer.Option(
        "--all-owners", help="list what every mistral-lab installation made on the account; destroys nothing "
                             "unless each resource is named with --only")] = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="destroy just this resource, as listed: kind:id (repeatable)")] = None,
    owner: Annotated[str | None, typer.Option(help="whose resources (default: this installation's)")] = None,
    volumes: Annotated[bool, typer.Option(
        "--volumes", help="with --yes, delete the cache volumes too (teardown keeps them for the next deploy in "
                          "their region; they bill monthly)")] = False,
) -> None:
    """List what this installation made on DigitalOcean (GPU droplets too, and cache volumes), with uptime and cost;
    --yes destroys it (cache volumes only with --volumes). Other installations' resources are listed with
    --all-owners and destroyed only when named with --only."""
    whose = None if all_owners else (owner or state.installation_id())
    if expired:
        # Whoever created them set the end: nothing to confirm, which is what makes it safe to run from cron.
        done = sweep(owner=whose, api_url=api_url, destroy=True, expired=True,
                     on_line=lambda line: console_err.print("  " + line, highlight=False, markup=False))
        if as_json:
            print(json.dumps([asdict(i) for i in done], indent=2))
            return
        spent = sum(i.cost_usd for i in done if i.kind == "droplet")
        console.print(f"✔ destroyed {sum(i.destroyed for i in done)} expired resources" +
                      (f" (droplets had cost about ${spent:.2f})" if done else ""), highlight=False)
        return
    items = sweep(owner=whose, api_url=api_url, destroy=False, only=only)
    if as_json and not yes:
        print(json.dumps([asdict(i) for i in items], indent=2))
        return
    if not items:
        console.print("✔ nothing of " + ("mistral-lab's" if all_owners else "this installation's") +
                      " is left on DigitalOcean", highlight=False)
        return
    t = Table("kind", "id (for --only)", "name", "owner", "size, region", "hours up", "$/hour", "spent", "$/month",
              "expires")
    for i in items:
        money, volume = i.kind == "droplet", i.kind == "volume"
        expires = "" if i.expires_at is None else datetime.fromtimestamp(i.expires_at, UTC).strftime("%Y-%m-%d %H:%M")
        held = f" (on droplet {i.attached_to[0]})" if i.attached_to else ""
        t.add_row(i.kind, i.ref, i.name, i.owner or "(none)", f"{i.size}, {i.region}{held}" if money or volume else "",
                  f"{i.hours:.2f}" if money or volume else "", f"{i.hourly_usd:.2f}" if money else "",
                  f"${i.cost_usd:.2f}" if money else "", f"${i.monthly_usd:.2f}" if volume else "", expires)
    console.print(t)
    burn = sum(i.hourly_usd for i in items if i.kind == "droplet")
    spent = sum(i.cost_usd for i in items if i.kind == "droplet")
    monthly = sum(i.monthly_usd for i in items if i.kind == "volume")
    console.print(f"{len(items)} resources; droplets bill ${burn:.2f}/hour, about ${spent:.2f} so far"
                  + (f"; cache volumes ${monthly:.2f}/month, kept until dropped (--yes --volumes)"
                     if any(i.kind == "volume" for i in items) else ""), highlight=False)
    if all_owners and not only:
        console_err.print("other installations' resources are destroyed only when named: --yes --only KIND:ID ...",
                          highlight=False, markup=False)
        return
    if not yes:
        confirmed = False
        if sys.stdin.isatty():
            try:
                confirmed = typer.confirm("destroy all of them" + ("" if volumes or only else
                                                                   " (cache volumes only with --volumes)") + "?",
                                          default=False)
            except (typer.Abort, click.exceptions.Abort, EOFError):
                confirmed = False
        if not confirmed:
            console_err.print("nothing destroyed (pass --yes to destroy)")
            return
    done = sweep(owner=whose, api_url=api_url, destroy=True, only=only, volumes=volumes,
                 on_line=lambda line: console.print("  " + line, highlight=False, markup=False))
    if as_json:
        print(json.dumps([asdict(i) for i in done], indent=2))
    console.print(f"✔ destroyed {sum(i.destroyed for i in done)} resources")
