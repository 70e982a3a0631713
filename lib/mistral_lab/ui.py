"""ipywidgets front ends for JupyterLab: a deploy panel whose plan follows the pickers (and, once deployed, shows
what it costs so far), a streaming chat with reasoning apart, the catalog's sampling defaults, images and a
tool-call trace, and a benchmark sweep whose plot and table fill in level by level.

Panels appear only when a person runs the notebook in Jupyter (the kernel was started by a Jupyter server);
papermill and nbval runs stay headless and unchanged. Every panel calls the same library functions the
notebooks and the CLI call; what is shown is rendered by small pure functions (`plan_html`, `memory_bar_html`,
`running_cost_html`, `reply_html`, `reasoning_html`, `tool_trace_html`, `chat_defaults`) that tests check without
a browser.
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mistral_lab import hardware
from mistral_lab.catalog import get_model, model_ids
from mistral_lab.catalog.schema import Model
from mistral_lab.errors import MistralLabError
from mistral_lab.lifecycle.status import cost_so_far, hours_up
from mistral_lab.planning import Plan, PlanRequest, make_plan
from mistral_lab.planning.show import serve_preview

ENGINES = ["auto", "vllm", "llamacpp"]
TARGETS = ["local", "ssh", "digitalocean"]
_COLORS = {"weights": "#4a6fa5", "kv_cache": "#e39a3b", "overhead": "#9aa5b1"}
COST_TICK_S = 5.0  # how often a live deployment's cost is redrawn


def interactive() -> bool:
    """True in a kernel a Jupyter server started (JupyterLab, Notebook); False under papermill and nbval.

    jupyter_server names the session in the kernel's environment; nbclient-based runners do not. MISTRAL_LAB_WIDGETS
    forces the answer either way (1/0).
    """
    forced = os.environ.get("MISTRAL_LAB_WIDGETS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return bool(os.environ.get("JPY_SESSION_NAME"))


# ---------------------------------------------------------------------------------------------- pure rendering


def memory_bar_html(plan: Plan, width_px: int = 420) -> str:
    """Weights / KV cache / overhead against the usable memory, as a stacked bar with a legend."""
    m = plan.memory
    scale = max(m["available_gb"], m["total_gb"]) or 1.0
    parts = []
    for key, label in (("weights", "weights"), ("kv_cache", "KV cache"), ("overhead", "overhead")):
        gb = m[f"{key}_gb"]
        w = max(int(width_px * gb / scale), 1 if gb > 0 else 0)
        parts.append(f'<div title="{label} {gb:.1f} GB" style="width:{w}px;background:{_COLORS[key]}"></div>')
    avail_px = int(width_px * m["available_gb"] / scale)
    legend = " · ".join(f'<span style="color:{_COLORS[k]}">■</span> {lbl} {m[f"{k}_gb"]:.1f} GB'
                        for k, lbl in (("weights", "weights"), ("kv_cache", "KV cache"), ("overhead", "overhead")))
    return (
        f'<div class="ml-membar" style="position:relative;width:{width_px}px;height:18px;display:flex;'
        f'background:#eef1f4;border:1px solid #ccd">{"".join(parts)}'
        f'<div title="usable {m["available_gb"]:.1f} GB" style="position:absolute;left:{avail_px}px;top:-3px;'
        f'height:24px;border-left:2px solid #c0392b"></div></div>'
        f'<div style="font-size:12px">{legend} — {m["total_gb"]:.1f} of {m["available_gb"]:.1f} GB usable</div>'
    )


def plan_html(plan: Plan, options: dict[str, Any] | None = None) -> str:
    fits = ('<b style="color:#1e8449">fits</b>' if plan.fits else '<b style="color:#c0392b">does not fit</b>')
    price = f"${plan.hourly_usd:.2f}/hour" if plan.hourly_usd else "free (no cloud machine)"
    rows = [
        ("model", f"{plan.model} — {plan.model_name}, variant {plan.variant}"),
        ("weights", f"{plan.repo} [{plan.precision}{' ' + plan.quant if plan.quant else ''}]"),
        ("engine", plan.engine),
        ("hardware", f"{plan.gpu} ({plan.gpu_name})"),
        ("context", f"{plan.context:,} tokens × {plan.concurrency} sequences; "
                    f"largest that fits: {plan.max_context_that_fits:,}"),
        ("price", price),
    ]
    body = "".join(f"<tr><td style='padding-right:1em;color:#555'>{k}</td><td>{html.escape(v)}</td></tr>"
                   for k, v in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in plan.notes)
    return (
        f'<div class="ml-plan" data-model="{html.escape(plan.model)}" data-fits="{str(plan.fits).lower()}">'
        f"<div>{fits}</div>{memory_bar_html(plan)}<table>{body}</table>"
        f"<pre class='ml-serve' style='white-space:pre-wrap;font-size:11px'>{html.escape(serve_preview(plan, options))}</pre>"
        + (f"<ul>{notes}</ul>" if notes else "") + "</div>"
    )


def error_html(e: Exception) -> str:
    return f'<div class="ml-error" style="color:#c0392b">{html.escape(str(e))}</div>'


def gpu_choices() -> list[str]:
    return ["auto", "cpu", *hardware.DO_SIZES]


def running_cost_html(dep: Any, now: datetime | None = None) -> str:
    """How long a deployment has been up and what it has cost: a droplet bills from creation to destroy."""
    hours = hours_up(dep, now)
    hourly = dep.plan.hourly_usd or 0.0
    money = (f"${hourly:.2f}/hour · about <b>${hours * hourly:.2f}</b> so far" if hourly
             else "no cloud charges")
    return (f'<div class="ml-cost" data-cost-usd="{hours * hourly:.4f}">{html.escape(dep.name)} up '
            f"{hours:.2f} h · {money}</div>")


@dataclass(frozen=True)
class ChatDefaults:
    efforts: list[tuple[str, str | None]]  # dropdown options; one ("n/a", None) when the model has no switch
    effort: str | None
    temperature: float
    top_p: float | None
    vision: bool
    tools: bool
    thinks: bool = False  # a variant that always reasons: its sampling is the card's reasoning one


def sampling_for(model: Model | None, variant: str | None, effort: str | None) -> tuple[float, float | None]:
    """The catalog's temperature and top_p for this variant and effort (`Model.sampling_for`, the one rule)."""
    if model is None:
        return 0.7, None
    pick = model.sampling_for(variant, effort)
    return pick.temperature, pick.top_p


