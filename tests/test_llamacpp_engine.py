"""The llama.cpp engine's model download against a local HTTP server shaped like Hugging Face's resolve URLs:
files land whole, a second fetch skips, progress is shown, the token is sent as a header and never printed,
and a missing file is a clear error. Also the serve argv for the `-hf` mode and the tarball-source checks."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mistral_lab.engines.base import Installed, Layout
from mistral_lab.engines.llamacpp import LlamaCppEngine, hf_url
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.hosts.base import HostFacts
from mistral_lab.hosts.local import LocalHost
from mistral_lab.planning import PlanRequest, make_plan

TOKEN = "hf_" + secrets.token_hex(16)


class _HF(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    seen_auth: list[str] = []

    def _find(self) -> bytes | None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return None
        body = self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
        return body

    def do_HEAD(self) -> None:  # noqa: N802
        body = self._find()
        if body is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        body = self._find()
        if body is not None:
            start = int(self.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hf() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HF)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _plan():
    return make_plan(PlanRequest(model="ministral-3b", engine="llamacpp", target="local"))


def test_download_gguf_and_mmproj_with_progress_and_no_token_in_output(hf, tmp_path):
    plan = _plan()
    gguf, mmproj = b"GGUF" + secrets.token_bytes(3 << 20), b"GGUF" + secrets.token_bytes(1 << 20)
    _HF.files = {f"/{plan.repo}/resolve/main/{plan.gguf_file}": gguf,
                 f"/{plan.repo}/resolve/main/{plan.mmproj_file}": mmproj}
    layout = Layout(home=str(tmp_path), cache=str(tmp_path / "cache"), root=str(tmp_path / "dep"))
    engine = LlamaCppEngine({"hf_endpoint": hf})
    lines: list[str] = []
    files = engine.fetch_model(LocalHost(tmp_path), plan, layout, {"HF_TOKEN": TOKEN},
                               lines.append)
    assert Path(files.ref).read_bytes() == gguf and Path(files.mmproj).read_bytes() == mmproj
    assert files.ref == f"{layout.models}/{plan.repo}/{plan.gguf_file}" and not files.skipped
    assert any("fetch: downloading" in line and "MiB" in line for line in lines)
    assert any("fetch: done" in line for line in lines)
    assert all(TOKEN not in line for line in lines)
    assert set(_HF.seen_auth) == {f"Bearer {TOKEN}"}
    assert not list(Path(layout.models).rglob("*.part"))

    again = engine.fetch_model(LocalHost(tmp_path), plan, layout, {"HF_TOKEN": TOKEN},
                               None)
    assert again.skipped

    installed = Installed(serve_prefix=["/opt/llama-server"], versions={})
    argv = engine.serve_argv(plan, files, installed)
    assert argv[:3] == ["/opt/llama-server", "-m", files.ref] and argv[argv.index("--mmproj") + 1] == files.mmproj


def test_missing_file_or_refused_token_is_a_clear_error(hf, tmp_path):
    _HF.files = {}
    layout = Layout(home=str(tmp_path), cache=str(tmp_path / "cache"), root=str(tmp_path / "dep"))
    engine = LlamaCppEngine({"hf_endpoint": hf})
    with pytest.raises(EngineError) as e:
        engine.fetch_model(LocalHost(tmp_path), _plan(), layout, {"HF_TOKEN": TOKEN}, None)
    assert e.value.field == "repo" and "Q4_K_M.gguf" in str(e.value) and TOKEN not in str(e.value)
    with pytest.raises(EngineError, match="HF_TOKEN"):  # no token: the fix says where a gated model's token goes
        engine.fetch_model(LocalHost(tmp_path), _plan(), layout, {}, None)


def test_hf_mode_lets_llama_server_download_and_options_are_checked(tmp_path):
    plan = _plan()
    engine = LlamaCppEngine({"model_source": "hf"})
    layout = Layout(home=str(tmp_path), cache=str(tmp_path / "cache"), root=str(tmp_path / "dep"))
    files = engine.fetch_model(LocalHost(tmp_path), plan, layout, {}, None)
    argv = engine.serve_argv(plan, files, Installed(serve_prefix=["llama-server"], versions={}))
    assert argv[1:3] == ["-hf", f"{plan.repo}:Q4_K_M"] and "-m" not in argv
    assert hf_url("a/b", "c.gguf") == "https://huggingface.co/a/b/resolve/main/c.gguf"
    with pytest.raises(BadInput, match="model_source"):
        LlamaCppEngine({"model_source": "ftp"})
    with pytest.raises(BadInput) as e:
        LlamaCppEngine({"llamacpp_source": "tarball"}).install(
            LocalHost(tmp_path), plan, HostFacts(hostname="h", os="x", arch="x86_64", cpus=1, ram_mib=1, disk_free_mib=1),
            layout, None)
    assert e.value.field == "llamacpp_tarball"
