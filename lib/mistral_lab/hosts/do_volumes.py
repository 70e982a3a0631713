"""A cache volume: builds and weights kept on a DigitalOcean Volume in the droplet's region, so that a repeat deploy
there (a workshop's second day) attaches it and its model step finds the weights already on it.

One volume per installation, label and region, `mistral-lab-cache-<label>-<owner>` (`do_resources.Names`), tagged
`mistral-lab` and the owner's tag. The first deploy with `cache_volume` creates it in the droplet's region (sized
from the plan's weights with headroom), attaches it, and mounts it at the host cache over SSH through the login
user's sudo (formatting it ext4 the first time it is seen blank); teardown unmounts and detaches it and keeps it,
saying what it costs a month; a later deploy in that region attaches the same one, and one without a region goes
where the cache is. `drop` / `drop_cache` delete it; `sweep` lists them.

DigitalOcean's part, and what is done about it:
- attach and detach are actions that complete later (202 with an action, the spec's volumeActions_post_byId.yml):
  each is polled until `completed`; `errored` stops;
- a volume attaches only to a droplet in its own region and to one droplet at a time: one still held by a droplet
  that is going (the last deploy's, whose destroy detaches it only once done: https://github.com/digitalocean/
  godo/issues/146, 2017-07-07) is waited for, one held by a live droplet is an error;
- a droplet with an event under way refuses an attach or a detach with 422 "Droplet already has a pending event."
  (DigitalOcean's CSI driver retries on it: csi-digitalocean, driver/controller.go): retried until the timeout;
  a detach refused that way (the droplet is being destroyed) is left to the destroy;
- an attached volume cannot be deleted (409, https://github.com/digitalocean/terraform-provider-digitalocean/
  issues/27, 2017-07-28): a drop waits for the detach;
- DigitalOcean mounts a volume only when it is created pre-formatted, at /mnt/<name> ("We cannot automatically
  mount volumes for you at any time other than when you first create the volume",
  https://docs.digitalocean.com/products/volumes/how-to/mount/, read 2026-12-07): it is created blank, with no
  `filesystem_type`, so nothing else mounts it, and formatted here on first use; its device is the link
  /dev/disk/by-id/scsi-0DO_Volume_<name> (https://docs.digitalocean.com/products/volumes/details/
  naming-conventions/, read 2026-12-07), mounted with the options the mount how-to recommends;
- price: $0.10 per GiB a month (https://docs.digitalocean.com/products/volumes/details/pricing/, read
  2026-12-07); the API gives a volume's size and creation time, not its price.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mistral_lab import infra_files
from mistral_lab.errors import BadInput, MistralLabError, TargetError
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts.base import Host, HostRecord, LineSink
from mistral_lab.hosts.do_api import PENDING_EVENT, DOApi, DOApiError
from mistral_lab.options import DigitalOceanOptions

__all__ = ["USD_PER_GIB_MONTH", "CacheVolume", "Wait", "drop_cache", "monthly_usd", "spec", "volume_gib"]

USD_PER_GIB_MONTH = 0.10
DEFAULT_LABEL = "main"
MAX_GIB = 16384  # 16 TiB, the spec's limit (volume_action_post_resize.yml)
# Weights plus their download's .part file beside them at the end, and the engines' builds and environments
# (a llama.cpp CUDA build is about 1 GiB, a vLLM environment about 10 GiB).
HEADROOM = 1.25
BUILDS_GIB = 20
GIB_PER_GB = 1e9 / 2**30
DEVICE_PREFIX = "scsi-0DO_Volume_"
FS_LABEL = "mistral-cache"  # ext4 labels hold 16 bytes
MOUNT_OPTIONS = "defaults,nofail,discard,noatime"  # DigitalOcean's recommendation (the mount how-to)


# ---------------------------------------------------------------------------------------------- pure


@dataclass(frozen=True)
class CacheVolume:
    """What a deploy wants: the volume's name, its size if it has to be made, and where it goes on the droplet."""

    name: str
    label: str
    size_gib: int
    mount: str  # the host cache, mounted over
    device: str  # the link the attached volume appears at on the droplet


