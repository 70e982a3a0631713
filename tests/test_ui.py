"""The widget panels without a browser: what they render for a plan, and that the plan follows the pickers."""

from __future__ import annotations

import re
import time

import pytest

from mistral_lab import ui
from mistral_lab.catalog import get_model
from mistral_lab.planning import PlanRequest, make_plan


def _widths(html: str) -> list[int]:
    return [int(w) for w in re.findall(r'title="(?:weights|KV cache|overhead) [0-9.]+ GB" style="width:(\d+)px', html)]


def test_memory_bar_is_proportional_and_marks_usable_memory():
    plan = make_plan(PlanRequest(model="ministral-3b", target="digitalocean", gpu="gpu-l40sx1-48gb"))
    html = ui.memory_bar_html(plan, width_px=400)
    m = plan.memory
    w = _widths(html)
    assert len(w) == 3 and abs(w[0] / w[1] - m["weights_gb"] / m["kv_cache_gb"]) < 0.1
    assert f"{m['total_gb']:.1f} of {m['available_gb']:.1f} GB usable" in html


def test_plan_html_says_fits_price_context_and_serve_command():
    ok = make_plan(PlanRequest(model="ministral-3b", target="digitalocean", gpu="gpu-l40sx1-48gb"))
    html = ui.plan_html(ok)
    assert 'data-fits="true"' in html and "$1.57/hour" in html and "largest that fits" in html
    assert "vllm serve" in html
    bad = make_plan(PlanRequest(model="mistral-large-3", target="digitalocean", gpu="gpu-l40sx1-48gb"))
    assert "does not fit" in ui.plan_html(bad) and 'data-fits="false"' in ui.plan_html(bad)


def test_panel_redraws_the_plan_when_a_picker_changes(monkeypatch):
    pytest.importorskip("ipywidgets")
    panel = ui.DeployPanel(PlanRequest(model="tiny-random"))
    assert 'data-model="tiny-random"' in panel.plan_view.value
    panel.model.value = "ministral-8b"
    assert 'data-model="ministral-8b"' in panel.plan_view.value
    assert [v for _, v in panel.variant.options][1:] == [v.id for v in get_model("ministral-8b").variants]
    panel.target.value = "digitalocean"
    panel.gpu.value = "gpu-4000adax1-20gb"
    panel.model.value = "mistral-large-3"
    assert "does not fit" in panel.plan_view.value


