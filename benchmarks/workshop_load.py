"""A room of simulated learners against a workshop on this machine: the tiny model behind the real nginx proxy, on
loopback, every client pinning the certificate by its fingerprint like the cards' snippet. Bounded in time.

Most learners ask, read the reply for a while (exponential think time) and ask again; a few are impatient and
send as fast as replies come back, which is what the per-key rate limit is for; halfway through, one learner's
key is revoked. Token accounting is on (the proxy's Lua steps count every reply's usage against a per-learner
budget): afterwards the proxy's counts are compared with the usage the clients saw.

Then the proxy's added latency per request: the same requests one at a time on a kept-alive connection (GET
/v1/models, a plain chat and a streamed chat of 4 tokens), to the model server directly, through the proxy with
its Lua steps, and through the proxy without them (the same config rendered with accounting=False, reloaded),
in alternating blocks so a drift in the machine's load falls on both; the load average is noted per block.

Writes benchmarks/results/workshop_load.json: requests, errors, 429s, 401s after the revocation, latency
p50/p90/p99 of answered requests, completion tokens per second, the per-key fairness, the counts check and the
added latency.

    .venv/bin/python benchmarks/workshop_load.py                            # 30 learners, 60 s
    .venv/bin/python benchmarks/workshop_load.py --learners 10 --duration 20 --probe 20
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

from mistral_lab import session, state, workshop

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
    prompt_tokens: int = 0
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
                me.prompt_tokens += int(r.json()["usage"]["prompt_tokens"])
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


# ---------------------------------------------------------------------------------------------- added latency


PROBE_KINDS = ("models", "chat", "stream")
PROBE_BODY = {"model": "tiny-random", "max_tokens": 4, "ignore_eos": True,
              "messages": [{"role": "user", "content": "latency probe"}]}


def _probe_once(c: httpx.Client, kind: str) -> float:
    """Seconds one request takes; a kept-alive connection the server closed in between (an idle timeout, a
    reload, a per-connection request cap) is opened again and the request timed anew."""
    try:
        return _timed(c, kind)
    except httpx.RemoteProtocolError:
        return _timed(c, kind)


def _timed(c: httpx.Client, kind: str) -> float:
    t0 = time.perf_counter()
    if kind == "models":
        r = c.get("/models")
    elif kind == "chat":
        r = c.post("/chat/completions", json=PROBE_BODY)
    else:
        with c.stream("POST", "/chat/completions", json=PROBE_BODY | {"stream": True}) as r:
            for _ in r.iter_bytes():
                pass
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"probe {kind} got {r.status_code}")
    return dt


def _probe_block(clients: dict[str, httpx.Client], n: int) -> dict[str, dict[str, list[float]]]:
    # Kinds and routes interleaved request by request, so each sees the same moment of the machine, and no
    # connection sits idle long enough for a server to close it.
    out: dict[str, dict[str, list[float]]] = {name: {k: [] for k in PROBE_KINDS} for name in clients}
    for c in clients.values():
        _probe_once(c, "models")
    for _ in range(n):
        for kind in PROBE_KINDS:
            for name, c in clients.items():
                out[name][kind].append(_probe_once(c, kind))
    return out


def _added_latency(ws: workshop.Workshop, n: int, blocks: int) -> dict:
    """Direct, proxy with Lua, proxy without Lua: p50 per request kind, in ms, over alternating blocks."""
    dep = state.load(ws.name)
    key = workshop.load_keys(ws.name)[ws.active[0].id]
    ctx = workshop.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    # The probe is one client asking back to back: the room's rate limit would refuse it; lift it for the probe
    # (the same in both configs, so the Lua steps stay the only difference).
    probe_ws = ws.model_copy(update={"rate_per_min": 60000, "burst": 10000})
    modules = "/usr/lib/nginx/modules"
    variants = ("proxy_lua", "proxy_no_lua")
    # Per variant: the proxied request and the direct one right after it, paired.
    pairs: dict[str, dict[str, list[tuple[float, float]]]] = {v: {k: [] for k in PROBE_KINDS} for v in variants}
    nginx_own: dict[str, list[float]] = {v: [] for v in variants}  # request_time - upstream_response_time
    access_log = Path(ws.proxy_root or "", "access.log")
    loads: list[dict] = []
    direct = httpx.Client(base_url=f"http://127.0.0.1:{dep.endpoint.remote_port}/v1", timeout=REQUEST_TIMEOUT_S,
                          headers={"Authorization": f"Bearer {dep.api_key()}"})
    proxied = httpx.Client(base_url=ws.base_url, verify=ctx, timeout=REQUEST_TIMEOUT_S,
                           headers={"Authorization": f"Bearer {key}"})
    with session.open_host(dep) as host, direct, proxied:
        for b in range(blocks):
            for variant, lua in (("proxy_lua", True), ("proxy_no_lua", False)):
                workshop.write_proxy_conf(host, probe_ws, dep, modules=modules, accounting=lua)
                workshop.reload_proxy(host, probe_ws)
                # The new workers' first requests (connection, Lua code cache) are not measured.
                _probe_block({"proxied": proxied}, 3)
                load0 = os.getloadavg()[0]
                offset = access_log.stat().st_size
                got = _probe_block({variant: proxied, "direct": direct}, n)
                for kind in PROBE_KINDS:
                    pairs[variant][kind] += list(zip(got[variant][kind], got["direct"][kind], strict=True))
                nginx_own[variant] += _nginx_own_times(access_log, offset)
                loads.append({"block": b, "variant": variant, "loadavg_1m_start": round(load0, 2),
                              "loadavg_1m_end": round(os.getloadavg()[0], 2)})
        workshop.write_proxy_conf(host, ws, dep, modules=modules, accounting=True)  # the room's own config back
        workshop.reload_proxy(host, ws)

    def ms(v: float | None) -> float | None:
        return round(v * 1000, 2) if v is not None else None

    p50 = {v: {"proxied": {k: ms(_pct([p for p, _ in xs], 50)) for k, xs in kinds.items()},
               "direct": {k: ms(_pct([d for _, d in xs], 50)) for k, xs in kinds.items()}}
           for v, kinds in pairs.items()}
    adds = {v: {k: ms(_pct([p - d for p, d in xs], 50)) for k, xs in kinds.items()} for v, kinds in pairs.items()}
    # nginx logs in whole milliseconds: the mean says more than the median here.
    own = {v: {"p50": ms(_pct(xs, 50)), "p90": ms(_pct(xs, 90)), "mean": ms(sum(xs) / len(xs) if xs else None),
               "n": len(xs)} for v, xs in nginx_own.items()}
    return {
        "requests_per_variant_and_kind": n * blocks, "blocks": blocks,
        "p50_ms": p50,
        "proxy_adds_ms_p50_paired": adds,
        "lua_steps_add_ms": {k: round(adds["proxy_lua"][k] - adds["proxy_no_lua"][k], 2) for k in PROBE_KINDS},
        "nginx_own_ms": own,
        "lua_steps_add_ms_nginx_own_mean": round(own["proxy_lua"]["mean"] - own["proxy_no_lua"]["mean"], 2),
        "load": loads,
        "note": "client side: wall time of one request on a kept-alive connection (TLS set up once), each proxied "
                "request paired with the same request to the model server directly (plain HTTP, loopback) right "
                "after it; proxy_adds is the p50 of those paired differences, lua_steps_add the difference of "
                "proxy_adds with and without the Lua steps. nginx_own: $request_time - $upstream_response_time "
                "from the access log (what nginx spends outside the model server, TLS included)",
    }


def _nginx_own_times(access_log: Path, offset: int) -> list[float]:
    """request_time - upstream_response_time of the access log's lines after `offset` (proxied requests only)."""
    out = []
    with access_log.open() as f:
        f.seek(offset)
        for line in f:
            fields = line.split()
            try:
                out.append(max(float(fields[-2]) - float(fields[-1]), 0.0))
            except (ValueError, IndexError):
                continue  # no upstream (refused at the proxy)
    return out