def chat_defaults(model: Model | None, variant: str | None = None) -> ChatDefaults:
    """What the chat controls start at, from the catalog: the first effort the template takes, and the sampling
    for it (or for the variant, when it is one that reasons)."""
    efforts = list((model.capabilities.reasoning_effort if model else None) or [])
    effort = efforts[0] if efforts else None
    thinks = bool(model and variant and any(v.id == variant and v.thinks for v in model.variants))
    temperature, top_p = sampling_for(model, variant, effort)
    return ChatDefaults(efforts=[(e, e) for e in efforts] or [("n/a", None)], effort=effort,
                        temperature=temperature, top_p=top_p, vision=bool(model and model.has_vision),
                        tools=bool(model and model.capabilities.tools), thinks=thinks)


def reply_html(text: str, *, done: bool) -> str:
    return f'<div class="{"ml-done" if done else "ml-streaming"}">{html.escape(text)}</div>'


def reasoning_html(text: str) -> str:
    return (f'<div class="ml-reasoning" style="white-space:pre-wrap;color:#555;font-size:12px">'
            f"{html.escape(text)}</div>") if text else ""


def reasoning_title(text: str) -> str:
    return f"reasoning ({len(text.split())} words)" if text else "reasoning"


def tool_trace_html(trace: list[dict[str, Any]]) -> str:
    """One line per tool call, in order: the tool, its arguments as the model sent them, what it returned."""
    return "".join(
        f"<div class='ml-tool'>🔧 {html.escape(str(t['tool']))}({html.escape(str(t['arguments']))}) → "
        f"{html.escape(str(t['result']))}</div>" for t in trace)


def turn_html(text: str, answer: str) -> str:
    return f"<p><b>you</b>: {html.escape(text)}</p><p><b>model</b>: {html.escape(answer)}</p>"


# ---------------------------------------------------------------------------------------------- widgets


def _append(log: Any, line: str, keep: int = 20000) -> None:
    """Add a progress line to a log box, keeping its tail: a long deploy must not grow the notebook without end."""
    log.value = (log.value + line + "\n")[-keep:]