@dataclass(frozen=True)
class Wait:
    """How long to wait for an action or a release, and how to."""

    timeout_s: float
    poll_s: float
    sleep: Callable[[float], None] = time.sleep


def label_of(option: bool | str | None) -> str | None:
    """The cache's label from the option: None (off), True (the default label) or a label."""
    if option is None or option is False:
        return None
    return DEFAULT_LABEL if option is True else str(option)


def volume_gib(weights_gb: float) -> int:
    """A cache volume's size for weights of `weights_gb` (10^9 bytes, as sizing reports them): headroom for the
    download and the builds, in whole GiB as the API takes them."""
    gib = math.ceil(max(weights_gb, 0.0) * GIB_PER_GB * HEADROOM) + BUILDS_GIB
    return min(max(gib, 1), MAX_GIB)


def spec(settings: DigitalOceanOptions, names: res.Names, vram_gib: float | None) -> CacheVolume | None:
    """The cache volume the options ask for, None when they ask for none. Without a size (`cache_volume_gib`,
    which a caller that has the plan sets from its weights) the GPU memory bounds the weights: a plan that fits
    holds no more weights than that."""
    label = label_of(settings.cache_volume)
    if label is None:
        return None
    size = settings.cache_volume_gib or volume_gib((vram_gib or 0.0) / GIB_PER_GB)
    mount = settings.host_cache or "/srv/mistral-lab/cache"
    name = names.cache_volume(label)
    return CacheVolume(name=name, label=label, size_gib=size, mount=mount,
                       device=f"{settings.volume_device_dir.rstrip('/')}/{DEVICE_PREFIX}{name}")


def monthly_usd(size_gib: float) -> float:
    return round(size_gib * USD_PER_GIB_MONTH, 2)


def describe(volume: dict[str, Any]) -> str:
    """`mistral-lab-cache-main-1a2b (25 GiB in nyc2): $2.50/month`, from the API's own size."""
    size = int(volume.get("size_gigabytes") or 0)
    region = (volume.get("region") or {}).get("slug", "?")
    return f"{volume.get('name')} ({size} GiB in {region}): ${monthly_usd(size):.2f}/month"


def prefer_regions(regions: list[str], cached: list[str]) -> list[str]:
    """The size's regions with those that hold the cache first (in the size's order)."""
    return [r for r in regions if r in cached] + [r for r in regions if r not in cached]


def region_of(volume: dict[str, Any]) -> str:
    return str((volume.get("region") or {}).get("slug") or "")


# ---------------------------------------------------------------------------------------------- the API side


def find(api: DOApi, name: str, region: str | None = None) -> list[dict[str, Any]]:
    """The volumes of that name (one per region at most), in `region` only if given."""
    return [v for v in api.list_volumes(name=name, region=region) if v.get("name") == name]


def is_ours(volume: dict[str, Any]) -> bool:
    return res.cache_of_name(str(volume.get("name") or "")) is not None or res.OWNER_TAG in (volume.get("tags") or [])


def owner_of(volume: dict[str, Any]) -> str | None:
    """Whose cache: its owner tag, else the owner in its name (a tag can be deleted; the name stays)."""
    parsed = res.cache_of_name(str(volume.get("name") or ""))
    return res.owner_of(volume.get("tags") or []) or (parsed[1] if parsed else None)


def ours(api: DOApi, owner: str | None) -> list[dict[str, Any]]:
    """Cache volumes mistral-lab made (this owner's, or everyone's when `owner` is None)."""
    return [v for v in api.list_volumes() if is_ours(v) and (owner is None or owner_of(v) == owner)]