def test_panels_only_when_a_jupyter_server_started_the_kernel(monkeypatch):
    monkeypatch.delenv("MISTRAL_LAB_WIDGETS", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not ui.interactive() and ui.deploy_panel() is None and ui.chat_panel("x") is None
    monkeypatch.setenv("JPY_SESSION_NAME", "/lab/deploy.ipynb")
    assert ui.interactive()
    monkeypatch.setenv("MISTRAL_LAB_WIDGETS", "0")
    assert not ui.interactive()


# ---------------------------------------------------------------------------------------------- running cost, chat


def _live(hours_ago: float, gpu: str = "gpu-l40sx1-48gb"):
    from datetime import UTC, datetime, timedelta

    from mistral_lab import state
    from mistral_lab.hosts.base import HostRecord

    plan = make_plan(PlanRequest(model="ministral-3b", target="digitalocean", gpu=gpu, name="live"))
    created = (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat(timespec="seconds")
    return state.Deployment(name="live", status="up", plan=plan, host=HostRecord(target="digitalocean"),
                            created_at=created)


def test_running_cost_is_hours_up_times_the_hourly_price():
    from datetime import datetime, timedelta

    dep = _live(0)
    at = datetime.fromisoformat(dep.created_at) + timedelta(hours=2)
    html = ui.running_cost_html(dep, now=at)
    assert "up 2.00 h" in html and "$1.57/hour" in html and "about <b>$3.14</b> so far" in html
    assert 'data-cost-usd="3.1400"' in html
    local = make_plan(PlanRequest(model="tiny-random", name="here"))
    assert "no cloud charges" in ui.running_cost_html(dep.model_copy(update={"plan": local}), now=at)


def test_deploy_panel_redraws_the_cost_of_a_live_deployment():
    pytest.importorskip("ipywidgets")
    panel = ui.DeployPanel(PlanRequest(model="ministral-3b", target="digitalocean"))
    assert panel.cost_view.value == "" and panel.teardown_button.disabled
    panel.attach(_live(1.0))
    first = float(re.search(r'data-cost-usd="([0-9.]+)"', panel.cost_view.value).group(1))
    assert first == pytest.approx(1.57, abs=0.01) and not panel.teardown_button.disabled
    time.sleep(ui.COST_TICK_S + 1.5)
    later = float(re.search(r'data-cost-usd="([0-9.]+)"', panel.cost_view.value).group(1))
    assert later > first  # it runs while the droplet does


def test_chat_defaults_come_from_the_catalog():
    small4 = get_model("mistral-small-4")
    d = ui.chat_defaults(small4)
    assert d.efforts == [("none", "none"), ("high", "high")] and d.effort == "none"
    assert (d.temperature, d.vision, d.tools) == (0.1, True, True)
    assert ui.sampling_for(small4, None, "high") == (0.7, None)
    m3 = ui.chat_defaults(get_model("ministral-3b"))
    assert m3.efforts == [("n/a", None)] and m3.effort is None and m3.temperature == 0.15
    reasoning_variant = next(v.id for v in get_model("ministral-3b").variants if v.thinks)
    thinking = ui.chat_defaults(get_model("ministral-3b"), reasoning_variant)
    assert (thinking.temperature, thinking.top_p, thinking.thinks) == (0.7, 0.95, True)
    assert ui.chat_defaults(None).temperature == 0.7


def test_reply_reasoning_and_tool_trace_render_escaped():
    assert ui.reply_html("<b>x</b>", done=False) == '<div class="ml-streaming">&lt;b&gt;x&lt;/b&gt;</div>'
    assert 'class="ml-done"' in ui.reply_html("ok", done=True)
    thought = ui.reasoning_html("first <think> then\nanswer")
    assert "&lt;think&gt;" in thought and "pre-wrap" in thought and ui.reasoning_html("") == ""
    assert ui.reasoning_title("a b c") == "reasoning (3 words)" and ui.reasoning_title("") == "reasoning"
    trace = ui.tool_trace_html([{"tool": "calculator", "arguments": {"expression": "2*21"}, "result": "42"},
                                {"tool": "calculator", "arguments": {"expression": "1/0"}, "result": "<error>"}])
    assert trace.count("class='ml-tool'") == 2 and "calculator({&#x27;expression&#x27;: &#x27;2*21&#x27;}) → 42" in trace
    assert "&lt;error&gt;" in trace


def test_chat_panel_controls_follow_the_model_and_effort_switches_the_temperature():
    pytest.importorskip("ipywidgets")
    from mistral_lab.client import Client

    panel = ui.ChatPanel(Client("http://127.0.0.1:9/v1", "unused", model="m", catalog_id="mistral-small-4"))
    assert panel.effort.value == "none" and not panel.effort.disabled and panel.temperature.value == 0.1
    assert not panel.image.disabled and not panel.tools.disabled
    panel.effort.value = "high"
    assert panel.temperature.value == 0.7
    panel.effort.value = "none"
    assert panel.temperature.value == 0.1
    plain = ui.ChatPanel(Client("http://127.0.0.1:9/v1", "unused", model="m", catalog_id="ministral-3b"))
    assert plain.effort.disabled and plain.effort.value is None and plain.image.disabled is False
    tiny = ui.ChatPanel(Client("http://127.0.0.1:9/v1", "unused", model="m", catalog_id="tiny-random"))
    assert tiny.image.disabled and tiny.tools.disabled is not get_model("tiny-random").capabilities.tools


@pytest.mark.slow
def test_chat_panel_streams_a_reply_from_a_real_server(llama_server):
    pytest.importorskip("ipywidgets")
    from mistral_lab.client import Client

    client = Client(llama_server.v1, llama_server.api_key, model="tiny-random", catalog_id="tiny-random",
                    engine="llamacpp")
    panel = ui.ChatPanel(client)
    seen: list[str] = []
    panel.reply.observe(lambda change: seen.append(change["new"]), names="value")
    panel.max_tokens.value = 16
    panel.prompt.value = "Say hello."
    panel.send.click()
    assert any('class="ml-streaming"' in v for v in seen)  # it filled in as it arrived
    assert 'class="ml-done"' in panel.reply.value and panel.prompt.value == ""
    assert "<b>you</b>: Say hello." in panel.history.value and not panel.send.disabled


@pytest.mark.slow
def test_benchmark_panel_fills_the_plot_and_table_level_by_level(llama_server, tmp_path):
    pytest.importorskip("ipywidgets")
    panel = ui.BenchmarkPanel(None, workload="32/16", max_concurrency=2, duration_s=2, base_url=llama_server.v1,
                              api_key=llama_server.api_key, model="tiny-random", engine="llamacpp",
                              catalog_id="tiny-random", where="client", results_dir=tmp_path)
    tables: list[str] = []
    panel.table.observe(lambda change: tables.append(change["new"]), names="value")
    panel.start.click()
    assert panel.done.wait(600), panel.log.value
    assert "done: 2 levels" in panel.status.value, panel.log.value
    assert [t.count("<tr>") - 1 for t in tables] == [1, 2]  # one row after the first level, two after the second
    assert "32/16 c=1" in tables[-1] and "32/16 c=2" in tables[-1]
    assert bytes(panel.plot.value).startswith(b"\x89PNG") and len(panel.runs) == 2
    merged = ui.merged_run(panel.runs)
    assert [p.concurrency for p in merged.points] == [1, 2] and merged.meta.loads == [1.0, 2.0]
    assert all(p.requests > p.errors for p in merged.points)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("notebook", "panels"), [("deploy", 2), ("query", 1), ("benchmark", 1)])
def test_the_notebooks_show_their_panels_when_interactive_and_none_headless(notebook, panels, llamacpp_bin,
                                                                            tmp_path, monkeypatch):
    """The same notebook, run as a Jupyter server's kernel would run it (widgets forced on) and headless."""
    import json
    from pathlib import Path

    import papermill as pm

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    name = f"ui-{notebook}"
    params = {"deploy": {"model": "tiny-random", "target": "local", "name": name}}.get(notebook, {})

    def widgets(mode: str) -> int:
        monkeypatch.setenv("MISTRAL_LAB_WIDGETS", mode)
        out = tmp_path / f"{notebook}-{mode}.ipynb"
        pm.execute_notebook(str(root / f"notebooks/{notebook}.ipynb"), str(out), parameters=params, cwd=str(root),
                            progress_bar=False, kernel_name="python3")
        cells = json.loads(out.read_text())["cells"]
        return sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for c in cells for o in c.get("outputs", []))

    import mistral_lab as ml
    from mistral_lab import state

    try:
        assert widgets("1") >= panels
        assert widgets("0") == 0
    finally:
        for left in state.names():
            ml.teardown(left, say=lambda _: None)
