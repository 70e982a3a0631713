"""Pure decisions about DigitalOcean resources: names, tags, images, regions, request bodies, costs. No I/O.

Ownership is by tag, per installation: every droplet we create carries `mistral-lab` (made by this tool),
`mistral-lab-owner:<owner>` (which installation: `Names.owner`, a random id kept in the user's state folder) and
`mistral-lab:<owner>:<deployment>`; the firewall is bound to that deployment tag and named
`mistral-lab-<deployment>-<owner>`, as is an SSH key we upload (DigitalOcean keys cannot carry tags). So two
installations that deploy the same name on one account never see, cover or destroy each other's resources. A
droplet with a planned end (a workshop) also carries `mistral-lab-expires:<unix seconds>`, which
`mistral-lab sweep --expired` acts on. A cache volume (hosts/do_volumes.py) is the installation's, not a
deployment's: named `mistral-lab-cache-<label>-<owner>` and tagged `mistral-lab` and the owner tag.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mistral_lab.errors import BadInput

OWNER_TAG = "mistral-lab"  # made by this tool, whoever ran it
OWNER_PREFIX = f"{OWNER_TAG}-owner:"
OWNER_RE = re.compile(r"^[a-z0-9]{4,32}$")
CPU_IMAGE = "ubuntu-24-04-x64"
NVIDIA_IMAGE = "gpu-h100x1-base"  # every single-GPU NVIDIA size, L40S and RTX included (DO's recommended setup)
NVIDIA_X8_IMAGE = "gpu-h100x8-base"
AMD_IMAGE = "gpu-amd-base"
NO_CAPACITY = "Size is not available in this region."
DROPLET_LIMIT = "droplet limit"
# 422s on create that mean "not in this region, try the next one" (wordings: tests/fakedo/quirks.py cites them):
# a region closed to new droplets, a size out of stock or restricted, an image not in the region.
NOT_HERE = ("size is not available in this region", "region is not available", "this size is currently restricted",
            "image you specified is not available in the selected region")
EXPIRY_PREFIX = f"{OWNER_TAG}-expires:"
# Cache volumes: `mistral-lab-cache-<label>-<owner>`, tagged with OWNER_TAG and the owner tag.
CACHE_PREFIX = f"{OWNER_TAG}-cache-"
CACHE_LABEL_RE = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class Names:
    """The tags and names of one installation's deployment. An empty owner is a deployment recorded before
    owners existed, whose tag and names carried none (teardown still finds it)."""

    deployment: str
    owner: str

    def __post_init__(self) -> None:
        if self.owner and not OWNER_RE.match(self.owner):
            raise BadInput(f"owner {self.owner!r} is not 4-32 lowercase letters and digits", field="owner",
                           fix="leave it out (this installation's id is used) or pass e.g. owner=team1")

    @property
    def tag(self) -> str:
        """The deployment's own tag: the firewall is bound to it, teardown finds the droplet by it."""
        return f"{OWNER_TAG}:{self.owner}:{self.deployment}" if self.owner else f"{OWNER_TAG}:{self.deployment}"

    @property
    def owner_tag(self) -> str:
        return f"{OWNER_PREFIX}{self.owner}"

    @property
    def resource(self) -> str:
        """The firewall's and the SSH key's name (keys cannot carry tags: the name says whose it is)."""
        return f"{OWNER_TAG}-{self.deployment}-{self.owner}" if self.owner else f"{OWNER_TAG}-{self.deployment}"

    @property
    def hostname(self) -> str:
        return f"{OWNER_TAG}-{self.deployment}"

    @property
    def resource_tags(self) -> list[str]:
        """What a resource of this installation carries besides its deployment's tag (a cache volume: only this)."""
        return [OWNER_TAG, self.owner_tag]

    def cache_volume(self, label: str) -> str:
        """A cache volume's name: this installation's, not a deployment's (the next deployment in the region
        attaches it). DigitalOcean volume names are lowercase letters, digits and '-', up to 64 characters,
        starting with a letter (the spec's volume_base.yml); two volumes of one name cannot share a region."""
        if not self.owner:
            raise BadInput("a cache volume needs an owner", field="owner",
                           fix="deploy through mistral_lab.deploy (this installation's id), or pass owner=...")
        name = f"{CACHE_PREFIX}{label}-{self.owner}"
        if not CACHE_LABEL_RE.match(label) or len(name) > 64:
            raise BadInput(f"cache volume label {label!r} does not fit DigitalOcean's volume names", field="cache_volume",
                           fix=f"lowercase letters, digits and '-', starting with a letter, at most "
                               f"{64 - len(CACHE_PREFIX) - len(self.owner) - 1} characters (e.g. models)")
        return name


