"""What one benchmark run is asked to do, checked once: `BenchSpec`, built from `bench.run`'s arguments. Pure.

Defaults that shape every figure live here:
- a load point is bounded by time (`DEFAULT_DURATION_S`), with a request count only as a safety cap: a point of
  8 or 16 requests lasted under a second on a small model, too short for its percentiles to mean anything;
- each load level is measured `DEFAULT_REPEATS` times, so its figures come with a spread;
- a sweep stops at its knee (see `saturation`);
- the load generator reads at most every `DEFAULT_READ_WINDOW_S` once every stream has its first token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mistral_lab.bench.metrics import SLO
from mistral_lab.bench.peers import PEERS, PeerTools
from mistral_lab.errors import BadInput

Where = Literal["host", "client"]

DEFAULT_DURATION_S = 25.0
DEFAULT_REPEATS = 3
DEFAULT_REQUEST_TIMEOUT_S = 300.0
MAX_REQUESTS_PER_POINT = 5000  # the safety cap when none is given: the time bound ends a point first
MAX_CONSECUTIVE_ERRORS = 10
# The client reads at most every 2 ms once every stream has its first token (TTFT stays exact): on a shared VM a
# wake-up costs ~30 us of CPU, so one per token cannot stay under 2% of a core per 1,000 tok/s, and 2 ms keeps ITL
# resolved down to 4 ms (benchmarks/results/bench_loadgen_overhead.json). 0: every byte read as it arrives.
DEFAULT_READ_WINDOW_S = 0.002


@dataclass(frozen=True)
class BenchSpec:
    deployment: str | None
    base_url: str | None
    api_key: str | None = field(repr=False)
    model: str | None
    engine: str | None
    catalog_id: str | None
    context: int | None
    workload: str | tuple[str, ...]
    concurrency: tuple[int, ...] | None
    rate: tuple[float, ...] | None
    max_concurrency: int | None
    requests: int | None
    duration_s: float
    warmup: int | None
    repeats: int
    where: Where
    seed: int
    slo: SLO
    stop_at_knee: bool
    peers: tuple[str, ...]
    peer_tools: PeerTools
    native_bench: bool
    hourly_usd: float | None
    bandwidth_gbs: float | None
    bandwidth_source: str | None
    weights_gb: float | None
    request_timeout_s: float
    workers: int | None
    read_window_s: float
    results_dir: Path | None
    plots: bool
    progress: bool

    @property
    def mode(self) -> str:
        return "rate" if self.rate else "concurrency"

    @property
    def request_cap(self) -> int:
        return self.requests or MAX_REQUESTS_PER_POINT

    def loads(self, slots: int) -> list[float]:
        """The load levels: the rates or concurrencies asked, else 1, 2, 4, ... up to the server's slots."""
        if self.rate:
            return [float(r) for r in self.rate]
        return [float(c) for c in (self.concurrency or sweep_levels(slots))]

    @classmethod
    def build(cls, deployment: str | None, *, where: Where | None, api_key: str | None, key_env: str | None,
              workload: str | list[str], concurrency: list[int] | None, rate: list[float] | None,
              requests: int | None, duration_s: float, repeats: int, slo: SLO | None,
              peers: list[str] | tuple[str, ...] | None, peer_tools: PeerTools | dict | None, results_dir: str | Path | None,
              read_window_s: float, workers: int | None, **rest: object) -> BenchSpec:
        """Check the arguments of `bench.run` and fill its defaults; every refusal names the field and the fix."""
        base_url = rest.get("base_url")
        if where is None:
            where = "client" if base_url and not deployment else "host"
        if api_key is None and key_env:
            api_key = os.environ.get(key_env)
        if where not in ("host", "client"):
            raise BadInput(f"where={where!r}", field="where",
                           fix="host (next to the server) or client (through the tunnel)")
        if not deployment and not base_url:
            raise BadInput("say what to measure", field="deployment", fix="give a deployment name, or base_url=")
        if concurrency and rate:
            raise BadInput("give a concurrency sweep or a rate sweep, not both", field="rate",
                           fix="drop --concurrency or --rate")
        if duration_s <= 0 or (requests is not None and requests < 1):
            raise BadInput("every point needs a positive duration and request count", field="duration_s",
                           fix="e.g. duration_s=60, requests=32")
        if repeats < 1:
            raise BadInput(f"repeats={repeats}", field="repeats", fix="1 or more (3 gives a spread)")
        loads = list(rate or []) + list(concurrency or [])
        if any(x <= 0 for x in loads):
            raise BadInput("load levels must be positive", field="rate" if rate else "concurrency",
                           fix="e.g. 1,2,4 or 0.5,1,2")
        unknown = [p for p in peers or () if p not in PEERS]
        if unknown:
            raise BadInput(f"unknown peer {unknown[0]!r}", field="peers", fix=f"one of: {', '.join(PEERS)}")
        if read_window_s < 0 or (workers is not None and workers < 1):
            raise BadInput("the client's read window must be 0 or more, its workers 1 or more",
                           field="read_window_s", fix="e.g. read_window_s=0.001, workers=2")
        tools = peer_tools if isinstance(peer_tools, PeerTools) else PeerTools(**(peer_tools or {}))
        return cls(
            deployment=deployment, base_url=base_url, api_key=api_key,  # type: ignore[arg-type]
            model=rest.get("model"), engine=rest.get("engine"), catalog_id=rest.get("catalog_id"),  # type: ignore[arg-type]
            context=rest.get("context"),  # type: ignore[arg-type]
            workload=workload if isinstance(workload, str) else tuple(workload),
            concurrency=tuple(int(c) for c in concurrency) if concurrency else None,
            rate=tuple(float(r) for r in rate) if rate else None,
            max_concurrency=rest.get("max_concurrency"), requests=requests,  # type: ignore[arg-type]
            duration_s=float(duration_s), warmup=rest.get("warmup"), repeats=int(repeats),  # type: ignore[arg-type]
            where=where, seed=int(rest.get("seed") or 0), slo=slo or SLO(),  # type: ignore[arg-type]
            stop_at_knee=bool(rest.get("stop_at_knee", True)), peers=tuple(peers or ()), peer_tools=tools,
            native_bench=bool(rest.get("native_bench", True)), hourly_usd=rest.get("hourly_usd"),  # type: ignore[arg-type]
            bandwidth_gbs=rest.get("bandwidth_gbs"), bandwidth_source=rest.get("bandwidth_source"),  # type: ignore[arg-type]
            weights_gb=rest.get("weights_gb"),  # type: ignore[arg-type]
            request_timeout_s=float(rest.get("request_timeout_s") or DEFAULT_REQUEST_TIMEOUT_S),  # type: ignore[arg-type]
            workers=workers, read_window_s=float(read_window_s),
            results_dir=Path(results_dir) if results_dir else None,
            plots=bool(rest.get("plots", True)), progress=bool(rest.get("progress", True)),
        )


def sweep_levels(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... up to the server's parallel slots (the last one even when it is not a power of two)."""
    levels, c = [], 1
    while c < max_concurrency:
        levels.append(c)
        c *= 2
    levels.append(max(1, max_concurrency))
    return levels
