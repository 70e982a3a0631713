"""Where a sweep stops: the knee, the last load level worth running. Pure.

A sweep climbs (concurrency 1, 2, 4, ... or rising request rates) and stops by itself at the first level past the
knee, naming the knee and why:
- throughput no longer rising: output tokens/s grew less than 10% (or less than twice the repeat-to-repeat noise,
  when that is larger) from one level to the next;
- latency past the SLO: at the next level more than 10% of the requests missed a TTFT or TPOT limit given;
- a rate the server cannot keep up with: fewer than 90% of the offered requests per second were served.

Finding the operating point where added load stops paying is what GuideLLM users ask for most ("sweep" and
"over-saturation" profiles; https://github.com/vllm-project/guidellm, read 2026-12-07); our sweep stops there
instead of running every level of a fixed list.
"""

from __future__ import annotations

from pydantic import BaseModel

from mistral_lab.bench.metrics import SLO, Level

MIN_GAIN = 0.10
MAX_MISSED = 0.10
MIN_SERVED = 0.90


class Knee(BaseModel):
    workload: str
    load: str | None  # "c=4" or "2 req/s"; None when even the lowest level was past it
    value: float | None
    output_tokens_per_s: float | None
    past: str  # the level that showed it
    reason: str


def _noise(level: Level) -> float:
    s = level.spread.get("output_tokens_per_s")
    return (s.rel or 0.0) if s is not None else 0.0


def _missed(level: Level, slo: SLO) -> float:
    if slo.ttft_s is None and slo.tpot_s is None:
        return 0.0
    return 1.0 - level.goodput_share


def knee(levels: list[Level], slo: SLO | None = None) -> Knee | None:
    """The knee of one workload's sweep (its levels in any order), or None while throughput still rises."""
    slo = slo or SLO()
    pts = sorted((lv for lv in levels if lv.requests > lv.errors), key=lambda lv: lv.level)
    if not pts:
        return None
    first = pts[0]
    if _missed(first, slo) > MAX_MISSED:
        return Knee(workload=first.workload, load=None, value=None, output_tokens_per_s=None, past=first.load,
                    reason=f"{_missed(first, slo):.0%} of the requests missed the SLO already at {first.load}")
    for prev, cur in zip(pts, pts[1:], strict=False):
        why = None
        if _missed(cur, slo) > MAX_MISSED:
            why = f"{_missed(cur, slo):.0%} of the requests missed the SLO at {cur.load}"
        elif cur.rate is not None and cur.request_per_s < MIN_SERVED * cur.rate:
            why = f"served {cur.request_per_s:.2f} of {cur.rate:g} req/s offered at {cur.load}"
        elif prev.output_tokens_per_s > 0:
            gain = cur.output_tokens_per_s / prev.output_tokens_per_s - 1
            floor = max(MIN_GAIN, 2 * _noise(prev), 2 * _noise(cur))
            if gain < floor:
                why = (f"throughput rose {gain:+.0%} from {prev.load} to {cur.load} "
                       f"(under {floor:.0%}: no longer rising)")
        if why:
            return Knee(workload=cur.workload, load=prev.load, value=prev.level,
                        output_tokens_per_s=prev.output_tokens_per_s, past=cur.load, reason=why)
    return None
