"""Pure decisions about DigitalOcean resources: names, tags, images, regions, request bodies, costs. No I/O.

Ownership is by tag: every droplet we create carries `mistral-lab` and `mistral-lab:<deployment>`; the firewall is
bound to the deployment tag and named `mistral-lab-<deployment>`; an SSH key we upload is named
`mistral-lab-<deployment>` (DigitalOcean keys cannot carry tags). A droplet with a planned end (a workshop) also
carries `mistral-lab-expires:<unix seconds>`, which `mistral-lab sweep --expired` acts on.
"""

from __future__ import annotations

import difflib
import ipaddress
from datetime import UTC, datetime
from typing import Any

from mistral_lab.errors import BadInput

OWNER_TAG = "mistral-lab"
CPU_IMAGE = "ubuntu-24-04-x64"
NVIDIA_IMAGE = "gpu-h100x1-base"  # every single-GPU NVIDIA size, L40S and RTX included (DO's recommended setup)
NVIDIA_X8_IMAGE = "gpu-h100x8-base"
AMD_IMAGE = "gpu-amd-base"
NO_CAPACITY = "Size is not available in this region."
DROPLET_LIMIT = "droplet limit"
EXPIRY_PREFIX = f"{OWNER_TAG}-expires:"


def deployment_tag(deployment: str) -> str:
    return f"{OWNER_TAG}:{deployment}"


def resource_name(deployment: str) -> str:
    return f"{OWNER_TAG}-{deployment}"


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
    for tag in tags:
        if tag.startswith(OWNER_TAG + ":"):
            return tag.split(":", 1)[1]
    return None


def is_ours(tags: list[str]) -> bool:
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


def firewall_body(deployment: str, allow_from: list[str], *, https_from: list[str] | None = None,
                  https_port: int = 443) -> dict[str, Any]:
    """Inbound: TCP 22 from the caller only, and (a workshop) the HTTPS port from the room's networks only.
    Outbound: everything; a DO firewall with no outbound rules blocks all outbound traffic, and the droplet must
    download packages and weights."""
    everywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
    inbound = [{"protocol": "tcp", "ports": "22", "sources": {"addresses": list(allow_from)}}]
    if https_from:
        inbound.append({"protocol": "tcp", "ports": str(https_port), "sources": {"addresses": list(https_from)}})
    return {
        "name": resource_name(deployment),
        "inbound_rules": inbound,
        "outbound_rules": [
            {"protocol": "tcp", "ports": "0", "destinations": everywhere},
            {"protocol": "udp", "ports": "0", "destinations": everywhere},
            {"protocol": "icmp", "ports": "0", "destinations": everywhere},
        ],
        "tags": [deployment_tag(deployment)],
    }


def firewall_matches(firewall: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def sources(rules: list[dict[str, Any]] | None) -> list[tuple[str, str, tuple[str, ...]]]:
        return sorted((r.get("protocol", ""), r.get("ports", ""), tuple(sorted((r.get("sources") or {})
                                                                                .get("addresses") or [])))
                      for r in rules or [])

    return (sources(firewall.get("inbound_rules")) == sources(wanted["inbound_rules"])
            and len(firewall.get("outbound_rules") or []) >= len(wanted["outbound_rules"])
            and set(wanted["tags"]) <= set(firewall.get("tags") or []))


def droplet_body(deployment: str, *, size: str, region: str, image: str, ssh_key_fingerprint: str,
                 user_data: str, expires_at: int | None = None) -> dict[str, Any]:
    return {
        "name": resource_name(deployment),
        "size": size,
        "region": region,
        "image": image,
        # DO installs this key for root; cloud-init then turns root login off. Passing one avoids the e-mailed
        # root password DO sends for droplets created without any key.
        "ssh_keys": [ssh_key_fingerprint],
        "tags": [OWNER_TAG, deployment_tag(deployment)] + ([expiry_tag(expires_at)] if expires_at else []),
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
