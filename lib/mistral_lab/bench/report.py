"""Runs as JSON, tables and comparisons. No I/O beyond printing."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mistral_lab.bench.metrics import Dist, Point
from mistral_lab.bench.results import Run


def _pcts(d: Dist | None) -> dict[str, float] | None:
    return None if d is None else {"p50": d.p50, "p90": d.p90, "p99": d.p99}


def point_json(p: Point) -> dict[str, Any]:
    """One load point in the `bench --json` shape of issue 7, plus `workload` (a run may sweep several). The other
    figures (TPOT, decode speed, total tokens/s, ...) are in the run's summary.json."""
    load: dict[str, Any] = {"concurrency": p.concurrency} if p.concurrency is not None else {"rate": p.rate}
    return {
        **load,
        "workload": p.workload,
        "requests": p.requests,
        "errors": p.errors,
        "output_tokens_per_s": p.output_tokens_per_s,
        "ttft_s": _pcts(p.ttft_s),
        "itl_s": _pcts(p.itl_s),
        "e2e_s": _pcts(p.e2e_s),
        "goodput": p.goodput,
        "usd_per_mtok": p.usd_per_mtok,
    }


def to_json(run: Run) -> dict[str, Any]:
    """`{"points": [...], "run": {metadata}}`; the roofline and the engine's own figures ride in the metadata."""
    meta = run.meta.model_dump(mode="json", exclude={"plan"})
    meta.update(ref=run.ref, folder=str(run.folder) if run._folder else None,
                roofline=[r.model_dump(mode="json") for r in run.roofline],
                native=[n.model_dump(mode="json") for n in run.native])
    return {"points": [point_json(p) for p in run.points], "run": meta}


def _ms(d: Dist | None, q: str = "p50") -> str:
    return "-" if d is None else f"{getattr(d, q) * 1000:.1f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def label(run: Run) -> str:
    m = run.meta
    what = m.quant or m.precision or ""
    return f"{m.model or m.served_model} {m.engine or ''} {what} · {m.gpu_name or '?'} · {m.where}".replace("  ", " ")


def table(run: Run) -> Table:
    t = Table(title=f"{label(run)} — {run.ref}", title_justify="left")
    for col in ("workload", "load", "req", "err", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50",
                "ITL p99", "e2e p50", "goodput", "$/Mtok"):
        t.add_column(col, justify="left" if col in ("workload", "load") else "right")
    for p in run.points:
        t.add_row(run.workload_label(p.workload), p.load, str(p.requests), str(p.errors),
                  f"{p.request_per_s:.2f}", f"{p.output_tokens_per_s:.1f}", _ms(p.ttft_s), _ms(p.ttft_s, "p99"),
                  _ms(p.tpot_s), _ms(p.itl_s, "p99"), _ms(p.e2e_s), f"{p.goodput:.2f}",
                  _num(p.usd_per_mtok, "{:.2f}"))
    t.caption = "latencies in ms; goodput in requests/s meeting the SLO " + _slo_text(run)
    return t


def _slo_text(run: Run) -> str:
    parts = [f"{k.removesuffix('_s').upper()} ≤ {v * 1000:g} ms" for k, v in run.meta.slo.items() if v is not None]
    return "(" + (", ".join(parts) if parts else "none given: every completed request counts") + ")"


def roofline_table(run: Run) -> Table | None:
    if not run.roofline:
        return None
    t = Table(title="single-stream decode vs the memory-bandwidth roofline", title_justify="left")
    for col in ("workload", "context", "weights GB", "KV GB", "bandwidth GB/s", "roofline tok/s", "measured tok/s",
                "server tok/s", "% of roofline"):
        t.add_column(col, justify="left" if col == "workload" else "right")
    for r in run.roofline:
        line = r.roofline
        t.add_row(run.workload_label(r.workload), str(line.context_tokens), f"{line.weights_gb:.3g}",
                  f"{line.kv_gb:.3g}", f"{line.bandwidth_gbs:g}", f"{line.max_tokens_per_s:.0f}",
                  _num(r.achieved_tokens_per_s), _num(r.server_tokens_per_s), _num(r.achieved_pct, "{:.2f}%"))
    t.caption = run.roofline[0].roofline.bandwidth_source
    return t


