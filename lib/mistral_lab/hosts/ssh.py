"""Any machine reachable over SSH as a Host, on paramiko, with the host key pinned.

Built on paramiko directly rather than fabric's Connection: fabric adds AutoAddPolicy (accept any host key), sends
`env` either with SSH setenv (dropped by sshd unless AcceptEnv) or inline on the command line (visible in `ps`), and
its forward_local is not fit for a benchmark (see tunnel.py). What is left of fabric over paramiko is not needed.

- Host keys: see hostkeys.py. Unknown or changed keys are refused; trust-on-first-use only when asked, and the key
  it accepts is written into `record.host_key` (and into the known_hosts file named in the record, if any).
- Scripts go through the same bootstrap as on this machine (shell.py); `env` rides in the script on stdin as an
  `export` preamble: never on a command line, never logged, redacted from output. A timeout runs the script under
  coreutils `timeout`, which stops the script's whole process group on the host.
- Keepalives every `keepalive_s` (SSH) plus TCP keepalives, so a dead peer is noticed. When the connection drops,
  the next step reconnects. A step that was running when it dropped is run again only if the caller said it is safe
  to repeat (`retry_safe=True`; facts() and get() always are); otherwise ConnectionLost says what happened.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import getpass
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

import paramiko

from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts import facts as _facts
from mistral_lab.hosts import hostkeys, shell
from mistral_lab.hosts.base import HostFacts, HostRecord, LineSink, ProvisionRequest, Result
from mistral_lab.hosts.hostkeys import HostKeyError, HostKeyMismatch, HostKeyUnknown, Trust
from mistral_lab.hosts.tunnel import SSHTunnel
from mistral_lab.options import SSHOptions

__all__ = ["ConnectionLost", "HostKeyError", "HostKeyMismatch", "HostKeyUnknown", "SSHAuthError",
           "SSHConnectError", "SSHHost", "SSHTarget"]

T = TypeVar("T")

# errno values an SFTP server answers with: the file system said no, the connection is fine.
_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC}


class SSHConnectError(TargetError):
    """The host could not be reached, or did not speak SSH."""


class SSHAuthError(TargetError):
    """The host refused our key."""


class ConnectionLost(TargetError):
    """The connection dropped during a step that is not safe to repeat, so it was not run again."""


class _NotStarted(Exception):
    """The connection failed before the script began (the bootstrap runs nothing it has not fully received)."""


class _Lost(Exception):
    """The connection failed while the step was under way."""


class SSHHost:
    def __init__(self, record: HostRecord, *, trust_on_first_use: bool = False, connect_timeout: float = 15.0,
                 keepalive_s: float = 15.0, reconnect_attempts: int = 4, retries: int = 2,
                 on_line: LineSink | None = None):
        if not record.address:
            raise BadInput("no host address", field="host", fix="give the host name or IP address")
        self.record = record
        self.trust_on_first_use = trust_on_first_use
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self.reconnect_attempts = max(1, reconnect_attempts)
        self.retries = max(0, retries)
        self._on_line = on_line
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._sftp_client: paramiko.SFTPClient | None = None
        self._tunnels: list[SSHTunnel] = []
        self._ever_connected = False
        self.connects = 0
        self.server_key: paramiko.PKey | None = None

    def __repr__(self) -> str:
        return f"SSHHost({self.where})"

    @property
    def where(self) -> str:
        return f"{self.user}@{self.record.address}:{self.record.port}"

    @property
    def user(self) -> str:
        return self.record.user or getpass.getuser()

    @property
    def host_key(self) -> str | None:
        """The key the host proved it holds, 'ssh-ed25519 AAAA...', once connected."""
        return hostkeys.openssh_line(self.server_key) if self.server_key is not None else None

    @property
    def host_key_fingerprint(self) -> str | None:
        return hostkeys.describe(self.server_key) if self.server_key is not None else None

    def _say(self, line: str) -> None:
        if self._on_line is not None:
            self._on_line(line)

    # ------------------------------------------------------------------ connection

    def connect(self) -> SSHHost:
        """Connect now (otherwise the first step does), so key and auth problems surface here."""
        self._transport()
        return self

    def _alive(self) -> paramiko.Transport | None:
        t = self._client.get_transport() if self._client is not None else None
        return t if t is not None and t.is_active() else None

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            t = self._alive()
            if t is not None:
                return t
            self._drop()
            # The first connection fails fast; after a drop the host may be restarting sshd, so keep trying a while.
            attempts = self.reconnect_attempts if self._ever_connected else 1
            for i in range(attempts):
                try:
                    return self._connect_once()
                except SSHConnectError as e:
                    if i + 1 == attempts:
                        raise
                    self._say(f"{self.where}: {e.message}; trying again")
                    time.sleep(min(2**i, 8))
            raise AssertionError("unreachable")

    def _connect_once(self) -> paramiko.Transport:
        rec = self.record
        trust = Trust.of(rec.address, rec.port, host_key=rec.host_key, known_hosts=rec.known_hosts,
                         trust_on_first_use=self.trust_on_first_use)
        key_path = str(Path(rec.key_path).expanduser()) if rec.key_path else None
        if key_path is not None and not Path(key_path).is_file():
            raise BadInput(f"the SSH key {key_path} does not exist", field="key",
                           fix="give the path of the private key whose public half the host accepts")
        client = paramiko.SSHClient()
        # Only the entries for this host; paramiko then asks the server for that key type first.
        for kind, key in (trust.keys.lookup(trust.name) or {}).items():
            client.get_host_keys().add(trust.name, kind, key)
        client.set_missing_host_key_policy(trust.policy())
        try:
            client.connect(
                rec.address, rec.port, username=self.user, key_filename=key_path,
                # No key given: behave like ssh (agent, ~/.ssh/id_*). A key given: only that key.
                look_for_keys=key_path is None, allow_agent=key_path is None,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as e:
            client.close()
            raise trust.mismatch(e.key, e.expected_key) from None
        except HostKeyError:
            client.close()
            raise
        except paramiko.AuthenticationException as e:
            client.close()
            raise SSHAuthError(
                f"{self.where} refused our key ({e})", field="key",
                fix=f"check the user and key; the key's public half must be in ~{self.user}/.ssh/authorized_keys "
                    "on the host") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise SSHConnectError(f"could not connect to {self.where}: {type(e).__name__}: {e}",
                                  field="host", fix="check the address and port, and that sshd runs there") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(1, int(self.keepalive_s)))
        _tcp_keepalive(transport.sock)
        self.server_key = transport.get_remote_server_key()
        if trust.accepted is not None:
            rec.host_key = hostkeys.openssh_line(trust.accepted)
            where = f" and to {trust.record_to}" if trust.record_to is not None else ""
            self._say(f"trusted {trust.name} on first use: {hostkeys.describe(trust.accepted)} "
                      f"(recorded in the host record{where})")
        self._client = client
        self._ever_connected = True
        self.connects += 1
        return transport

    def _drop(self) -> None:
        if self._sftp_client is not None:
            with contextlib.suppress(Exception):
                self._sftp_client.close()
            self._sftp_client = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    @staticmethod
    def _died(transport: paramiko.Transport) -> bool:
        # paramiko closes the channels before it marks the transport inactive: give it a moment to catch up.
        transport.join(1.0)
        return not transport.is_active()

    # ------------------------------------------------------------------ commands

    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            check: bool = True, on_line: LineSink | None = None, log: Path | None = None,
            retry_safe: bool = False) -> Result:
        return self._exec(command, command, env, timeout, check, on_line, log, retry_safe)

    def run_script(self, script: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
                   check: bool = True, on_line: LineSink | None = None, log: Path | None = None,
                   retry_safe: bool = False) -> Result:
        return self._exec(script, shell.script_label(script), env, timeout, check, on_line, log, retry_safe)

    def _exec(self, script: str, label: str, env: Mapping[str, str] | None, timeout: float | None, check: bool,
              on_line: LineSink | None, log: Path | None, retry_safe: bool) -> Result:
        env = shell.check_env(env)
        text = shell.env_preamble(env) + script
        reruns = 0
        not_started = 0
        while True:
            out = shell.Output(label, on_line=on_line, log=log, env=env)
            try:
                returncode = self._exec_once(text, out, label, timeout)
                return shell.finish(out, returncode, check=check)
            except _NotStarted as e:
                not_started += 1
                if not_started > self.reconnect_attempts:
                    raise SSHConnectError(f"could not start `{label}` on {self.where}: {e}",
                                          fix="check the host is up and reachable") from None
                out.say(f"the connection to {self.where} failed before the step started ({e}); reconnecting")
            except _Lost as e:
                if not retry_safe or reruns >= self.retries:
                    why = ("it was not run again: the step is not marked safe to repeat" if not retry_safe
                           else f"it was run {reruns + 1} times")
                    raise ConnectionLost(
                        f"the connection to {self.where} dropped while `{label}` was running ({e}); {why}",
                        fix="check the host's state (the step may have run partly), then run the step again",
                    ) from None
                reruns += 1
                out.say(f"the connection to {self.where} dropped ({e}); reconnecting and running the step "
                        "again (it is safe to repeat)")
            finally:
                out.close()

    def _command(self, marker: str, timeout: float | None) -> str:
        inner = shlex.quote(shell.bootstrap(marker))
        if timeout is None:
            return f"exec bash -c {inner}"
        # timeout(1) puts the script in its own process group and signals the whole group when time is up.
        return f"exec timeout -k {shell.KILL_GRACE_S} {timeout:g} bash -c {inner}"

    def _exec_once(self, text: str, out: shell.Output, label: str, timeout: float | None) -> int:
        transport = self._transport()
        marker = shell.new_marker()
        try:
            chan = transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            if self._died(transport):
                raise _NotStarted(f"{type(e).__name__}: {e}") from None
            raise TargetError(f"{self.where} refused to open a session: {e}",
                              fix="check MaxSessions in the host's sshd_config") from None
        try:
            try:
                chan.exec_command(self._command(marker, timeout))
                chan.sendall(shell.framed(text, marker))
                chan.shutdown_write()
            except (paramiko.SSHException, OSError, EOFError) as e:
                if self._died(transport):
                    raise _NotStarted(f"{type(e).__name__}: {e}") from None
                raise TargetError(f"{self.where} refused to run a command: {e}") from None
            return self._read(chan, transport, out, label, timeout)
        finally:
            chan.close()

    def _read(self, chan: paramiko.Channel, transport: paramiko.Transport, out: shell.Output, label: str,
              timeout: float | None) -> int:
        start = time.monotonic()
        # The host stops the script at `timeout`; this later deadline only guards against a silent network.
        deadline = None if timeout is None else start + timeout + shell.KILL_GRACE_S + 15

        def drain() -> None:
            while chan.recv_ready():
                out.feed("out", chan.recv(65536))
            while chan.recv_stderr_ready():
                out.feed("err", chan.recv_stderr(65536))

        while not chan.closed:
            drain()
            if deadline is not None and time.monotonic() > deadline:
                out.flush()
                raise shell.CommandTimeout(label, timeout or 0, out.tail(), stopped=False)
            if not transport.is_active():
                break
            select.select([chan], [], [], 0.5)
        drain()
        # paramiko gives -1 when no exit status came (and calls a closed channel's status ready).
        returncode = chan.recv_exit_status() if chan.exit_status_ready() else -1
        if returncode == -1 and self._died(transport):
            out.flush()
            raise _Lost("the connection closed before the command's exit status arrived")
        # -1 on a live connection: killed by a signal (sshd sends exit-signal, which paramiko does not report).
        if timeout is not None and returncode in shell.TIMEOUT_EXITS and time.monotonic() - start >= timeout:
            out.flush()
            raise shell.CommandTimeout(label, timeout, out.tail())
        return returncode

    # ------------------------------------------------------------------ files

    def _sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            transport = self._transport()
            if self._sftp_client is None or self._sftp_client.get_channel().get_transport() is not transport:
                self._sftp_client = paramiko.SFTPClient.from_transport(transport)
            assert self._sftp_client is not None
            return self._sftp_client

    def _file_op(self, what: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run an SFTP operation; file transfers are safe to repeat, so a dropped connection means: again."""
        for attempt in range(self.retries + 1):
            sftp = self._sftp()
            transport = sftp.get_channel().get_transport()
            try:
                return op(sftp)
            except OSError as e:
                if e.errno in _FILE_ERRNOS:
                    raise TargetError(f"{what} on {self.where}: {e.strerror or e}",
                                      fix="check the path and its permissions") from None
                failure: Exception = e
            except (paramiko.SSHException, EOFError) as e:
                failure = e
            if not self._died(transport):
                raise TargetError(f"{what} on {self.where} failed: {type(failure).__name__}: {failure}") from None
            if attempt < self.retries:
                self._say(f"the connection to {self.where} dropped during {what}; reconnecting and trying again")
        raise ConnectionLost(f"{what} on {self.where}: the connection kept dropping",
                             fix="check the network and the host, then run the step again")

    @staticmethod
    def _remote(path: str) -> str:
        """SFTP starts in the home directory and knows no `~`."""
        if path in ("~", "~/"):
            return "."
        return path[2:] if path.startswith("~/") else path

    @staticmethod
    def _mkdirs(sftp: paramiko.SFTPClient, directory: str) -> None:
        parts = PurePosixPath(directory).parts
        current = PurePosixPath()
        for part in parts:
            current = current / part
            if str(current) in ("/", "."):
                continue
            try:
                sftp.stat(str(current))
            except FileNotFoundError:
                sftp.mkdir(str(current))

    def _write(self, src: Callable[[], IO[bytes]], remote: str, mode: int | None) -> None:
        path = self._remote(remote)

        def op(sftp: paramiko.SFTPClient) -> None:
            parent = str(PurePosixPath(path).parent)
            if parent not in ("", "."):
                self._mkdirs(sftp, parent)
            with src() as data, sftp.open(path, "wb") as f:
                # The mode is set while the file is still empty: a secret is never readable by others.
                if mode is not None:
                    sftp.chmod(path, mode)
                f.set_pipelined(True)
                while chunk := data.read(1 << 20):
                    f.write(chunk)

        self._file_op(f"writing {remote}", op)

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        local = Path(local)
        if not local.is_file():
            raise BadInput(f"{local} is not a file", field="local", fix="give the path of an existing file")
        self._write(functools.partial(local.open, "rb"), remote, mode)

    def put_text(self, text: str, remote: str, *, mode: int | None = None) -> None:
        import io

        data = text.encode()
        self._write(lambda: io.BytesIO(data), remote, mode)

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")

        def op(sftp: paramiko.SFTPClient) -> None:
            sftp.get(self._remote(remote), str(part))
            os.replace(part, local)

        try:
            self._file_op(f"reading {remote}", op)
        finally:
            part.unlink(missing_ok=True)

    # ------------------------------------------------------------------ tunnel, facts

    def forward(self, remote_port: int, local_port: int = 0) -> SSHTunnel:
        self._transport()  # key and auth problems surface here, not on the first request through the tunnel
        tunnel = SSHTunnel(self._open_forward, remote_port, local_port, on_error=self._on_line)
        with self._lock:
            self._tunnels = [t for t in self._tunnels if not t._closed.is_set()]
            self._tunnels.append(tunnel)
        return tunnel

    def _open_forward(self, dest: tuple[str, int], src: tuple[str, int]) -> paramiko.Channel:
        for _ in range(2):
            transport = self._transport()
            try:
                return transport.open_channel("direct-tcpip", dest, src, timeout=self.connect_timeout)
            except paramiko.ChannelException:
                raise  # the host answered: nothing listens there, or forwarding is refused
            except (paramiko.SSHException, OSError, EOFError):
                if not self._died(transport):
                    raise
        raise ConnectionLost(f"could not open a forward to {dest[0]}:{dest[1]} on {self.where}")

    def facts(self) -> HostFacts:
        return _facts.gather(self)

    def close(self) -> None:
        with self._lock:
            for tunnel in self._tunnels:
                tunnel.close()
            self._tunnels = []
            self._drop()

    def __enter__(self) -> SSHHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tcp_keepalive(sock: Any) -> None:
    """Have the kernel probe an idle connection, so a peer that vanished is noticed within about a minute."""
    if not isinstance(sock, socket.socket):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class SSHTarget:
    """The `ssh` target: a machine someone else runs. provision connects; destroy only lets go of it.

    Options (`mistral_lab.options.SSHOptions`, the target's overridden by ProvisionRequest.options): host,
    ssh_port (22), user (yours), key (a private key file; default: agent and ~/.ssh/id_*), and how to trust the
    host's key: host_key ('ssh-ed25519 AAAA...'), known_hosts (a file), or trust_on_first_use (true: accept an
    unknown key and record it). With none of the three, ~/.ssh/known_hosts is used.
    """

    name = "ssh"

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = dict(options or {})
        self._hosts: list[SSHHost] = []

    def record_from(self, options: SSHOptions | Mapping[str, Any]) -> HostRecord:
        options = SSHOptions.of(options)
        if not options.host:
            raise BadInput("no host given", field="host", fix="pass --host NAME (options: host=...)")
        if options.host_key and options.known_hosts:
            raise BadInput("both host_key and known_hosts given", field="host_key",
                           fix="pin the key with one of them, not both")
        if options.host_key:
            hostkeys.parse_public_key(options.host_key)  # a malformed key fails here, naming the field
        return HostRecord(
            target=self.name, address=options.host, port=options.ssh_port, user=options.user or getpass.getuser(),
            key_path=str(Path(options.key).expanduser()) if options.key else None,
            host_key=options.host_key.strip() if options.host_key else None,
            known_hosts=str(Path(options.known_hosts).expanduser()) if options.known_hosts else None,
        )

    def provision(self, request: ProvisionRequest, on_line: LineSink | None = None) -> SSHHost:
        opts = SSHOptions.of(self.options, request.options)
        record = self.record_from(opts)
        if opts.trust_on_first_use and record.host_key:
            raise BadInput("trust_on_first_use with a pinned host_key", field="trust_on_first_use",
                           fix="drop one: a pinned key is never replaced by the one the host shows")
        host = SSHHost(record, trust_on_first_use=opts.trust_on_first_use, on_line=on_line)
        host.connect()
        self._hosts.append(host)
        if on_line is not None:
            on_line(f"connected to {host.where}, host key {host.host_key_fingerprint}")
        return host

    def reconnect(self, record: HostRecord) -> SSHHost:
        host = SSHHost(record)
        self._hosts.append(host)
        return host

    def destroy(self, record: HostRecord, on_line: LineSink | None = None) -> None:
        """Close our connections to the host. The machine is not ours: it keeps running."""
        for host in [h for h in self._hosts if (h.record.address, h.record.port) == (record.address, record.port)]:
            host.close()
            self._hosts.remove(host)
        if on_line is not None:
            on_line(f"ssh target: closed connections to {record.address}:{record.port}; the machine keeps running")
