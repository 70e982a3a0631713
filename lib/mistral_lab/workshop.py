"""One deployment for a room of learners: an HTTPS proxy with a key per learner, cards to hand out, a budget.

    ws = workshop.up(workshop.RoomRequest(name="ws", learners=30, model="ministral-8b", target="digitalocean",
                                          hours=2, allow=["203.0.113.0/24"]))
    workshop.revoke("ws", "l07")
    workshop.down("ws")

The model is deployed once (`deploy.deploy`, the engine's concurrency sized for the room by the planner) and keeps
binding 127.0.0.1 with its own server key. In front of it, on the same host and installed through the same Host
interface, runs nginx from the distribution's packages (`infra/nginx-workshop.conf.j2`): TLS with a self-signed
certificate made here (its SHA-256 fingerprint is on every card), `allow` for the instructor's CIDRs only, a map of
learner keys in a 0600 file, `limit_req` and `limit_conn` per key (429), and the server key added on the way in.
Revoking a key rewrites that file and reloads nginx: no restart, no dropped replies.

Tokens: nginx's Lua module (`infra/workshop-learner.lua`, `infra/workshop-usage.lua`) counts each learner's prompt
and completion tokens from the server's own `usage` (a stream is asked for it with `stream_options.include_usage`
when the learner did not ask, and that event is taken out again), keeps them in a shared dict (it survives the
reload a revoke makes; after a restart it is read back from the log), refuses a learner whose
`tokens_per_learner` is spent (429 insufficient_quota) and writes one JSON line per request to `usage.jsonl` in the
proxy's folder: `usage()` and `workshop status NAME` read it, `down` writes it to CSV with the cost.

The proxy also serves a chat page at `/` (`infra/workshop-chat.html.j2`: the key pasted once, kept in the tab's
sessionStorage). With `domain`, certbot gets the certificate from an ACME CA (`infra/workshop-acme.sh`: HTTP-01
through the proxy's own nginx, a deploy hook that reloads it, a renewer beside the proxy); without one the
self-signed certificate stays and the cards say how to check its fingerprint.

On DigitalOcean the firewall opens the proxy's port to the same CIDRs only (SSH stays open to the instructor
only; with a domain, the CA's HTTP-01 port to everyone, where nginx serves only the CA's token, once the name
resolves to the new droplet), and the droplet carries an expiry tag that `mistral-lab sweep --expired` acts on; with
a deadline token (`lifecycle/deadline.py`) it also removes itself at its end or when idle. A cache volume
(`hosts/do_volumes.py`) keeps the weights for the next workshop in the region.

Records: the workshop's files live in the deployment's folder (`state.deployment_dir(name)`): `workshop.json` (no
secret), and 0600 `learner-keys.json`, `cards.html`, `cards.csv`. `down` destroys all of it with the deployment.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import ipaddress
import json
import posixpath
import re
import secrets
import shlex
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mistral_lab import infra_files, session, state
from mistral_lab.engines import service
from mistral_lab.errors import BadInput, EngineError, MistralLabError, TargetError
from mistral_lab.hosts import do_api, do_volumes
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts.base import Host, LineSink
from mistral_lab.hosts.ports import free_port
from mistral_lab.lifecycle import deadline, services
from mistral_lab.lifecycle.deploy import deploy
from mistral_lab.lifecycle.status import cost_so_far, hours_up
from mistral_lab.lifecycle.steps import print_line
from mistral_lab.lifecycle.teardown import TeardownReport, teardown
from mistral_lab.planning import Plan, PlanRequest, make_plan

KEY_PREFIX = "mlw-"
# Hex keys: nginx matches map strings ignoring case, so a mixed-case key would be worth less than it looks.
KEY_BYTES = 24
MAX_LEARNERS = 500
MAX_HOURS = 72.0
# One slot per learner: each may have CONNS_PER_LEARNER requests in flight, so a larger room queues briefly
# instead of sizing the KV cache for learners that are reading, not asking.
MAX_SLOTS = 64
CONNS_PER_LEARNER = 2
DEFAULT_RATE_PER_MIN = 20
DEFAULT_BURST = 5
DEFAULT_MAX_TOKENS = 1024  # the rate limit counts requests; this caps what one request may cost
DEFAULT_PORT = {"digitalocean": 443, "ssh": 8443, "local": 8443}
READ_TIMEOUT_S = 600
MAX_BODY_MB = 20  # a few images for vision models
CERT_SLACK_DAYS = 7  # a workshop that runs over its hours keeps a valid certificate
FILE = "workshop.json"
KEYS_FILE = "learner-keys.json"
CARDS_HTML = "cards.html"
CARDS_CSV = "cards.csv"
CERT_FILE = "proxy-cert.pem"
USAGE_FILE = "usage.jsonl"  # in the proxy's folder on the host: one JSON line per learner request (usage.lua)
USAGE_DICT_MB = 1  # the shared dict of per-learner counts: two numbers a learner, room for thousands
MAX_TOKENS_PER_LEARNER = 1_000_000_000
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
ACME_HTTP_PORT = 80
# A new droplet's address is known only once it exists: up prints it and waits this long for the domain's A record.
DNS_WAIT_MINUTES = 30.0
DNS_LOOK_EVERY_S = 10.0
ACME_RENEW_EVERY_S = 12 * 3600  # certbot's own advice: try twice a day; it renews only near the end
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]+$")
_SERVER_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]+$")

Target = Literal["local", "ssh", "digitalocean"]


# ---------------------------------------------------------------------------------------------- the request


class RoomRequest(BaseModel):
    """What the instructor asks for. Everything is checked before anything is created."""

    model_config = ConfigDict(extra="forbid")

    name: str
    learners: int = Field(ge=1, le=MAX_LEARNERS)
    model: str
    target: Target = "local"
    engine: Literal["auto", "vllm", "llamacpp"] = "auto"
    gpu: str = "auto"
    region: str | None = None
    context: int | None = Field(default=None, gt=0)
    vision: bool | None = None  # None: the model's own (False: text only, less memory, no image encoder to fetch)
    hours: float = Field(default=2.0, gt=0, le=MAX_HOURS)
    budget_usd: float | None = Field(default=None, gt=0)
    allow: list[str] | None = None
    ssh_from: list[str] | None = None
    https_port: int | None = Field(default=None, ge=1, le=65535)
    public_host: str | None = None
    rate_per_min: int = Field(default=DEFAULT_RATE_PER_MIN, ge=1, le=6000)
    burst: int = Field(default=DEFAULT_BURST, ge=0, le=1000)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=16, le=131072)
    tokens_per_learner: int | None = Field(default=None, ge=1, le=MAX_TOKENS_PER_LEARNER)
    domain: str | None = None
    acme_server: str = LETS_ENCRYPT
    acme_email: str | None = None
    acme_http_port: int = Field(default=ACME_HTTP_PORT, ge=1, le=65535)
    acme_ca_bundle: str | None = None  # a private ACME CA's own HTTPS certificate(s), a file on the host
    dns_wait_minutes: float = Field(default=DNS_WAIT_MINUTES, gt=0, le=240)  # DigitalOcean: for the A record
    idle_minutes: int | None = Field(default=None, ge=1, le=int(MAX_HOURS * 60))
    cache_volume: bool | str | None = None  # DigitalOcean: weights on a Volume kept for the next workshop

    @classmethod
    def of(cls, **fields: Any) -> RoomRequest:
        """From loose parameters (CLI flags), with errors that name the field and the fix."""
        fixes = {"learners": f"give --learners between 1 and {MAX_LEARNERS}",
                 "hours": f"give --hours above 0 and at most {MAX_HOURS:g}",
                 "budget_usd": "give --budget in US dollars, above 0",
                 "https_port": "give a port between 1 and 65535",
                 "rate_per_min": "give --rate in requests per minute per learner, at least 1",
                 "burst": "give --burst of 0 or more",
                 "max_tokens": "give --max-tokens between 16 and 131072 (tokens one reply may have)",
                 "tokens_per_learner": "give --tokens-per-learner of 1 or more (prompt + completion tokens a "
                                       "learner may use in the whole workshop)",
                 "acme_http_port": "give a port between 1 and 65535 (the CA checks port 80 on the internet)",
                 "idle_minutes": f"give --idle-minutes between 1 and {int(MAX_HOURS * 60)}",
                 "dns_wait_minutes": "give --dns-wait-minutes above 0 and at most 240"}
        try:
            req = cls(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            name = ".".join(str(p) for p in err["loc"])
            raise BadInput(err["msg"], field=name, fix=fixes.get(name)) from None
        return req


def parse_allow(value: str | list[str]) -> list[str]:
    return res.parse_cidrs(value, field="allow", service="the workshop", example="203.0.113.0/24")


def _loopback_only(cidrs: list[str]) -> bool:
    return all(ipaddress.ip_network(c).is_loopback for c in cidrs)


def _check_domain(req: RoomRequest) -> None:
    if req.domain is None:
        return
    if not _DOMAIN.match(req.domain):
        raise BadInput(f"{req.domain!r} is not a DNS name a CA can certify", field="domain",
                       fix="give the workshop's own name in lowercase, e.g. --domain ws.example.org, with an A record "
                           "to the host (an address cannot have a Let's Encrypt certificate)")
    if not req.acme_server.startswith("https://"):
        raise BadInput("the ACME directory must be an https:// URL", field="acme_server",
                       fix=f"leave it out for Let's Encrypt ({LETS_ENCRYPT})")


def room_slots(learners: int) -> int:
    return min(learners, MAX_SLOTS)


def _plan_request(req: RoomRequest) -> PlanRequest:
    """The deployment's request: what the room is priced on is what gets deployed."""
    return PlanRequest(model=req.model, target=req.target, engine=req.engine, gpu=req.gpu, region=req.region,
                       context=req.context, vision=req.vision, concurrency=room_slots(req.learners),
                       name=req.name)