class DeployPanel:
    """Pickers from the catalog; the plan redraws on every change; Deploy / Teardown with live progress."""

    def __init__(self, request: PlanRequest | None = None, options: dict[str, Any] | None = None,
                 on_deployed: Callable[[Any], None] | None = None):
        import ipywidgets as w

        req = request or PlanRequest()
        self.options = dict(options or {})
        self.on_deployed = on_deployed
        self.deployment = None
        self.model = w.Dropdown(options=model_ids(), value=req.model, description="model")
        self.variant = w.Dropdown(options=self._variants(req.model), value=req.variant, description="variant")
        self.engine = w.Dropdown(options=ENGINES, value=req.engine, description="engine")
        self.target = w.Dropdown(options=TARGETS, value=req.target, description="target")
        self.gpu = w.Dropdown(options=gpu_choices(), value=req.gpu if req.gpu in gpu_choices() else "auto",
                              description="GPU")
        self.name = w.Text(value=req.name or "", placeholder="MODEL-ENGINE", description="name")
        self.plan_view = w.HTML()
        self.deploy_button = w.Button(description="Deploy", button_style="primary", icon="rocket")
        self.teardown_button = w.Button(description="Teardown", button_style="danger", icon="trash",
                                        disabled=True)
        self.status = w.HTML()
        self.cost_view = w.HTML()
        self._cost_stop = threading.Event()
        self.log = w.Textarea(layout=w.Layout(width="100%", height="160px"), disabled=True)
        self._extra = {k: v for k, v in req.model_dump().items()
                       if k not in ("model", "variant", "engine", "target", "gpu", "name") and v is not None}
        for picker in (self.variant, self.engine, self.target, self.gpu):
            picker.observe(self.refresh, names="value")
        self.model.observe(self._model_changed, names="value")
        self.deploy_button.on_click(lambda _b: self._start(self._deploy))
        self.teardown_button.on_click(lambda _b: self._start(self._teardown))
        self.widget = w.VBox([
            w.HBox([self.model, self.variant]), w.HBox([self.engine, self.target]), w.HBox([self.gpu, self.name]),
            self.plan_view, w.HBox([self.deploy_button, self.teardown_button, self.status]), self.cost_view, self.log,
        ])
        self.widget.add_class("ml-deploy-panel")
        self.refresh()
        self._attach_existing(req)

    def _attach_existing(self, req: PlanRequest) -> None:
        """A deployment of this name that is already up (the notebook's cells made it): show it and its cost."""
        from mistral_lab import state

        name = req.name
        if name and state.exists(name):
            dep = state.load(name)
            if dep.status == "up":
                self.attach(dep)

    def attach(self, dep: Any) -> None:
        """Follow a live deployment: its cost redraws every COST_TICK_S seconds until it is torn down."""
        self.deployment = dep
        self.teardown_button.disabled = False
        self._cost_stop.set()
        stop = self._cost_stop = threading.Event()
        self.cost_view.value = running_cost_html(dep)

        def tick() -> None:
            while not stop.wait(COST_TICK_S):
                self.cost_view.value = running_cost_html(dep)

        threading.Thread(target=tick, daemon=True).start()

    @staticmethod
    def _variants(model_id: str) -> list[tuple[str, str | None]]:
        return [("default", None), *[(v.id, v.id) for v in get_model(model_id).variants]]

    def _model_changed(self, change: dict[str, Any]) -> None:
        self.variant.unobserve(self.refresh, names="value")
        self.variant.options = self._variants(change["new"])
        self.variant.value = None
        self.variant.observe(self.refresh, names="value")
        self.refresh()

    def request(self) -> PlanRequest:
        return PlanRequest(model=self.model.value, variant=self.variant.value, engine=self.engine.value,
                           target=self.target.value, gpu=self.gpu.value, name=self.name.value or None, **self._extra)

    def refresh(self, _change: Any = None) -> Plan | None:
        try:
            plan = make_plan(self.request())
        except (MistralLabError, ValueError) as e:
            self.plan_view.value = error_html(e)
            return None
        self.plan_view.value = plan_html(plan, self.options)
        return plan

    def _say(self, line: str) -> None:
        _append(self.log, line)

    def _start(self, job: Callable[[], None]) -> None:
        """Run a slow step in a thread, so the kernel keeps serving widget updates (progress, elapsed time)."""
        self.deploy_button.disabled = self.teardown_button.disabled = True
        started = time.monotonic()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(1.0):
                self.status.value = f"running… {time.monotonic() - started:.0f}s"

        def run() -> None:
            try:
                job()
            except Exception as e:  # noqa: BLE001  (shown to the user in the panel)
                self._say(f"✘ {e}")
                self.status.value = error_html(e)
            finally:
                done.set()
                self.deploy_button.disabled = False
                self.teardown_button.disabled = self.deployment is None

        threading.Thread(target=tick, daemon=True).start()
        threading.Thread(target=run, daemon=True).start()

    def _deploy(self) -> None:
        from mistral_lab.lifecycle.deploy import deploy

        dep = deploy(self.request(), options=self.options, say=self._say)
        self.attach(dep)
        cost = f", ${dep.plan.hourly_usd:.2f}/hour, ${cost_so_far(dep):.2f} so far" if dep.plan.hourly_usd else ""
        self.status.value = f"<b>{html.escape(dep.name)}</b> is up{cost}"
        if self.on_deployed:
            self.on_deployed(dep)

    def _teardown(self) -> None:
        from mistral_lab.lifecycle.teardown import teardown

        assert self.deployment is not None
        report = teardown(self.deployment.name, say=self._say)
        self._cost_stop.set()
        self.deployment = None
        self.cost_view.value = ""
        self.status.value = f"torn down after {report.hours:.2f} h (about ${report.cost_usd:.2f})"


