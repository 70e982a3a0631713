"""`mistral-lab workshop up|down|revoke|status|cards|logs`: one model for a room of learners, over HTTPS.

With `--json`, progress goes to stderr and stdout holds only the JSON (the cards, keys included: that is what it is
for); without it, keys are never printed, only the paths of the 0600 card files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mistral_lab import planning
from mistral_lab import workshop as ws_mod
from mistral_lab.planning.parameters import option_pairs

from . import _options as flags
from ._app import app, console, console_err

Opt = typer.Option
workshop_app = typer.Typer(no_args_is_help=True, help="Serve one model to a room of learners: keys, cards, budget.")
app.add_typer(workshop_app, name="workshop")


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _printer(as_json: bool):
    # soft_wrap: a progress line stays one line, whatever the terminal's width (or none).
    out = console_err if as_json else console
    return lambda line: out.print(line, highlight=False, markup=False, soft_wrap=True)


@workshop_app.command("up")
def up_cmd(
    name: Annotated[str, Opt(help="the workshop's name (also its deployment's)")],
    learners: Annotated[int, Opt(help="how many learners: one key and card each")],
    model: Annotated[str, Opt(help="catalog id, e.g. ministral-8b")],
    target: Annotated[str, Opt(help="local | ssh | digitalocean")] = "local",
    hours: Annotated[float, Opt(help="how long it runs; the budget and the expiry follow from it")] = 2.0,
    budget: Annotated[float | None, Opt(help="refuse to start when the planned cost is over this many dollars")] = None,
    allow: Annotated[str | None, Opt(help="CIDRs learners connect from, comma-separated (local default: "
                                          "127.0.0.1/32)")] = None,
    ssh_from: Annotated[str | None, Opt(help="digitalocean: CIDRs allowed to SSH in (default: this machine)")] = None,
    https_port: Annotated[int | None, Opt(help="the proxy's port (digitalocean 443; else the first free from 8443)")] = None,
    public_host: Annotated[str | None, Opt(help="the address on the cards (default: the host's)")] = None,
    rate: Annotated[int, Opt(help="requests per minute per learner key; more get 429")] = ws_mod.DEFAULT_RATE_PER_MIN,
    burst: Annotated[int, Opt(help="requests a learner may send at once above the rate")] = ws_mod.DEFAULT_BURST,
    max_tokens: Annotated[int, Opt(help="the most tokens one reply may have: the proxy caps each learner's "
                                        "request (and n to 1)")] = ws_mod.DEFAULT_MAX_TOKENS,
    tokens_per_learner: Annotated[int | None, Opt(help="prompt + completion tokens each learner may use in the whole "
                                                       "workshop, counted by the proxy from the server's usage; "
                                                       "then 429 insufficient_quota")] = None,
    domain: Annotated[str | None, Opt(help="a DNS name pointing at the host: the proxy gets a certificate for it "
                                           "from an ACME CA (certbot, HTTP-01 on --acme-http-port), renewed by "
                                           "itself")] = None,
    acme_server: Annotated[str, Opt(help="the ACME directory URL")] = ws_mod.LETS_ENCRYPT,
    acme_email: Annotated[str | None, Opt(help="the CA's contact for expiry notices (optional)")] = None,
    acme_http_port: Annotated[int, Opt(help="where the CA's HTTP-01 check arrives (80 on the internet)")] =
        ws_mod.ACME_HTTP_PORT,
    dns_wait_minutes: Annotated[float, Opt(help="digitalocean --domain: how long to wait for the A record to the new "
                                                "droplet's address (up prints it)")] = ws_mod.DNS_WAIT_MINUTES,
    idle_minutes: Annotated[int | None, Opt(help="digitalocean: the droplet removes itself after this long with no "
                                                 "learner request (needs MISTRAL_LAB_DEADLINE_TOKEN)")] = None,
    cache_volume: flags.CacheVolume = None,
    engine: Annotated[str, Opt(help="auto | vllm | llamacpp")] = "auto",
    gpu: Annotated[str, Opt(help="size slug, GPU name or auto")] = "auto",
    region: Annotated[str | None, Opt(help="digitalocean region")] = None,
    context: Annotated[int | None, Opt(help="tokens per learner (default: what fits)")] = None,
    vision: Annotated[bool | None, Opt("--vision/--no-vision", help="images too (default: when the model has an "
                                                                   "image encoder)")] = None,
    host: flags.Host = None,
    ssh_port: flags.SSHPort = None,
    user: flags.User = None,
    key: flags.Key = None,
    host_key: flags.HostKey = None,
    known_hosts: flags.KnownHosts = None,
    trust_on_first_use: flags.TrustOnFirstUse = False,
    api_url: flags.ApiUrl = None,
    option: flags.Option = None,
    timeout: Annotated[float, Opt(help="seconds to wait for the model server")] = 900,
    yes: Annotated[bool, Opt("--yes", "-y", help="do not ask before creating billed resources")] = False,
    as_json: Annotated[bool, Opt("--json", help='print {"cards": [{"base_url", "api_key", "fingerprint"}, ...]}')] = False,
) -> None:
    """Deploy one model for N learners behind an HTTPS proxy with a key each; write printable cards.

    The planned cost for --hours is shown before anything is created; on DigitalOcean the droplet carries an expiry
    tag and the firewall opens the proxy to --allow only. With MISTRAL_LAB_DEADLINE_TOKEN (a token with only
    droplet:delete, firewall:delete, ssh_key:delete, tag:delete) the droplet removes itself at its end (or when
    idle, --idle-minutes); without it, `mistral-lab sweep --expired` must run after the end.
    """
    say = _printer(as_json)
    req = ws_mod.RoomRequest.of(name=name, learners=learners, model=model, target=target, hours=hours,
                                budget_usd=budget, allow=_split(allow), ssh_from=_split(ssh_from),
                                https_port=https_port, public_host=public_host, rate_per_min=rate, burst=burst,
                                max_tokens=max_tokens, tokens_per_learner=tokens_per_learner, domain=domain,
                                acme_server=acme_server, acme_email=acme_email, acme_http_port=acme_http_port,
                                dns_wait_minutes=dns_wait_minutes,
                                idle_minutes=idle_minutes, cache_volume=flags.cache_option(cache_volume),
                                engine=engine, gpu=gpu, region=region,
                                context=context, vision=vision)
    room = ws_mod.plan_room(req)
    if room.hourly_usd and not yes and sys.stdin.isatty():
        say(room.summary())
        typer.confirm(f"create it (about ${room.planned_cost_usd:.2f})?", abort=True, err=True)
    values = {**flags.host_options(host=host, ssh_port=ssh_port, user=user, key=key, host_key=host_key,
                                   known_hosts=known_hosts, trust_on_first_use=trust_on_first_use, api_url=api_url),
              **option_pairs(option or [])}
    _, options = planning.split(values)
    ws, files = ws_mod.up(room, options=options, say=say, start_timeout=timeout)
    if as_json:
        keys = ws_mod.load_keys(ws.name)
        print(json.dumps({"name": ws.name, "model": ws.model, "base_url": ws.base_url, "fingerprint": ws.fingerprint,
                          "chat_page": ws.page_url, "tokens_per_learner": ws.tokens_per_learner,
                          "expires_at": ws.expires_at, "deadline_kept_by": ws.deadline_kept_by,
                          "cache_volume": ws.cache_volume,
                          "planned_cost_usd": ws.planned_cost_usd,
                          "cards_html": files["html"], "cards_csv": files["csv"],
                          "cards": [c.public() for c in ws_mod.cards(ws, keys)]}, indent=2))
        return
    console.print(Text.assemble(("up", "green"), f" {ws.name}: {len(ws.learners)} learners at {ws.base_url}\n"
                                f"  certificate SHA-256 {ws.fingerprint}"
                                f"{' (from the CA for ' + ws.domain + ')' if ws.domain else ''}\n"
                                f"  chat page: {ws.page_url}\n  cards: {files['html']} (print it) and "
                                f"{files['csv']}"))


@workshop_app.command("down")
def down_cmd(
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, Opt("--yes", "-y", help="do not ask")] = False,
    csv_path: Annotated[Path | None, Opt("--csv", help="where the per-learner usage goes (default: "
                                                     "<home>/reports/workshop-NAME-usage-<time>.csv)")] = None,
    drop_cache: Annotated[bool, Opt(help="digitalocean: delete the cache volume too (kept for the next workshop "
                                         "otherwise, billed monthly)")] = False,
) -> None:
    """Write each learner's usage with the total cost to CSV, stop the proxy and destroy the deployment (droplet,
    firewall, key); print the total cost."""
    ws = ws_mod.load(name)
    if not yes:
        typer.confirm(f"end workshop {name} ({len(ws.active)} active keys, {ws.model} on {ws.target})?", abort=True)
    report = ws_mod.down(name, say=_printer(False), csv_path=csv_path, drop_cache=drop_cache)
    for left in report.leftovers:
        console_err.print(Text.assemble(("left behind", "yellow"), f" {left}"))


@workshop_app.command("revoke")
def revoke_cmd(
    name: Annotated[str, typer.Argument()],
    learner: Annotated[str, typer.Argument(help="learner id (l07) or the key itself")],
) -> None:
    """Revoke one learner's key at once: the proxy reloads its key file, nothing restarts."""
    ws_mod.revoke(name, learner, say=_printer(False))