def _counts_check(ws: workshop.Workshop, learners: list[Learner]) -> dict:
    """The proxy's per-learner counts (its usage.jsonl) against the usage each client read in its replies."""
    rows = {r.learner: r for r in workshop.usage(ws.name)}
    per = {me.id: (me.prompt_tokens, me.tokens, rows[me.id].prompt_tokens, rows[me.id].completion_tokens)
           for me in learners}
    mismatched = [i for i, (cp, cc, pp, pc) in per.items() if (cp, cc) != (pp, pc)]
    return {"proxy_prompt_tokens": sum(r.prompt_tokens for r in rows.values()),
            "proxy_completion_tokens": sum(r.completion_tokens for r in rows.values()),
            "clients_prompt_tokens": sum(me.prompt_tokens for me in learners),
            "clients_completion_tokens": sum(me.tokens for me in learners),
            "learners_mismatched": mismatched,
            "proxy_requests": sum(r.requests for r in rows.values()),
            "proxy_429": sum(r.refused_429 for r in rows.values())}


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
    ap.add_argument("--tokens-per-learner", type=int, default=50_000, help="the proxy's per-learner budget")
    ap.add_argument("--probe", type=int, default=60, help="requests per kind per block in the latency probe")
    ap.add_argument("--blocks", type=int, default=2, help="alternating with/without-Lua blocks in the probe")
    args = ap.parse_args()
    os.environ["MISTRAL_LAB_HOME"] = tempfile.mkdtemp(prefix="ml-bench-home-")
    req = workshop.RoomRequest.of(name="bench-room", learners=args.learners, model="tiny-random", hours=1,
                                  rate_per_min=args.rate, burst=args.burst,
                                  tokens_per_learner=args.tokens_per_learner)
    t0 = time.monotonic()
    ws, _ = workshop.up(req, say=lambda line: print(f"[up] {line}", flush=True))
    up_s = time.monotonic() - t0
    try:
        keys = workshop.load_keys(ws.name)
        learners = [Learner(id=i, key=keys[i], impatient=n < args.impatient)
                    for n, i in enumerate(sorted(keys))]
        load_before = os.getloadavg()
        wall = asyncio.run(_room(ws, learners, args.duration, args.think, args.max_tokens, args.duration / 2,
                                 args.seed))
        load_after = os.getloadavg()
        counts = _counts_check(workshop.load(ws.name), learners)
        added = _added_latency(workshop.load(ws.name), args.probe, args.blocks)
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
                   "revoked_at_s": args.duration / 2, "tokens_per_learner": args.tokens_per_learner,
                   "token_accounting": True},
        "loadavg_during_room": {"before": [round(x, 2) for x in load_before],
                                "after": [round(x, 2) for x in load_after]},
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
        "token_counts": counts,
        "added_latency": added,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests", "answered", "rate_limited_429", "unauthorized_401",
                                             "errors", "latency_s", "tokens_per_s", "revoked_learner",
                                             "token_counts")}, indent=2))
    print(json.dumps({k: added[k] for k in ("p50_ms", "proxy_adds_ms_p50_paired", "lua_steps_add_ms", "nginx_own_ms",
                                            "lua_steps_add_ms_nginx_own_mean", "load")}, indent=2))


if __name__ == "__main__":
    main()