class ChatPanel:
    """A streaming chat with a deployment: reasoning shown apart, effort and temperature from the catalog,
    image upload for vision models, and a calculator tool whose calls are traced."""

    def __init__(self, client: Any):
        import ipywidgets as w

        self.client = client
        self.model = model = client.catalog
        self.conversation = client.conversation()
        self._variant = getattr(client, "variant", None)
        d = chat_defaults(model, self._variant)
        self.effort = w.Dropdown(options=d.efforts, value=d.effort, description="reasoning", disabled=d.effort is None)
        self.temperature = w.FloatSlider(value=d.temperature, min=0.0, max=1.5, step=0.05, description="temperature")
        self.top_p = d.top_p
        self.max_tokens = w.IntSlider(value=256, min=16, max=4096, step=16, description="max tokens")
        self.tools = w.Checkbox(value=False, description="calculator tool", disabled=not d.tools)
        self.image = w.FileUpload(accept="image/*", multiple=False, description="image", disabled=not d.vision)
        # The card's sampling changes with the effort (e.g. 0.1 for none, 0.7 for high): the slider follows.
        self.effort.observe(self._effort_changed, names="value")
        self.prompt = w.Textarea(placeholder="Ask something…", layout=w.Layout(width="100%", height="70px"))
        self.prompt.add_class("ml-chat-input")
        self.send = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.send.add_class("ml-chat-send")
        self.reply = w.HTML()
        self.reply.add_class("ml-chat-reply")
        self.reasoning = w.HTML()
        self.reasoning_box = w.Accordion(children=[self.reasoning], selected_index=None)
        self.reasoning_box.set_title(0, "reasoning")
        self.trace = w.HTML()
        self.history = w.HTML()
        self.send.on_click(lambda _b: self._send())
        self.widget = w.VBox([self.history, w.HBox([self.effort, self.temperature, self.max_tokens]), w.HBox([self.tools, self.image]),
                              self.prompt, self.send, self.reasoning_box, self.reply, self.trace])
        self.widget.add_class("ml-chat-panel")

    def _effort_changed(self, change: dict[str, Any]) -> None:
        self.temperature.value, self.top_p = sampling_for(self.model, self._variant, change["new"])

    def _image_path(self) -> str | None:
        if not self.image.value:
            return None
        import tempfile

        item = self.image.value[0]
        suffix = os.path.splitext(item["name"])[1] or ".png"
        f = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)  # noqa: SIM115  (kept for the request)
        f.write(bytes(item["content"]))
        f.close()
        return f.name

    def _send(self) -> None:
        text = self.prompt.value.strip()
        if not text:
            return
        self.send.disabled = True
        self.reply.value, self.reasoning.value, self.trace.value = "", "", ""
        kw = {"temperature": self.temperature.value, "reasoning_effort": self.effort.value,
              "max_tokens": self.max_tokens.value}
        if self.top_p is not None:
            kw["top_p"] = self.top_p
        try:
            if self.tools.value:
                self._with_tools(text, kw)
            else:
                answer, thought = [], []
                image = self._image_path()
                if image:
                    reply = self.conversation.say(text, image=image, **kw)
                    answer.append(reply.content)
                    thought.append(reply.reasoning or "")
                else:
                    for piece in self.conversation.stream(text, **kw):
                        answer.append(piece.content)
                        thought.append(piece.reasoning)
                        self.reply.value = reply_html("".join(answer), done=False)
                        if piece.reasoning:
                            self._show_reasoning("".join(thought))
                self._show_reasoning("".join(thought))
                self.reply.value = reply_html("".join(answer), done=True)
            self.history.value += turn_html(text, self._last_answer())
            self.prompt.value = ""
        except MistralLabError as e:
            self.reply.value = error_html(e)
        finally:
            self.send.disabled = False

    def _show_reasoning(self, text: str) -> None:
        self.reasoning.value = reasoning_html(text)
        self.reasoning_box.set_title(0, reasoning_title(text))

    def _last_answer(self) -> str:
        for m in reversed(self.conversation.messages):
            if m.get("role") == "assistant":
                return str(m.get("content") or "")
        return ""

    def _with_tools(self, text: str, kw: dict[str, Any]) -> None:
        from mistral_lab import calculator

        trace: list[dict[str, Any]] = []
        self.conversation.messages.append({"role": "user", "content": text})
        reply = self.client.run_tools(list(self.conversation.messages), {"calculator": calculator.calculate},
                                      [calculator.TOOL_SPEC], trace=trace, **kw)
        self.conversation.messages.append({"role": "assistant", "content": reply.content})
        self.trace.value = tool_trace_html(trace)
        self._show_reasoning(reply.reasoning or "")
        self.reply.value = reply_html(reply.content, done=True)


