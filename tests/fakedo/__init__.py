"""A stateful fake of the DigitalOcean API v2 for tests: `serve()` runs it on 127.0.0.1 in a thread.

    with serve(token, backend=SshdBackend(tmp)) as fake:
        os.environ["DIGITALOCEAN_API_URL"] = fake.url
        ...
        fake.state.faults.inject("POST /v2/droplets", 500, after_commit=True)
        assert fake.count("POST /v2/droplets") == 1
        assert fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}

Wire format (JSON shapes, status codes, error bodies, `ratelimit-*` headers, `links.pages` + `meta.total`)
follows the `digitalocean/openapi` spec, and every response is checked against it (conformance.py, with the
bundled schemas in tests/data/digitalocean-openapi/): a response that does not conform fails the test that
provoked it when the fake stops. Behaviours are in `state.py`; the real API's unkind ones (asynchronous
destroy, failing creates, 422s that mean "not here", rate limits) are switches in `quirks.py`, off until a
test turns them on:

    with serve(token, quirks=Quirks(destroy_polls=3), scopes={"droplet:read"}) as fake: ...

Volumes (volumes.py) are created, attached and detached with the real wire format and rules; with
`volume_backend=LoopVolumes(...)` (volume_backend.py, root only) each is a real loop device whose by-id link appears
when an attach completes, so a mount on a fake droplet is real. hf.py is a stand-in Hugging Face at a stated
bandwidth, for downloads that take their time.

`scopes` makes the token a custom-scoped one: a request it lacks a scope for gets the real 403. Droplets go
`new` -> `active` after `polls_to_active` looks and only then get addresses; with a backend, each active
droplet is a real machine (an sshd) set up from the droplet's cloud-init user_data.

SSH addressing: DigitalOcean has no port field, so every droplet of one fake gets its own loopback address
(127.0.0.2, 127.0.0.3, ...) as its public IPv4, and all of them listen on one port, `fake.ssh_port`, which the fake
reserves when it starts. Tests tell the target that port explicitly (its `ssh_port` option); nothing else differs
from a real droplet.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import make_server

from .app import ROUTE_KEYS, FakeDOApp, required_scopes, route_key
from .conformance import Mismatch
from .quirks import Quirks
from .state import ApiError, Backend, DropletBoot, Fault, LogEntry, State, md5_fingerprint

__all__ = ["ROUTE_KEYS", "ApiError", "Backend", "DropletBoot", "Fault", "FakeDO", "LogEntry", "Mismatch",
           "NonConformingResponse", "Quirks", "State", "md5_fingerprint", "required_scopes", "route_key",
           "serve"]


class NonConformingResponse(AssertionError):
    """The fake answered in a way DigitalOcean's published spec does not allow: a bug in the fake, or a quirk
    of the real API the spec leaves out (then teach conformance.py about it, with its source)."""


def _reserve_port() -> socket.socket:
    """Hold 127.0.0.1:<port> so no other test picks it; droplets bind the same port on 127.0.0.N (N >= 2)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


@dataclass
class FakeDO:
    url: str
    state: State
    _server: Any
    _thread: threading.Thread
    _port_holder: socket.socket

    @property
    def ssh_port(self) -> int:
        return self.state.ssh_port

    @property
    def log(self) -> list[LogEntry]:
        with self.state.lock:
            return list(self.state.log)

    def count(self, route: str | None = None, *, status: int | None = None) -> int:
        return self.state.count(route, status=status)

    def leftovers(self) -> dict[str, list[Any]]:
        return self.state.leftovers()

    def take_mismatches(self) -> list[Mismatch]:
        """Responses so far that broke the spec, forgotten here (a test provoking one on purpose takes it)."""
        return self.state.conformance.take()

    def stop(self) -> None:
        """Shut down; raise NonConformingResponse if a response broke the spec, to fail the test behind it."""
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()
        self.state.shutdown()
        self._port_holder.close()
        mismatches = self.take_mismatches()
        if mismatches:
            raise NonConformingResponse("the fake DigitalOcean API sent responses its spec does not allow:\n"
                                        + "\n".join(f"  {m}" for m in mismatches))

    def __enter__(self) -> FakeDO:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self.stop()
        except NonConformingResponse as mismatch:
            if exc is None:
                raise
            exc.add_note(str(mismatch))  # the test's own failure stays the one reported, the mismatch a note


def serve(token: str, *, backend: Backend | None = None, quirks: Quirks | None = None,
          scopes: set[str] | frozenset[str] | None = None, **settings: Any) -> FakeDO:
    """Start the fake on a free port of 127.0.0.1.

    `quirks`: the real API's unkind behaviours to turn on (all off by default). `scopes`: make the token a
    custom-scoped one holding these scopes (None: full access). `settings` are other `State` fields
    (polls_to_active, droplet_limit...).
    """
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request is noise in test output
    holder = _reserve_port()
    state = State(token=token, backend=backend, ssh_port=holder.getsockname()[1], quirks=quirks or Quirks(),
                  scopes=frozenset(scopes) if scopes is not None else None, **settings)
    server = make_server("127.0.0.1", 0, FakeDOApp(state), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakedo",
                              daemon=True)
    thread.start()
    return FakeDO(url=f"http://127.0.0.1:{server.server_port}", state=state, _server=server, _thread=thread,
                  _port_holder=holder)