def ensure_attached(api: DOApi, cache: CacheVolume, droplet: dict[str, Any], found: list[dict[str, Any]], *,
                    tags: list[str], note: Callable[..., None], say: LineSink, wait: Wait) -> dict[str, Any]:
    """The cache volume in the droplet's region, attached to it: found or created (recorded through `note` the
    moment it exists), then attached (recorded when the attach is accepted) and waited for."""
    region = droplet["region"]["slug"]
    # `found` is the listing provision just made; a volume made since then by another deploy of ours is caught by
    # the create's 409.
    volume = next((v for v in found if region_of(v) == region), None)
    if volume is None:
        volume = _create(api, cache, region, tags, say)
    note(volume=volume["id"], volume_name=volume["name"], volume_region=region)
    size = int(volume.get("size_gigabytes") or 0)
    if size < cache.size_gib:
        say(f"cache volume {volume['name']} is {size} GiB, less than the {cache.size_gib} GiB asked for: using it "
            "as it is (resize it in DigitalOcean's console if a download runs out of room)")
    if droplet["id"] in (volume.get("droplet_ids") or []):
        say(f"cache volume {volume['name']} is attached already")
        note(volume_droplet=droplet["id"])
        return volume
    if volume.get("droplet_ids"):
        volume = _wait_released(api, volume, wait, say)
    _attach(api, volume, droplet["id"], region, wait, say, note)
    return volume


def _create(api: DOApi, cache: CacheVolume, region: str, tags: list[str], say: LineSink) -> dict[str, Any]:
    body = {"name": cache.name, "region": region, "size_gigabytes": cache.size_gib, "tags": tags,
            "description": "mistral-lab cache: builds and model weights"}
    try:
        volume = api.create_volume(body)
    except DOApiError as e:
        if e.status == 409:  # made a moment ago (another deploy of ours, or a create whose answer was lost)
            again = find(api, cache.name, region)
            if again:
                return again[0]
        raise TargetError(f"could not create the cache volume {cache.name} in {region}: {e.api_message}",
                          fix="deploy without cache_volume, or in a region that offers volumes") from None
    say(f"created cache volume {describe(volume)}, kept after teardown until dropped")
    return volume


def _wait_released(api: DOApi, volume: dict[str, Any], wait: Wait, say: LineSink) -> dict[str, Any]:
    """Until no droplet holds the volume. A droplet that is going (404, or not active: a destroy under way) lets go
    of it when its destroy is done; a live one keeps it, and one volume attaches to one droplet at a time."""
    deadline = time.monotonic() + wait.timeout_s
    while volume.get("droplet_ids"):
        holder = int(volume["droplet_ids"][0])
        other = api.get_droplet(holder)
        if other is not None and other.get("status") == "active":
            raise TargetError(f"cache volume {volume['name']} is attached to droplet {holder} "
                              f"({other.get('name')}), which is running: a volume attaches to one droplet at a time",
                              fix="tear that deployment down first (mistral-lab sweep lists it), or give this one "
                                  "another cache label (cache_volume=<label>)")
        if time.monotonic() > deadline:
            raise TargetError(f"cache volume {volume['name']} is still attached to droplet {holder} "
                              f"{wait.timeout_s:.0f} s after that droplet began to go",
                              fix="deploy again in a minute")
        say(f"cache volume {volume['name']} is still held by droplet {holder}, which is going; waiting")
        wait.sleep(wait.poll_s)
        fresh = api.get_volume(volume["id"])
        if fresh is None:
            raise TargetError(f"cache volume {volume['name']} was deleted while waiting for it",
                              fix="deploy again: a new one is made")
        volume = fresh
    return volume


def _attach(api: DOApi, volume: dict[str, Any], droplet_id: int, region: str, wait: Wait, say: LineSink,
            note: Callable[..., None]) -> None:
    deadline = time.monotonic() + wait.timeout_s
    body = {"type": "attach", "droplet_id": droplet_id, "region": region}
    while True:
        try:
            action = api.volume_action(volume["id"], body)
            break
        except DOApiError as e:
            if e.status == 422 and PENDING_EVENT in e.api_message.lower() and time.monotonic() < deadline:
                wait.sleep(wait.poll_s)  # the droplet is still busy (its create, another volume)
                continue
            raise TargetError(f"attaching cache volume {volume['name']} to droplet {droplet_id} was refused: "
                              f"{e.api_message}", fix="deploy again; without cache_volume if it keeps failing") from None
    if action is None:
        raise TargetError(f"cache volume {volume['name']} or droplet {droplet_id} was not found for the attach",
                          fix="deploy again")
    note(volume_droplet=droplet_id)
    t0 = time.monotonic()
    _wait_action(api, volume, action, wait, "attach")
    say(f"attached cache volume {volume['name']} after {time.monotonic() - t0:.0f} s")


