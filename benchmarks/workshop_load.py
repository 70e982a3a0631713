"""A room of simulated learners against a workshop on this machine: the tiny model behind the real nginx proxy, on
loopback, every client pinning the certificate by its fingerprint like the cards' snippet. Bounded in time.

Most learners ask, read the reply for a while (exponential think time) and ask again; a few are impatient and
send as fast as replies come back, which is what the per-key rate limit is for; halfway through, one learner's
key is revoked. Writes benchmarks/results/workshop_load.json: requests, errors, 429s, 401s after the revocation,
latency p50/p90/p99 of answered requests, completion tokens per second, and the per-key fairness.

    .venv/bin/python benchmarks/workshop_load.py                            # 30 learners, 60 s
    .venv/bin/python benchmarks/workshop_load.py --learners 10 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mistral_lab import workshop

OUT = Path(__file__).parent / "results" / "workshop_load.json"
REQUEST_TIMEOUT_S = 120


@dataclass
class Learner:
    id: str
    key: str
    impatient: bool
    codes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # answered requests only
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    after_revoke: Counter = field(default_factory=Counter)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 4)


async def _learn(me: Learner, client: httpx.AsyncClient, deadline: float, think_s: float, max_tokens: int,
                 revoked: asyncio.Event, rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, min(think_s, 2.0)))  # a room does not press enter in the same millisecond
    while time.monotonic() < deadline:
        was_revoked = revoked.is_set()
        t0 = time.monotonic()
        try:
            r = await client.post("/chat/completions", headers={"Authorization": f"Bearer {me.key}"}, json={
                "model": "tiny-random", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"question {sum(me.codes.values())} from {me.id}"}]})
            code = r.status_code
            if code == 200:
                me.latencies.append(time.monotonic() - t0)
                me.tokens += int(r.json()["usage"]["completion_tokens"])
        except httpx.HTTPError as e:
            code = 0
            me.errors.append(type(e).__name__)
        me.codes[code] += 1
        if was_revoked:
            me.after_revoke[code] += 1
        if code == 429:
            wait = float(r.headers.get("retry-after", "1"))
            await asyncio.sleep(wait if not me.impatient else 0.2)
        elif not me.impatient:
            await asyncio.sleep(min(rng.expovariate(1 / think_s), deadline - time.monotonic()) if think_s else 0)


async def _room(ws: workshop.Workshop, learners: list[Learner], duration: float, think_s: float, max_tokens: int,
                revoke_at: float, seed: int) -> float:
    ctx = workshop.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    limits = httpx.Limits(max_connections=len(learners) * 2, max_keepalive_connections=len(learners))
    revoked = asyncio.Event()
    start = time.monotonic()
    deadline = start + duration
    async with httpx.AsyncClient(base_url=ws.base_url, verify=ctx, timeout=REQUEST_TIMEOUT_S, limits=limits) as c:
        async def revoke_later() -> None:
            await asyncio.sleep(revoke_at)
            # The revocation runs in a thread: it waits on nginx's reload while the room keeps asking.
            await asyncio.to_thread(workshop.revoke, ws.name, learners[-1].id, say=print)
            revoked.set()

        rng = random.Random(seed)
        tasks = [_learn(me, c, deadline, think_s, max_tokens, revoked, random.Random(rng.random())) for me in learners]
        await asyncio.gather(revoke_later(), *tasks)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--learners", type=int, default=30)
    ap.add_argument("--impatient", type=int, default=2, help="learners who send without reading")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds the room asks")
    ap.add_argument("--think", type=float, default=5.0, help="mean seconds a learner reads before asking again")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rate", type=int, default=workshop.DEFAULT_RATE_PER_MIN, help="requests/minute per key")
    ap.add_argument("--burst", type=int, default=workshop.DEFAULT_BURST)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.environ["MISTRAL_LAB_HOME"] = tempfile.mkdtemp(prefix="ml-bench-home-")
    req = workshop.RoomRequest.of(name="bench-room", learners=args.learners, model="tiny-random", hours=1,
                                  rate_per_min=args.rate, burst=args.burst)
    t0 = time.monotonic()
    ws, _ = workshop.up(req, say=lambda line: print(f"[up] {line}", flush=True))
    up_s = time.monotonic() - t0
    try:
        keys = workshop.load_keys(ws.name)
        learners = [Learner(id=i, key=keys[i], impatient=n < args.impatient)
                    for n, i in enumerate(sorted(keys))]
        wall = asyncio.run(_room(ws, learners, args.duration, args.think, args.max_tokens, args.duration / 2,
                                 args.seed))
    finally:
        t1 = time.monotonic()
        workshop.down(ws.name, say=lambda line: print(f"[down] {line}", flush=True))
        down_s = time.monotonic() - t1
    codes = sum((me.codes for me in learners), Counter())
    latencies = [x for me in learners for x in me.latencies]
    tokens = sum(me.tokens for me in learners)
    patient = [me for me in learners[:-1] if not me.impatient]
    revoked = learners[-1]
    result = {
        "what": "simulated learners against a workshop (tiny-random on llama.cpp behind nginx, TLS pinned, loopback)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"learners": args.learners, "impatient": args.impatient, "duration_s": args.duration,
                   "think_s_mean": args.think, "max_tokens": args.max_tokens, "rate_per_min": args.rate,
                   "burst": args.burst, "slots": workshop.room_slots(args.learners), "revoked": revoked.id,
                   "revoked_at_s": args.duration / 2},
        "workshop_up_s": round(up_s, 2), "workshop_down_s": round(down_s, 2), "wall_s": round(wall, 2),
        "requests": sum(codes.values()), "answered": codes[200], "rate_limited_429": codes[429],
        "unauthorized_401": codes[401], "errors": sum(n for c, n in codes.items() if c not in (200, 401, 429)),
        "error_kinds": dict(Counter(e for me in learners for e in me.errors)),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "latency_s": {"p50": _pct(latencies, 50), "p90": _pct(latencies, 90), "p99": _pct(latencies, 99),
                      "max": round(max(latencies), 4) if latencies else None},
        "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "requests_per_s": round(codes[200] / wall, 2) if wall else None,
        "impatient": {"requests": sum(sum(me.codes.values()) for me in learners if me.impatient),
                      "429": sum(me.codes[429] for me in learners if me.impatient)},
        "patient": {"requests": sum(sum(me.codes.values()) for me in patient),
                    "429": sum(me.codes[429] for me in patient),
                    "answered_per_learner_min_max": [min((me.codes[200] for me in patient), default=0),
                                                     max((me.codes[200] for me in patient), default=0)]},
        "revoked_learner": {"before": dict(revoked.codes - revoked.after_revoke),
                            "after": {str(k): v for k, v in revoked.after_revoke.items()}},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "answered", "rate_limited_429", "unauthorized_401",
                                             "errors", "latency_s", "tokens_per_s", "revoked_learner")}, indent=2))


if __name__ == "__main__":
    main()
