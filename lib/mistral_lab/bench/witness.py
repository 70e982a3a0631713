"""The server as witness: its own counters around a load point, beside what we measured. Pure.

The load generator reads the server's Prometheus `/metrics` just before a point's clock starts (after the warm-up)
and once the last request is booked (two reads in a row that agree). The difference is what the server did in
that window, which should be exactly our requests: the same output and prompt tokens, the same number of
completed requests, and per-stream speeds and latencies that agree with ours within measurement noise. A gap over
5% is flagged: a miscount on our side, requests we did not see (another client on the same server), or a
definition that differs (a TTFT measured from a different instant).

What each engine exposes (read 2026-12-07):
- llama.cpp `--metrics`: `llamacpp:tokens_predicted_total`, `llamacpp:tokens_predicted_seconds_total` (the sum of
  each request's generation time, first to last token), `llamacpp:prompt_tokens_total` and
  `llamacpp:prompt_tokens_cached_total`; no request count and no TTFT
  (https://github.com/ggml-org/llama.cpp/blob/master/tools/server/README.md, "GET /metrics").
- vLLM: `vllm:generation_tokens_total`, `vllm:prompt_tokens_total`, `vllm:request_success_total`,
  `vllm:prefix_cache_queries_total` / `_hits_total`, and the histograms `vllm:time_to_first_token_seconds` and
  `vllm:request_time_per_output_token_seconds` (https://docs.vllm.ai/en/latest/design/metrics.html); their means
  (sum / count) are compared with ours.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from mistral_lab.bench.streams import decode_rate, tpot_of

GAP_LIMIT = 0.05
CACHE_NOTE_SHARE = 0.10


class Check(BaseModel):
    quantity: str
    ours: float | None
    server: float | None
    compared: bool = Field(default=True, description="False: shown for context, a gap here means nothing")

    @property
    def gap(self) -> float | None:
        if self.ours is None or self.server is None or self.server == 0:
            return None
        return (self.ours - self.server) / self.server

    @property
    def flagged(self) -> bool:
        gap = self.gap
        return self.compared and gap is not None and abs(gap) > GAP_LIMIT


class Witness(BaseModel):
    engine: str = Field(description="whose counters: llamacpp | vllm")
    checks: list[Check]
    notes: list[str] = Field(default_factory=list)

    @property
    def flagged(self) -> list[Check]:
        return [c for c in self.checks if c.flagged]

    def summary(self) -> str:
        bad = self.flagged
        if not bad:
            return f"agrees with the server's counters ({len(self.checks)} checks within {GAP_LIMIT:.0%})"
        return "; ".join(f"{c.quantity}: ours {c.ours:.4g}, server {c.server:.4g} ({c.gap:+.1%})" for c in bad)


def delta(before: dict[str, float] | None, after: dict[str, float] | None, key: str) -> float | None:
    if not before or not after or key not in after:
        return None
    return after[key] - before.get(key, 0.0)


def _mean(before: dict | None, after: dict | None, name: str) -> float | None:
    total, count = delta(before, after, name + "_sum"), delta(before, after, name + "_count")
    return total / count if total is not None and count else None


def _ours(records: list[dict]) -> dict[str, float | None]:
    ok = [r for r in records if not r.get("warmup") and not r.get("error")]
    ttfts = [r["ttft_s"] for r in ok if r.get("ttft_s") is not None]
    tpots = [t for t in (tpot_of(r) for r in ok) if t is not None]
    return {
        "requests": float(len(ok)),
        "output": float(sum(r.get("completion_tokens") or 0 for r in ok)),
        "prompt": float(sum(r.get("prompt_tokens") or 0 for r in ok)),
        "decode": decode_rate(ok),
        "ttft": sum(ttfts) / len(ttfts) if ttfts else None,
        "tpot": sum(tpots) / len(tpots) if tpots else None,
    }


def check(point_doc: dict, records: list[dict]) -> Witness | None:
    """Our figures for a point beside the server's counters around it; None when the server has no /metrics."""
    before, after = point_doc.get("server_before"), point_doc.get("server_after")
    if not before or not after:
        return None
    ours = _ours(records)
    if any(k.startswith("llamacpp:") for k in after):
        return _llamacpp(before, after, ours)
    if any(k.startswith("vllm:") for k in after):
        return _vllm(before, after, ours)
    return None


