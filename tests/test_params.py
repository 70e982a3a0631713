"""Presets under parameters/: each one loads, plans and fits; secrets and unknown names are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mistral_lab import hardware
from mistral_lab.catalog import load_catalog
from mistral_lab.errors import BadInput
from mistral_lab.planning import parameters as params
from mistral_lab.planning import resolve

PRESETS = sorted((Path(__file__).resolve().parents[1] / "parameters").glob("*.yaml"))


def test_one_digitalocean_preset_per_catalog_model():
    names = {p.name for p in PRESETS}
    for m in load_catalog().models:
        if not m.generated:
            assert f"{m.id}-digitalocean.yaml" in names
    assert {"local-demo.yaml", "ssh-host.yaml", "ministral-3b-digitalocean.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_plans_and_fits(path):
    req, options = params.split(params.load_preset(path))
    host = hardware.cpu_size(16) if req.target == "local" else None
    plan = resolve(req, host=host)
    assert plan.fits, plan.memory
    if req.target == "digitalocean":
        assert plan.hourly_usd and plan.gpu in hardware.DO_SIZES
    if req.target == "ssh":
        assert options["host"] and options["user"]


def test_secrets_in_a_preset_are_refused(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: ministral-3b\ntoken: dop_v1_abc\n")
    with pytest.raises(BadInput) as e:
        params.split(params.load_preset(f))
    assert "DIGITALOCEAN_TOKEN" in str(e.value) and "dop_v1_abc" not in str(e.value)


def test_unknown_parameter_is_named():
    with pytest.raises(BadInput) as e:
        params.split({"model": "ministral-3b", "contxt": 4096})
    assert e.value.field == "contxt"
