"""matplotlib figures of one run or several. Figures are built with the object API (no pyplot state), so they
render headless, in a notebook (Jupyter shows a returned Figure) and in threads alike."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mistral_lab.bench.metrics import Level
from mistral_lab.bench.report import compare_rows, label
from mistral_lab.bench.results import Run


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _show_inline() -> None:
    """In a notebook, display our Figures as images: without pyplot nothing registers a formatter for them, and a
    returned Figure would print as `<Figure size ...>`."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["image/png"].for_type(Figure, _png)


_show_inline()


def _curves(runs: list[Run]) -> list[tuple[str, list[Level]]]:
    out = []
    for run in runs:
        for wl in dict.fromkeys(p.workload for p in run.levels):
            pts = sorted((p for p in run.levels if p.workload == wl and p.requests > p.errors), key=lambda p: p.level)
            if pts:
                name = run.workload_label(wl) if len(runs) == 1 else f"{label(run)} · {run.workload_label(wl)}"
                out.append((name, pts))
    return out


def throughput_latency(runs: Run | list[Run]) -> Figure:
    """Output tokens/s against per-token latency (TPOT p50) and time to first token (p90), one line per workload
    and run, each marker a load level (± one standard deviation of throughput over its repeats): the curve an
    engineer reads a GPU's operating point from."""
    runs = [runs] if isinstance(runs, Run) else runs
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_tpot, ax_ttft = fig.subplots(1, 2)
    for name, pts in _curves(runs):
        x = [p.output_tokens_per_s for p in pts]
        for ax, ys in ((ax_tpot, [p.tpot_s.p50 * 1000 if p.tpot_s else np.nan for p in pts]),
                       (ax_ttft, [p.ttft_s.p90 * 1000 if p.ttft_s else np.nan for p in pts])):
            (line,) = ax.plot(x, ys, marker="o", label=name)
            # Repeat-to-repeat spread of the throughput: one standard deviation each way.
            xerr = [(p.spread.get("output_tokens_per_s").stdev if p.spread.get("output_tokens_per_s") else 0.0)
                    for p in pts]
            if any(xerr):
                ax.errorbar(x, ys, xerr=xerr, fmt="none", ecolor=line.get_color(), alpha=0.5, capsize=2)
            for xi, yi, p in zip(x, ys, pts, strict=True):
                ax.annotate(p.load, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=line.get_color())
    ax_tpot.set(xlabel="output tokens/s (all requests)", ylabel="TPOT p50 (ms)",
                title="throughput vs per-token latency")
    ax_ttft.set(xlabel="output tokens/s (all requests)", ylabel="TTFT p90 (ms)",
                title="throughput vs time to first token")
    for ax in (ax_tpot, ax_ttft):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
    ax_tpot.legend(fontsize=7, loc="best")
    fig.suptitle(label(runs[0]) if len(runs) == 1 else f"{len(runs)} runs", fontsize=10)
    return fig


def _cdf(ax, values: list[float], name: str) -> None:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size:
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=name)


def distributions(run: Run) -> Figure:
    """Cumulative distributions of TTFT and inter-token latency at each load point."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_ttft, ax_itl = fig.subplots(1, 2)
    recs = run.records()
    for p in run.levels:
        indices = {q.index for q in run.points if q.key == p.key}
        mine = [r for r in recs if r["point"] in indices and not r.get("error")]
        name = f"{run.workload_label(p.workload)} {p.load}"
        _cdf(ax_ttft, [r["ttft_s"] * 1000 for r in mine if r.get("ttft_s") is not None], name)
        _cdf(ax_itl, [x * 1000 for r in mine for x in (r.get("itl_s") or [])], name)
    ax_ttft.set(xlabel="time to first token (ms)", ylabel="share of requests", title="TTFT distribution")
    ax_itl.set(xlabel="inter-token latency (ms)", ylabel="share of token gaps", title="ITL distribution")
    ax_itl.set_xscale("symlog", linthresh=1.0)
    for ax in (ax_ttft, ax_itl):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(label(run), fontsize=10)
    return fig


def roofline_chart(runs: Run | list[Run]) -> Figure | None:
    """Measured single-stream decode speed against its memory-bandwidth ceiling, with the share reached."""
    runs = [runs] if isinstance(runs, Run) else runs
    rows = [(run, r) for run in runs for r in run.roofline]
    if not rows:
        return None
    fig = Figure(figsize=(10, 1.2 + 0.6 * len(rows)), layout="constrained")
    ax = fig.subplots()
    names, ceiling, got = [], [], []
    for run, r in rows:
        wl = run.workload_label(r.workload)
        names.append(wl if len(runs) == 1 else f"{label(run)} · {wl}")
        ceiling.append(r.roofline.max_tokens_per_s)
        got.append(r.achieved_tokens_per_s or 0.0)
    y = np.arange(len(rows))
    ax.barh(y, ceiling, color="#dddddd", label="roofline (bandwidth ÷ bytes per token)")
    ax.barh(y, got, color="#1f77b4", label="measured (single stream)")
    for yi, (_run, r), g in zip(y, rows, got, strict=True):
        ax.text(g, yi, f" {r.achieved_pct:.2f}%" if r.achieved_pct is not None else "", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("decode tokens/s (log)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("% of the memory-bandwidth roofline", fontsize=10)
    return fig


def compare_chart(runs: list[Run]) -> Figure:
    """Best output throughput and its cost per million output tokens, per run and workload."""
    rows = compare_rows(runs)
    fig = Figure(figsize=(12, 1.5 + 0.5 * len(rows)), layout="constrained")
    ax_tok, ax_usd = fig.subplots(1, 2, sharey=True)
    names = [f"{r['label']} · {r['workload']}" for r in rows]
    y = np.arange(len(rows))
    ax_tok.barh(y, [r["best_output_tokens_per_s"] for r in rows], color="#1f77b4")
    for yi, r in zip(y, rows, strict=True):
        ax_tok.text(r["best_output_tokens_per_s"], yi, f" {r['best_output_tokens_per_s']:.0f} @ {r['best_at']}",
                    va="center", fontsize=7)
    usd = [r["usd_per_mtok_at_best"] or 0.0 for r in rows]
    ax_usd.barh(y, usd, color="#2ca02c")
    for yi, v, r in zip(y, usd, rows, strict=True):
        ax_usd.text(v, yi, f" ${v:.2f}" if r["usd_per_mtok_at_best"] is not None else " price unknown",
                    va="center", fontsize=7)
    ax_tok.set_yticks(y, names, fontsize=7)
    ax_tok.set_xlabel("best output tokens/s")
    ax_usd.set_xlabel("$ per million output tokens at that load")
    for ax in (ax_tok, ax_usd):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("runs compared", fontsize=10)
    return fig


def save_all(run: Run, folder: Path) -> list[Path]:
    """The run's standard figures as PNG files in its folder."""
    out = []
    for name, fig in (("throughput_latency", throughput_latency(run)), ("distributions", distributions(run)),
                      ("roofline", roofline_chart(run))):
        if fig is not None:
            path = Path(folder) / f"{name}.png"
            fig.savefig(path, dpi=110)
            out.append(path)
    return out


def save(fig: Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    return p
