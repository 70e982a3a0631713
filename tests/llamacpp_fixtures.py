"""Session fixtures for real llama.cpp: the cached CPU build, the tiny-random GGUF, and a running llama-server.

Import them into conftest.py (`from llamacpp_fixtures import llamacpp_bin, tiny_gguf, llama_server`) or into a
test module. The first build takes minutes (about 6 on 2 cores) and is cached under ~/.cache/mistral-lab/llama.cpp/
(or $MISTRAL_LAB_CACHE), keyed by source version, backend and arch; two pytest-xdist workers asking at once take
turns on the script's lock and the second finds the cache. The GGUF is cached under <cache>/models/, named by a
hash of the generator version and inputs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mistral_lab import infra_files, modelgen
from mistral_lab.engines import llamacpp_build as lb

CACHE = Path(os.environ.get("MISTRAL_LAB_CACHE", Path.home() / ".cache" / "mistral-lab"))
LLAMACPP_KEY = lb.BuildKey(source="pypi", version=lb.DEFAULT_VERSION, backend="cpu", arch="native")
API_KEY = "ml-test-llamacpp-key"
BUILD_TIMEOUT_S = 3600


def build_script() -> Path:
    return infra_files.path(lb.SCRIPT)


def run_build(
    key: lb.BuildKey = LLAMACPP_KEY, cache: Path = CACHE, **env_extra: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, **lb.build_env(key, cache=str(cache)), **env_extra}
    return subprocess.run(
        ["bash", str(build_script())], env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )


@pytest.fixture(scope="session")
def llamacpp_bin() -> Path:
    """The folder holding llama-server, llama-bench and llama-quantize (CPU build, cached)."""
    r = run_build()
    assert r.returncode == 0, f"llama.cpp build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    bin_dir = Path(lb.parse_bin_dir(r.stdout))
    assert bin_dir == Path(lb.bin_dir(LLAMACPP_KEY, str(CACHE)))
    return bin_dir


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """tiny-random as F16 GGUF (3.4 MB), generated once per generator version."""
    return modelgen.make_model("tiny-random", "F16", cache=CACHE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LlamaServer:
    base_url: str  # http://127.0.0.1:PORT
    api_key: str
    model: str  # the served alias
    log: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


@pytest.fixture(scope="session")
def llama_server(
    llamacpp_bin: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """llama-server on a free port serving tiny-random with the flags a deployment uses (--jinja, key, metrics)."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    argv = [
        str(llamacpp_bin / "llama-server"),
        "-m",
        str(tiny_gguf),
        "--jinja",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics",
        "-c",
        "2048",
        "-np",
        "2",
        "--alias",
        "tiny-random",
        "-t",
        "2",
    ]
    # The key goes through the environment, as the deployment's service does, never on the command line.
    env = {**os.environ, "LLAMA_API_KEY": API_KEY}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"llama-server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama-server not healthy after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield LlamaServer(base_url=base, api_key=API_KEY, model="tiny-random", log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