def owner_of(tags: list[str]) -> str | None:
    for tag in tags:
        if tag.startswith(OWNER_PREFIX):
            return tag.removeprefix(OWNER_PREFIX)
    return None


def owner_of_name(name: str) -> str | None:
    """The owner in a firewall's or SSH key's name `mistral-lab-<deployment>-<owner>`, None when it has none."""
    if not name.startswith(OWNER_TAG + "-"):
        return None
    tail = name.rsplit("-", 1)[-1]
    return tail if OWNER_RE.match(tail) and name.count("-") >= 3 else None


def cache_of_name(name: str) -> tuple[str, str | None] | None:
    """(label, owner) of a cache volume's name, None for a volume that is not one of ours."""
    if not name.startswith(CACHE_PREFIX):
        return None
    body = name.removeprefix(CACHE_PREFIX)
    label, _, owner = body.rpartition("-")
    return (label, owner) if label and OWNER_RE.match(owner) else (body, None)


def deployment_of_name(name: str, owner: str | None) -> str:
    body = name.removeprefix(OWNER_TAG + "-")
    return body.removesuffix(f"-{owner}") if owner else body


def not_here(message: str) -> bool:
    """A create refused because of the region (capacity, closed, restricted size, image elsewhere)."""
    return any(m in message.lower() for m in NOT_HERE)


def expiry_tag(expires_at: int) -> str:
    """`mistral-lab-expires:<unix seconds>`: DO tags allow letters, digits, colons, dashes and underscores. Not
    under `mistral-lab:`, which names the deployment."""
    return f"{EXPIRY_PREFIX}{int(expires_at)}"


def expiry_of(tags: list[str]) -> int | None:
    """The earliest expiry among the tags (a droplet should carry one), None without any."""
    found = [int(t.removeprefix(EXPIRY_PREFIX)) for t in tags
             if t.startswith(EXPIRY_PREFIX) and t.removeprefix(EXPIRY_PREFIX).isdigit()]
    return min(found) if found else None


def deployment_of(tags: list[str]) -> str | None:
    """The deployment in `mistral-lab:<owner>:<deployment>` (or a tag written before owners: `mistral-lab:<name>`)."""
    for tag in tags:
        if tag.startswith(OWNER_TAG + ":"):
            return tag.split(":")[-1]
    return None


def is_ours(tags: list[str]) -> bool:
    """Made by mistral-lab (any installation)."""
    return OWNER_TAG in tags or deployment_of(tags) is not None


def is_gpu_size(size: dict[str, Any]) -> bool:
    return bool(size.get("gpu_info")) or str(size.get("slug", "")).startswith("gpu-")


def image_for(size: dict[str, Any]) -> str:
    """The base image a size needs: DO's AI/ML-ready images for GPU sizes, plain Ubuntu 24.04 otherwise."""
    if not is_gpu_size(size):
        return CPU_IMAGE
    gpu = size.get("gpu_info") or {}
    slug = str(size.get("slug", ""))
    model = str(gpu.get("model", ""))
    if model.startswith("amd") or "-mi" in slug:
        return AMD_IMAGE
    count = gpu.get("count")
    if count is None:
        count = 8 if "x8-" in slug else 1
    return NVIDIA_X8_IMAGE if int(count) >= 8 else NVIDIA_IMAGE


def find_size(sizes: list[dict[str, Any]], slug: str) -> dict[str, Any]:
    for size in sizes:
        if size.get("slug") == slug:
            return size
    slugs = [s["slug"] for s in sizes if s.get("slug")]
    close = difflib.get_close_matches(slug, slugs, n=4, cutoff=0.5)
    gpus = [s for s in slugs if s.startswith("gpu-")]
    fix = f"did you mean {', '.join(close)}?" if close else f"GPU sizes offered: {', '.join(gpus) or 'none'}"
    raise BadInput(f"DigitalOcean has no size {slug!r}", field="gpu", fix=fix)


def region_order(size: dict[str, Any], region: str | None) -> list[str]:
    """Regions to try, in order: the one asked for, or every region offering the size in DO's order."""
    offered = [r for r in size.get("regions") or []]
    if region:
        if region not in offered:
            where = ", ".join(offered) if offered else "no region for this account"
            raise BadInput(f"{size['slug']} is not offered in {region}", field="region",
                           fix=f"pick one of: {where} (or leave --region out to pick automatically)")
        return [region]
    return offered