def merged_run(runs: list[Any]) -> Any:
    """One Run holding the levels of several one-level runs (a sweep run level by level), for one plot: its
    `points` are the levels too, one per load level, each pooled over its repeats."""
    levels = [lv.model_copy(update={"index": i}) for i, lv in enumerate(lv for r in runs for lv in r.levels)]
    loads = [x for r in runs for x in r.meta.loads]
    return runs[0].model_copy(update={"points": levels, "levels": levels,
                                      "meta": runs[0].meta.model_copy(update={"loads": loads})})


def points_table_html(levels: list[Any]) -> str:
    """The sweep's summary: one row per load level, as the bench report's table reads (± the standard deviation
    over repeats; the server column says whether its own counters agree with ours)."""
    from mistral_lab.bench.report import spread_pm

    def ms(d: Any, q: str = "p50") -> str:
        return f"{getattr(d, q) * 1000:.0f}" if d is not None else "–"

    head = ("load", "repeats", "requests", "errors", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p90 ms",
            "TPOT p50 ms", "e2e p90 s", "server")
    rows = []
    for p in levels:
        load = f"c={p.concurrency}" if p.concurrency is not None else f"{p.rate:g}/s"
        e2e = f"{p.e2e_s.p90:.2f}" if p.e2e_s is not None else "–"
        w = p.witness
        server = "–" if w is None else ("agrees" if not w.flagged else html.escape(w.summary()))
        cells = (f"{html.escape(p.workload)} {load}", str(p.repeats), str(p.requests), str(p.errors),
                 f"{p.output_tokens_per_s:.1f}{spread_pm(p, 'output_tokens_per_s')}", f"{p.request_per_s:.2f}",
                 ms(p.ttft_s) + spread_pm(p, "ttft_p50_s", 1000), ms(p.ttft_s, "p90"), ms(p.tpot_s), e2e, server)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<table class="ml-bench-table"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def figure_png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


