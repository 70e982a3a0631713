"""Shared fixtures. Each fixture family says whose it is; keep them small and add new ones in their own block."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sshd as _sshd
from llamacpp_fixtures import llama_server, llamacpp_bin, tiny_gguf  # noqa: F401  (shared fixtures)

# ---------------------------------------------------------------------------------------------- client state
# Every test process (each xdist worker, and the notebooks' kernels it starts) gets its own deployment records,
# so tests never see a developer's deployments nor each other's; whatever a test left up is torn down at the end.
_STATE_HOME: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _STATE_HOME
    _STATE_HOME = tempfile.mkdtemp(prefix="mistral-lab-test-home-")
    os.environ["MISTRAL_LAB_HOME"] = _STATE_HOME


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _STATE_HOME:
        return
    import mistral_lab as ml
    from mistral_lab import state

    for name in state.names():
        try:
            ml.teardown(name, say=lambda _line: None)
        except Exception as e:  # noqa: BLE001  (cleanup must go on to the next one)
            print(f"conftest: could not tear down {name}: {e}")
    shutil.rmtree(_STATE_HOME, ignore_errors=True)

# ---------------------------------------------------------------------------------------------- real sshd (hosts)
# Session scope is per xdist worker: each worker gets its own server, port and directory.


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_sshd.SshdServer]:
    """A real OpenSSH sshd on 127.0.0.1 with a per-run ed25519 host key; see tests/sshd.py."""
    reason = _sshd.available()
    if reason:
        pytest.skip(reason)
    server = _sshd.start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[..., _sshd.SshdServer]]:
    """Start more sshd servers (each with its own new host key unless given one); all stop after the test."""
    reason = _sshd.available()
    if reason:
        pytest.skip(reason)
    servers: list[_sshd.SshdServer] = []

    def start(**kwargs: object) -> _sshd.SshdServer:
        server = _sshd.start_sshd(tmp_path / f"sshd-{len(servers)}", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
