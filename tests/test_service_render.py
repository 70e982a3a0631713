"""The service files rendered from a plan: valid for systemd and shellcheck, and free of secrets."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mistral_lab.engines import service
from mistral_lab.engines.diagnose import diagnose

SECRET = "ml-test-secret-value-123"


def _spec(mode="systemd") -> service.ServiceSpec:
    return service.ServiceSpec(
        name="demo", model="ministral-3b", engine="vllm", root="/home/llm/mistral-lab/deployments/demo",
        argv=["/home/llm/.cache/mistral-lab/vllm/bin/vllm", "serve", "mistralai/Ministral-3-3B-Instruct-2512",
              "--limit-mm-per-prompt", '{"image":10}'],
        port=8000, key_var="VLLM_API_KEY", mode=mode, user="llm", secret_env={"VLLM_API_KEY": SECRET},
    )


def test_unit_passes_systemd_analyze_verify(tmp_path):
    spec = _spec()
    root = tmp_path / "root"
    root.mkdir()
    unit_text = service.render_unit(spec).replace(spec.root, str(root))
    (root / "serve.sh").write_text("#!/bin/sh\n")
    (root / "serve.sh").chmod(0o755)
    unit = tmp_path / f"{spec.unit}.service"
    unit.write_text(unit_text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    # verify complains about the missing user on this machine only; everything else must be clean.
    problems = [line for line in r.stderr.splitlines() if "llm" not in line and line.strip()]
    assert not problems, r.stderr
    assert SECRET not in unit_text and "ExecStart=" + str(root) + "/serve.sh" in unit_text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by make test's setup")
def test_serve_script_is_shellcheck_clean_and_quotes_json(tmp_path):
    text = service.render_serve_script(_spec())
    path = tmp_path / "serve.sh"
    path.write_text(text)
    r = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert "'{\"image\":10}'" in text and SECRET not in text


def test_env_file_holds_the_secret_quoted():
    assert service.render_env_file(_spec()) == f"VLLM_API_KEY={SECRET}\n"


@pytest.mark.parametrize(
    ("log", "expect"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "out of memory"),
        ("ValueError: Found 0 files matching the pattern: tekken.json", "tokenizer/format"),
        ("error while attempting to bind on address ('127.0.0.1', 8000): address already in use", "port is busy"),
        ("gguf_init_from_file: failed to open 'x.gguf': No such file", "model file is missing"),
        ("CUDA error: no kernel image is available for execution on the device", "does not support this GPU"),
        ("everything is fine", None),
    ],
)
def test_diagnose_names_the_cause(log, expect):
    got = diagnose(log)
    assert (got is None) if expect is None else (expect in got)


def test_catalog_hints_win_over_common_causes():
    assert diagnose("out of memory in MLA kernel", {"MLA kernel": "use --attention-backend TRITON_MLA"}).startswith("use")


def test_the_readiness_wait_sends_the_key_without_putting_it_on_a_command_line(tmp_path):
    """A real HTTP server that wants the key on /v1/models, and a curl on PATH that records its argv then runs the
    real curl: the wait succeeds only if the key reached the server, and no argv may hold it."""
    import http.server
    import os
    import threading

    from mistral_lab import infra_files

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802  (http.server's name)
            seen.append(self.path)
            ok = self.path == "/health" or self.headers.get("Authorization") == f"Bearer {SECRET}"
            self.send_response(200 if ok else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root, shims = tmp_path / "root", tmp_path / "bin"
    root.mkdir()
    shims.mkdir()
    (root / "env").write_text(f"VLLM_API_KEY={SECRET}\n")
    (root / "serve.pid").write_text(str(os.getpid()))  # "the server" is alive while this test runs
    argv_log = tmp_path / "curl-argv"
    real_curl = shutil.which("curl")
    assert real_curl, "curl is one of the project's system packages"
    (shims / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real_curl} "$@"\n')
    (shims / "curl").chmod(0o755)
    script = infra_files.with_env(infra_files.read("wait-ready.sh"), {
        "ROOT": str(root), "PORT": str(server.server_address[1]), "TIMEOUT": "20", "MODE": "process",
        "UNIT": "x", "KEY_VAR": "VLLM_API_KEY"})
    try:
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"})
    finally:
        server.shutdown()
    assert r.returncode == 0 and "ready after" in r.stdout, r.stdout + r.stderr
    assert "/v1/models" in seen and argv_log.read_text().count("\n") >= 2
    assert SECRET not in argv_log.read_text(), "the key was on curl's command line"
