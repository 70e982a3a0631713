"""Shared fixtures. Each fixture family says whose it is; keep them small and add new ones in their own block."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sshd as _sshd

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
