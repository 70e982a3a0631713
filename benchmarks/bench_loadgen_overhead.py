"""The load generator's own cost: client CPU time per 1,000 streamed tokens, and how many streamed tokens/s one
core of it can take in. Writes benchmarks/results/bench_loadgen_overhead.json.

Two measurements:
- against the real llama-server (tiny-random on the local target), at concurrency 1 and 4: what a benchmark run
  on this machine costs its client. The server shares the CPU, so the tokens arrive at the server's pace.
- against a replay of that server's own stream: one real 256-token response of llama-server, captured byte for
  byte, sent again by a small standard-library server as fast as it can. The tokens then arrive faster than any
  engine makes them on this machine, so the client's ceiling shows (its CPU time per token is what limits it).

    .venv/bin/python benchmarks/bench_loadgen_overhead.py     # about a minute

The load generator runs as it does in a benchmark (`python3 loadgen.py --spec ... --out ...`, a process of its
own), and its CPU time is its own process time per load point, as `bench` records it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OUT = Path(__file__).parent / "results" / "bench_loadgen_overhead.json"
NAME = "bench-loadgen-overhead"
TOKENS = 256


def _spec(base_url: str, model: str, levels: list[int], requests: int, extra: dict) -> dict:
    points = [{"index": i, "workload": "chat", "concurrency": c, "max_requests": requests * c, "max_duration_s": 120,
               "warmup": c} for i, c in enumerate(levels)]
    return {"run_id": "overhead", "model": model, "seed": 0, "base_url": base_url, "points": points,
            "workloads": {"chat": {"kind": "chat", "prompts": ["Say something long."], "max_tokens": TOKENS}},
            "extra_body": extra, "request_timeout_s": 120, "max_consecutive_errors": 5, "max_total_s": 600}


def _loadgen(spec: dict, api_key: str | None) -> list[dict]:
    from mistral_lab.bench import loadgen

    with tempfile.TemporaryDirectory(prefix="ml-overhead-") as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, loadgen.KEY_ENV: api_key or ""}
        subprocess.run([sys.executable, loadgen.__file__, "--spec", f"{tmp}/spec.json", "--out", f"{tmp}/out.jsonl"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        docs = [json.loads(line) for line in (Path(tmp) / "out.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for point in (d for d in docs if d["type"] == "point"):
        recs = [d for d in docs if d["type"] == "request" and d["point"] == point["point"] and not d["warmup"]]
        tokens = sum(r["completion_tokens"] or 0 for r in recs)
        errors = sum(1 for r in recs if r["error"])
        rows.append({"concurrency": point["concurrency"], "requests": len(recs), "errors": errors,
                     "error_samples": sorted({r["error"] for r in recs if r["error"]})[:3], "tokens": tokens,
                     "chunks": sum(r["chunks"] for r in recs), "wall_s": round(point["duration_s"], 3),
                     "client_cpu_s": round(point["cpu_s"], 3),
                     "client_cpu_ms_per_1k_tokens": round(point["cpu_s"] * 1e6 / tokens, 2) if tokens else None,
                     "tokens_per_s": round(tokens / point["duration_s"], 1) if point["duration_s"] else None,
                     "client_cpu_share": round(point["cpu_s"] / point["duration_s"], 3) if point["duration_s"] else None})
    return rows


def _capture(base_url: str, api_key: str, model: str) -> list[bytes]:
    """One streamed response of the real server, as the SSE events it sent."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "Say something long."}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    raw = b""
    with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {api_key}"}) as r:
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
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    os.environ["MISTRAL_LAB_HOME"] = tempfile.mkdtemp(prefix="ml-bench-home-")
    import mistral_lab as ml
    from mistral_lab.planning import PlanRequest

    load_before = os.getloadavg()
    ml.deploy(PlanRequest(model="tiny-random", target="local", name=NAME, concurrency=4),
                  say=lambda line: print(line, flush=True))
    try:
        with ml.connect(NAME) as conn:
            real = _loadgen(_spec(conn.base_url, conn.served_model, [1, 4], 8, {"ignore_eos": True}), conn.api_key)
            events = _capture(conn.base_url, conn.api_key, conn.served_model)
    finally:
        ml.teardown(NAME, say=lambda _line: None)
    server = _replay_server(events)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        replay = _loadgen(_spec(url, "tiny-random", [1, 4, 16], 16, {}), None)
    finally:
        server.shutdown()
    result = {
        "what": "the load generator's client CPU time per 1,000 streamed tokens (one SSE event per token)",
        "tokens_per_request": TOKENS,
        "real_llama_server": real,
        "replayed_at_full_speed": replay,
        "replayed_events_per_request": len(events),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "gpu": None, "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for label, rows in (("llama-server", real), ("replay", replay)):
        for r in rows:
            print(f"{label:>12} c={r['concurrency']:<2} {r['tokens']:6d} tokens in {r['wall_s']:6.2f} s "
                  f"({r['tokens_per_s']:8.0f} tok/s), client CPU {r['client_cpu_ms_per_1k_tokens']:6.1f} ms / 1k tokens "
                  f"({r['client_cpu_share']:.0%} of a core), errors {r['errors']}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
