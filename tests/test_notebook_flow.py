"""The notebooks headless through papermill, as an engineer runs them: deploy on the SSH target (a real sshd with
its host key pinned by a parameter), then teardown, with no secret in the executed notebooks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import papermill as pm
import pytest

import mistral_lab as ml
import sshd
from mistral_lab import state
from mistral_lab.planning import PlanRequest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _text(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            out.append("".join(o.get("text", "")) + json.dumps(o.get("data", {})))
    return "\n".join(out)


@pytest.fixture
def home(tmp_path, monkeypatch, llamacpp_bin) -> Path:
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))
def test_deploy_then_teardown_notebooks_on_the_ssh_target(home, tmp_path, sshd):
    out_deploy, out_teardown = tmp_path / "deploy.ipynb", tmp_path / "teardown.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks/deploy.ipynb"), str(out_deploy), cwd=str(ROOT), progress_bar=False,
        parameters={"model": "tiny-random", "target": "ssh", "name": "nb-ssh", "host": sshd.address,
                    "ssh_port": sshd.port, "user": sshd.user, "key": str(sshd.client_key_path),
                    "host_key": sshd.host_key_pub},
    )
    text = _text(out_deploy)
    assert "✔ nb-ssh is up" in text and "✔ install llamacpp" in text and "▶ start server" in text
    api_key = state.read_secret("nb-ssh", "api_key")
    assert api_key not in text and api_key not in out_deploy.read_text()
    dep = state.load("nb-ssh")
    assert dep.host.target == "ssh" and dep.host.port == sshd.port

    pm.execute_notebook(str(ROOT / "notebooks/teardown.ipynb"), str(out_teardown), cwd=str(ROOT),
                        progress_bar=False, parameters={"deployment": "nb-ssh"})
    text = _text(out_teardown)
    assert "left behind: nothing" in text and "torn down" in text
    assert not state.exists("nb-ssh")


def test_deploy_notebook_dry_run_shows_the_plan_of_a_real_model_offline(home, tmp_path):
    out = tmp_path / "dry.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks/deploy.ipynb"), str(out), cwd=str(ROOT), progress_bar=False,
                        parameters={"model": "ministral-3b", "target": "digitalocean", "dry_run": True})
    text = _text(out)
    assert "dry run: nothing created" in text and "vllm serve" in text and state.names() == []


def test_a_busy_port_moves_the_server_to_the_next_free_one(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        lines: list[str] = []
        dep = ml.deploy(PlanRequest(model="tiny-random", target="local", name="busy", port=busy),
                            say=lines.append)
        try:
            assert dep.endpoint.remote_port > busy and f"port {busy} is taken" in "\n".join(lines)
            assert f"--port {dep.endpoint.remote_port}" in dep.serve_command
        finally:
            ml.teardown("busy", say=lines.append)
