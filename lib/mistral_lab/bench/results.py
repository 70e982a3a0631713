"""Saved benchmark runs: a folder per run with the per-request JSON lines, a summary and the plots.

    $MISTRAL_LAB_HOME/bench/<deployment>/<run id>/
        requests.jsonl   every request (and one line per load point) as the load generator wrote it
        summary.json     the Run below: metadata, per-point figures, roofline, engine-native figures
        *.png            plots

Runs live beside the deployment records, not inside a deployment's folder, because teardown removes that folder
and the point of a saved run is to compare it later with runs on other hardware, after the GPU is gone. A run
loads with no server running.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from mistral_lab import state
from mistral_lab.bench.metrics import Level, Point
from mistral_lab.bench.native import NativeResult
from mistral_lab.bench.peers import PeerRun
from mistral_lab.bench.roofline import Roofline
from mistral_lab.bench.saturation import Knee
from mistral_lab.errors import BadInput
from mistral_lab.planning.predict import Prediction

SUMMARY = "summary.json"
RECORDS = "requests.jsonl"
_SAFE = re.compile(r"[^a-z0-9._-]+")


class WorkloadInfo(BaseModel):
    name: str
    label: str
    kind: str
    input_tokens: int | None = Field(description="prompt tokens the calibration reached (synthetic)")
    output_tokens: int
    note: str | None = None


class RunMeta(BaseModel):
    run_id: str
    deployment: str | None
    model: str | None = Field(description="catalog id")
    model_name: str | None = None
    served_model: str
    variant: str | None = None
    engine: str | None
    engine_version: str | None = None
    precision: str | None = None
    quant: str | None = None
    gpu: str | None = None
    gpu_name: str | None = None
    gpu_count: int | None = None
    driver: str | None = None
    flags: str | None = Field(default=None, description="the server's command line")
    context: int
    plan: dict[str, Any] | None = None
    where: str = Field(description="host: next to the server; client: from this machine, through the tunnel")
    where_detail: str
    base_url: str
    seed: int
    mode: str = Field(description="concurrency | rate")
    loads: list[float]
    workloads: list[WorkloadInfo]
    requests_per_point: int | None = Field(description="the safety cap on requests per point")
    duration_s_per_point: float
    warmup: int | None
    repeats: int = 1
    stop_at_knee: bool = False
    read_window_s: float = 0.0
    client_cpu: dict[str, float] = Field(default_factory=dict, description="CPU seconds of the load generator's "
                                         "processes over the measured points, of this process over the load, "
                                         "and the output tokens they streamed")
    slo: dict[str, float | None]
    forced_output: bool
    hourly_usd: float | None
    price_source: str | None = None
    started_at: str
    ended_at: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    aborted: str | None = None
    notes: list[str] = Field(default_factory=list)


class RooflineRow(BaseModel):
    workload: str
    concurrency: int | None
    roofline: Roofline
    achieved_tokens_per_s: float | None
    achieved_pct: float | None
    server_tokens_per_s: float | None = None


class PredictionRow(BaseModel):
    """The plan's prediction beside what the run measured, and the error: (predicted - measured) / measured."""

    workload: str
    prediction: Prediction
    measured_decode_tokens_per_s: float | None
    decode_measured_by: str = Field(default="client", description="server: its own clock (timings, TPOT histogram)")
    measured_throughput_tokens_per_s: float | None
    measured_at: str | None = Field(default=None, description="the load level the throughput is read at")
    measured_usd_per_mtok: float | None = None

    @staticmethod
    def _err(predicted: float | None, measured: float | None) -> float | None:
        return (predicted - measured) / measured if predicted is not None and measured else None

    @property
    def decode_error(self) -> float | None:
        return self._err(self.prediction.decode_tokens_per_s, self.measured_decode_tokens_per_s)

    @property
    def throughput_error(self) -> float | None:
        return self._err(self.prediction.throughput_tokens_per_s, self.measured_throughput_tokens_per_s)