def _wait_action(api: DOApi, volume: dict[str, Any], action: dict[str, Any], wait: Wait, what: str) -> None:
    """Poll the action until it completes: first after a second, then doubling up to the poll interval (an attach
    takes seconds: the spec's example action took 11), so a short one is not waited for a whole interval."""
    deadline = time.monotonic() + wait.timeout_s
    pause = min(1.0, wait.poll_s)
    while action.get("status") != "completed":
        if action.get("status") == "errored":
            raise TargetError(f"the {what} of cache volume {volume['name']} failed (its action errored)",
                              fix="deploy (or tear down) again; DigitalOcean's console shows the volume's events")
        if time.monotonic() > deadline:
            raise TargetError(f"the {what} of cache volume {volume['name']} did not complete in "
                              f"{wait.timeout_s:.0f} s", fix="run it again in a minute")
        wait.sleep(pause)
        pause = min(pause * 2, wait.poll_s)
        action = api.get_volume_action(volume["id"], int(action["id"])) or {"status": "errored"}


def detach(api: DOApi, volume_id: str, droplet_id: int, region: str | None, wait: Wait, say: LineSink) -> bool:
    """Detach and wait; False when there was nothing to detach or the droplet is busy going (its destroy detaches
    the volume when done)."""
    body: dict[str, Any] = {"type": "detach", "droplet_id": droplet_id}
    if region:
        body["region"] = region
    try:
        action = api.volume_action(volume_id, body)
    except DOApiError as e:
        message = e.api_message.lower()
        if e.status == 422 and "attachment not found" in message:  # the older answer for "not attached"
            return False
        if e.status == 422 and PENDING_EVENT in message:
            say(f"droplet {droplet_id} is busy; its destroy detaches the cache volume")
            return False
        raise
    if action is None:  # not attached to it (any more): 404
        return False
    _wait_action(api, {"id": volume_id, "name": volume_id}, action, wait, "detach")
    return True


def wait_detached(api: DOApi, volume_id: str, wait: Wait) -> dict[str, Any] | None:
    """The volume once no droplet holds it (a destroyed droplet lets go when its destroy is done); None if gone.
    Raises when a droplet still holds it at the timeout."""
    deadline = time.monotonic() + wait.timeout_s
    while True:
        volume = api.get_volume(volume_id)
        if volume is None or not volume.get("droplet_ids"):
            return volume
        if time.monotonic() > deadline:
            raise TargetError(f"cache volume {volume['name']} is still attached to droplet "
                              f"{volume['droplet_ids'][0]} {wait.timeout_s:.0f} s after teardown",
                              fix="run the teardown again in a minute")
        wait.sleep(wait.poll_s)


def delete(api: DOApi, volume_id: str, wait: Wait, say: LineSink) -> bool:
    """Delete the volume, waiting while it is still attached (409) to a droplet that is letting go of it."""
    deadline = time.monotonic() + wait.timeout_s
    while True:
        try:
            gone = api.delete_volume(volume_id)
            if gone:
                say(f"deleted cache volume {volume_id}")
            return gone
        except DOApiError as e:
            if e.status != 409 or time.monotonic() > deadline:
                raise
            wait.sleep(wait.poll_s)


# ---------------------------------------------------------------------------------------------- the droplet side

MOUNT_SCRIPT = "volume-mount.sh"  # in infra/: runs as the login user, root steps through its sudo