@dataclass(frozen=True)
class RoomPlan:
    """The model's plan for the room and what it costs, decided before anything exists."""

    request: RoomRequest
    plan: Plan
    allow: list[str]
    port: int | None  # None: the first free port from the target's default, chosen on the host
    listen: str
    hourly_usd: float
    planned_cost_usd: float
    cache_gib: int | None = None  # the cache volume's size when one is asked for (billed monthly while kept)

    def summary(self) -> str:
        p = self.plan
        cost = (f"${self.hourly_usd:.2f}/hour x {self.request.hours:g} h = ${self.planned_cost_usd:.2f}"
                if self.hourly_usd else "$0.00 (no cloud resources)")
        budget = f", budget ${self.request.budget_usd:.2f}" if self.request.budget_usd else ""
        cache = (f"; cache volume {self.cache_gib} GiB, ${do_volumes.monthly_usd(self.cache_gib):.2f}/month while "
                 "kept (reused when it exists)" if self.cache_gib else "")
        return (f"workshop {self.request.name}: {self.request.learners} learners on {p.model} ({p.engine}, "
                f"{p.gpu_name}, {p.concurrency} slots x {p.context:,} tokens), HTTPS from {', '.join(self.allow)}; "
                f"planned cost {cost}{budget}{cache}")


def plan_room(req: RoomRequest) -> RoomPlan:
    """Size the deployment for the room and price it; raise when the inputs or the budget do not work out."""
    if req.allow is None:
        if req.target != "local":
            raise BadInput(f"a workshop on {req.target} needs the networks its learners come from", field="allow",
                           fix="pass them as CIDRs, e.g. --allow 203.0.113.0/24 (the room's public address range)")
        allow = ["127.0.0.1/32"]
    else:
        allow = parse_allow(req.allow)
    if req.ssh_from is not None and req.target != "digitalocean":
        raise BadInput("--ssh-from only applies to DigitalOcean droplets", field="ssh_from",
                       fix="drop it; on local and ssh hosts SSH is not ours to open")
    if req.ssh_from is not None:
        res.parse_allow_from(req.ssh_from)
    if req.cache_volume and req.target != "digitalocean":
        raise BadInput("--cache-volume only applies to DigitalOcean (a Volume in the droplet's region)",
                       field="cache_volume", fix="drop it; a local or ssh host keeps its cache folder by itself")
    if req.idle_minutes is not None and req.target != "digitalocean":
        raise BadInput("--idle-minutes only applies to DigitalOcean droplets (they remove themselves)",
                       field="idle_minutes", fix="drop it; `workshop down` ends a workshop on a local or ssh host")
    state.check_name(req.name)
    local_only = req.target == "local" and _loopback_only(allow)
    if req.target == "local" and not local_only and not req.public_host:
        raise BadInput("learners on other machines need this machine's address on their cards", field="public_host",
                       fix="pass it, e.g. --public-host 192.168.1.20 (or --allow 127.0.0.1/32 to stay on this machine)")
    port = req.https_port or (DEFAULT_PORT[req.target] if req.target == "digitalocean" else None)
    _check_domain(req)
    plan = make_plan(_plan_request(req))
    hourly = float(plan.hourly_usd or 0.0)
    cost = round(hourly * req.hours, 2)
    if req.budget_usd is not None and cost > req.budget_usd:
        most = req.budget_usd / hourly
        raise BadInput(f"{req.hours:g} h on {plan.gpu} at ${hourly:.2f}/hour is ${cost:.2f}, over the budget of "
                       f"${req.budget_usd:.2f}", field="budget",
                       fix=f"at most --hours {int(most * 100) / 100:g} on {plan.gpu}, a cheaper --gpu, or a higher --budget")
    cache_gib = do_volumes.volume_gib(plan.memory["weights_gb"]) if req.cache_volume else None
    return RoomPlan(request=req, plan=plan, allow=allow, port=port, listen="127.0.0.1" if local_only else "0.0.0.0",
                    hourly_usd=hourly, planned_cost_usd=cost, cache_gib=cache_gib)


