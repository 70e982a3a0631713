"""DigitalOcean's live prices for planning: `GET /v2/sizes` when a token is in the environment, kept for an hour
with the date it was read; the dated list prices in `hardware.DO_SIZES` are the offline fallback.

Planning at the edge (`make_plan`) calls this; `resolve` stays pure and takes the sizes it is given.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mistral_lab import hardware
from mistral_lab.errors import MistralLabError
from mistral_lab.hosts import do_api
from mistral_lab.paths import write_atomic

__all__ = ["MAX_AGE_S", "live_sizes"]

MAX_AGE_S = 3600.0  # prices move, but not by the minute: one listing an hour is plenty


def _read_cache(path: Path, url: str, now: float) -> tuple[list[dict], str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("api_url") != url or now - float(data.get("fetched_unix", 0)) > MAX_AGE_S:
        return None
    return data["sizes"], data["fetched_at"]


def _fetch(url: str, path: Path, now: float) -> tuple[list[dict], str]:
    sizes = do_api.DOApi(url).sizes()
    slim = [{"slug": s["slug"], "price_hourly": s.get("price_hourly"), "regions": s.get("regions") or [],
             "available": s.get("available", True)} for s in sizes if s.get("slug") in hardware.DO_SIZES]
    fetched_at = datetime.fromtimestamp(now, UTC).isoformat(timespec="minutes")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"api_url": url, "fetched_unix": now, "fetched_at": fetched_at, "sizes": slim}))
    return slim, fetched_at


def live_sizes(cache_dir: Path, *, api_url: str | None = None,
               now: float | None = None) -> tuple[list[hardware.Size], str | None]:
    """The DigitalOcean GPU sizes with their live hourly prices, and a note when the list prices had to do (no
    token, or the API could not be reached). Sizes the API does not list for this account are left out."""
    if not any(os.environ.get(name) for name in do_api.TOKEN_ENVS):
        return list(hardware.DO_SIZES.values()), None
    now = time.time() if now is None else now
    url = do_api.api_url(api_url)
    path = cache_dir / "do-sizes.json"
    try:
        sizes, fetched_at = _read_cache(path, url, now) or _fetch(url, path, now)
    except MistralLabError as e:
        return list(hardware.DO_SIZES.values()), f"live prices unavailable ({e.message}): list prices used"
    source = f"live GET /v2/sizes, read {fetched_at} UTC"
    out = []
    for s in sizes:
        if not s["available"] or s["price_hourly"] is None:
            continue
        known = hardware.DO_SIZES[s["slug"]]
        out.append(replace(known, hourly_usd=float(s["price_hourly"]), price_date=fetched_at[:10],
                           price_source=source, regions=tuple(s["regions"])))
    return out, None
