"""Benchmarks of a deployment: workloads, a stdlib load generator, metrics with the server as witness, repeats with
their spread, the knee of a sweep, peers on equal terms, roofline and prediction, saved runs, reports and plots.
`run()` does it all (stages in `bench.runner`); `load()` / `list_runs()` find saved runs; `show()` and
`compare_table()` print them; `bench.plots` draws them."""

from mistral_lab.bench import report
from mistral_lab.bench.metrics import SLO
from mistral_lab.bench.peers import PeerTools
from mistral_lab.bench.report import compare_rows, compare_table, show, show_compare, to_json
from mistral_lab.bench.results import Run, compared_with, list_runs, load
from mistral_lab.bench.runner import run, run_spec
from mistral_lab.bench.spec import BenchSpec, sweep_levels

__all__ = ["SLO", "BenchSpec", "PeerTools", "Run", "compare_rows", "compare_table", "compared_with", "list_runs",
           "load", "report", "run", "run_spec", "show", "show_compare", "sweep_levels", "to_json"]