def mount(host: Host, cache: CacheVolume, user: str, say: LineSink, *, device_wait_s: int = 60) -> bool:
    """Mount the attached volume at the host cache (formatting it if blank); True when it was formatted now."""
    # Values in the script, not in `env`: a host masks env values in what it prints, and these are not secret.
    values = {"DEVICE": cache.device, "MOUNT": cache.mount, "OWNER": user, "LABEL": FS_LABEL,
              "OPTIONS": MOUNT_OPTIONS, "WAIT": str(device_wait_s)}
    r = host.run_script(infra_files.with_env(infra_files.read(MOUNT_SCRIPT), values), check=False, timeout=device_wait_s + 600,
                        on_line=say, retry_safe=True)
    if not r.ok:
        last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        raise TargetError(f"mounting cache volume {cache.name} at {cache.mount} failed: {last[0]}",
                          fix="deploy again; without cache_volume if it keeps failing")
    return "volume: formatted" in r.stdout


def unmount(host: Host, mount_point: str) -> bool:
    """Unmount the cache (its data flushed); True when it is not mounted any more."""
    q = shlex.quote(mount_point)
    r = host.run(f"if mountpoint -q {q}; then sync && sudo -n umount {q}; fi", check=False, timeout=300)
    return r.ok


# ---------------------------------------------------------------------------------------------- teardown side


@dataclass(frozen=True)
class Held:
    """A cache volume a deployment's record says it holds."""

    volume_id: str
    name: str
    region: str | None
    droplet_id: int | None  # the droplet an attach was accepted for
    mount: str | None  # where it was mounted, once it was

    @classmethod
    def of(cls, record: HostRecord) -> Held | None:
        ids = record.resource_ids
        if not ids.get("volume"):
            return None
        droplet = ids.get("volume_droplet")
        return cls(str(ids["volume"]), str(ids.get("volume_name") or ids["volume"]), ids.get("volume_region"),
                   int(droplet) if droplet else None, ids.get("volume_mount"))


def release(api: DOApi, held: Held, reach: Callable[[], Host], wait: Wait, say: LineSink) -> None:
    """Before the droplet goes: unmount (flushing the cache) and detach. When the droplet cannot be reached or the
    unmount fails, the volume is left attached: the droplet's destroy detaches it, as pulling a disk would."""
    if held.droplet_id is None:
        return
    if held.mount:
        try:
            host = reach()
            try:
                done = unmount(host, held.mount)
            finally:
                host.close()
        except MistralLabError as e:
            say(f"could not reach the droplet to unmount cache volume {held.name} ({e.message}); its destroy "
                "detaches it")
            return
        if not done:
            say(f"could not unmount cache volume {held.name}; the droplet's destroy detaches it")
            return
        say(f"unmounted cache volume {held.name}")
    if detach(api, held.volume_id, held.droplet_id, held.region, wait, say):
        say(f"detached cache volume {held.name}")


def drop_cache(*, owner: str, label: str | None = None, region: str | None = None, api_url: str | None = None,
               on_line: LineSink | None = None, sleep: Callable[[float], None] = time.sleep,
               timeout_s: float = 300.0) -> list[str]:
    """Delete this owner's cache volumes (of one label, in one region, when given): what `workshop down
    --drop-cache` does after its teardown, and what a later cleanup can call alone. One still attached to a live
    droplet is refused; one held by a droplet that is going is waited for. Returns what was deleted, described."""
    say = on_line or (lambda line: None)
    api = DOApi(api_url, sleep=sleep)
    wanted = res.Names("", owner).cache_volume(label) if label else None
    gone = []
    for volume in ours(api, owner):
        if (wanted and volume.get("name") != wanted) or (region and region_of(volume) != region):
            continue
        for holder in volume.get("droplet_ids") or []:
            other = api.get_droplet(int(holder))
            if other is not None and other.get("status") == "active":
                raise BadInput(f"cache volume {volume['name']} is attached to droplet {holder} ({other.get('name')})",
                               field="drop_cache", fix="tear that deployment down first, then drop the cache")
        if delete(api, volume["id"], Wait(timeout_s, 2.0, sleep), say):
            gone.append(describe(volume))
    return gone
