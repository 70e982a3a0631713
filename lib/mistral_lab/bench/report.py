"""Runs as JSON, tables and comparisons. No I/O beyond printing."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mistral_lab.bench.metrics import Dist, Level, Point, Spread, spread
from mistral_lab.bench.results import Run


def _pcts(d: Dist | None) -> dict[str, float] | None:
    return None if d is None else {"p50": d.p50, "p90": d.p90, "p99": d.p99}


def _spread(s: Spread | None) -> dict[str, float] | None:
    return None if s is None else {"mean": s.mean, "stdev": s.stdev, "min": s.min, "max": s.max}


def point_json(p: Point | Level) -> dict[str, Any]:
    """One load level in the `bench --json` shape of issue 7, plus `workload` (a run may sweep several), its
    repeats with the spread of its headline figures, the TPOT and ITL rule, and the server's cross-check. The other
    figures (decode speed, total tokens/s, ...) are in the run's summary.json."""
    load: dict[str, Any] = {"concurrency": p.concurrency} if p.concurrency is not None else {"rate": p.rate}
    spread = p.spread if isinstance(p, Level) else {}
    w = p.witness
    return {
        **load,
        "workload": p.workload,
        "requests": p.requests,
        "errors": p.errors,
        "output_tokens_per_s": p.output_tokens_per_s,
        "ttft_s": _pcts(p.ttft_s),
        "tpot_s": _pcts(p.tpot_s),
        "itl_s": _pcts(p.itl_s),
        "itl_note": p.itl_note,
        "e2e_s": _pcts(p.e2e_s),
        "goodput": p.goodput,
        "usd_per_mtok": p.usd_per_mtok,
        "repeats": p.repeats if isinstance(p, Level) else 1,
        "spread": {k: _spread(v) for k, v in spread.items()},
        "server_check": None if w is None else {
            "engine": w.engine, "flagged": [c.quantity for c in w.flagged],
            "checks": [{"quantity": c.quantity, "ours": c.ours, "server": c.server, "gap": c.gap} for c in w.checks]},
        "client_cpu_ms_per_1k_tokens": p.client_cpu_ms_per_1k_tokens,
    }


def to_json(run: Run) -> dict[str, Any]:
    """`{"points": [...], "run": {metadata}}` with one entry per load level (its repeats pooled); the roofline,
    the engine's own figures, peers, knees and the prediction ride in the metadata."""
    meta = run.meta.model_dump(mode="json", exclude={"plan"})
    meta.update(ref=run.ref, folder=str(run.folder) if run._folder else None,
                roofline=[r.model_dump(mode="json") for r in run.roofline],
                native=[n.model_dump(mode="json") for n in run.native],
                peers=[p.model_dump(mode="json") for p in run.peers],
                knees=[k.model_dump(mode="json") for k in run.knees],
                predictions=[{**r.model_dump(mode="json"), "decode_error": r.decode_error,
                              "throughput_error": r.throughput_error} for r in run.predictions])
    return {"points": [point_json(p) for p in run.levels], "run": meta}


def _ms(d: Dist | None, q: str = "p50") -> str:
    return "-" if d is None else f"{getattr(d, q) * 1000:.1f}"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def label(run: Run) -> str:
    m = run.meta
    what = m.quant or m.precision or ""
    return f"{m.model or m.served_model} {m.engine or ''} {what} · {m.gpu_name or '?'} · {m.where}".replace("  ", " ")


