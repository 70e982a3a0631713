"""From per-request records to the figures of one load point. Pure functions, no I/O.

Definitions (those of `vllm bench serve`, so figures compare with it):
- TTFT: from sending the request to the first chunk carrying generated text (not the empty role delta).
- ITL: gaps between consecutive chunks carrying text, pooled over all requests of the point, and only where the
  stream has at least 0.9 chunk per output token: a server that merges tokens into chunks (vLLM under load, a
  multi-byte character in llama.cpp) makes a chunk gap span several tokens, and its "ITL" is then not a per-token
  latency at all. Below that the point reports TPOT and says ITL is not measurable from the stream; likewise when
  over 20% of the chunks arrived in the same read as the one before (a busy client or server sending in bursts).
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request; output tokens from the server's usage.
- Throughput: completed requests, output tokens and all tokens (prompt + output) per second of the point's span
  (first request sent to last request done). Warm-up requests are not counted.
- Goodput: completed requests per second that met every SLO given (TTFT and/or TPOT limits).
- Cost per million output tokens: the hourly price / (output tokens per second x 3600) x 1e6.

A load level is measured several times (repeats); its figures pool the repeats' requests, and its `spread` gives
the repeat-to-repeat mean, standard deviation and range of the headline figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from mistral_lab.bench import witness as _witness
from mistral_lab.bench.streams import decode_rate, server_decode_rate, tpot_of
from mistral_lab.bench.witness import Witness
from mistral_lab.planning.predict import usd_per_mtok

__all__ = ["SLO", "Dist", "Level", "Point", "Spread", "decode_rate", "dist", "levels", "server_decode_rate",
           "spread", "summarize", "summarize_all", "tpot_of", "usd_per_mtok"]

# Fewer chunks than this per output token: a chunk gap is not a token gap (see the module docstring).
MIN_CHUNKS_PER_TOKEN = 0.9
# Chunks read together (gaps under this) came in one burst; when many do, the gaps time the client's reads.
BURST_GAP_S = 50e-6
MAX_BURST_SHARE = 0.2


@dataclass(frozen=True)
class SLO:
    """Service-level objectives a request must meet to count toward goodput; None means no limit."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    def met(self, rec: dict) -> bool:
        if rec.get("error"):
            return False
        if self.ttft_s is not None and (rec.get("ttft_s") is None or rec["ttft_s"] > self.ttft_s):
            return False
        tpot = tpot_of(rec)
        return not (self.tpot_s is not None and tpot is not None and tpot > self.tpot_s)

    def as_dict(self) -> dict[str, float | None]:
        return {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s}


