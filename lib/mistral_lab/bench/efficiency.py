"""The planner's efficiency factors, refitted from saved runs: for each engine and hardware class, the median of
measured single-stream decode speed over its memory-bandwidth roofline. A fit replaces the built-in factor of
`planning.predict` for the next prediction; the run that used it shows predicted against measured."""

from __future__ import annotations

import statistics
from pathlib import Path

from mistral_lab.bench.results import Run, list_runs, load
from mistral_lab.planning.predict import FACTORS, Efficiency

MAX_RUNS = 50  # the latest saved runs are enough, and reading more would slow every benchmark down


def fit(runs: list[Run]) -> list[Efficiency]:
    """One factor per (engine, hardware class) with a roofline row in the runs."""
    samples: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        plan = run.meta.plan or {}
        engine = run.meta.engine
        if not engine or not run.roofline:
            continue
        hw = "cpu" if plan.get("gpu_vendor") not in ("nvidia", "amd") else str(plan.get("gpu_vendor"))
        for row in run.roofline:
            # The server's own decode speed where it gave one: the client's view shifts with the stream's chunking.
            speed = row.server_tokens_per_s or row.achieved_tokens_per_s
            if speed and row.roofline.max_tokens_per_s > 0:
                samples.setdefault((engine, hw), []).append(speed / row.roofline.max_tokens_per_s)
    return [Efficiency(engine, hw, statistics.median(xs), f"median of {len(xs)} saved run(s) on this machine's "
                       "records", runs=len(xs)) for (engine, hw), xs in sorted(samples.items())]


def current(base: Path | None = None, exclude: Path | None = None) -> list[Efficiency]:
    """The built-in factors, with those fitted from the latest saved runs in their place."""
    folders = [f for f in list_runs(base=base) if f != exclude][-MAX_RUNS:]
    runs = []
    for f in folders:
        try:
            runs.append(load(f))
        except (ValueError, OSError):
            continue  # a run written by an older version, or cut short
    fitted = fit(runs)
    keys = {(f.engine, f.hw_class) for f in fitted}
    return fitted + [f for f in FACTORS if (f.engine, f.hw_class) not in keys]