# ---------------------------------------------------------------------------------------------- the record


class Learner(BaseModel):
    id: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Workshop(BaseModel):
    name: str
    status: Literal["creating", "up", "failed"]
    created_at: str = Field(default_factory=state.now)
    model: str
    target: Target
    learners: list[Learner]
    hours: float
    expires_at: int = Field(description="unix seconds; on DigitalOcean also the droplet's expiry tag")
    hourly_usd: float
    planned_cost_usd: float
    budget_usd: float | None = None
    allow: list[str]
    listen: str
    public_host: str | None = None
    https_port: int | None = None
    rate_per_min: int
    burst: int
    max_tokens: int = DEFAULT_MAX_TOKENS  # per request: the proxy caps what a learner asks (and sets it when absent)
    tokens_per_learner: int | None = Field(default=None, description="prompt + completion tokens per learner, "
                                                                     "the whole workshop; None: no budget")
    domain: str | None = Field(default=None, description="the name on the cards, certified by an ACME CA")
    acme_server: str | None = None
    acme_http_port: int | None = None
    acme_ca_bundle: str | None = None
    idle_minutes: int | None = Field(default=None, description="DigitalOcean: the droplet removes itself after this "
                                                               "long with no learner request")
    cache_volume: str | None = Field(default=None, description="DigitalOcean: the label of the cache volume the "
                                                               "weights are kept on")
    deadline_kept_by: Literal["droplet", "sweep"] | None = Field(
        default=None, description="DigitalOcean: who removes the droplet at its end: itself (a scoped token on it), "
                                  "or `mistral-lab sweep --expired` run by the instructor")
    conns_per_learner: int = CONNS_PER_LEARNER
    fingerprint: str | None = Field(default=None, description="SHA-256 of the proxy's certificate, AB:CD:... form")
    proxy_root: str | None = None
    proxy_mode: Literal["systemd", "process"] | None = None
    error: str | None = None

    @property
    def base_url(self) -> str:
        host = self.domain or self.public_host or "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}{'' if self.https_port == 443 else f':{self.https_port}'}/v1"

    @property
    def page_url(self) -> str:
        """The learners' chat page."""
        return self.base_url.removesuffix("/v1") + "/"

    @property
    def active(self) -> list[Learner]:
        return [learner for learner in self.learners if learner.active]

    def learner(self, who: str, keys: dict[str, str]) -> Learner:
        """A learner by id (l07) or by key: an instructor revoking a leaked key may only have the key."""
        by_key = {v: k for k, v in keys.items()}
        wanted = by_key.get(who, who)
        for learner in self.learners:
            if learner.id == wanted:
                return learner
        raise BadInput(f"workshop {self.name} has no learner {who if who in keys else 'with that key'!r}",
                       field="learner", fix=f"one of {self.learners[0].id}..{self.learners[-1].id}, or the key itself")


def exists(name: str) -> bool:
    return (state.deployment_dir(name) / FILE).is_file()


def names() -> list[str]:
    root = state.home() / "deployments"
    return sorted(p.name for p in root.iterdir() if (p / FILE).is_file()) if root.is_dir() else []


def load(name: str) -> Workshop:
    if not exists(name):
        known = names()
        raise BadInput(f"unknown workshop {name!r}", field="name",
                       fix=f"known workshops: {', '.join(known)}" if known else "none yet: mistral-lab workshop up ...")
    return Workshop.model_validate_json((state.deployment_dir(name) / FILE).read_text())


def save(ws: Workshop) -> None:
    state.write_secret(ws.name, FILE, ws.model_dump_json(indent=2))


def load_keys(name: str) -> dict[str, str]:
    return json.loads(state.read_secret(name, KEYS_FILE))


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(KEY_BYTES)


