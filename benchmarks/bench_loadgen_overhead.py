"""The load generator's own cost: CPU time of all its processes per 1,000 streamed tokens, i.e. its share of a core
per 1,000 tok/s (the goal: 2% or less), and how that scales with worker processes. Writes
benchmarks/results/bench_loadgen_overhead.json.

Three measurements, each interleaved (A, B, A, B, ...) and repeated, with the load average beside every figure:
- against a real llama-server (tiny-random, one compute thread, 16 slots) at concurrency 1, 4 and 16: the client
  as a benchmark runs it, with every byte read as it arrives (`read_window_s=0`, exact token times) and with a
  2 ms read window (reads gathered, token times to 2 ms); and the previous load generator (loadgen v1, from git
  history at 9a99dec) on the same server, as the baseline;
- against a replay of that server's own stream (one real 256-token response, captured byte for byte, sent again
  as fast as a small standard-library server can): one worker process against two, at concurrency 64, where one
  process is the limit;
- against that stream paced like a batching GPU server (one token per stream per 10 ms decode step, all streams in
  the same step) at concurrency 16, 64 and 128: one small packet per token per stream, which no read window can
  gather within a stream, at the aggregate rates (1,600 to 12,800 tok/s) where a client could become the limit.

CPU time is the load generator's own accounting: each process's `time.process_time()` over the point (the
coordinator and every worker), as `bench` records it; and, for the whole process tree from start to exit
(imports and warm-up included), the parent's RUSAGE_CHILDREN. CPU-seconds ratios are insensitive to the machine's
load; wall-clock throughput is not (read the load average).

    .venv/bin/python benchmarks/bench_loadgen_overhead.py [--seconds 10] [--repeats 3]     # about 10 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mistral_lab.bench import loadgen
from mistral_lab.bench.placement import children_cpu_s

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "bench_loadgen_overhead.json"
TOKENS = 256
KEY = "ml-overhead-key"
BASELINE_COMMIT = "9a99dec"  # the last commit with loadgen v1
# A decode step of 10 ms (100 tok/s per stream) is a mid-size model's pace on one data-centre GPU under load; at
# 16 to 128 streams that is 1,600 to 12,800 tok/s in all, the aggregate rates a client has to keep up with.
PACED_STEP_S = 0.010
PACED_LEVELS = (16, 64, 128)


def _spec(base_url: str, levels: list[int], seconds: float, extra: dict, **over: object) -> dict:
    points = [{"index": i, "workload": "chat", "concurrency": c, "max_requests": 100000, "max_duration_s": seconds,
               "warmup": c} for i, c in enumerate(levels)]
    return {"run_id": "overhead", "model": "tiny-random", "seed": 0, "base_url": base_url,
            "metrics_url": base_url.removesuffix("/v1") + "/metrics", "points": points,
            "workloads": {"chat": {"kind": "chat", "prompts": ["Say something long."], "max_tokens": TOKENS}},
            "extra_body": extra, "request_timeout_s": 120, "max_consecutive_errors": 5, "max_total_s": 900, **over}


def _loadgen(script: Path, spec: dict, api_key: str | None) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory(prefix="ml-overhead-") as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, loadgen.KEY_ENV: api_key or ""}
        cpu0 = children_cpu_s()
        subprocess.run([sys.executable, str(script), "--spec", f"{tmp}/spec.json", "--out", f"{tmp}/out.jsonl"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        tree = children_cpu_s() - cpu0
        docs = [json.loads(line) for line in (Path(tmp) / "out.jsonl").read_text().splitlines() if line.strip()]
    return docs, tree


def _rows(docs: list[dict], tree_cpu: float, label: str, repeat: int) -> list[dict]:
    rows = []
    for point in (d for d in docs if d["type"] == "point" and d["point"] >= 0):
        recs = [d for d in docs if d["type"] == "request" and d["point"] == point["point"] and not d["warmup"]]
        tokens = sum(r["completion_tokens"] or 0 for r in recs)
        span = point.get("duration_s") or 0.0
        cpu = point["cpu_s"]
        rows.append({
            "client": label, "repeat": repeat, "concurrency": point["concurrency"], "workers": point.get("workers", 1),
            "requests": len(recs), "errors": sum(1 for r in recs if r["error"]), "tokens": tokens,
            "chunks": sum(r["chunks"] for r in recs), "span_s": round(span, 3), "client_cpu_s": round(cpu, 4),
            "tokens_per_s": round(tokens / span, 1) if span else None,
            # ms of CPU per 1,000 tokens / 10 = % of one core per 1,000 tok/s
            "core_pct_per_1k_tok_s": round(cpu * 1e6 / tokens / 10, 3) if tokens else None,
            "worker_cpu_s": point.get("worker_cpu_s"), "loadavg": [round(x, 2) for x in os.getloadavg()],
        })
    if rows:  # the whole tree, start to exit, spread over the run's tokens
        total = sum(r["tokens"] for r in rows)
        for r in rows:
            r["tree_core_pct_per_1k_tok_s"] = round(tree_cpu * 1e6 / total / 10, 3) if total else None
    return rows


def _start_server(bin_dir: Path, gguf: Path, log: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from llamacpp_fixtures import free_port

    port = free_port()
    argv = [str(bin_dir / "llama-server"), "-m", str(gguf), "--jinja", "--host", "127.0.0.1", "--port", str(port),
            "--metrics", "-c", str(16 * 512), "-np", "16", "--alias", "tiny-random", "-t", "1"]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "LLAMA_API_KEY": KEY})
    import httpx

    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"llama-server did not start: {log.read_text()[-2000:]}")


def _capture(base_url: str) -> list[bytes]:
    import httpx

    body = {"model": "tiny-random", "messages": [{"role": "user", "content": "Say something long."}],
            "max_tokens": TOKENS, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    raw = b""
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        r.raise_for_status()
        for data in r.iter_raw():
            raw += data
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip()]


def _replay_server(events: list[bytes]) -> ThreadingHTTPServer:
    class Replay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for e in events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _paced_server(events: list[bytes], step_s: float) -> tuple[int, Callable[[], None]]:
    """The same captured events, one per stream per decode step of `step_s`, every stream's in the same step, as
    a batching GPU server sends them (each running sequence gets its next token in each forward pass): one small
    packet per token per stream, the case a read window cannot gather within one stream."""
    loop = asyncio.new_event_loop()
    streams: list[list] = []  # [writer, next event, future set when the last event is out]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                done = loop.create_future()
                streams.append([writer, 0, done])
                await done
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def decode() -> None:
        t = loop.time()
        while True:
            t += step_s
            await asyncio.sleep(max(0.0, t - loop.time()))
            for s in list(streams):
                e = events[s[1]]
                s[0].write(b"%x\r\n%s\r\n" % (len(e), e))
                s[1] += 1
                if s[1] == len(events):
                    s[0].write(b"0\r\n\r\n")
                    streams.remove(s)
                    s[2].set_result(None)

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    task = loop.create_task(decode())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def shutdown() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return port, stop


def _summary(rows: list[dict]) -> list[dict]:
    """Mean and spread over repeats, per client and concurrency."""
    out = []
    for key in dict.fromkeys((r["client"], r["concurrency"]) for r in rows):
        mine = [r for r in rows if (r["client"], r["concurrency"]) == key and r["tokens"]]
        if not mine:
            continue
        pct = [r["core_pct_per_1k_tok_s"] for r in mine]
        tps = [r["tokens_per_s"] for r in mine]
        out.append({"client": key[0], "concurrency": key[1], "repeats": len(mine),
                    "core_pct_per_1k_tok_s": {"mean": round(statistics.mean(pct), 3),
                                              "stdev": round(statistics.stdev(pct), 3) if len(pct) > 1 else 0.0,
                                              "min": min(pct), "max": max(pct)},
                    "tokens_per_s_mean": round(statistics.mean(tps), 1),
                    "tree_core_pct_per_1k_tok_s_mean": round(statistics.mean(r["tree_core_pct_per_1k_tok_s"]
                                                                             for r in mine), 3),
                    "loadavg_1m": [r["loadavg"][0] for r in mine]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per point")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from llamacpp_fixtures import CACHE, run_build
    from mistral_lab import modelgen
    from mistral_lab.engines import llamacpp_build as lb

    build = run_build()
    bin_dir = Path(lb.parse_bin_dir(build.stdout))
    gguf = modelgen.make_model("tiny-random", "F16", cache=CACHE)
    new = Path(loadgen.__file__)
    tmp = Path(tempfile.mkdtemp(prefix="ml-overhead-"))
    old = tmp / "loadgen_v1.py"
    old.write_text(subprocess.run(["git", "show", f"{BASELINE_COMMIT}:lib/mistral_lab/bench/loadgen.py"], cwd=ROOT,
                                  check=True, capture_output=True, text=True).stdout)
    load_before = os.getloadavg()
    proc, base = _start_server(bin_dir, gguf, tmp / "server.log")
    real: list[dict] = []
    try:
        clients = [("loadgen v2, exact reads", new, {"read_window_s": 0.0}),
                   ("loadgen v2, 2 ms read window", new, {"read_window_s": 0.002}),
                   ("loadgen v1 (baseline)", old, {})]
        for rep in range(args.repeats):
            for c in (1, 4, 16):
                for label, script, over in clients:
                    docs, tree = _loadgen(script, _spec(base + "/v1", [c], args.seconds, {"ignore_eos": True}, **over),
                                          KEY)
                    real += _rows(docs, tree, label, rep)
                    print(f"{label:>30} c={c:<2} #{rep + 1}: {real[-1]['tokens_per_s']:7.0f} tok/s, "
                          f"{real[-1]['core_pct_per_1k_tok_s']:.2f}% of a core per 1,000 tok/s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
        events = _capture(base)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    server = _replay_server(events)
    replay: list[dict] = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        for rep in range(args.repeats):
            for workers in (1, 2):
                label = f"replay, {workers} worker(s)"
                docs, tree = _loadgen(new, _spec(url, [64], args.seconds, {}, workers=workers), None)
                replay += _rows(docs, tree, label, rep)
                print(f"{label:>30} c=64 #{rep + 1}: {replay[-1]['tokens_per_s']:7.0f} tok/s, "
                      f"{replay[-1]['core_pct_per_1k_tok_s']:.2f}% of a core per 1,000 tok/s", flush=True)
    finally:
        server.shutdown()
    paced: list[dict] = []
    port, stop = _paced_server(events, PACED_STEP_S)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for rep in range(args.repeats):
            for c in PACED_LEVELS:
                label = f"paced, {PACED_STEP_S * 1000:g} ms steps"
                docs, tree = _loadgen(new, _spec(url, [c], args.seconds, {}, read_window_s=0.002), None)
                paced += _rows(docs, tree, label, rep)
                print(f"{label:>30} c={c:<3} #{rep + 1}: {paced[-1]['tokens_per_s']:7.0f} tok/s, "
                      f"{paced[-1]['core_pct_per_1k_tok_s']:.2f}% of a core per 1,000 tok/s "
                      f"({paced[-1]['workers']} worker(s), load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        stop()
    result = {
        "what": "client CPU of the load generator (all its processes) per 1,000 streamed tokens, as % of one core "
                "per 1,000 tok/s (goal: 2% or less)",
        "tokens_per_request": TOKENS, "seconds_per_point": args.seconds,
        "real_llama_server": {"summary": _summary(real), "points": real},
        "replayed_at_full_speed": {"summary": _summary(replay), "points": replay,
                                   "events_per_request": len(events)},
        "paced_like_a_gpu": {"summary": _summary(paced), "points": paced, "step_s": PACED_STEP_S,
                             "what": "every stream gets one token per decode step, all streams in the same step, "
                                     "as a batching server sends them; the client as `bench` runs it (2 ms read "
                                     "window, workers as the load needs)"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "gpu": None, "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "2 cores shared with other developers' builds and tests: read each point's load average"},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for s in (result["real_llama_server"]["summary"] + result["replayed_at_full_speed"]["summary"]
              + result["paced_like_a_gpu"]["summary"]):
        p = s["core_pct_per_1k_tok_s"]
        print(f"{s['client']:>30} c={s['concurrency']:<2}: {p['mean']:.2f}% ± {p['stdev']:.2f} of a core per 1,000 "
              f"tok/s at {s['tokens_per_s_mean']:.0f} tok/s (whole tree {s['tree_core_pct_per_1k_tok_s_mean']:.2f}%; "
              f"load {s['loadavg_1m']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
