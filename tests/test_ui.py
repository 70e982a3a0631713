"""The widget panels without a browser: what they render for a plan, and that the plan follows the pickers."""

from __future__ import annotations

import re

import pytest

from mistral_lab import ui
from mistral_lab.catalog import get_model
from mistral_lab.plan import PlanRequest
from mistral_lab.planning import make_plan


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