@workshop_app.command("status")
def status_cmd(
    name: Annotated[str | None, typer.Argument(help="workshop name; all when omitted")] = None,
    as_json: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Workshops: learners, keys active, address, certificate, cost so far, time left; with a NAME, each learner's
    requests, tokens, errors, 429s, p50 latency and last request (read from the proxy)."""
    infos = [ws_mod.status(n, with_usage=bool(name)) for n in ([name] if name else ws_mod.names())]
    if as_json:
        print(json.dumps(infos[0] if name else infos, indent=2))
        return
    t = Table("name", "status", "model", "target", "url", "keys", "hours left", "cost $", "planned $")
    for i in infos:
        t.add_row(i["name"], i["status"], i["model"], i["target"], i["base_url"],
                  f"{i['active_keys']}/{len(i['learners'])}", f"{i['expires_in_h']:.2f}",
                  f"{i.get('cost_usd', 0.0):.2f}", f"{i['planned_cost_usd']:.2f}")
    console.print(t if infos else "no workshops")
    if name and infos[0].get("usage") is not None:
        console.print(_usage_table(infos[0]["usage"]))


def _usage_table(rows: list[dict]) -> Table:
    t = Table("learner", "requests", "prompt tok", "completion tok", "tokens left", "errors", "429", "p50 s",
              "last seen")
    for r in rows:
        t.add_row(r["learner"], str(r["requests"]), f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}",
                  "-" if r["tokens_left"] is None else f"{r['tokens_left']:,}", str(r["errors"]),
                  str(r["http_429"]), "-" if r["p50_latency_s"] is None else f"{r['p50_latency_s']:.2f}",
                  r["last_seen"] or "-")
    return t


@workshop_app.command("cards")
def cards_cmd(
    name: Annotated[str, typer.Argument()],
    as_json: Annotated[bool, Opt("--json", help="print the active cards, keys included")] = False,
) -> None:
    """Where the printable cards are; --json prints them."""
    ws = ws_mod.load(name)
    keys = ws_mod.load_keys(name)
    if as_json:
        print(json.dumps({"cards": [c.public() for c in ws_mod.cards(ws, keys)]}, indent=2))
        return
    files = ws_mod.write_cards(ws, keys)
    console.print(f"{len(ws.active)} cards: {files['html']} and {files['csv']}", highlight=False)


@workshop_app.command("logs")
def logs_cmd(
    name: Annotated[str, typer.Argument()],
    lines: Annotated[int, Opt("-n", "--lines")] = 100,
) -> None:
    """The proxy's log (errors and rate-limit refusals; learners appear by id, never by key)."""
    print(ws_mod.proxy_log(name, lines), end="")
