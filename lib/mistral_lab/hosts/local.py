"""This machine as a Host: the same bootstrap, scripts and facts probe a droplet gets, run with subprocess.

Commands run in `workdir` (default: the home directory, where an SSH session starts), and relative paths given to
put/get resolve against it, so code written for a remote home directory behaves the same here.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts import facts as _facts
from mistral_lab.hosts import shell
from mistral_lab.hosts.base import HostFacts, HostRecord, LineSink, ProvisionRequest, Result
from mistral_lab.options import LocalOptions


@dataclass
class LocalTunnel:
    """Nothing to forward: a server on this machine is already at 127.0.0.1:<its port>."""

    local_port: int

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalTunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalHost:
    def __init__(self, workdir: str | Path | None = None, record: HostRecord | None = None):
        self.workdir = Path(workdir).expanduser() if workdir is not None else Path.home()
        extra = {"workdir": str(self.workdir)} if workdir is not None else {}
        self.record = record or HostRecord(target="local", address="127.0.0.1", extra=extra)

    def __repr__(self) -> str:
        return f"LocalHost(workdir={str(self.workdir)!r})"

    # ------------------------------------------------------------------ commands

    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            check: bool = True, on_line: LineSink | None = None, log: Path | None = None,
            retry_safe: bool = False) -> Result:
        """Run a shell command; `retry_safe` is accepted for the Host interface (nothing drops locally)."""
        return self._exec(command, command, env, timeout, check, on_line, log)

    def run_script(self, script: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
                   check: bool = True, on_line: LineSink | None = None, log: Path | None = None,
                   retry_safe: bool = False) -> Result:
        return self._exec(script, shell.script_label(script), env, timeout, check, on_line, log)

    def _exec(self, script: str, label: str, env: Mapping[str, str] | None, timeout: float | None, check: bool,
              on_line: LineSink | None, log: Path | None) -> Result:
        env = shell.check_env(env)
        marker = shell.new_marker()
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = shell.Output(label, on_line=on_line, log=log, env=env)
        try:
            proc = subprocess.Popen(
                ["bash", "-c", shell.bootstrap(marker)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self.workdir, env={**os.environ, **env},
                # Its own process group, so a timeout takes the command and all its children with it.
                start_new_session=True,
            )
        except OSError as e:
            out.close()
            raise TargetError(f"could not start bash on this machine: {e}", fix="install bash") from e
        try:
            # The bootstrap reads the whole script before running any of it: no output can block this write.
            assert proc.stdin is not None
            proc.stdin.write(shell.framed(script, marker))
            proc.stdin.close()
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self._pump(proc, out, deadline):
                self._kill_group(proc)
                out.flush()
                raise shell.CommandTimeout(label, timeout or 0, out.tail())
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                returncode = proc.wait(remaining)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                out.flush()
                raise shell.CommandTimeout(label, timeout or 0, out.tail()) from None
            # Killed by a signal: report it the way a shell does (128 + n).
            return shell.finish(out, returncode if returncode >= 0 else 128 - returncode, check=check)
        except BaseException:
            if proc.poll() is None:
                self._kill_group(proc)
            raise
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            out.close()

    @staticmethod
    def _pump(proc: subprocess.Popen[bytes], out: shell.Output, deadline: float | None) -> bool:
        """Stream both pipes until both are closed; False if the deadline came first.

        Like ssh, this waits for every process holding the pipes, so a server started in the background must
        redirect its output (see infra/service.sh).
        """
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "out")  # type: ignore[arg-type]
            sel.register(proc.stderr, selectors.EVENT_READ, "err")  # type: ignore[arg-type]
            while sel.get_map():
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                for key, _ in sel.select(wait):
                    data = os.read(key.fd, 65536)
                    if data:
                        out.feed(key.data, data)
                    else:
                        sel.unregister(key.fileobj)
        return True

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(shell.KILL_GRACE_S)
        # Children may outlive the group leader; the group id stays valid while any of them lives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(shell.KILL_GRACE_S)

    # ------------------------------------------------------------------ files

    def path(self, remote: str) -> Path:
        """Where a host path lands here: `~` is the home directory, a relative path is under workdir."""
        p = Path(remote).expanduser()
        return p if p.is_absolute() else self.workdir / p

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        local = Path(local)
        if not local.is_file():
            raise BadInput(f"{local} is not a file", field="local", fix="give the path of an existing file")
        with open(local, "rb") as src:
            self._write(src, remote, mode)

    def put_text(self, text: str, remote: str, *, mode: int | None = None) -> None:
        import io

        self._write(io.BytesIO(text.encode()), remote, mode)

    def _write(self, src: Any, remote: str, mode: int | None) -> None:
        dest = self.path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Set the mode before any byte is written, so a secret is never readable by others, even briefly.
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is not None else 0o666)
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            shutil.copyfileobj(src, f, 1 << 20)

    def get(self, remote: str, local: Path) -> None:
        src = self.path(remote)
        if not src.is_file():
            raise TargetError(f"{src} does not exist on this machine", fix="check the path")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)

    # ------------------------------------------------------------------ the rest

    def forward(self, remote_port: int, local_port: int = 0) -> LocalTunnel:
        if local_port not in (0, remote_port):
            raise BadInput(f"on the local target port {remote_port} is already reachable here; it cannot be "
                           f"moved to {local_port}", field="local_port",
                           fix="pass local_port=0 and use tunnel.local_port")
        return LocalTunnel(local_port=remote_port)

    def facts(self) -> HostFacts:
        return _facts.gather(self)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalTarget:
    """The `local` target: this machine. Nothing is created, so destroy has nothing to remove."""

    name = "local"

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = dict(options or {})

    def provision(self, request: ProvisionRequest, on_line: LineSink | None = None) -> LocalHost:
        host = LocalHost(LocalOptions.of(self.options, request.options).workdir)
        if on_line is not None:
            on_line(f"using this machine ({host.workdir})")
        return host

    def reconnect(self, record: HostRecord) -> LocalHost:
        if record.target != "local":
            raise BadInput(f"this record belongs to the {record.target!r} target, not 'local'", field="target",
                           fix=f"reconnect with the {record.target!r} target")
        return LocalHost(record.extra.get("workdir"), record=record)

    def destroy(self, record: HostRecord, on_line: LineSink | None = None) -> None:
        if on_line is not None:
            on_line("local target: nothing to destroy on this machine")
