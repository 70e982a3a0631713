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