class BenchmarkPanel:
    """Start a concurrency sweep; the throughput/latency plot and the table fill in after each level, and the sweep
    stops at its knee (throughput no longer rising, or latency past the SLO).

    `bench.run` reports once a run ends, so the sweep is run one level at a time (each saved as its own run, with
    its repeats); `target` is passed to it as is (e.g. base_url=..., api_key=..., where="client" for an endpoint of
    no deployment).
    """

    def __init__(self, deployment: str | None = None, *, workload: str = "128/128", max_concurrency: int = 4,
                 duration_s: float = 25.0, repeats: int = 3, **target: Any):
        import ipywidgets as w

        self.deployment, self.target = deployment, target
        self.workload = w.Text(value=workload, description="workload")
        self.max_concurrency = w.BoundedIntText(value=max_concurrency, min=1, max=1024, description="up to c=")
        self.duration = w.BoundedFloatText(value=duration_s, min=1, max=3600, description="s per point")
        self.repeats = w.BoundedIntText(value=repeats, min=1, max=20, description="repeats")
        self.start = w.Button(description="Start sweep", button_style="primary", icon="play")
        self.start.add_class("ml-bench-start")
        self.status = w.HTML()
        self.plot = w.Image(format="png")
        self.table = w.HTML()
        self.table.add_class("ml-bench-summary")
        self.log = w.Textarea(layout=w.Layout(width="100%", height="120px"), disabled=True)
        self.runs: list[Any] = []
        self.knee: Any = None
        self.done = threading.Event()
        self.start.on_click(lambda _b: self._begin())
        self.widget = w.VBox([w.HBox([self.workload, self.max_concurrency, self.duration, self.repeats]),
                              w.HBox([self.start, self.status]), self.plot, self.table, self.log])
        self.widget.add_class("ml-bench-panel")

    def _say(self, line: str) -> None:
        _append(self.log, line)

    def _begin(self) -> None:
        self.start.disabled = True
        self.done.clear()
        self.runs = []
        self.knee = None
        threading.Thread(target=self._sweep, daemon=True).start()

    def _sweep(self) -> None:
        from mistral_lab import bench
        from mistral_lab.bench import plots, saturation

        try:
            levels = bench.sweep_levels(self.max_concurrency.value)
            for i, c in enumerate(levels, 1):
                self.status.value = f"level {i}/{len(levels)}: c={c}…"
                run = bench.run(self.deployment, workload=self.workload.value, concurrency=[c],
                                duration_s=self.duration.value, repeats=self.repeats.value, native_bench=False,
                                plots=False, progress=False, say=self._say, **self.target)
                self.runs.append(run)
                merged = merged_run(self.runs)
                self.plot.value = figure_png(plots.throughput_latency(merged))
                self.table.value = points_table_html(merged.levels)
                self.knee = saturation.knee(merged.levels, bench.SLO(**run.meta.slo)) if len(self.runs) > 1 else None
                if self.knee is not None:
                    break
            knee = (f"; knee at {html.escape(self.knee.load or 'the lowest level')} ({html.escape(self.knee.reason)})"
                    if self.knee is not None else "")
            self.status.value = (f"done: {len(self.runs)} levels, saved as {', '.join(r.ref for r in self.runs)}"
                                 + knee)
        except Exception as e:  # noqa: BLE001  (shown to the user in the panel)
            self._say(f"✘ {e}")
            self.status.value = error_html(e)
        finally:
            self.start.disabled = False
            self.done.set()


def show(widget_panel: Any) -> Any:
    from IPython.display import display

    display(widget_panel.widget)
    return widget_panel


def deploy_panel(request: PlanRequest | None = None, options: dict[str, Any] | None = None) -> DeployPanel | None:
    """Show the deploy panel when a person runs the notebook; None (and nothing shown) when headless."""
    if not interactive():
        return None
    return show(DeployPanel(request, options))


def benchmark_panel(deployment: str, **kw: Any) -> BenchmarkPanel | None:
    """Show the benchmark panel when interactive; headless runs call `bench.run` in their cells instead."""
    if not interactive():
        return None
    return show(BenchmarkPanel(deployment, **kw))


def chat_panel(deployment: str) -> ChatPanel | None:
    """Show a chat with `deployment` when interactive; the client (and its tunnel) lives as long as the kernel."""
    if not interactive():
        return None
    from mistral_lab.client import Client

    return show(ChatPanel(Client.from_deployment(deployment)))