def parse_cidrs(value: str | list[str], *, field: str = "allow_from", service: str = "SSH",
                example: str = "203.0.113.7/32") -> list[str]:
    """Addresses as CIDRs (a bare address becomes /32 or /128); the whole internet (/0) is refused."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    if not items:
        raise BadInput(f"no address to allow {service} from", field=field,
                       fix=f"pass the address(es) as CIDRs, e.g. {example}")
    out = []
    for item in items:
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise BadInput(f"not an IP address or CIDR: {item!r}", field=field,
                           fix=f"pass e.g. {example} or 2001:db8::1/128") from None
        if net.prefixlen == 0:
            raise BadInput(f"{item} would open {service} to the whole internet", field=field,
                           fix=f"pass only the networks that need it, e.g. {example}")
        out.append(str(net))
    return out


def parse_allow_from(value: str | list[str]) -> list[str]:
    return parse_cidrs(value)


def firewall_body(names: Names, allow_from: list[str], *, https_from: list[str] | None = None,
                  https_port: int = 443, acme_port: int | None = None) -> dict[str, Any]:
    """Inbound: TCP 22 from the caller only, and (a workshop) the HTTPS port from the room's networks only; with a
    domain, the ACME CA's HTTP-01 port from everywhere (Let's Encrypt checks from several places on the internet
    and publishes no list of them; the proxy answers there only with the CA's token).
    Outbound: everything; a DO firewall with no outbound rules blocks all outbound traffic, and the droplet must
    download packages and weights."""
    everywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
    inbound = [{"protocol": "tcp", "ports": "22", "sources": {"addresses": list(allow_from)}}]
    if https_from:
        inbound.append({"protocol": "tcp", "ports": str(https_port), "sources": {"addresses": list(https_from)}})
    if acme_port:
        inbound.append({"protocol": "tcp", "ports": str(acme_port), "sources": everywhere})
    return {
        "name": names.resource,
        "inbound_rules": inbound,
        "outbound_rules": [
            {"protocol": "tcp", "ports": "0", "destinations": everywhere},
            {"protocol": "udp", "ports": "0", "destinations": everywhere},
            {"protocol": "icmp", "ports": "0", "destinations": everywhere},
        ],
        "tags": [names.tag],
    }


def firewall_matches(firewall: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def sources(rules: list[dict[str, Any]] | None) -> list[tuple[str, str, tuple[str, ...]]]:
        return sorted((r.get("protocol", ""), r.get("ports", ""), tuple(sorted((r.get("sources") or {})
                                                                                .get("addresses") or [])))
                      for r in rules or [])

    return (sources(firewall.get("inbound_rules")) == sources(wanted["inbound_rules"])
            and len(firewall.get("outbound_rules") or []) >= len(wanted["outbound_rules"])
            and set(wanted["tags"]) <= set(firewall.get("tags") or []))


def droplet_body(names: Names, *, size: str, region: str, image: str, ssh_key_fingerprint: str,
                 user_data: str, expires_at: int | None = None) -> dict[str, Any]:
    return {
        "name": names.hostname,
        "size": size,
        "region": region,
        "image": image,
        # DO installs this key for root; cloud-init then turns root login off. Passing one avoids the e-mailed
        # root password DO sends for droplets created without any key.
        "ssh_keys": [ssh_key_fingerprint],
        # Tags named at create are created by it (the owner tag costs no call of its own).
        "tags": [OWNER_TAG, names.owner_tag, names.tag] + ([expiry_tag(expires_at)] if expires_at else []),
        "user_data": user_data,
        "ipv6": False,
        "monitoring": False,
        "backups": False,
    }


def public_ipv4(droplet: dict[str, Any]) -> str | None:
    for net in (droplet.get("networks") or {}).get("v4") or []:
        if net.get("type") == "public" and net.get("ip_address"):
            return net["ip_address"]
    return None


def hours_since(created_at: str, now: datetime | None = None) -> float:
    created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    return max(((now or datetime.now(UTC)) - created).total_seconds() / 3600, 0.0)


def droplet_cost(droplet: dict[str, Any], now: datetime | None = None) -> tuple[float, float, float]:
    """(hours up, price per hour, dollars so far) for a droplet, from its own size's price_hourly."""
    hours = hours_since(droplet["created_at"], now)
    price = float((droplet.get("size") or {}).get("price_hourly") or 0.0)
    return hours, price, hours * price
