"""The fake's block storage volumes and their attach/detach actions, as DigitalOcean's API v2 shapes them.

A mixin of `State` (one lock, one action table, one action id counter): the HTTP side is in app.py, the machine
side (a real loop device behind a /dev/disk/by-id-style link when an attach completes) in volume_backend.py.
What the real API does that a client must cope with (wordings and sources in quirks.py):

- attach and detach are actions (202) that complete later: `droplet_ids` changes, and the device appears or goes,
  only when the action completes (after `State.volume_action_polls` looks at the action or its volume);
- a volume attaches to one droplet at a time, only in its own region, at most 15 per droplet, and not while the
  droplet has an event under way (being created or destroyed, another volume action): 422;
- a destroyed droplet's volumes are detached by its destroy, when that is done (until then they still show it,
  and a detach gets 422 "pending event");
- an attached volume cannot be deleted (409); a volume's name is unique in its region (409 on create);
- a detach from a droplet it is not attached to: 404.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import TAG_RE, ApiError, now_iso
from .quirks import (
    ALREADY_ATTACHED,
    NOT_ATTACHED,
    PENDING_EVENT,
    STORAGE_NOT_IN_REGION,
    TOO_MANY_VOLUMES,
    VOLUME_ATTACHED,
    VOLUME_LIMIT,
    VOLUME_NAME,
    VOLUME_NAME_TAKEN,
    VOLUME_SIZE,
    WRONG_REGION,
    Quirks,
)

if TYPE_CHECKING:
    from .state import FakeDroplet

VOLUME_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
MAX_GIB = 16384
PER_DROPLET = 15


class VolumeBackend(Protocol):
    """The machine side of volumes: a block device per volume that shows up on the droplet when attached."""

    def create(self, volume_id: str, name: str, size_gib: int) -> None: ...

    def plug(self, volume_id: str, name: str) -> str: ...

    def unplug(self, volume_id: str, name: str) -> bool:
        """Take the device away; True when it was still mounted (a detach under a mounted filesystem)."""
        ...

    def delete(self, volume_id: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class VolumeAction:
    action_id: int
    volume_id: str
    kind: str  # attach | detach
    droplet_id: int
    polls_left: int


class VolumesMixin:
    """The volume half of `State`. The attributes below are State's own (set in its __post_init__)."""

    lock: threading.RLock
    quirks: Quirks
    actions: dict[int, dict[str, Any]]
    droplets: dict[int, FakeDroplet]
    tags: set[str]
    volumes: dict[str, dict[str, Any]]
    volume_actions: dict[int, VolumeAction]  # under way
    volume_of_action: dict[int, str]  # every volume action's volume, done or not
    volume_backend: VolumeBackend | None
    volume_limit: int
    volume_action_polls: int
    unclean_detaches: list[str]

    def regions(self) -> list[dict[str, Any]]: ...  # State's

    def region_body(self, slug: str) -> dict[str, Any]: ...  # State's

    def _next_action_id(self) -> int: ...  # State's

    def _view(self, d: FakeDroplet) -> dict[str, Any] | None: ...  # State's: one look at a droplet

    # ------------------------------------------------------------------ volumes

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        name, region, size = body.get("name"), body.get("region"), body.get("size_gigabytes")
        if not isinstance(name, str) or not VOLUME_NAME_RE.match(name):
            raise ApiError(422, VOLUME_NAME)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_GIB:
            raise ApiError(422, VOLUME_SIZE)
        if body.get("snapshot_id") or body.get("filesystem_type"):
            raise ApiError(422, "this fake makes blank volumes only (no snapshot_id, no filesystem_type)")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) and TAG_RE.match(t) for t in tags):
            raise ApiError(422, "tags must match ^[a-zA-Z0-9_\\-\\:]+$")
        with self.lock:
            if region not in {r["slug"] for r in self.regions()}:
                raise ApiError(422, "You specified an invalid region for volume creation.")
            if region in self.quirks.no_storage_regions:
                raise ApiError(422, STORAGE_NOT_IN_REGION)
            if any(v["name"] == name and v["region"]["slug"] == region for v in self.volumes.values()):
                raise ApiError(409, VOLUME_NAME_TAKEN)
            if len(self.volumes) >= self.volume_limit:
                raise ApiError(422, VOLUME_LIMIT)
            volume_id = str(uuid.uuid4())
            if self.volume_backend is not None:
                self.volume_backend.create(volume_id, name, size)
            vol = {"id": volume_id, "region": self.region_body(region), "droplet_ids": [], "name": name,
                   "description": str(body.get("description") or ""), "size_gigabytes": size,
                   "created_at": now_iso(), "filesystem_type": "", "filesystem_label": "", "tags": list(tags)}
            self.tags.update(tags)
            self.volumes[volume_id] = vol
            return dict(vol)

    def list_volumes(self, *, name: str | None, region: str | None) -> list[dict[str, Any]]:
        with self.lock:
            self._advance_volume_actions()
            return [dict(v) for v in self.volumes.values()
                    if (name is None or v["name"] == name) and (region is None or v["region"]["slug"] == region)]

    def volume(self, volume_id: str) -> dict[str, Any]:
        with self.lock:
            self._advance_volume_actions(volume_id)
            return dict(self._volume(volume_id))

    def delete_volume(self, volume_id: str) -> None:
        with self.lock:
            self._advance_volume_actions(volume_id)
            vol = self._volume(volume_id)
            if vol["droplet_ids"] or self._pending(volume_id=volume_id):
                raise ApiError(409, VOLUME_ATTACHED)
            self.volumes.pop(volume_id)
            if self.volume_backend is not None:
                self.volume_backend.delete(volume_id)

    def volume_leftovers(self) -> list[str]:
        """Volume ids still on the account (a kept cache included: a test that keeps one deletes it itself)."""
        with self.lock:
            return sorted(self.volumes)

    # ------------------------------------------------------------------ actions

    def volume_action(self, volume_id: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, droplet_id = body.get("type"), body.get("droplet_id")
        if kind not in ("attach", "detach"):
            raise ApiError(422, "this fake knows the attach and detach volume actions")
        if not isinstance(droplet_id, int) or isinstance(droplet_id, bool):
            raise ApiError(400, "droplet_id is required")
        with self.lock:
            self._advance_volume_actions(volume_id)
            vol = self._volume(volume_id)
            region = vol["region"]["slug"]
            if body.get("region") not in (None, region):
                raise ApiError(422, WRONG_REGION)
            droplet = self.droplets.get(droplet_id)
            if kind == "detach":
                self._check_detach(vol, droplet_id, droplet)
            else:
                self._check_attach(vol, droplet_id, droplet)
            action_id = self._next_action_id()
            self.actions[action_id] = {
                "id": action_id, "status": "in-progress", "type": f"{kind}_volume", "started_at": now_iso(),
                "completed_at": None, "resource_id": None, "resource_type": "volume",
                "region": self.region_body(region), "region_slug": region,
            }
            self.volume_actions[action_id] = VolumeAction(action_id, volume_id, kind, droplet_id,
                                                          self.volume_action_polls)
            self.volume_of_action[action_id] = volume_id
            answer = dict(self.actions[action_id])
            self._advance_volume_actions(volume_id, look=False)  # polls 0: done at once
            return answer

    def _check_detach(self, vol: dict[str, Any], droplet_id: int, droplet: FakeDroplet | None) -> None:
        if droplet_id not in vol["droplet_ids"]:
            raise ApiError(404, NOT_ATTACHED)
        if droplet is not None and (droplet.destroying or self._pending(droplet_id=droplet_id)):
            raise ApiError(422, PENDING_EVENT)

    def _check_attach(self, vol: dict[str, Any], droplet_id: int, droplet: FakeDroplet | None) -> None:
        if droplet is None or droplet.destroy_done(time.time()):
            raise ApiError(404)
        if vol["droplet_ids"]:
            raise ApiError(422, ALREADY_ATTACHED + ("" if droplet_id in vol["droplet_ids"] else " to another Droplet"))
        if droplet.body["region"]["slug"] != vol["region"]["slug"]:
            raise ApiError(422, WRONG_REGION)
        if (droplet.destroying or droplet.body["status"] != "active" or self._pending(droplet_id=droplet_id)
                or self._pending(volume_id=vol["id"])):
            raise ApiError(422, PENDING_EVENT)
        if len(droplet.body["volume_ids"]) >= PER_DROPLET:
            raise ApiError(422, TOO_MANY_VOLUMES)

    def volume_action_get(self, volume_id: str, action_id: int) -> dict[str, Any]:
        with self.lock:
            self._volume(volume_id)
            action = self.actions.get(action_id)
            if action is None or self.volume_of_action.get(action_id) != volume_id:
                raise ApiError(404)
            self._advance_volume_actions(volume_id)
            return dict(action)

    # ------------------------------------------------------------------ time passing

    def _volume(self, volume_id: str) -> dict[str, Any]:
        vol = self.volumes.get(volume_id)
        if vol is None:
            raise ApiError(404)
        return vol

    def _pending(self, *, volume_id: str | None = None, droplet_id: int | None = None) -> bool:
        return any((volume_id is None or a.volume_id == volume_id) and (droplet_id is None or a.droplet_id == droplet_id)
                   for a in self.volume_actions.values())

    def _advance_volume_actions(self, volume_id: str | None = None, *, look: bool = True) -> None:
        """A look at a volume (or its action) brings its pending action one poll closer to done, and is a look at
        a droplet being destroyed that it is attached to (whose destroy, once done, detaches it)."""
        for vol in list(self.volumes.values()) if look else []:
            for droplet_id in list(vol["droplet_ids"]):
                d = self.droplets.get(droplet_id)
                if d is None:
                    self._droplet_gone(droplet_id)
                elif d.destroying:
                    self._view(d)
        for action in list(self.volume_actions.values()):
            if volume_id is not None and action.volume_id != volume_id:
                continue
            if look:
                action.polls_left -= 1
            if action.polls_left <= 0:
                self._complete(action)

    def _complete(self, action: VolumeAction) -> None:
        self.volume_actions.pop(action.action_id, None)
        record = self.actions[action.action_id]
        vol = self.volumes.get(action.volume_id)
        droplet = self.droplets.get(action.droplet_id)
        if vol is None or (action.kind == "attach" and (droplet is None or droplet.destroying)):
            record.update(status="errored", completed_at=now_iso())
            return
        if action.kind == "attach":
            try:
                if self.volume_backend is not None:
                    self.volume_backend.plug(vol["id"], vol["name"])
            except Exception:  # noqa: BLE001  (a device that cannot appear is an attach that failed)
                record.update(status="errored", completed_at=now_iso())
                return
            vol["droplet_ids"] = [action.droplet_id]
            if droplet is not None:
                droplet.body["volume_ids"].append(vol["id"])
        else:
            self._unplug(vol, action.droplet_id)
        record.update(status="completed", completed_at=now_iso())

    def _unplug(self, vol: dict[str, Any], droplet_id: int) -> None:
        if droplet_id not in vol["droplet_ids"]:
            return
        vol["droplet_ids"] = [i for i in vol["droplet_ids"] if i != droplet_id]
        droplet = self.droplets.get(droplet_id)
        if droplet is not None and vol["id"] in droplet.body["volume_ids"]:
            droplet.body["volume_ids"].remove(vol["id"])
        if self.volume_backend is not None and self.volume_backend.unplug(vol["id"], vol["name"]):
            self.unclean_detaches.append(vol["name"])

    def _droplet_gone(self, droplet_id: int) -> None:
        """A droplet's destroy is done: it took its volumes' attachments with it (the volumes stay)."""
        for action in [a for a in self.volume_actions.values() if a.droplet_id == droplet_id]:
            self._complete(action)
        for vol in self.volumes.values():
            self._unplug(vol, droplet_id)

    def close_volumes(self) -> None:
        if self.volume_backend is not None:
            self.volume_backend.close()