def learner_ids(n: int) -> list[str]:
    width = max(2, len(str(n)))
    return [f"l{i:0{width}d}" for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------------- certificate


@dataclass(frozen=True)
class Certificate:
    cert_pem: str
    key_pem: str = field(repr=False)
    fingerprint: str


def fingerprint_of(pem_or_der: str | bytes) -> str:
    """SHA-256 of the DER certificate as colon hex, the form browsers and `openssl x509 -fingerprint` show."""
    der = ssl.PEM_cert_to_DER_cert(pem_or_der) if isinstance(pem_or_der, str) else pem_or_der
    return hashlib.sha256(der).digest().hex(":").upper()


def make_certificate(host: str, *, valid_hours: float, name: str) -> Certificate:
    """A self-signed P-256 certificate for `host` (an address or a DNS name), made here, never on the host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mistral-lab workshop {name}")])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=valid_hours, days=CERT_SLACK_DAYS))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return Certificate(cert_pem=cert_pem, key_pem=key_pem,
                       fingerprint=fingerprint_of(cert.public_bytes(serialization.Encoding.DER)))


def pinned_context(host: str, port: int, fingerprint: str, *, timeout: float = 10.0) -> ssl.SSLContext:
    """Fetch the server's certificate, refuse it unless its fingerprint is the pinned one, then trust only it.

    What the cards' snippet does, for tests and the load benchmark."""
    pem = ssl.get_server_certificate((host, port), timeout=timeout)
    seen = fingerprint_of(pem)
    if seen != fingerprint.upper():
        raise TargetError(f"the server at {host}:{port} shows certificate {seen}, not the workshop's {fingerprint}",
                          fix="someone is between you and the workshop, or the address is wrong; do not send keys")
    return ssl.create_default_context(cadata=pem)


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Card:
    learner: str
    base_url: str
    api_key: str = field(repr=False)
    fingerprint: str | None  # None: a CA's certificate, which clients check by themselves
    model: str

    def public(self) -> dict[str, str | None]:
        return {"learner": self.learner, "base_url": self.base_url, "api_key": self.api_key,
                "fingerprint": self.fingerprint, "model": self.model}


def snippet(card: Card) -> str:
    """Three lines of Python a learner types: pin the certificate by its fingerprint, make a client, ask (two lines
    with a CA's certificate: the system's trust store checks it)."""
    if card.fingerprint is None:
        return (f'import openai; client = openai.OpenAI(base_url="{card.base_url}", api_key="{card.api_key}")\n'
                f'print(client.chat.completions.create(model="{card.model}", '
                'messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)\n')
    u = httpx.URL(card.base_url)
    port = u.port or 443
    host = u.host
    return (
        f'import ssl, hashlib, httpx, openai; pem = ssl.get_server_certificate(("{host}", {port})); '
        f'assert hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest().hex(":").upper() == "{card.fingerprint}", '
        '"not the workshop server"\n'
        f'client = openai.OpenAI(base_url="{card.base_url}", api_key="{card.api_key}", '
        'http_client=httpx.Client(verify=ssl.create_default_context(cadata=pem)))\n'
        f'print(client.chat.completions.create(model="{card.model}", '
        'messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)\n'
    )


def cards(ws: Workshop, keys: dict[str, str]) -> list[Card]:
    assert ws.fingerprint, "cards need the proxy's certificate"
    pin = None if ws.domain else ws.fingerprint
    return [Card(learner=learner.id, base_url=ws.base_url, api_key=keys[learner.id], fingerprint=pin,
                 model=ws.model) for learner in ws.active]


def render_cards_html(ws: Workshop, keys: dict[str, str]) -> str:
    expires = dt.datetime.fromtimestamp(ws.expires_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    u = httpx.URL(ws.base_url)
    return infra_files.render_html("workshop-cards.html.j2",
        ws=ws, cards=[(c, snippet(c)) for c in cards(ws, keys)], expires=expires,
        page_url=ws.page_url, host=u.host, port=u.port or 443,
        revoked=[learner.id for learner in ws.learners if not learner.active])


def render_cards_csv(ws: Workshop, keys: dict[str, str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["learner", "base_url", "api_key", "fingerprint", "model", "expires_at", "status"])
    for learner in ws.learners:
        writer.writerow([learner.id, ws.base_url, keys[learner.id], "" if ws.domain else ws.fingerprint, ws.model,
                         dt.datetime.fromtimestamp(ws.expires_at, dt.UTC).isoformat(),
                         "active" if learner.active else f"revoked {learner.revoked_at}"])
    return out.getvalue()


def write_cards(ws: Workshop, keys: dict[str, str]) -> dict[str, str]:
    """cards.html (printable, one card per learner) and cards.csv, 0600 beside the record: they hold keys."""
    html = state.write_secret(ws.name, CARDS_HTML, render_cards_html(ws, keys))
    table = state.write_secret(ws.name, CARDS_CSV, render_cards_csv(ws, keys))
    return {"html": str(html), "csv": str(table)}


def render_keys_map(name: str, active: dict[str, str]) -> str:
    return infra_files.render("nginx-keys.map.j2", name=name,
                              learners=[{"id": i, "key": k} for i, k in sorted(active.items())])


@dataclass(frozen=True)
class ChatPage:
    html: str
    csp: str  # the page's Content-Security-Policy: its one inline script by hash, requests to this origin only


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def render_chat_page(ws: Workshop) -> ChatPage:
    """The learners' chat page at `/`: the model and the limits, no key (the learner pastes it)."""
    expires = dt.datetime.fromtimestamp(ws.expires_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    conf = json.dumps({"model": ws.model})  # what the script needs; the limits are written into the page
    # Inside <script>, "</" would end the element: JSON's \u escapes keep the data inert.
    conf = conf.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = infra_files.render_html("workshop-chat.html.j2", ws=ws, expires=expires, config_json=conf)
    scripts = _INLINE_SCRIPT.findall(page)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(x.encode()).digest()).decode()}'" for x in scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return ChatPage(html=page, csp=csp)


def render_nginx_conf(ws: Workshop, *, root: str, backend_port: int, worker_user: str | None,
                      modules: str = "/usr/lib/nginx/modules", accounting: bool = True) -> str:
    """`accounting=False` leaves out the Lua steps (counts, budget, request caps): only for measuring what they
    cost (benchmarks/workshop_load.py), never for a room."""
    return infra_files.render(
        "nginx-workshop.conf.j2", name=ws.name, model=ws.model, learners=len(ws.learners), root=root,
        worker_user=worker_user, workers=1, listen=ws.listen, port=ws.https_port, allow=ws.allow,
        rate_per_min=ws.rate_per_min, burst=ws.burst, conns_per_learner=ws.conns_per_learner,
        max_tokens=ws.max_tokens, modules=modules, accounting=accounting,
        token_budget=ws.tokens_per_learner or 0, usage_dict_mb=USAGE_DICT_MB,
        page_csp=render_chat_page(ws).csp, expires_at=ws.expires_at, acme_http_port=ws.acme_http_port if ws.domain else None,
        backend_port=backend_port, read_timeout_s=READ_TIMEOUT_S, max_body_mb=MAX_BODY_MB,
        retry_after_s=max(1, -(-60 // ws.rate_per_min)),
    )


# ---------------------------------------------------------------------------------------------- the proxy on its host


def _proxy_spec(ws: Workshop, nginx: str = "nginx") -> service.ServiceSpec:
    assert ws.proxy_root and ws.proxy_mode and ws.https_port
    root = ws.proxy_root
    # daemon off: the service (systemd, or our supervised process) is nginx's master, so stop and status see it.
    argv = [nginx, "-e", "stderr", "-p", f"{root}/", "-c", f"{root}/nginx.conf", "-g", "daemon off;"]
    return service.ServiceSpec(name=f"{ws.name}-proxy", model=ws.model, engine="nginx", root=root, argv=argv,
                               port=ws.https_port, key_var="", mode=ws.proxy_mode, user=None)


def _proxy_script(host: Host, ws: Workshop, action: str, *, check: bool = True, **env: str) -> str:
    spec = _proxy_spec(ws)
    base = {"ACTION": action, "ROOT": spec.root, "MODE": spec.mode, "UNIT": spec.unit, "TIMEOUT": "30"}
    r = host.run_script(infra_files.with_env(infra_files.read("workshop-proxy.sh"), {**base, **env}), check=False)
    if check and not r.ok:
        raise EngineError(f"the workshop proxy's {action} failed (exit {r.returncode}):\n"
                          + "\n".join((r.stdout + r.stderr).strip().splitlines()[-20:]),
                          field="proxy", fix=_proxy_fix(r.stdout + r.stderr, ws))
    return r.stdout


def _proxy_fix(log: str, ws: Workshop) -> str:
    if "Permission denied" in log and ws.domain and (ws.acme_http_port or 0) < 1024:
        return (f"port {ws.acme_http_port} (the CA's HTTP-01 check) needs root: run the host with systemd, or "
                "forward port 80 to a higher --acme-http-port")
    if "Permission denied" in log and (ws.https_port or 0) < 1024:
        return "ports below 1024 need root: pass --https-port 8443 (or run the host with systemd)"
    if "Address already in use" in log:
        return f"port {ws.https_port} is taken on the host: pass another --https-port"
    if "sudo" in log:
        return "the login user needs passwordless sudo to install nginx (or install it: apt-get install nginx)"
    return "read the lines above; `mistral-lab workshop down NAME` removes what was made"


def _put_keys_map(host: Host, ws: Workshop, keys: dict[str, str]) -> None:
    """The active learners' keys, 0600: what nginx lets in (install writes it, revoke rewrites it)."""
    assert ws.proxy_root
    host.put_text(render_keys_map(ws.name, {learner.id: keys[learner.id] for learner in ws.active}),
                  f"{ws.proxy_root}/keys.map", mode=0o600)


def _host_user(host: Host) -> tuple[str, int]:
    out = host.run("id -un; id -u", retry_safe=True).stdout.split()
    return out[0], int(out[1])


def install_proxy(host: Host, ws: Workshop, dep: state.Deployment, keys: dict[str, str], cert: Certificate,
                  say: LineSink) -> Workshop:
    """Put nginx, its config, certificate and key files on the host; start it and wait until it listens."""
    assert dep.service is not None and dep.endpoint is not None
    root = f"{dep.service.root}/proxy"
    if not _SAFE_PATH.match(root):
        raise BadInput(f"the deployment folder {root!r} has characters nginx's config cannot hold", field="host_root",
                       fix="deploy under a plain path (letters, digits, . _ - /): option host_root")
    server_key = dep.api_key()
    if not _SERVER_KEY.match(server_key):
        raise EngineError("the server key has characters nginx's config cannot hold", field="api_key",
                          fix=f"tear down and deploy again: mistral-lab workshop down {ws.name}")
    ws.proxy_root, ws.proxy_mode = root, dep.service.kind
    if ws.https_port is None:
        ws.https_port = free_port(host, DEFAULT_PORT[ws.target])
        say(f"  the proxy listens on port {ws.https_port}")
    out = _proxy_script(host, ws, "install").strip().splitlines()
    nginx, modules = out[-1], out[-2]
    if not modules.startswith("/"):
        raise EngineError("nginx's Lua module is not installed on the host", field="proxy",
                          fix="install it: apt-get install libnginx-mod-http-lua lua-cjson")
    say(f"  {out[-3] if len(out) > 2 else 'nginx'} at {nginx}, Lua module in {modules}")
    host.put_text(cert.cert_pem, f"{root}/cert.pem", mode=0o644)
    host.put_text(cert.key_pem, f"{root}/cert.key", mode=0o600)
    host.put_text(infra_files.render("nginx-upstream-auth.conf.j2", server_key=server_key),
                  f"{root}/upstream-auth.conf", mode=0o600)
    _put_keys_map(host, ws, keys)
    host.put_text(infra_files.read("workshop-learner.lua"), f"{root}/learner.lua", mode=0o644)
    host.put_text(infra_files.read("workshop-usage.lua"), f"{root}/usage.lua", mode=0o644)
    host.put_text(render_chat_page(ws).html, f"{root}/www/chat.html", mode=0o644)
    write_proxy_conf(host, ws, dep, modules=modules)
    spec = _proxy_spec(ws, nginx)
    service.install(host, spec)
    services.add_companion(dep.name, spec)  # a plain `mistral-lab teardown` stops the proxy too
    _proxy_script(host, ws, "check")
    service.stop(host, spec)  # what an earlier attempt may have left
    host.run(f"rm -f {shlex.quote(root)}/nginx.pid")  # readiness is judged by nginx writing it anew
    try:
        service.start(host, spec, wait=False)
    except EngineError as e:
        raise EngineError(f"could not start the workshop proxy: {e.message}", field="proxy",
                          fix=_proxy_fix(e.message, ws)) from None
    say("  " + _proxy_script(host, ws, "wait", PORT=str(ws.https_port)).strip().splitlines()[-1])
    return ws


# ---------------------------------------------------------------------------------------------- ACME certificate


def _acme_env(ws: Workshop) -> dict[str, str]:
    assert ws.proxy_root and ws.domain and ws.acme_server
    env = {"ROOT": ws.proxy_root, "DOMAIN": ws.domain, "SERVER": ws.acme_server}
    if ws.acme_ca_bundle:
        env["CA_BUNDLE"] = ws.acme_ca_bundle
    return env


def acme_script(host: Host, ws: Workshop, action: str, **env: str) -> str:
    script = infra_files.with_env(infra_files.read("workshop-acme.sh"), {**_acme_env(ws), "ACTION": action, **env})
    r = host.run_script(script, check=False)
    if not r.ok:
        raise EngineError(f"certbot's {action} for {ws.domain} failed (exit {r.returncode}):\n"
                          + "\n".join((r.stdout + r.stderr).strip().splitlines()[-20:]), field="domain",
                          fix=f"{ws.domain} must resolve to this host and its port {ws.acme_http_port} must be "
                              "reachable from the internet (the CA checks it); or leave --domain out")
    return r.stdout


def _acme_spec(ws: Workshop) -> service.ServiceSpec:
    """The renewer: certbot renew twice a day, as a service beside the proxy (stopped with it at teardown)."""
    assert ws.proxy_root and ws.proxy_mode and ws.https_port
    env = [f"{k}={v}" for k, v in {**_acme_env(ws), "ACTION": "renew-loop",
                                   "EVERY": str(ACME_RENEW_EVERY_S)}.items()]
    return service.ServiceSpec(name=f"{ws.name}-acme", model=ws.model, engine="certbot",
                               root=f"{ws.proxy_root}/acme", argv=["env", *env, "bash", f"{ws.proxy_root}/acme.sh"],
                               port=ws.https_port, key_var="", mode=ws.proxy_mode, user=None)


def first_certificate(chain_pem: str) -> str:
    """The leaf of a PEM chain (certbot's fullchain.pem: the server's certificate, then the CA's)."""
    end = "-----END CERTIFICATE-----"
    return chain_pem.split(end, 1)[0].strip() + "\n" + end + "\n"


def served_certificate(host: Host, ws: Workshop) -> str:
    assert ws.proxy_root
    return host.run(f"cat {shlex.quote(ws.proxy_root)}/cert.pem", retry_safe=True).stdout


def resolves_to(host: Host, domain: str) -> set[str]:
    """The IPv4 addresses `domain` resolves to on the host (its resolver: what the CA will see, give or take
    caching), empty when it does not resolve."""
    r = host.run(f"getent ahostsv4 {shlex.quote(domain)} | cut -d' ' -f1 | sort -u", check=False, retry_safe=True)
    return set(r.stdout.split()) if r.ok else set()


def wait_for_dns(host: Host, domain: str, address: str, *, minutes: float, say: LineSink,
                 every_s: float = DNS_LOOK_EVERY_S) -> None:
    """A droplet's address exists only now: ask for the A record, and wait (bounded, saying so each minute) until
    the name resolves to it, so certbot does not spend a CA's failed-validation limit on a name not yet there."""
    if address in resolves_to(host, domain):
        return
    say(f"  set {domain}'s DNS A record to {address} now; waiting up to {minutes:g} min for it to resolve")
    t0 = time.monotonic()
    said = t0
    while address not in (seen := resolves_to(host, domain)):
        if time.monotonic() - t0 > minutes * 60:
            raise BadInput(f"{domain} does not resolve to the droplet's address {address} after {minutes:g} min "
                           f"(it resolves to {', '.join(sorted(seen)) or 'nothing'})", field="domain",
                           fix=f"add an A record {domain} -> {address} and run up again; or leave --domain out "
                               "(the cards carry the certificate's fingerprint)")
        if time.monotonic() - said >= 60:
            said = time.monotonic()
            say(f"  … {domain} resolves to {', '.join(sorted(seen)) or 'nothing'} so far "
                f"({(said - t0) / 60:.0f} min)")
        time.sleep(every_s)
    say(f"  {domain} resolves to {address}")


def obtain_certificate(host: Host, ws: Workshop, email: str | None, say: LineSink) -> None:
    """certbot on the host: the CA checks the domain through the proxy's plain-HTTP port, the deploy hook puts
    the certificate beside nginx.conf and reloads; then the renewer starts. The proxy runs with the self-signed
    certificate until then (nginx cannot start without one)."""
    assert ws.proxy_root
    host.put_text(infra_files.read("workshop-acme.sh"), f"{ws.proxy_root}/acme.sh", mode=0o700)
    version = acme_script(host, ws, "install").strip().splitlines()[-1]
    say(f"  {version}: asking {ws.acme_server} for {ws.domain} (HTTP-01 on port {ws.acme_http_port})")
    acme_script(host, ws, "issue", **({"EMAIL": email} if email else {}))
    _proxy_script(host, ws, "reload")  # the hook reloaded already; this waits until new workers serve it
    pem = first_certificate(served_certificate(host, ws))
    ws.fingerprint = fingerprint_of(pem)
    state.write_secret(ws.name, CERT_FILE, pem)
    spec = _acme_spec(ws)
    service.install(host, spec)
    services.add_companion(ws.name, spec)
    service.start(host, spec, wait=False)
    say(f"  certificate for {ws.domain} from the CA ({ws.fingerprint[:23]}...), renewed by itself twice a day")


def write_proxy_conf(host: Host, ws: Workshop, dep: state.Deployment, *, modules: str,
                     accounting: bool = True) -> None:
    """nginx.conf for the proxy (a running one takes it at `reload_proxy`); `accounting=False` only to measure."""
    assert ws.proxy_root and dep.endpoint is not None
    login, uid = _host_user(host)
    # A root master would run workers as `nobody`, which cannot write the proxy's temp folder.
    worker_user = login if (ws.proxy_mode == "systemd" or uid == 0) else None
    host.put_text(render_nginx_conf(ws, root=ws.proxy_root, backend_port=dep.endpoint.remote_port,
                                    worker_user=worker_user, modules=modules, accounting=accounting),
                  f"{ws.proxy_root}/nginx.conf", mode=0o644)


def reload_proxy(host: Host, ws: Workshop) -> str:
    """Check the config and reload nginx (HUP); returns once new workers run it."""
    return _proxy_script(host, ws, "reload").strip()


def _reload(ws: Workshop, keys: dict[str, str]) -> None:
    with session.open_host(state.load(ws.name)) as host:
        _put_keys_map(host, ws, keys)
        _proxy_script(host, ws, "reload")


def check_from_here(ws: Workshop, *, timeout: float = 10.0) -> int:
    """A request without a key through the pinned TLS connection: 401 means TLS, the certificate and the key check
    all work. Returns the status."""
    assert ws.fingerprint and ws.https_port
    host = ws.public_host or "127.0.0.1"
    ctx = pinned_context(host, ws.https_port, ws.fingerprint, timeout=timeout)
    with httpx.Client(verify=ctx, timeout=timeout) as c:
        if not ws.domain:
            return c.get(ws.base_url + "/models").status_code
        # The name may not resolve from here yet (or only to a test's loopback): reach the host's address and ask
        # for the name (SNI and Host), so the certificate is checked for it. The pinned leaf is the anchor, not the
        # CA's root.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return c.get(f"https://{host}:{ws.https_port}/v1/models", headers={"Host": ws.domain},
                     extensions={"sni_hostname": ws.domain}).status_code


# ---------------------------------------------------------------------------------------------- usage per learner


class UsageLine(BaseModel):
    """One line of the proxy's usage.jsonl (written by nginx from usage.lua's counts)."""

    model_config = ConfigDict(extra="ignore")

    t: float
    learner: str
    status: int
    path: str = ""
    prompt: int = 0
    completion: int = 0
    source: str = ""  # server: the server's usage; chunks: a stream cut short, counted by its chunks; none
    refused: str = ""  # rate | budget | ""
    request_s: float = 0.0


@dataclass(frozen=True)
class LearnerUsage:
    learner: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0  # answers other than 2xx and 429
    refused_429: int = 0  # the rate limit and a spent budget
    budget_refused: int = 0
    p50_latency_s: float | None = None  # of answered (2xx) requests, as nginx timed them
    last_seen: str | None = None
    budget: int | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_left(self) -> int | None:
        return None if self.budget is None else max(self.budget - self.tokens, 0)

    def row(self) -> dict[str, Any]:
        return {"learner": self.learner, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "errors": self.errors, "http_429": self.refused_429,
                "budget_refused": self.budget_refused, "p50_latency_s": self.p50_latency_s,
                "last_seen": self.last_seen, "tokens_left": self.tokens_left}


def parse_usage_log(text: str) -> list[UsageLine]:
    """The lines of usage.jsonl; a line cut short by a crash mid-write is skipped, not fatal."""
    out = []
    for raw in text.splitlines():
        try:
            out.append(UsageLine.model_validate_json(raw))
        except ValidationError:
            continue
    return out


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return round(s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2, 4)


def summarize_usage(lines: list[UsageLine], learners: list[str], budget: int | None = None) -> list[LearnerUsage]:
    """Per learner, in the workshop's order (every learner, asked or not)."""
    by: dict[str, list[UsageLine]] = {i: [] for i in learners}
    for line in lines:
        by.setdefault(line.learner, []).append(line)
    out = []
    for who, mine in by.items():
        last = max((x.t for x in mine), default=None)
        out.append(LearnerUsage(
            learner=who, requests=len(mine), prompt_tokens=sum(x.prompt for x in mine),
            completion_tokens=sum(x.completion for x in mine),
            errors=sum(1 for x in mine if not 200 <= x.status < 300 and x.status != 429),
            refused_429=sum(1 for x in mine if x.status == 429),
            budget_refused=sum(1 for x in mine if x.refused == "budget"),
            p50_latency_s=_median([x.request_s for x in mine if 200 <= x.status < 300]),
            last_seen=dt.datetime.fromtimestamp(last, dt.UTC).isoformat(timespec="seconds") if last else None,
            budget=budget))
    return out


def read_usage_log(host: Host, ws: Workshop) -> str:
    assert ws.proxy_root
    r = host.run(f"cat {shlex.quote(ws.proxy_root)}/{USAGE_FILE} 2>/dev/null || true", retry_safe=True)
    return r.stdout


def usage(name: str) -> list[LearnerUsage]:
    """Every learner's requests, tokens, errors, 429s, p50 latency and last request, from the proxy's log."""
    ws = load(name)
    with session.open_host(state.load(name)) as host:
        text = read_usage_log(host, ws)
    return summarize_usage(parse_usage_log(text), [x.id for x in ws.learners], ws.tokens_per_learner)


USAGE_CSV_FIELDS = ["learner", "requests", "prompt_tokens", "completion_tokens", "errors", "http_429",
                    "budget_refused", "p50_latency_s", "last_seen", "tokens_left", "cost_share_usd"]


def usage_csv(rows: list[LearnerUsage], cost_usd: float) -> str:
    """One row per learner and a TOTAL row with the workshop's cost; each learner's share of it by tokens."""
    total_tokens = sum(r.tokens for r in rows)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=USAGE_CSV_FIELDS)
    w.writeheader()
    for r in rows:
        share = round(cost_usd * r.tokens / total_tokens, 4) if total_tokens else 0.0
        w.writerow({**r.row(), "cost_share_usd": share})
    latencies = [r.p50_latency_s for r in rows if r.p50_latency_s is not None]
    w.writerow({"learner": "TOTAL", "requests": sum(r.requests for r in rows),
                "prompt_tokens": sum(r.prompt_tokens for r in rows),
                "completion_tokens": sum(r.completion_tokens for r in rows), "errors": sum(r.errors for r in rows),
                "http_429": sum(r.refused_429 for r in rows), "budget_refused": sum(r.budget_refused for r in rows),
                "p50_latency_s": _median(latencies), "last_seen": max((r.last_seen for r in rows if r.last_seen),
                                                                      default=None),
                "tokens_left": None, "cost_share_usd": round(cost_usd, 2)})
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- up, revoke, down


def up(req: RoomRequest | RoomPlan, *, options: dict[str, Any] | None = None, say: LineSink = print_line,
       start_timeout: float = 900) -> tuple[Workshop, dict[str, str]]:
    """Plan (unless given the plan_room() of the request), show the cost, deploy, put the proxy in front, write the
    cards. Returns the record and the card files.

    A failure anywhere removes what was made (the droplet, the servers, the records)."""
    room = req if isinstance(req, RoomPlan) else plan_room(req)
    req = room.request
    say(room.summary())
    if exists(req.name) or state.exists(req.name):
        raise BadInput(f"{req.name} already exists", field="name",
                       fix=f"pick another --name, or `mistral-lab workshop down {req.name}` first")
    opts = dict(options or {})
    keeper, deadline_token = _deadline_keeper(req, opts, say)  # before anything exists: a bad token stops here
    expires_at = int(time.time() + req.hours * 3600)
    ids = learner_ids(req.learners)
    keys = {i: new_key() for i in ids}
    ws = Workshop(name=req.name, status="creating", model=room.plan.model, target=req.target,
                  learners=[Learner(id=i) for i in ids], hours=req.hours, expires_at=expires_at,
                  hourly_usd=room.hourly_usd, planned_cost_usd=room.planned_cost_usd, budget_usd=req.budget_usd,
                  allow=room.allow, listen=room.listen, public_host=req.public_host, https_port=room.port,
                  rate_per_min=req.rate_per_min, burst=req.burst, max_tokens=req.max_tokens,
                  tokens_per_learner=req.tokens_per_learner, domain=req.domain,
                  acme_server=req.acme_server if req.domain else None,
                  acme_http_port=req.acme_http_port if req.domain else None,
                  acme_ca_bundle=req.acme_ca_bundle if req.domain else None, idle_minutes=req.idle_minutes,
                  deadline_kept_by=keeper, cache_volume=do_volumes.label_of(req.cache_volume))
    save(ws)
    state.write_secret(req.name, KEYS_FILE, json.dumps(keys, indent=2))
    if req.target == "digitalocean":
        opts.update(https_from=room.allow, https_port=room.port, expires_at=expires_at)
        if req.ssh_from:
            opts["allow_from"] = req.ssh_from
        if req.cache_volume:
            opts.update(cache_volume=req.cache_volume, cache_volume_gib=room.cache_gib)
        if req.domain:  # the CA's HTTP-01 check comes from anywhere on the internet
            opts["acme_http_port"] = req.acme_http_port
    try:
        dep = deploy(_plan_request(req), options=opts, say=say, start_timeout=start_timeout, keep_on_failure=False)
        if ws.public_host is None and req.target != "local":
            ws.public_host = dep.host.address
        say("▶ proxy")
        t0 = time.monotonic()
        cert = make_certificate(ws.public_host or "127.0.0.1", valid_hours=req.hours, name=req.name)
        ws.fingerprint = cert.fingerprint
        state.write_secret(req.name, CERT_FILE, cert.cert_pem)
        with session.open_host(dep) as host:
            install_proxy(host, ws, dep, keys, cert, say)
            if ws.domain:
                if ws.target == "digitalocean":
                    wait_for_dns(host, ws.domain, dep.host.address or "", minutes=req.dns_wait_minutes, say=say)
                obtain_certificate(host, ws, req.acme_email, say)
            if deadline_token:
                _keep_deadline(host, ws, dep, deadline_token, opts, say)
        save(ws)
        _check_reachable(ws, say)
        say(f"✔ proxy in {time.monotonic() - t0:.1f}s: {ws.base_url}, certificate {ws.fingerprint}")
        ws.status = "up"
        save(ws)
        files = write_cards(ws, keys)
        say(f"✔ workshop {ws.name} is up until "
            f"{dt.datetime.fromtimestamp(expires_at, dt.UTC).strftime('%H:%M UTC')}: {len(ids)} cards in "
            f"{files['html']} and {files['csv']}")
        return ws, files
    except BaseException as e:
        ws.status, ws.error = "failed", str(e) if isinstance(e, MistralLabError) else f"{type(e).__name__}: {e}"
        say(f"✘ workshop up failed; removing what it made ({ws.error.splitlines()[0]})")
        _remove(ws, say)
        raise


def _deadline_keeper(req: RoomRequest, opts: dict[str, Any], say: LineSink) -> tuple[str | None, str | None]:
    """Who removes a droplet at its end: the droplet itself when the instructor gave it a scoped token (checked
    here by the calls it will make), else only `sweep --expired`, which the instructor must keep running."""
    if req.target != "digitalocean":
        return None, None
    token = deadline.token_from_env()
    if token:
        deadline.check_token(token, do_api.api_url(opts.get("api_url")))
        idle = f", or after {req.idle_minutes} min with no request" if req.idle_minutes else ""
        say(f"  the droplet removes itself at its end{idle} ({deadline.TOKEN_ENV}: {', '.join(deadline.SCOPES)})")
        return "droplet", token
    if req.idle_minutes:
        raise BadInput("--idle-minutes needs the droplet to keep its own deadline", field=deadline.TOKEN_ENV,
                       fix=f"make a token with only {', '.join(deadline.SCOPES)} and export it as "
                           f"{deadline.TOKEN_ENV}; or drop --idle-minutes")
    say(f"  nothing on the droplet removes it at its end: keep `mistral-lab sweep --expired` running (cron: "
        f"{deadline.cron_line()}), or export {deadline.TOKEN_ENV} (a token with only {', '.join(deadline.SCOPES)}) "
        "so the droplet removes itself")
    return "sweep", None


def _keep_deadline(host: Host, ws: Workshop, dep: state.Deployment, token: str, opts: dict[str, Any],
                   say: LineSink) -> None:
    assert dep.service is not None and dep.instance and ws.proxy_root
    # Activity is a learner's request from the room (usage.jsonl), not a scanner's 403 nor the chat page's polling.
    when = deadline.Deadline(expires_at=ws.expires_at, idle_s=(ws.idle_minutes or 0) * 60,
                             activity=f"{ws.proxy_root}/{USAGE_FILE}")
    spec = deadline.install(host, dep.host, name=ws.name, instance=dep.instance, mode=dep.service.kind, token=token,
                            deadline=when, api_url=do_api.api_url(opts.get("api_url")),
                            host_root=posixpath.dirname(dep.service.root))
    services.add_companion(dep.name, spec)  # teardown stops it before the droplet goes
    say(f"  deadline on the droplet: {spec.unit if dep.service.kind == 'systemd' else spec.name}, as root")


def _check_reachable(ws: Workshop, say: LineSink) -> None:
    try:
        code = check_from_here(ws)
    except (OSError, httpx.HTTPError) as e:
        if ws.target == "local":
            raise EngineError(f"the proxy does not answer on {ws.base_url}: {type(e).__name__}: {e}", field="proxy",
                              fix="read the proxy's log: <deployment folder>/proxy/serve.log") from None
        say(f"  could not reach {ws.base_url} from this machine ({type(e).__name__}); fine if it is outside --allow")
        return
    if code != 401:
        raise EngineError(f"the proxy answered {code} to a request without a key; expected 401", field="proxy",
                          fix="read the proxy's config: <deployment folder>/proxy/nginx.conf")


def _remove(ws: Workshop, say: LineSink, *, drop_cache: bool = False) -> TeardownReport | None:
    # The proxy is the deployment's companion (install_proxy records it before starting it): teardown stops it on
    # the same connection as the model's server, and says so when the host cannot be reached.
    report = teardown(ws.name, say=say, drop_cache=drop_cache) if state.exists(ws.name) else None
    if drop_cache and ws.cache_volume and report is None:
        # The deployment's record is gone already (a failed up removed it): the volume is found by owner and label.
        for gone in do_volumes.drop_cache(owner=state.installation_id(), label=ws.cache_volume, on_line=say):
            say(f"  deleted cache volume {gone}")
    state.remove(ws.name)  # whatever is left: the workshop's own files, which hold keys
    return report


def revoke(name: str, who: str, *, say: LineSink = print_line) -> Learner:
    """Take one learner's key out of the proxy: rewrite its key file and reload nginx (no restart). Two revokes
    at once both stick: each reads, changes and writes the record under the workshop's lock."""
    with state.lock(name):
        ws = load(name)
        keys = load_keys(name)
        learner = ws.learner(who, keys)
        if not learner.active:
            say(f"{learner.id} was already revoked at {learner.revoked_at}")
            return learner
        if ws.status != "up":
            raise BadInput(f"workshop {name} is {ws.status}", field="name", fix=f"mistral-lab workshop down {name}")
        learner.revoked_at = state.now()
        _reload(ws, keys)
        save(ws)
        write_cards(ws, keys)
    say(f"✔ revoked {learner.id}: its key gets 401 from now on; {len(ws.active)} keys remain")
    return learner


@dataclass
class DownReport:
    name: str
    hours: float
    cost_usd: float
    planned_cost_usd: float
    leftovers: list[str]
    usage: list[LearnerUsage] = field(default_factory=list)
    usage_csv: str | None = None  # where the per-learner table went
    kept: list[str] = field(default_factory=list)  # a cache volume kept for the next workshop, with its cost
    dropped: list[str] = field(default_factory=list)


def _last_usage(ws: Workshop, say: LineSink) -> list[LearnerUsage] | None:
    """The usage log, read before the host goes; None when it cannot be (the workshop never got its proxy)."""
    if not (ws.proxy_root and state.exists(ws.name)):
        return None
    try:
        return usage(ws.name)
    except (MistralLabError, OSError) as e:
        say(f"  could not read the learners' usage before removing the host: {e}")
        return None


def default_usage_csv(name: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return state.home() / "reports" / f"workshop-{name}-usage-{stamp}.csv"


def down(name: str, *, say: LineSink = print_line, csv_path: Path | None = None,
         drop_cache: bool = False) -> DownReport:
    """Read the learners' usage, stop the proxy, destroy the deployment (the droplet, its firewall and key on
    DigitalOcean), forget it all; write the usage with the total cost to CSV (no keys in it). A cache volume is
    kept for the next workshop in the region (its monthly cost said) unless `drop_cache`."""
    ws = load(name)
    rows = _last_usage(ws, say)
    report = _remove(ws, say, drop_cache=drop_cache)
    hours = report.hours if report else 0.0
    cost = report.cost_usd if report else 0.0
    written = None
    if rows is not None:
        target = csv_path or default_usage_csv(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(usage_csv(rows, cost))
        written = str(target)
        say(f"  usage per learner: {written} ({sum(r.tokens for r in rows):,} tokens in "
            f"{sum(r.requests for r in rows):,} requests)")
    say(f"✔ workshop {name} is gone after {hours:.2f} h: total cost about ${cost:.2f} "
        f"(planned ${ws.planned_cost_usd:.2f})")
    return DownReport(name=name, hours=hours, cost_usd=cost, planned_cost_usd=ws.planned_cost_usd,
                      leftovers=report.leftovers if report else [], usage=rows or [], usage_csv=written,
                      kept=report.kept if report else [], dropped=report.dropped if report else [])


def status(name: str, *, with_usage: bool = False) -> dict[str, Any]:
    """The record, the time and money so far; `with_usage` reads each learner's counts from the proxy too."""
    ws = load(name)
    dep = state.load(name) if state.exists(name) else None
    info = ws.model_dump(mode="json")
    info["base_url"] = ws.base_url
    info["active_keys"] = len(ws.active)
    info["expires_in_h"] = round((ws.expires_at - time.time()) / 3600, 2)
    if dep is not None:
        info["hours_up"] = round(hours_up(dep), 3)
        info["cost_usd"] = cost_so_far(dep)
    info["cards"] = {"html": str(state.deployment_dir(name) / CARDS_HTML),
                     "csv": str(state.deployment_dir(name) / CARDS_CSV)}
    if with_usage and dep is not None and ws.proxy_root:
        info["usage"] = [r.row() for r in usage(name)]
    return info


def proxy_log(name: str, lines: int = 100) -> str:
    ws = load(name)
    with session.open_host(state.load(name)) as host:
        return service.logs(host, _proxy_spec(ws), lines)


__all__ = ["Card", "Certificate", "ChatPage", "DownReport", "Learner", "LearnerUsage", "RoomPlan", "RoomRequest",
           "UsageLine", "Workshop", "cards", "check_from_here", "down", "fingerprint_of", "first_certificate", "load",
           "load_keys", "make_certificate", "names", "parse_usage_log", "pinned_context", "plan_room",
           "reload_proxy", "render_chat_page", "revoke", "snippet", "status", "summarize_usage", "up", "usage",
           "usage_csv", "write_proxy_conf"]
