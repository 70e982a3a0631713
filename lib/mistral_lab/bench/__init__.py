"""Benchmarks of a deployment: workloads, a stdlib load generator, metrics, roofline, engine-native figures, saved
runs, reports and plots. `run()` does it all; `load()` / `list_runs()` find saved runs; `show()` and
`compare_table()` print them; `bench.plots` draws them."""

from mistral_lab.bench import report
from mistral_lab.bench.metrics import SLO
from mistral_lab.bench.report import compare_rows, compare_table, show, show_compare, to_json
from mistral_lab.bench.results import Run, compared_with, list_runs, load
from mistral_lab.bench.runner import run, sweep_levels

__all__ = ["SLO", "Run", "compare_rows", "compare_table", "compared_with", "list_runs", "load",
           "report", "run", "show", "show_compare", "sweep_levels", "to_json"]