# ---------------------------------------------------------------------------------------------- workshop (instructor)


WORKSHOP_TICK_S = 10.0  # the proxy's usage log is read over SSH: often enough to watch a room, not to load it


def workshop_usage_html(rows: list[Any], *, cost_usd: float | None = None, updated: str = "") -> str:
    """The instructor's table, one row per learner (workshop.LearnerUsage): requests, tokens, errors, 429s, p50
    latency, last seen; a spent budget in red. Pure: tests check it without a browser."""
    head = ("learner", "requests", "prompt tok", "completion tok", "tokens left", "errors", "429", "p50 s",
            "last seen")
    cells = []
    for r in rows:
        spent = r.tokens_left == 0
        left = "–" if r.tokens_left is None else f"{r.tokens_left:,}"
        values = (r.learner, f"{r.requests:,}", f"{r.prompt_tokens:,}", f"{r.completion_tokens:,}", left,
                  str(r.errors), str(r.refused_429), "–" if r.p50_latency_s is None else f"{r.p50_latency_s:.2f}",
                  (r.last_seen or "–").replace("T", " ").replace("+00:00", " UTC"))
        style = ' style="color:#c0392b"' if spent else ""
        cells.append(f'<tr class="ml-ws-row" data-learner="{html.escape(r.learner)}"{style}>'
                     + "".join(f"<td>{html.escape(v)}</td>" for v in values) + "</tr>")
    total = sum(r.prompt_tokens + r.completion_tokens for r in rows)
    summary = (f"{len(rows)} learners, {sum(r.requests for r in rows):,} requests, {total:,} tokens"
               + (f", ${cost_usd:.2f} so far" if cost_usd is not None else "")
               + (f" — updated {html.escape(updated)}" if updated else ""))
    return (f'<div class="ml-workshop"><div class="ml-ws-summary">{summary}</div>'
            '<table style="border-collapse:collapse;font-size:12px"><thead><tr>'
            + "".join(f'<th style="text-align:left;padding:0 8px">{h}</th>' for h in head)
            + "</tr></thead><tbody>" + "".join(cells) + "</tbody></table></div>")


class WorkshopPanel:
    """A live table of a workshop's learners for the instructor, redrawn every WORKSHOP_TICK_S from the proxy's
    usage log (workshop.usage, what `mistral-lab workshop status NAME` shows)."""

    def __init__(self, name: str, tick_s: float = WORKSHOP_TICK_S):
        import ipywidgets as w

        self.name, self.tick_s = name, tick_s
        self.table = w.HTML(value=f"reading {html.escape(name)}'s usage…")
        self.error = w.HTML()
        self.widget = w.VBox([w.HTML(f"<b>Workshop {html.escape(name)}</b>"), self.table, self.error])
        self.widget.add_class("ml-workshop-panel")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def refresh(self, host: Any) -> None:
        """Redraw from the usage log read over `host` (the panel's one connection)."""
        from mistral_lab import state, workshop

        ws = workshop.load(self.name)
        text = workshop.read_usage_log(host, ws)
        rows = workshop.summarize_usage(workshop.parse_usage_log(text), [x.id for x in ws.learners],
                                        ws.tokens_per_learner)
        cost = cost_so_far(state.load(self.name)) if state.exists(self.name) else None
        self.error.value = ""
        self.table.value = workshop_usage_html(rows, cost_usd=cost, updated=datetime.now().strftime("%H:%M:%S"))

    def _loop(self) -> None:
        """One SSH connection for the panel's life, not one per tick; after an error, a fresh one next tick."""
        from mistral_lab import session, state

        host = None
        while not self.stop.is_set():
            try:
                if host is None:
                    host = session.reconnect(state.load(self.name))
                self.refresh(host)
            except (MistralLabError, OSError) as e:
                self.error.value = error_html(e)
                if host is not None:
                    host.close()
                    host = None
            self.stop.wait(self.tick_s)
        if host is not None:
            host.close()


def workshop_panel(name: str, tick_s: float = WORKSHOP_TICK_S) -> WorkshopPanel | None:
    """Show the instructor's live table of `name`'s learners when interactive; None when headless."""
    if not interactive():
        return None
    return show(WorkshopPanel(name, tick_s))