class Run(BaseModel):
    meta: RunMeta
    points: list[Point] = Field(description="every measured point, each repeat its own")
    levels: list[Level] = Field(default_factory=list, description="each load level over its repeats")
    roofline: list[RooflineRow] = Field(default_factory=list)
    native: list[NativeResult] = Field(default_factory=list)
    peers: list[PeerRun] = Field(default_factory=list)
    knees: list[Knee] = Field(default_factory=list)
    predictions: list[PredictionRow] = Field(default_factory=list)
    _folder: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _levels_of_old_runs(self) -> Run:
        """Runs saved before repeats existed have points only: each is a level of one repeat."""
        if not self.levels and self.points:
            self.levels = [Level(**p.model_dump()) for p in self.points]
        return self

    @property
    def folder(self) -> Path:
        if self._folder is None:
            raise BadInput("this run was never saved", field="run", fix="save it with bench.results.save(run)")
        return self._folder

    @property
    def ref(self) -> str:
        return f"{self.meta.deployment or 'url'}/{self.meta.run_id}"

    def workload_label(self, name: str) -> str:
        """A workload's name with the token counts actually used: `long (3776/256)`."""
        return next((w.label for w in self.meta.workloads if w.name == name), name)

    def records(self, *, warmup: bool = False) -> list[dict[str, Any]]:
        """The per-request records (warm-up ones only when asked)."""
        out = []
        for doc in read_jsonl(self.folder / RECORDS):
            if doc.get("type") == "request" and (warmup or not doc.get("warmup")):
                out.append(doc)
        return out


def root() -> Path:
    return state.home() / "bench"


def _slug(text: str) -> str:
    return _SAFE.sub("-", text.lower()).strip("-") or "run"


def new_run_dir(deployment: str | None, where: str, base: Path | None = None) -> tuple[str, Path]:
    """A fresh, unique folder for a run: <root>/<deployment>/<UTC time>-<where>."""
    parent = (base or root()) / _slug(deployment or "url")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{where}"
    n = 1
    while (parent / run_id).exists():
        n += 1
        run_id = f"{stamp}-{where}-{n}"
    folder = parent / run_id
    folder.mkdir(parents=True, mode=0o700)
    return run_id, folder


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short when the run was killed
    return out


def save(run: Run, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUMMARY
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run.model_dump_json(indent=2))
    tmp.replace(path)
    run._folder = folder
    return path


def load(ref: str | Path, *, base: Path | None = None) -> Run:
    """A saved run by folder, summary.json path, `deployment/run-id`, run id, or deployment name (its latest run)."""
    path = _find(ref, base or root())
    run = Run.model_validate_json((path / SUMMARY).read_text())
    run._folder = path
    return run


def _find(ref: str | Path, base: Path) -> Path:
    p = Path(ref).expanduser()
    if p.is_file() and p.name == SUMMARY:
        return p.parent
    if (p / SUMMARY).is_file():
        return p
    text = str(ref)
    if (base / text / SUMMARY).is_file():
        return base / text
    runs = list_runs(base=base)
    by_id = [r for r in runs if r.name == text]
    if len(by_id) == 1:
        return by_id[0]
    of_dep = [r for r in runs if r.parent.name == text]
    if of_dep:
        return of_dep[-1]
    known = ", ".join(f"{r.parent.name}/{r.name}" for r in runs[-5:]) or "none yet"
    raise BadInput(f"no saved benchmark run {text!r}", field="run",
                   fix=f"give a run folder, DEPLOYMENT/RUN-ID or a deployment name; recent runs: {known}")


def list_runs(deployment: str | None = None, *, base: Path | None = None) -> list[Path]:
    """Saved run folders, oldest first (by when their summary was written: a run's last step)."""
    base = base or root()
    if not base.is_dir():
        return []
    deps = [base / _slug(deployment)] if deployment else sorted(p for p in base.iterdir() if p.is_dir())
    found = [r for d in deps if d.is_dir() for r in d.iterdir() if (r / SUMMARY).is_file()]
    return sorted(found, key=lambda r: ((r / SUMMARY).stat().st_mtime, r.name))


def compared_with(run: Run, refs: list[str] | tuple[str, ...] = (), *, latest: int = 2) -> list[Run]:
    """The saved runs to put beside `run`: those named in `refs`, or else the `latest` earlier runs of its
    deployment."""
    if refs:
        return [load(r) for r in refs]
    earlier = [p for p in list_runs(run.meta.deployment) if p != run._folder]
    return [load(p) for p in earlier[-latest:]] if latest > 0 else []
