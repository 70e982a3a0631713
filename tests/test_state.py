"""Deployment records: saved atomically, found by name, secrets in 0600 files and never in the JSON."""

from __future__ import annotations

import stat

import pytest

from mistral_lab import hardware, state
from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import HostRecord
from mistral_lab.planning import PlanRequest, resolve


@pytest.fixture
def ml_home(tmp_path, monkeypatch):
    # The state folder is configuration, chosen by the environment like a user would.
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _dep(name: str) -> state.Deployment:
    plan = resolve(PlanRequest(name=name), host=hardware.cpu_size(8))
    return state.Deployment(name=name, status="up", plan=plan, host=HostRecord(target="local"))


def test_round_trip_and_listing(ml_home):
    dep = _dep("demo")
    state.save(dep)
    again = state.load("demo")
    assert again.plan == dep.plan and again.status == "up"
    assert state.names() == ["demo"]
    assert stat.S_IMODE((ml_home / "deployments" / "demo").stat().st_mode) == 0o700


def test_secrets_are_private_files_and_not_in_the_record(ml_home):
    dep = _dep("demo")
    key = state.new_api_key()
    path = state.write_secret("demo", "api_key", key)
    dep.endpoint = state.Endpoint(remote_port=8080, served_model="tiny-random", api_key_file="api_key")
    state.save(dep)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in (ml_home / "deployments" / "demo" / "deployment.json").read_text()
    assert state.load("demo").api_key() == key


def test_unknown_name_suggests_the_close_ones(ml_home):
    state.save(_dep("workshop-a"))
    with pytest.raises(BadInput) as e:
        state.load("workshop-b")
    assert "workshop-a" in str(e.value) and e.value.field == "name"


def test_bad_names_are_refused_before_touching_disk(ml_home):
    with pytest.raises(BadInput):
        state.deployment_dir("../etc")
    assert not (ml_home / "etc").exists()


def test_remove_deletes_the_folder(ml_home):
    state.save(_dep("gone"))
    state.write_secret("gone", "api_key", "x")
    state.remove("gone")
    assert not state.exists("gone") and state.names() == []


def test_a_companion_comes_back_as_it_was_installed(ml_home):
    """A companion that runs as another user under its own host name (a workshop deadline: root,
    <instance>-deadline) is stopped later from the record alone: same unit, same user to signal through."""
    from mistral_lab.engines.service import ServiceSpec
    from mistral_lab.lifecycle import services

    dep = _dep("demo")
    dep.host = HostRecord(target="digitalocean", user="mistral")
    state.save(dep)
    spec = ServiceSpec(name="demo-deadline", model="-", engine="deadline", root="/srv/x/deadline/demo-1a2b",
                       argv=["bash", "deadline.sh"], port=0, key_var="", mode="systemd", user="root",
                       owner="mistral", instance="demo-1a2b-deadline")
    services.add_companion("demo", spec)
    (again,) = services.companions(state.load("demo"))
    assert (again.unit, again.separate_user, again.root) == (spec.unit, "root", spec.root)
    assert again.unit == "mistral-lab-demo-1a2b-deadline"
