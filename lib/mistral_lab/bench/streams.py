"""Quantities of single streams, from per-request records: TPOT and pooled decode speed on our clock and on
llama-server's. Pure; both the point figures (`metrics`) and the server cross-check (`witness`) use them."""

from __future__ import annotations


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