class Dist(BaseModel):
    """Percentiles of one quantity (seconds, or tokens/s for rates)."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float


def dist(values: Iterable[float | None]) -> Dist | None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return Dist(n=int(v.size), mean=float(v.mean()), p50=float(p50), p90=float(p90), p99=float(p99),
                min=float(v.min()), max=float(v.max()))


class Point(BaseModel):
    """One load level of one workload: a concurrency or a request rate."""

    index: int
    workload: str
    concurrency: int | None = None
    rate: float | None = None
    requests: int
    errors: int
    error_rate: float
    duration_s: float
    request_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    forced_output_ok: float | None = Field(description="share of completed requests that produced max_tokens")
    ttft_s: Dist | None
    itl_s: Dist | None
    tpot_s: Dist | None
    e2e_s: Dist | None
    decode_tokens_per_s: float | None = Field(description="one stream's generation speed after its first token")
    server_decode_tokens_per_s: float | None = Field(description="llama-server's own timings, same requests")
    goodput: float = Field(description="requests/s that met the SLO")
    goodput_share: float
    usd_per_mtok: float | None
    aborted: str | None = None
    stopped_by: str | None = None
    error_samples: list[str] = Field(default_factory=list)
    client_cpu_ms_per_1k_tokens: float | None = Field(default=None, description="the load generator's CPU time, "
                                                      "all its processes, per 1,000 output tokens")
    client_cpu_share: float | None = Field(default=None, description="load generator CPU time / the point's span: "
                                           "near 1 per worker, the client was the limit, not the server")
    client_workers: int | None = None
    client_worker_share_max: float | None = Field(default=None, description="the busiest worker's share of a core")
    repeat: int = 0
    chunks_per_token: float | None = Field(default=None, description="text chunks streamed per output token")
    itl_note: str | None = Field(default=None, description="why ITL is not given (a stream that merges tokens)")
    read_window_s: float | None = Field(default=None, description="the client's timing resolution (0: exact)")
    witness: Witness | None = Field(default=None, description="the server's own counters beside ours")
    loadavg_1m: float | None = Field(default=None, description="the load generator's machine, as the point ended")

    @property
    def load(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"{self.rate:g} req/s"

    @property
    def key(self) -> tuple[str, int | None, float | None]:
        """What repeats of one load level share."""
        return (self.workload, self.concurrency, self.rate)

    @property
    def level(self) -> float:
        """The load as a number, for ordering the points of one sweep: the concurrency or the rate."""
        return self.concurrency if self.concurrency is not None else (self.rate or 0.0)


def summarize(point_doc: dict, records: list[dict], *, slo: SLO = SLO(), hourly_usd: float | None = None) -> Point:
    """The figures of one point from its `type: point` line and its request records (warm-up ones are skipped)."""
    recs = [r for r in records if not r.get("warmup")]
    ok = [r for r in recs if not r.get("error")]
    errors = len(recs) - len(ok)
    span = float(point_doc.get("duration_s") or 0.0)
    if span <= 0 and recs:
        starts = [r["t_start_s"] for r in recs if r.get("t_start_s") is not None]
        ends = [r["t_end_s"] for r in recs if r.get("t_end_s") is not None]
        span = (max(ends) - min(starts)) if starts and ends else 0.0
    out_tokens = sum(r.get("completion_tokens") or 0 for r in ok)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in ok)
    good = sum(1 for r in ok if slo.met(r))
    per_s = (lambda x: x / span) if span > 0 else (lambda x: 0.0)
    forced = [r for r in ok if r.get("completion_tokens") is not None and r.get("max_tokens")]
    samples: list[str] = []
    for r in recs:
        if r.get("error") and r["error"] not in samples and len(samples) < 3:
            samples.append(r["error"])
    cpu = point_doc.get("cpu_s")
    out_rate = per_s(out_tokens)
    chunks = sum(r.get("chunks") or 0 for r in ok)
    ratio = chunks / out_tokens if out_tokens and any("chunks" in r for r in ok) else None
    itl = dist(x for r in ok for x in (r.get("itl_s") or []))
    itl_note = None
    if ratio is not None and ratio < MIN_CHUNKS_PER_TOKEN:
        itl, itl_note = None, (f"ITL not measurable from this stream: {ratio:.2f} chunk per output token (the server "
                               "merges tokens into chunks); read TPOT")
    gaps = [x for r in ok for x in (r.get("itl_s") or [])]
    burst = sum(1 for x in gaps if x < BURST_GAP_S) / len(gaps) if gaps else 0.0
    if itl is not None and burst > MAX_BURST_SHARE:
        itl, itl_note = None, (f"ITL not measurable from this stream: {burst:.0%} of the chunks arrived together with "
                               "the one before (read in one go), so their gaps time the client's reads; read TPOT")
    window = point_doc.get("read_window_s")
    if itl is not None and window and itl.p50 < 2 * window:
        itl_note = (f"ITL p50 {itl.p50 * 1000:.2f} ms is under twice the client's read window "
                    f"({window * 1000:g} ms): token gaps are not resolved")
    workers = point_doc.get("worker_cpu_s") or []
    return Point(
        index=int(point_doc.get("point", 0)),
        workload=str(point_doc.get("workload", "")),
        concurrency=point_doc.get("concurrency"),
        rate=point_doc.get("rate"),
        requests=len(recs),
        errors=errors,
        error_rate=errors / len(recs) if recs else 0.0,
        duration_s=span,
        request_per_s=per_s(len(ok)),
        output_tokens_per_s=out_rate,
        total_tokens_per_s=per_s(out_tokens + in_tokens),
        input_tokens_mean=in_tokens / len(ok) if ok else None,
        output_tokens_mean=out_tokens / len(ok) if ok else None,
        forced_output_ok=(sum(1 for r in forced if r["completion_tokens"] == r["max_tokens"]) / len(forced)
                          if forced else None),
        ttft_s=dist(r.get("ttft_s") for r in ok),
        itl_s=itl,
        tpot_s=dist(tpot_of(r) for r in ok),
        e2e_s=dist(r.get("e2e_s") for r in ok),
        decode_tokens_per_s=decode_rate(ok),
        server_decode_tokens_per_s=server_decode_rate(ok),
        goodput=per_s(good),
        goodput_share=good / len(recs) if recs else 0.0,
        usd_per_mtok=usd_per_mtok(hourly_usd, out_rate),
        aborted=point_doc.get("aborted"),
        stopped_by=point_doc.get("stopped_by"),
        error_samples=samples,
        client_cpu_ms_per_1k_tokens=(cpu * 1000.0 / out_tokens * 1000.0) if cpu is not None and out_tokens else None,
        client_cpu_share=cpu / span if cpu is not None and span > 0 else None,
        client_workers=point_doc.get("workers"),
        client_worker_share_max=max(workers) / span if workers and span > 0 else None,
        repeat=int(point_doc.get("repeat") or 0),
        chunks_per_token=ratio,
        itl_note=itl_note,
        read_window_s=window,
        witness=_witness.check(point_doc, recs),
        loadavg_1m=point_doc.get("loadavg_1m"),
    )


def summarize_all(docs: list[dict], *, slo: SLO = SLO(), hourly_usd: float | None = None) -> list[Point]:
    """Every point of a run's JSON lines, in order."""
    by_point: dict[int, list[dict]] = {}
    heads: list[dict] = []
    for d in docs:
        if d.get("type") == "request":
            by_point.setdefault(int(d["point"]), []).append(d)
        elif d.get("type") == "point" and int(d.get("point", -1)) >= 0:
            heads.append(d)
    return [summarize(h, by_point.get(int(h["point"]), []), slo=slo, hourly_usd=hourly_usd) for h in heads]