def spread_pm(lv: Level, key: str, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    """A figure's repeat-to-repeat spread as ±stdev (one repeat: nothing)."""
    s = lv.spread.get(key)
    return "" if s is None or s.n < 2 else " ±" + fmt.format(s.stdev * scale)


def table(run: Run) -> Table:
    t = Table(title=f"{label(run)} — {run.ref}", title_justify="left")
    for col in ("workload", "load", "rep", "req", "err", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50",
                "ITL p50", "e2e p50", "goodput", "$/Mtok", "server"):
        t.add_column(col, justify="left" if col in ("workload", "load", "server") else "right")
    for p in run.levels:
        itl = "n/m" if p.itl_s is None and p.itl_note else _ms(p.itl_s)
        w = p.witness
        server = "-" if w is None else ("✔" if not w.flagged else "✘ " + ", ".join(c.quantity for c in w.flagged))
        t.add_row(run.workload_label(p.workload), p.load, str(p.repeats), str(p.requests), str(p.errors),
                  f"{p.request_per_s:.2f}", f"{p.output_tokens_per_s:.1f}{spread_pm(p, 'output_tokens_per_s')}",
                  _ms(p.ttft_s) + spread_pm(p, "ttft_p50_s", 1000), _ms(p.ttft_s, "p99"),
                  _ms(p.tpot_s) + spread_pm(p, "tpot_p50_s", 1000, "{:.2f}"), itl, _ms(p.e2e_s), f"{p.goodput:.2f}",
                  _num(p.usd_per_mtok, "{:.2f}"), server)
    t.caption = ("latencies in ms, ± the standard deviation over repeats; n/m: ITL not measurable from the stream "
                 "(see notes); server: its own counters agree within 5% (✔) or not (✘); goodput in requests/s "
                 "meeting the SLO " + _slo_text(run))
    return t


def witness_table(run: Run) -> Table | None:
    rows = [(lv, c) for lv in run.levels if lv.witness is not None for c in lv.witness.checks]
    if not rows:
        return None
    t = Table(title="ours beside the server's own counters (gaps over 5% flagged)", title_justify="left")
    for col in ("workload", "load", "quantity", "ours", "server", "gap"):
        t.add_column(col, justify="left" if col in ("workload", "load", "quantity") else "right")
    for lv, c in rows:
        gap = "-" if c.gap is None else (f"[red]{c.gap:+.1%}[/red]" if c.flagged else f"{c.gap:+.1%}")
        t.add_row(run.workload_label(lv.workload), lv.load, c.quantity, _num(c.ours, "{:.4g}"),
                  _num(c.server, "{:.4g}"), gap)
    return t


def peers_table(run: Run) -> Table | None:
    if not run.peers:
        return None
    t = Table(title="peers on equal terms: same level, duration, fresh prompts, interleaved (mean ± stdev over "
              "repeats)", title_justify="left")
    for col in ("client", "workload", "load", "rep", "out tok/s", "TTFT p50 ms", "TPOT p50 ms", "server"):
        t.add_column(col, justify="left" if col in ("client", "workload", "load", "server") else "right")
    for lv in run.levels:
        t.add_row("mistral-lab", run.workload_label(lv.workload), lv.load, str(lv.repeats),
                  f"{lv.output_tokens_per_s:.1f}{spread_pm(lv, 'output_tokens_per_s')}",
                  _ms(lv.ttft_s) + spread_pm(lv, "ttft_p50_s", 1000), _ms(lv.tpot_s) + spread_pm(lv, "tpot_p50_s", 1000, "{:.2f}"),
                  "-" if lv.witness is None else ("✔" if not lv.witness.flagged else "✘"))
        for tool in dict.fromkeys(p.tool for p in run.peers):
            mine = [p for p in run.peers if p.tool == tool and p.key == lv.key]
            if not mine:
                continue
            tps, ttft, tpot = (spread(getattr(p, k) for p in mine) for k in ("output_tokens_per_s", "ttft_p50_s",
                                                                              "tpot_p50_s"))
            flagged = any(p.witness is not None and p.witness.flagged for p in mine)
            t.add_row(tool, run.workload_label(lv.workload), lv.load, str(len(mine)), _mean_pm(tps),
                      _mean_pm(ttft, 1000), _mean_pm(tpot, 1000, "{:.2f}"),
                      "-" if all(p.witness is None for p in mine) else ("✘" if flagged else "✔"))
    return t


def _mean_pm(s: Spread | None, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    if s is None:
        return "-"
    return fmt.format(s.mean * scale) + (" ±" + fmt.format(s.stdev * scale) if s.n > 1 else "")


def prediction_table(run: Run) -> Table | None:
    if not run.predictions:
        return None
    t = Table(title="the plan's prediction beside the measurement", title_justify="left")
    for col in ("workload", "context", "roofline tok/s", "× efficiency", "decode pred", "decode meas", "by", "error",
                "throughput pred", "meas", "at", "error", "$/Mtok pred"):
        t.add_column(col, justify="left" if col in ("workload", "at", "by") else "right")
    for r in run.predictions:
        p = r.prediction
        t.add_row(run.workload_label(r.workload), str(p.context_tokens), f"{p.roofline_tokens_per_s:.0f}",
                  f"{p.efficiency:.3g}", f"{p.decode_tokens_per_s:.1f}", _num(r.measured_decode_tokens_per_s),
                  r.decode_measured_by,
                  _num(r.decode_error * 100 if r.decode_error is not None else None, "{:+.0f}%"),
                  f"{p.throughput_tokens_per_s:.1f}", _num(r.measured_throughput_tokens_per_s), r.measured_at or "-",
                  _num(r.throughput_error * 100 if r.throughput_error is not None else None, "{:+.0f}%"),
                  _num(p.usd_per_mtok, "{:.2f}"))
    t.caption = f"efficiency: {run.predictions[0].prediction.efficiency_source}"
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
    for extra in (witness_table(run), peers_table(run), roofline_table(run), prediction_table(run), native_table(run)):
        if extra is not None:
            parts.append(extra)
    for k in run.knees:
        parts.append(Text(f"knee ({run.workload_label(k.workload)}): {k.load or 'below the lowest level'} — "
                          f"{k.reason}", style="bold"))
    cpu = m.client_cpu
    if cpu.get("output_tokens") and cpu.get("span_s"):
        per_1k = cpu["load_generator_s"] / cpu["output_tokens"] * 1e6
        parts.append(Text(f"client: the load generator's processes used {per_1k:.1f} ms of CPU per 1,000 output "
                          f"tokens ({per_1k / 10:.2f}% of a core per 1,000 tok/s); this process "
                          f"{cpu.get('runner_s', 0.0):.2f} CPU-s over the load", style="dim"))
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
        for wl in dict.fromkeys(p.workload for p in run.levels):
            pts = [p for p in run.levels if p.workload == wl and p.requests > p.errors]
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
                "error_rate": sum(p.errors for p in run.levels if p.workload == wl)
                / max(1, sum(p.requests for p in run.levels if p.workload == wl)),
                "knee": next((k.load for k in run.knees if k.workload == wl), None),
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
