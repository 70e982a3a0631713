"""From per-request records to the figures of one load point. Pure functions, no I/O.

Definitions (those of `vllm bench serve`, so figures compare with it):
- TTFT: from sending the request to the first chunk carrying generated text (not the empty role delta).
- ITL: gaps between consecutive chunks carrying text, pooled over all requests of the point.
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request; output tokens from the server's usage.
- Throughput: completed requests, output tokens and all tokens (prompt + output) per second of the point's span
  (first request sent to last request done). Warm-up requests are not counted.
- Goodput: completed requests per second that met every SLO given (TTFT and/or TPOT limits).
- Cost per million output tokens: the hourly price / (output tokens per second x 3600) x 1e6.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field


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


def tpot_of(rec: dict) -> float | None:
    out = rec.get("completion_tokens")
    if rec.get("error") or rec.get("ttft_s") is None or rec.get("e2e_s") is None or not out or out < 2:
        return None
    return (rec["e2e_s"] - rec["ttft_s"]) / (out - 1)


def decode_rate(recs: list[dict]) -> float | None:
    """Generation tokens/s of a stream after its first token, pooled over requests: sum(tokens - 1) / sum(time
    after the first token). Pooling keeps a request whose tokens arrived in one burst (a client that was briefly
    descheduled) from counting as an absurdly fast one."""
    n = t = 0.0
    for r in recs:
        if tpot_of(r) is not None:
            n += r["completion_tokens"] - 1
            t += r["e2e_s"] - r["ttft_s"]
    return n / t if t > 0 else None


def server_decode_rate(recs: list[dict]) -> float | None:
    """llama-server's own generation speed for the same requests (its `timings`), pooled the same way.

    Its `predicted_ms` runs from the first generated token to the last, and its `predicted_per_second` divides
    `predicted_n - 1` steps by it (the first token comes free with the prompt; tools/server/server-common.h in
    llama.cpp 0c1e57098): the same quantity as `decode_rate`, measured on the server's clock."""
    n = ms = 0.0
    for r in recs:
        t = r.get("timings") or {}
        if not r.get("error") and (t.get("predicted_n") or 0) > 1 and t.get("predicted_ms"):
            n += t["predicted_n"] - 1
            ms += t["predicted_ms"]
    return n / (ms / 1000.0) if ms > 0 else None


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
    client_cpu_ms_per_1k_tokens: float | None = Field(default=None,
                                                      description="the load generator's own CPU time")
    client_cpu_share: float | None = Field(default=None, description="load generator CPU time / the point's span: "
                                           "near 1, one core of client was the limit, not the server")

    @property
    def load(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"{self.rate:g} req/s"

    @property
    def level(self) -> float:
        """The load as a number, for ordering the points of one sweep: the concurrency or the rate."""
        return self.concurrency if self.concurrency is not None else (self.rate or 0.0)


def usd_per_mtok(hourly_usd: float | None, output_tokens_per_s: float) -> float | None:
    if hourly_usd is None or output_tokens_per_s <= 0:
        return None
    return hourly_usd / 3600.0 / output_tokens_per_s * 1e6


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
    streamed = sum(r.get("completion_tokens") or r.get("chunks") or 0 for r in recs)
    out_rate = per_s(out_tokens)
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
        itl_s=dist(x for r in ok for x in (r.get("itl_s") or [])),
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
        client_cpu_ms_per_1k_tokens=(cpu * 1000.0 / streamed * 1000.0) if cpu is not None and streamed else None,
        client_cpu_share=cpu / span if cpu is not None and span > 0 else None,
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