# ---- repeats of one level -------------------------------------------------------------------------------------


class Spread(BaseModel):
    """One figure over the repeats of a level."""

    n: int
    mean: float
    stdev: float
    min: float
    max: float

    @property
    def rel(self) -> float | None:
        """Standard deviation over mean: the repeat-to-repeat noise."""
        return self.stdev / abs(self.mean) if self.mean else None


def spread(values: Iterable[float | None]) -> Spread | None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    return Spread(n=int(v.size), mean=float(v.mean()), stdev=float(v.std(ddof=1)) if v.size > 1 else 0.0,
                  min=float(v.min()), max=float(v.max()))


# The figures whose repeat-to-repeat spread a level reports, and how to read each from a point.
SPREAD_FIGURES = {
    "output_tokens_per_s": lambda p: p.output_tokens_per_s,
    "request_per_s": lambda p: p.request_per_s,
    "ttft_p50_s": lambda p: p.ttft_s.p50 if p.ttft_s else None,
    "tpot_p50_s": lambda p: p.tpot_s.p50 if p.tpot_s else None,
    "itl_p50_s": lambda p: p.itl_s.p50 if p.itl_s else None,
    "e2e_p50_s": lambda p: p.e2e_s.p50 if p.e2e_s else None,
    "decode_tokens_per_s": lambda p: p.decode_tokens_per_s,
    "client_cpu_ms_per_1k_tokens": lambda p: p.client_cpu_ms_per_1k_tokens,
    "loadavg_1m": lambda p: p.loadavg_1m,
}


class Level(Point):
    """A load level over its repeats: figures from the pooled requests, and each headline figure's spread."""

    repeats: int = 1
    spread: dict[str, Spread] = Field(default_factory=dict)


def levels(points: list[Point], records: list[dict], *, slo: SLO = SLO(), hourly_usd: float | None = None,
           heads: list[dict] | None = None) -> list[Level]:
    """Pool the repeats of each load level (in the order levels were first measured)."""
    by_point: dict[int, list[dict]] = {}
    for r in records:
        by_point.setdefault(int(r["point"]), []).append(r)
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(p.key, []).append(p)
    heads_by = {int(h["point"]): h for h in heads or []}
    out = []
    for pts in groups.values():
        done = [p for p in pts if p.requests > 0]
        pooled_head = {"point": pts[0].index, "workload": pts[0].workload, "concurrency": pts[0].concurrency,
                       "rate": pts[0].rate, "duration_s": sum(p.duration_s for p in pts),
                       "aborted": next((p.aborted for p in pts if p.aborted), None),
                       "stopped_by": pts[-1].stopped_by, "read_window_s": pts[0].read_window_s,
                       "workers": max((p.client_workers or 0) for p in pts) or None}
        cpus = [heads_by.get(p.index, {}).get("cpu_s") for p in pts]
        if all(c is not None for c in cpus) and heads_by:
            pooled_head["cpu_s"] = sum(cpus)
        recs = [r for p in pts for r in by_point.get(p.index, [])]
        base = summarize(pooled_head, recs, slo=slo, hourly_usd=hourly_usd)
        fields = base.model_dump(exclude={"witness"})
        fields.update(
            witness=_witness.merge([p.witness for p in pts]),
            client_worker_share_max=max((p.client_worker_share_max or 0.0) for p in pts) or None,
            repeats=len(pts),
            spread={k: s for k, f in SPREAD_FIGURES.items() if (s := spread(f(p) for p in done)) is not None},
        )
        out.append(Level(**fields))
    return out