def _cache_note(hit_share: float | None) -> list[str]:
    if hit_share is None or hit_share <= CACHE_NOTE_SHARE:
        return []
    return [f"{hit_share:.0%} of the prompt tokens came from the server's prefix cache: prompts repeat"]


def _llamacpp(before: dict, after: dict, ours: dict) -> Witness:
    d = lambda k: delta(before, after, "llamacpp:" + k)  # noqa: E731
    predicted, seconds = d("tokens_predicted_total"), d("tokens_predicted_seconds_total")
    prompt, cached = d("prompt_tokens_total"), d("prompt_tokens_cached_total")
    # Its generation time per request runs from the first generated token to the last: (tokens - 1) steps.
    server_decode = ((predicted - ours["requests"]) / seconds) if predicted is not None and seconds else None
    total_prompt = (prompt or 0.0) + (cached or 0.0) if prompt is not None else None
    checks = [
        Check(quantity="output tokens", ours=ours["output"], server=predicted),
        Check(quantity="prompt tokens", ours=ours["prompt"], server=total_prompt),
        Check(quantity="decode tok/s per stream", ours=ours["decode"], server=server_decode),
    ]
    share = (cached / total_prompt) if cached is not None and total_prompt else None
    return Witness(engine="llamacpp", checks=checks, notes=_cache_note(share))


def _vllm(before: dict, after: dict, ours: dict) -> Witness:
    d = lambda k: delta(before, after, "vllm:" + k)  # noqa: E731
    tpot_name = ("vllm:request_time_per_output_token_seconds"
                 if "vllm:request_time_per_output_token_seconds_sum" in after else "vllm:time_per_output_token_seconds")
    checks = [
        Check(quantity="requests", ours=ours["requests"], server=d("request_success_total")),
        Check(quantity="output tokens", ours=ours["output"], server=d("generation_tokens_total")),
        Check(quantity="prompt tokens", ours=ours["prompt"], server=d("prompt_tokens_total")),
        Check(quantity="TTFT mean (s)", ours=ours["ttft"], server=_mean(before, after, "vllm:time_to_first_token_seconds")),
        Check(quantity="TPOT mean (s)", ours=ours["tpot"], server=_mean(before, after, tpot_name)),
    ]
    queries, hits = d("prefix_cache_queries_total"), d("prefix_cache_hits_total")
    notes = _cache_note(hits / queries if hits is not None and queries else None)
    notes.append("vLLM times TTFT from the request's arrival in its API server; ours from the request leaving the "
                 "client, so ours is longer by the HTTP round trip")
    return Witness(engine="vllm", checks=checks, notes=notes)


def server_decode(w: Witness | None) -> float | None:
    """Single-stream decode speed on the server's clock: llama.cpp's own rate, or 1 / vLLM's mean TPOT. Free of
    what a client sees of the stream (a first token with no text, tokens merged into chunks)."""
    if w is None:
        return None
    for c in w.checks:
        if c.quantity == "decode tok/s per stream" and c.server:
            return c.server
        if c.quantity == "TPOT mean (s)" and c.server:
            return 1.0 / c.server
    return None


def merge(witnesses: list[Witness | None]) -> Witness | None:
    """One witness for several repeats of a level: counts add up, rates and means average."""
    found = [w for w in witnesses if w is not None]
    if not found:
        return None
    out = []
    for i, c in enumerate(found[0].checks):
        rows = [w.checks[i] for w in found if len(w.checks) > i]
        additive = c.quantity.endswith(("tokens", "requests"))

        def fold(vals: list[float | None], *, additive: bool = additive) -> float | None:
            xs = [v for v in vals if v is not None]
            if not xs:
                return None
            return sum(xs) if additive else sum(xs) / len(xs)

        out.append(Check(quantity=c.quantity, ours=fold([r.ours for r in rows]), server=fold([r.server for r in rows]),
                         compared=c.compared))
    notes = list(dict.fromkeys(n for w in found for n in w.notes))
    return Witness(engine=found[0].engine, checks=out, notes=notes)
