"""Where the load generator runs and how a batch of points is handed to it.

- `host` (the default for a deployment): on the deployment's host, next to the server, with the host's `python3`;
  the script and its spec are uploaded through the Host interface and the records fetched back. The tunnel and
  the user's network are not in the figures.
- `client`: on this machine, through the tunnel: what a user of the endpoint sees. Any OpenAI-compatible URL can
  be measured this way (`base_url=`), without a deployment.
Both run the same file (`loadgen.py`) and the run records which one it was.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistral_lab.bench import loadgen
from mistral_lab.bench.target import Target, server_root
from mistral_lab.errors import BadInput, EngineError, MistralLabError
from mistral_lab.hosts.base import Host
from mistral_lab.hosts.local import LocalHost

Printer = Callable[[str], None]


@dataclass
class Placement:
    """The machine the load generator runs on, the Python there, a private folder, and the server's URL as that
    machine reaches it."""

    host: Host
    python: str
    folder: str
    base_url: str
    detail: str
    cores: int | None
    same_machine: bool  # the client shares the server's CPU

    @property
    def metrics_url(self) -> str:
        return server_root(self.base_url) + "/metrics"


def _host_root(target: Target) -> str:
    """The deployment's folder on the host (removed with the deployment); /tmp when the record has none."""
    dep = target.deployment
    return dep.service.root if dep is not None and dep.service is not None else "/tmp/mistral-lab"


def check_python(host: Host) -> str:
    r = host.run("python3 -c 'import sys; print(\"python\", sys.version.split()[0], sys.version_info >= (3, 8))'",
                 check=False)
    if r.returncode != 0 or not r.stdout.strip().endswith("True"):
        raise BadInput("the host has no python3 3.8 or newer to run the load generator", field="where",
                       fix="install python3 on the host, or measure from this machine: where='client' (--where client)")
    return r.stdout.strip().splitlines()[-1].rsplit(" ", 1)[0]


def place(where: str, target: Target, run_id: str, stack: ExitStack) -> Placement:
    """Prepare the load generator's machine: upload the script once; the folder goes when the run ends."""
    dep = target.deployment
    if where == "host":
        if target.host is None or dep is None:
            raise BadInput("a base_url run has no host to run on", field="where", fix="use where='client'")
        version = check_python(target.host)
        local = dep.plan.target == "local"
        detail = (f"on the host: this machine (local target), next to the server, with {version}" if local else
                  f"on the host ({dep.plan.target} {dep.host.address}), next to the server, with {version}")
        p = Placement(host=target.host, python="python3", folder=f"{_host_root(target)}/bench/{run_id}",
                      base_url=target.host_base_url, detail=detail,
                      cores=dep.facts.cpus if dep.facts else (os.cpu_count() if local else None), same_machine=True)
    else:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ml-bench-"))
        local_server = dep is not None and dep.plan.target == "local"
        via = ("through the SSH tunnel" if dep is not None and not local_server
               else "directly (local target: no tunnel)" if dep is not None else f"at {target.base_url}")
        loopback = any(h in target.base_url for h in ("127.0.0.1", "localhost", "[::1]"))
        p = Placement(host=LocalHost(tmp), python=sys.executable, folder=f"{tmp}/run", base_url=target.base_url,
                      detail=f"on the client (this machine), {via}", cores=os.cpu_count(),
                      same_machine=local_server or (dep is None and loopback))
    q = shlex.quote
    p.host.run(f"mkdir -p {q(p.folder)} && chmod 700 {q(p.folder)}")
    p.host.put_text(Path(loadgen.__file__).read_text(), f"{p.folder}/loadgen.py", mode=0o600)
    stack.callback(lambda: p.host.run(f"rm -rf {q(p.folder)}", check=False))
    return p


def core_warning(p: Placement, engine: str | None, gpu: bool, workers: int) -> str | None:
    """Whether the client and the server have too few cores between them for the client to stay out of the way:
    a CPU server computes on every core, so any client CPU is taken from it; a GPU server still needs a core per
    busy process (vLLM's API server and engine core; llama.cpp's HTTP and main loops)."""
    if not p.same_machine:
        return None
    if not gpu:
        return (f"the load generator shares {p.cores or '?'} cores with a CPU server: its CPU time is taken from the "
                "server's (read the client CPU figures beside the throughput)")
    need = workers + 1 + (2 if engine == "vllm" else 1)
    if p.cores is not None and p.cores < need:
        return (f"client and server share {p.cores} cores, fewer than the {need} they keep busy "
                f"({workers} load worker(s), the coordinator, the server's processes): expect the client in TTFT")
    return None


class Progress:
    """One progress bar per point, fed by the load generator's `ML_BENCH progress POINT DONE_S TOTAL_S` lines."""

    def __init__(self, labels: dict[int, str], enabled: bool):
        self.labels = labels
        self.enabled = enabled
        self.bar: Any = None
        self.point = -1
        self.other: list[str] = []
        self.tqdm: Any = None
        if enabled:  # imported now, not inside a point's clock
            from tqdm import tqdm

            self.tqdm = tqdm

    def __call__(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 5 and parts[0] == loadgen.PROGRESS and parts[1] == "progress":
            if not self.enabled:
                return
            point, done, total = int(parts[2]), float(parts[3]), float(parts[4])
            if point != self.point:
                self.close()
                self.bar = self.tqdm(total=round(total), desc=self.labels.get(point, f"point {point}"), unit="s",
                                     file=sys.stderr, leave=True, dynamic_ncols=True)
                self.point = point
            if self.bar is not None:
                self.bar.update(round(done) - self.bar.n)
        elif line.startswith(f"{loadgen.PROGRESS} done"):
            return
        elif line.strip():
            self.other.append(line.rstrip())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (and theirs): a local client's whole process tree."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_batch(p: Placement, spec: dict[str, Any], api_key: str | None, batch: int, local_out: Path,
              progress: Progress) -> tuple[list[dict[str, Any]], float | None]:
    """Run the load generator on one batch of points: its records (appended to `local_out` as well), and, where
    it ran on this machine, the CPU time of its whole process tree from start to exit (imports, warm-ups and
    the server's counters included, so an upper bound on what the points themselves cost)."""
    q = shlex.quote
    spec_path, out_path = f"{p.folder}/spec-{batch}.json", f"{p.folder}/records-{batch}.jsonl"
    p.host.put_text(json.dumps(spec), spec_path, mode=0o600)
    command = f"{q(p.python)} -u {q(p.folder)}/loadgen.py --spec {q(spec_path)} --out {q(out_path)}"
    env = {loadgen.KEY_ENV: api_key} if api_key else None
    cpu0 = children_cpu_s()
    try:
        r = p.host.run(command, env=env, timeout=float(spec["max_total_s"]) + 120, check=False, on_line=progress)
    finally:
        progress.close()
    tree_cpu = children_cpu_s() - cpu0 if isinstance(p.host, LocalHost) else None
    fetched = local_out.with_name(f"records-{batch}.jsonl")
    try:
        p.host.get(out_path, fetched)
    except MistralLabError:
        if r.returncode != 0:
            tail = "\n".join(progress.other[-10:] or (r.stdout + r.stderr).strip().splitlines()[-10:])
            raise EngineError(f"the load generator failed (exit {r.returncode}):\n{tail}", field="bench",
                              fix="read the error above; `python3 --version` on the host must be 3.8 or newer") from None
        raise
    text = fetched.read_text()
    fetched.unlink()
    with local_out.open("a") as f:
        f.write(text)
    docs = []
    for line in text.splitlines():
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short when the run was killed
    return docs, tree_cpu