def native_table(run: Run) -> Table | None:
    if not run.native:
        return None
    t = Table(title="the engine's own benchmark on the same model", title_justify="left")
    for col in ("tool", "test", "tokens/s", "±"):
        t.add_column(col, justify="left" if col in ("tool", "test") else "right")
    for n in run.native:
        for f in n.figures:
            t.add_row(n.tool, f.test, f"{f.tokens_per_s:.1f}", _num(f.stddev))
    return t


def render(run: Run) -> Group:
    m = run.meta
    head = Text(
        f"{m.model_name or m.served_model} ({m.variant or '-'}, {m.quant or m.precision or '-'}) on {m.engine} "
        f"{m.engine_version or ''}, {m.gpu_name or '?'}{' driver ' + m.driver if m.driver else ''}\n"
        f"measured {m.where_detail}; seed {m.seed}; context {m.context}; "
        f"output {'forced (ignore_eos)' if m.forced_output else 'not forced'}; "
        f"price {'$' + format(m.hourly_usd, 'g') + '/h' if m.hourly_usd is not None else 'unknown'}"
    )
    parts: list[Any] = [head, table(run)]
    for extra in (roofline_table(run), native_table(run)):
        if extra is not None:
            parts.append(extra)
    if m.aborted:
        parts.append(Text(f"the run ended early: {m.aborted}", style="red"))
    for note in m.notes:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


def _console() -> Console:
    c = Console()
    # Not a terminal (a notebook, a log file, papermill): rich would squeeze the tables into 80 columns.
    return c if c.is_terminal else Console(width=160)


def show(run: Run, console: Console | None = None) -> None:
    (console or _console()).print(render(run))


def show_compare(runs: list[Run], console: Console | None = None) -> None:
    (console or _console()).print(compare_table(runs))


# ---- comparisons ----------------------------------------------------------------------------------------------


def compare_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Per run and workload: the best throughput and its cost, and single-stream latency and speed."""
    rows = []
    for run in runs:
        for wl in dict.fromkeys(p.workload for p in run.points):
            pts = [p for p in run.points if p.workload == wl and p.requests > p.errors]
            if not pts:
                continue
            best = max(pts, key=lambda p: p.output_tokens_per_s)
            low = min(pts, key=lambda p: p.level)
            roof = next((r for r in run.roofline if r.workload == wl), None)
            rows.append({
                "run": run.ref, "label": label(run), "workload": wl, "gpu": run.meta.gpu_name,
                "engine": run.meta.engine, "precision": run.meta.quant or run.meta.precision, "where": run.meta.where,
                "best_output_tokens_per_s": best.output_tokens_per_s, "best_at": best.load,
                "usd_per_mtok_at_best": best.usd_per_mtok, "ttft_p50_s_lowest_load": low.ttft_s.p50 if low.ttft_s else None,
                "decode_tokens_per_s_lowest_load": low.decode_tokens_per_s,
                "roofline_pct": roof.achieved_pct if roof else None,
                "error_rate": sum(p.errors for p in run.points if p.workload == wl)
                / max(1, sum(p.requests for p in run.points if p.workload == wl)),
            })
    return rows


def compare_table(runs: list[Run]) -> Table:
    t = Table(title="benchmark runs side by side", title_justify="left")
    for col in ("run", "model · engine · precision · GPU · where", "workload", "best out tok/s", "at",
                "$/Mtok at best", "TTFT p50 (lowest load) ms", "decode tok/s (lowest load)", "% roofline", "errors"):
        t.add_column(col, justify="right" if col[0].isdigit() or "tok" in col or "%" in col or "$" in col else "left")
    for r in compare_rows(runs):
        t.add_row(r["run"], r["label"], r["workload"], f"{r['best_output_tokens_per_s']:.1f}", r["best_at"],
                  _num(r["usd_per_mtok_at_best"], "{:.2f}"),
                  _num(r["ttft_p50_s_lowest_load"] * 1000 if r["ttft_p50_s_lowest_load"] is not None else None),
                  _num(r["decode_tokens_per_s_lowest_load"]), _num(r["roofline_pct"], "{:.2f}%"),
                  f"{r['error_rate']:.1%}")
    return t
