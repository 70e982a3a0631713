"""The fake's memory: droplets, SSH keys, firewalls, tags, actions, the request log and the faults tests inject.

Everything here is plain data guarded by one lock; `app.py` turns HTTP requests into calls on `State` and
`State` raises `ApiError` with DigitalOcean's error ids and messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from . import catalog
from .conformance import Conformance
from .errors import TAG_RE, ApiError, now_iso
from .quirks import (
    IMAGE_NOT_IN_REGION,
    PENDING_EVENT,
    RATE_LIMITED,
    REGION_UNAVAILABLE,
    SIZE_RESTRICTED,
    SIZE_UNAVAILABLE,
    Quirks,
)
from .volumes import VolumeAction, VolumeBackend, VolumesMixin

MAX_USER_DATA = 64 * 1024
DROPLET_NAME_RE = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
FIREWALL_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9.\-]+$")

def md5_fingerprint(public_key: str) -> str:
    """DigitalOcean's fingerprint: MD5 of the key blob, colon-separated hex (`ssh-keygen -l -E md5`)."""
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ApiError(422, "Key invalid, key should be of the format `type key [comment]`")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "Key invalid, key should be of the format `type key [comment]`") from None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


# ---------------------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected misbehaviour. `route` is "METHOD /v2/path/{id}" as the log shows it, or "*" for any route."""

    route: str
    status: int | None = None
    times: int = 1
    retry_after: int | None = None
    after_commit: bool = False  # do the work, then answer with the error: the client never learns it worked
    delay: float = 0.0
    message: str | None = None

    def matches(self, route: str) -> bool:
        return self.times > 0 and (self.route == "*" or self.route == route)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def inject(self, route: str, status: int | None = None, *, times: int = 1, retry_after: int | None = None,
               after_commit: bool = False, delay: float = 0.0, message: str | None = None) -> Fault:
        fault = Fault(route, status, times, retry_after, after_commit, delay, message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, route: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(route):
                    fault.times -= 1
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


# ---------------------------------------------------------------------------------------------- droplet backends


@dataclass(frozen=True)
class DropletBoot:
    """What a droplet's machine gets at boot: its address and what cloud-init would install from user_data."""

    droplet_id: int
    name: str
    address: str
    port: int
    user_data: str | None
    cloud_config: dict[str, Any]

    @property
    def host_key_private(self) -> str | None:
        return (self.cloud_config.get("ssh_keys") or {}).get("ed25519_private")

    @property
    def host_key_public(self) -> str | None:
        return (self.cloud_config.get("ssh_keys") or {}).get("ed25519_public")

    @property
    def users(self) -> list[dict[str, Any]]:
        return [u for u in self.cloud_config.get("users") or [] if isinstance(u, dict)]

    @property
    def authorized_keys(self) -> list[str]:
        return [k for u in self.users for k in u.get("ssh_authorized_keys") or []]


class Machine(Protocol):
    def stop(self) -> None: ...


class Backend(Protocol):
    """Brings a droplet's machine up when it turns active and down when it is destroyed."""

    def start(self, boot: DropletBoot) -> Machine: ...


def parse_cloud_config(user_data: str | None) -> dict[str, Any]:
    if not user_data or not user_data.startswith("#cloud-config"):
        return {}
    try:
        data = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------- state


@dataclass
class LogEntry:
    method: str
    path: str
    route: str
    status: int
    query: str
    at: float


@dataclass
class FakeDroplet:
    body: dict[str, Any]
    polls_left: int
    user_data: str | None
    address: str
    is_gpu: bool
    action_id: int
    failure: str | None = None  # Quirks.create_failure as it was when this droplet was created
    machine: Machine | None = None
    machine_error: str | None = None
    destroy_looks_left: int = 0  # a destroy under way: looks still to show it, and until when at least
    destroy_until: float | None = None

    @property
    def destroying(self) -> bool:
        return self.destroy_until is not None

    def destroy_done(self, now: float) -> bool:
        return self.destroying and self.destroy_looks_left <= 0 and now >= (self.destroy_until or 0.0)

    @property
    def id(self) -> int:
        return self.body["id"]


@dataclass
class State(VolumesMixin):
    token: str
    backend: Backend | None = None
    ssh_port: int = 22
    polls_to_active: int = 2
    machine_start_delay: float = 0.0
    droplet_limit: int = 25
    create_delay: float = 0.0
    ignore_host_keys: bool = False  # boot droplets with keys of their own, as a MITM or a broken image would show
    unavailable: set[tuple[str, str]] = field(default_factory=set)
    sizes: list[dict[str, Any]] = field(default_factory=catalog.sizes)
    images: list[dict[str, Any]] = field(default_factory=catalog.images)
    quirks: Quirks = field(default_factory=Quirks)
    scopes: frozenset[str] | None = None  # a custom-scoped token holds these; None: a full-access token
    # The account's other tokens and their scopes (None: full access), e.g. a workshop deadline's narrow one.
    other_tokens: dict[str, frozenset[str] | None] = field(default_factory=dict)
    volume_backend: VolumeBackend | None = None  # volumes as real block devices on the droplets' machine
    volume_action_polls: int = 2  # looks before an attach or detach completes
    volume_limit: int = 100  # the account's (godo's Account.VolumeLimit; the spec's account shows none)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.conformance = Conformance()
        self.log: list[LogEntry] = []
        self.droplets: dict[int, FakeDroplet] = {}
        self.ssh_keys: dict[int, dict[str, Any]] = {}
        self.firewalls: dict[str, dict[str, Any]] = {}
        self.firewall_polls: dict[str, int] = {}
        self.tags: set[str] = set()
        self.actions: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(500_000_001)
        self._key_ids = itertools.count(41_000_001)
        self._action_ids = itertools.count(2_000_000_001)
        self._fw_ids = itertools.count(1)
        self._addresses = itertools.count(0)
        self._request_times: list[float] = []
        self._key_list_times: list[float] = []
        self._timers: list[threading.Timer] = []
        self.volumes: dict[str, dict[str, Any]] = {}
        self.volume_actions: dict[int, VolumeAction] = {}
        self.volume_of_action: dict[int, str] = {}
        self.unclean_detaches: list[str] = []  # volumes taken away while still mounted on the machine

    def _next_action_id(self) -> int:
        return next(self._action_ids)

    # ------------------------------------------------------------------ bookkeeping

    def record(self, entry: LogEntry) -> None:
        with self.lock:
            self.log.append(entry)

    def admit(self, route: str) -> ApiError | None:
        """Count a request against the token's limits; the 429 to answer instead when a limit is spent.

        Each request counts for one hour from when it was made (the spec's sliding hour); a refused one does
        not count, so a client that waits for ratelimit-reset gets through.
        """
        q = self.quirks
        with self.lock:
            t = time.time()
            self._request_times = [x for x in self._request_times if x > t - 3600]
            if q.hourly_limit is not None and len(self._request_times) >= q.hourly_limit:
                return ApiError(429, RATE_LIMITED)  # the hourly limit: no retry-after, only ratelimit-reset
            minute = [x for x in self._request_times if x > t - 60]
            if q.burst_limit is not None and len(minute) >= q.burst_limit:
                wait = max(1, math.ceil(minute[0] + 60 - t))
                burst = {"retry-after": str(wait), "ratelimit-remaining": "0"}
                return ApiError(429, RATE_LIMITED, headers=burst)
            if route == "GET /v2/account/keys" and q.ssh_key_list_limit is not None:
                self._key_list_times = [x for x in self._key_list_times if x > t - q.ssh_key_list_window_s]
                if len(self._key_list_times) >= q.ssh_key_list_limit:
                    return ApiError(429, RATE_LIMITED)
                self._key_list_times.append(t)
            self._request_times.append(t)
        return None

    def rate_headers(self) -> dict[str, str]:
        limit = self.quirks.hourly_limit if self.quirks.hourly_limit is not None else 5000
        with self.lock:
            t = time.time()
            recent = [x for x in self._request_times if x > t - 3600]
        reset = int((recent[0] if recent else t) + 3600)
        return {"ratelimit-limit": str(limit), "ratelimit-remaining": str(max(limit - len(recent), 0)),
                "ratelimit-reset": str(reset)}

    def count(self, route: str | None = None, *, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for e in self.log
                       if (route is None or e.route == route) and (status is None or e.status == status))

    def leftovers(self) -> dict[str, list[Any]]:
        """What nobody asked to destroy (a droplet whose asynchronous destroy was accepted is not counted)."""
        with self.lock:
            return {
                "droplets": sorted(i for i, d in self.droplets.items() if not d.destroying),
                "firewalls": sorted(self.firewalls),
                "ssh_keys": sorted(self.ssh_keys),
            }

    def shutdown(self) -> None:
        with self.lock:
            for timer in self._timers:
                timer.cancel()
            droplets = list(self.droplets.values())
        for d in droplets:
            self._stop_machine(d)
        self.close_volumes()

    # ------------------------------------------------------------------ catalog

    def size(self, slug: str) -> dict[str, Any] | None:
        return next((s for s in self.sizes if s["slug"] == slug), None)

    def image(self, ref: Any) -> dict[str, Any] | None:
        return next((i for i in self.images if ref in (i["slug"], i["id"], str(i["id"]))), None)

    def image_body(self, image: dict[str, Any]) -> dict[str, Any]:
        """An image as the API shows it: without the regions `Quirks.image_unavailable` takes it out of."""
        gone = {region for slug, region in self.quirks.image_unavailable if slug == image["slug"]}
        return {**image, "regions": [r for r in image["regions"] if r not in gone]}

    def regions(self) -> list[dict[str, Any]]:
        return catalog.regions(self.sizes, closed=self.quirks.closed_regions)

    def set_price(self, slug: str, hourly: float) -> dict[str, Any]:
        """Prices move: give a size a new hourly price (and the monthly one the API derives from it)."""
        with self.lock:
            size = self.size(slug)
            if size is None:
                raise KeyError(slug)
            monthly = catalog.monthly_price(hourly, gpu="gpu_info" in size)
            size.update(price_hourly=hourly, price_monthly=monthly)
            return dict(size)

    # ------------------------------------------------------------------ tags

    def create_tag(self, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or not TAG_RE.match(name) or len(name) > 255:
            # The spec's own example (tags_bad_request.yml); the app sends it as {error, root_causes}.
            raise ApiError(400, f'Error validating resource tag: "tag-name \\"{name}\\" contains invalid '
                                'characters"')
        with self.lock:
            self.tags.add(name)
            return self.tag_body(name)

    def tag_body(self, name: str) -> dict[str, Any]:
        with self.lock:
            count = sum(1 for d in self.droplets.values() if name in d.body["tags"])
            volumes = sum(1 for v in self.volumes.values() if name in v["tags"])
        return {"name": name, "resources": {"count": count + volumes, "droplets": {"count": count},
                                            "images": {"count": 0}, "volumes": {"count": volumes},
                                            "volume_snapshots": {"count": 0}, "databases": {"count": 0}}}

    def delete_tag(self, name: str) -> None:
        with self.lock:
            if name not in self.tags:
                raise ApiError(404)
            self.tags.discard(name)
            for d in self.droplets.values():
                if name in d.body["tags"]:
                    d.body["tags"].remove(name)
            for fw in self.firewalls.values():
                if name in fw["tags"]:
                    fw["tags"].remove(name)
            for vol in self.volumes.values():
                if name in vol["tags"]:
                    vol["tags"].remove(name)

    # ------------------------------------------------------------------ ssh keys

    def create_key(self, body: dict[str, Any]) -> dict[str, Any]:
        name, public_key = body.get("name"), body.get("public_key")
        if not isinstance(name, str) or not name:
            raise ApiError(422, "Name is required")
        if not isinstance(public_key, str) or not public_key:
            raise ApiError(422, "Public key is required")
        fingerprint = md5_fingerprint(public_key)
        with self.lock:
            if any(k["fingerprint"] == fingerprint for k in self.ssh_keys.values()):
                raise ApiError(422, "SSH Key is already in use on your account")
            key = {"id": next(self._key_ids), "fingerprint": fingerprint, "public_key": public_key.strip(),
                   "name": name}
            self.ssh_keys[key["id"]] = key
            return dict(key)

    def find_key(self, ident: str) -> dict[str, Any]:
        with self.lock:
            for key in self.ssh_keys.values():
                if ident in (str(key["id"]), key["fingerprint"]):
                    return key
        raise ApiError(404)

    def delete_key(self, ident: str) -> None:
        key = self.find_key(ident)
        with self.lock:
            self.ssh_keys.pop(key["id"], None)

    # ------------------------------------------------------------------ firewalls

    def create_firewall(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not FIREWALL_NAME_RE.match(name):
            raise ApiError(400, "name: must begin with an alphanumeric character, then letters, digits, '.' or '-'")
        inbound = body.get("inbound_rules") or []
        outbound = body.get("outbound_rules") or []
        if not inbound and not outbound:
            raise ApiError(400, "must specify at least one inbound or outbound rule")
        inbound, outbound = self._rules(inbound, "sources"), self._rules(outbound, "destinations")
        tags = list(body.get("tags") or [])
        with self.lock:
            missing = [t for t in tags if t not in self.tags]
            if missing:
                # The spec: "Tag names must exist in order to be referenced in a request."
                raise ApiError(422, f"tag {missing[0]!r} does not exist")
            fw_id = f"fb6045f1-cf1d-4ca3-bfac-{next(self._fw_ids):012d}"
            fw = {"id": fw_id, "name": name, "status": "waiting", "inbound_rules": inbound,
                  "outbound_rules": outbound, "created_at": now_iso(),
                  "droplet_ids": list(body.get("droplet_ids") or []), "tags": tags, "pending_changes": []}
            self.firewalls[fw_id] = fw
            self.firewall_polls[fw_id] = 1
            return dict(fw)

    @staticmethod
    def _rules(rules: Any, side: str) -> list[dict[str, Any]]:
        """Checked rules as the API stores them: an ICMP rule has no ports, and the API shows "0" (the spec
        requires `ports` on every rule it returns)."""
        if not isinstance(rules, list):
            raise ApiError(400, f"{side} rules must be a list")
        out = []
        for rule in rules:
            if not isinstance(rule, dict) or rule.get("protocol") not in ("tcp", "udp", "icmp"):
                raise ApiError(400, "protocol must be one of tcp, udp, icmp")
            if rule["protocol"] != "icmp" and not isinstance(rule.get("ports"), str):
                raise ApiError(400, "ports must be a string: a port, a range or \"0\"")
            if not isinstance(rule.get(side), dict):
                raise ApiError(400, f"{side} is required")
            out.append({**rule, "ports": rule.get("ports") or "0"})
        return out

    def firewall(self, fw_id: str) -> dict[str, Any]:
        with self.lock:
            fw = self.firewalls.get(fw_id)
            if fw is None:
                raise ApiError(404)
            if self.firewall_polls.get(fw_id, 0) > 0:
                self.firewall_polls[fw_id] -= 1
            else:
                fw["status"] = "succeeded"
            return dict(fw)

    def update_firewall(self, fw_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if fw_id not in self.firewalls:
                raise ApiError(404)
            fw = self.firewalls[fw_id]
            for key in ("inbound_rules", "outbound_rules"):
                if key in body:
                    side = "sources" if key.startswith("in") else "destinations"
                    fw[key] = self._rules(body[key] or [], side)
            if "name" in body:
                if not isinstance(body["name"], str) or not FIREWALL_NAME_RE.match(body["name"]):
                    raise ApiError(400, "name: must begin with an alphanumeric character, then letters, "
                                        "digits, '.' or '-'")
                fw["name"] = body["name"]
            if "tags" in body:
                fw["tags"] = list(body["tags"] or [])
            return dict(fw)

    def delete_firewall(self, fw_id: str) -> None:
        with self.lock:
            if self.firewalls.pop(fw_id, None) is None:
                raise ApiError(404)

    # ------------------------------------------------------------------ droplets

    def create_droplet(self, body: dict[str, Any]) -> FakeDroplet:
        name, size_slug, image_ref = body.get("name"), body.get("size"), body.get("image")
        if "names" in body:
            raise ApiError(422, "this fake creates one droplet per request: use `name`")
        if not isinstance(name, str) or not name or len(name) > 255 or not DROPLET_NAME_RE.match(name):
            raise ApiError(422, "Name Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)")
        size = self.size(size_slug) if isinstance(size_slug, str) else None
        if size is None:
            raise ApiError(422, "You specified an invalid size for Droplet creation.")
        image = self.image(image_ref)
        if image is None:
            raise ApiError(422, "You specified an invalid image for Droplet creation.")
        region = body.get("region") or (size["regions"][0] if size["regions"] else None)
        self._check_here(size, image, region)
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) and TAG_RE.match(t) for t in tags):
            raise ApiError(422, "tags must match ^[a-zA-Z0-9_\\-\\:]+$")
        user_data = body.get("user_data")
        if user_data is not None and (not isinstance(user_data, str) or len(user_data.encode()) > MAX_USER_DATA):
            raise ApiError(422, "user_data must be a string of at most 64 KiB")
        with self.lock:
            bad = [str(k) for k in body.get("ssh_keys") or []
                   if not any(str(k) in (str(x["id"]), x["fingerprint"]) for x in self.ssh_keys.values())]
            if bad:
                raise ApiError(422, f"{', '.join(bad)} are invalid key identifiers for Droplet creation.")
            if len(self.droplets) + 1 > self.droplet_limit:  # a droplet being destroyed still counts
                raise ApiError(422, "creating this/these droplet(s) will exceed your droplet limit")
            self.tags.update(tags)
            droplet_id = next(self._ids)
            action_id = next(self._action_ids)
            address = f"127.0.0.{next(self._addresses) % 250 + 2}"
            created = now_iso()
            droplet = {
                "id": droplet_id, "name": name, "memory": size["memory"], "vcpus": size["vcpus"],
                "disk": size["disk"], "disk_info": size["disk_info"], "locked": True, "status": "new",
                "kernel": None, "created_at": created, "features": ["droplet_agent", "private_networking"],
                "backup_ids": [], "next_backup_window": None, "snapshot_ids": [],
                "image": self.image_body(image), "volume_ids": [], "size": size, "size_slug": size_slug,
                "networks": {"v4": [], "v6": []},
                "region": self.region_body(region), "tags": list(tags),
                "vpc_uuid": "760e09ef-dc84-11e8-981e-3cfdfeaae000",
            }
            if "gpu_info" in size:
                droplet["gpu_info"] = size["gpu_info"]
            fake = FakeDroplet(body=droplet, polls_left=self.polls_to_active, user_data=user_data, address=address,
                               is_gpu="gpu_info" in size, action_id=action_id,
                               failure=self.quirks.create_failure)
            self.droplets[droplet_id] = fake
            self.actions[action_id] = {
                "id": action_id, "status": "in-progress", "type": "create", "started_at": created,
                "completed_at": None, "resource_id": droplet_id, "resource_type": "droplet",
                "region": self.region_body(region), "region_slug": region,
            }
            return fake

    def _check_here(self, size: dict[str, Any], image: dict[str, Any], region: Any) -> None:
        """The 422s that mean "not here" (wordings and sources in quirks.py)."""
        if region not in catalog.REGION_NAMES:
            raise ApiError(422, "You specified an invalid region for Droplet creation.")
        if region in self.quirks.closed_regions:
            raise ApiError(422, REGION_UNAVAILABLE)
        if size["slug"] in self.quirks.restricted_sizes:
            raise ApiError(422, SIZE_RESTRICTED)
        out_of_stock = (size["slug"], region) in self.unavailable
        if region not in size["regions"] or out_of_stock or not size["available"]:
            raise ApiError(422, SIZE_UNAVAILABLE)
        if region not in self.image_body(image)["regions"]:
            raise ApiError(422, IMAGE_NOT_IN_REGION)

    def region_body(self, slug: str) -> dict[str, Any]:
        return next(r for r in self.regions() if r["slug"] == slug)

    def _view(self, d: FakeDroplet) -> dict[str, Any] | None:
        """A droplet as one look (a GET of it, or a list showing it) finds it; None once its destroy is done.

        Each look brings a new droplet one poll closer to active (or, with `Quirks.create_failure`, to its
        failure) and a droplet being destroyed one look closer to gone.
        """
        if d.destroying:
            if d.destroy_done(time.time()):
                self._forget(d.id)
                return None
            d.destroy_looks_left -= 1
        elif d.body["status"] == "new" and d.failure != "stuck" and d.polls_left > 0:
            d.polls_left -= 1
            if d.polls_left <= 0 and d.failure == "errored":
                self._fail(d)
            elif d.polls_left <= 0:
                self._activate(d)
        return dict(d.body)

    def _fail(self, d: FakeDroplet) -> None:
        """The create event failed: the action says so; the droplet stays `new`, never boots, is billed."""
        self.actions[d.action_id].update(status="errored", completed_at=now_iso())

    def _activate(self, d: FakeDroplet) -> None:
        n = d.id % 250
        d.body.update(status="active", locked=False, networks={
            "v4": [
                {"ip_address": f"10.{n // 100 + 100}.{n % 100}.{n}", "netmask": "255.255.0.0", "gateway": "nil",
                 "type": "private"},
                {"ip_address": d.address, "netmask": "255.0.0.0", "gateway": "127.0.0.1", "type": "public"},
            ],
            "v6": [],
        })
        action = self.actions[d.action_id]
        action.update(status="completed", completed_at=now_iso())
        if self.backend is not None:
            config = parse_cloud_config(d.user_data)
            if self.ignore_host_keys:
                config.pop("ssh_keys", None)
            boot = DropletBoot(d.id, d.body["name"], d.address, self.ssh_port, d.user_data, config)
            if self.machine_start_delay > 0:
                timer = threading.Timer(self.machine_start_delay, self._start_machine, (d, boot))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            else:
                self._start_machine(d, boot)

    def _start_machine(self, d: FakeDroplet, boot: DropletBoot) -> None:
        with self.lock:
            if d.id not in self.droplets or d.destroying:
                return
        try:
            machine = self.backend.start(boot)  # type: ignore[union-attr]
        except Exception as e:  # a droplet that fails to boot stays unreachable, like a real one
            d.machine_error = f"{type(e).__name__}: {e}"
            return
        with self.lock:
            if d.id in self.droplets and not d.destroying:
                d.machine = machine
                return
        machine.stop()  # destroyed while booting

    def _stop_machine(self, d: FakeDroplet) -> None:
        machine, d.machine = d.machine, None
        if machine is not None:
            machine.stop()

    def droplet(self, droplet_id: int) -> dict[str, Any]:
        with self.lock:
            d = self.droplets.get(droplet_id)
            view = self._view(d) if d is not None else None
            if view is None:
                raise ApiError(404)
            return view

    def list_droplets(self, *, tag_name: str | None, name: str | None, type_: str | None) -> list[dict[str, Any]]:
        if tag_name and (type_ or name):
            # The spec: tag_name "Can not be combined with `name` or `type`" (status code not documented).
            raise ApiError(422, "tag_name can not be combined with name or type")
        if type_ not in (None, "droplets", "gpus"):
            raise ApiError(422, "type must be one of droplets, gpus")
        with self.lock:
            out = []
            for d in list(self.droplets.values()):
                if tag_name:
                    # Tag listing returns GPU droplets too (SkyPilot relies on this; the docs are silent).
                    keep = tag_name in d.body["tags"]
                else:
                    keep = d.is_gpu if type_ == "gpus" else not d.is_gpu
                    if name:
                        keep = keep and d.body["name"].lower() == name.lower()
                view = self._view(d) if keep else None
                if view is not None:
                    out.append(view)
            return out

    def destroy_droplet(self, droplet_id: int) -> None:
        """204 at once; with `Quirks.destroy_polls`/`destroy_seconds` the droplet lingers, `off`, a while."""
        q = self.quirks
        with self.lock:
            d = self.droplets.get(droplet_id)
            if d is not None and d.destroy_done(time.time()):
                self._forget(droplet_id)
                d = None
            if d is None:
                raise ApiError(404)
            if d.destroying:
                raise ApiError(422, PENDING_EVENT)
            if q.destroy_polls > 0 or q.destroy_seconds > 0:
                d.destroy_looks_left, d.destroy_until = q.destroy_polls, time.time() + q.destroy_seconds
                d.body.update(status="off", locked=True)
            else:
                self._forget(droplet_id)
            for fw in self.firewalls.values():
                if droplet_id in fw["droplet_ids"]:
                    fw["droplet_ids"].remove(droplet_id)
        self._stop_machine(d)

    def destroy_by_tag(self, tag_name: str | None) -> None:
        if not tag_name:
            raise ApiError(422, "tag_name is required")
        with self.lock:
            if tag_name not in self.tags:
                raise ApiError(404)
            # One whose destroy is under way is left to it: no public report shows a by-tag DELETE refused.
            ids = [i for i, d in self.droplets.items() if tag_name in d.body["tags"] and not d.destroying]
        for i in ids:
            self.destroy_droplet(i)

    def _forget(self, droplet_id: int) -> None:
        """A droplet's destroy is done: it is gone, and its volumes with it are detached."""
        self.droplets.pop(droplet_id, None)
        self._droplet_gone(droplet_id)

    def _advance(self, action: dict[str, Any]) -> None:
        """Time passes whatever the client looks at: a look at a droplet's action is a look at the droplet."""
        if action.get("resource_type") == "volume":
            self._advance_volume_actions(self.volume_of_action.get(action["id"]))
            return
        d = self.droplets.get(action["resource_id"]) if action.get("resource_type") == "droplet" else None
        if d is not None:
            self._view(d)

    def action(self, action_id: int) -> dict[str, Any]:
        with self.lock:
            action = self.actions.get(action_id)
            if action is None:
                raise ApiError(404)
            self._advance(action)
            return dict(action)

    def droplet_actions(self, droplet_id: int) -> list[dict[str, Any]]:
        with self.lock:
            if droplet_id not in self.droplets:
                raise ApiError(404)
            return [dict(a) for a in self.actions.values() if a["resource_id"] == droplet_id]

    def droplet_action(self, droplet_id: int, action_id: int) -> dict[str, Any]:
        with self.lock:
            action = self.actions.get(action_id)
            if droplet_id not in self.droplets or action is None or action["resource_id"] != droplet_id:
                raise ApiError(404)
            self._advance(action)
            return dict(action)

    def account(self) -> dict[str, Any]:
        return {"droplet_limit": self.droplet_limit, "floating_ip_limit": 3, "email": "sammy@example.com",
                "name": "Sammy the Shark", "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
                "email_verified": True, "status": "active", "status_message": " ",
                "team": {"uuid": "5df3e3004a17e242b7c20ca6c9fc25b701a47ece", "name": "My Team"}}

