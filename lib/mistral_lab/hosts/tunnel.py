"""A long-lived local port forward over SSH (`ssh -L 127.0.0.1:<local>:127.0.0.1:<remote>`), on paramiko.

Written here rather than taken from a library: sshtunnel 0.4.0 references paramiko.DSSKey, which paramiko 4 removed
(pahaz/sshtunnel#299, #302, unreleased fix), and fabric's `Connection.forward_local` is a context manager with a
listen backlog of 1, 1 KiB reads, a fixed local port (no port 0), a 10 ms accept poll, a list of finished tunnels
that only grows, and one failed channel ends the whole forward. A benchmark streams many concurrent requests
through this for minutes, so: backlog 128, 64 KiB reads, port 0 allowed, finished connections forgotten, a refused
channel only closes that one client connection, and each new connection asks the host for a live transport (so it
reconnects after a drop).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable

import paramiko

from mistral_lab.hosts.base import LineSink

OpenChannel = Callable[[tuple[str, int], tuple[str, int]], paramiko.Channel]
CHUNK = 65536


class SSHTunnel:
    """127.0.0.1:<local_port> here -> <remote_host>:<remote_port> as seen from the SSH host. Close with close()."""

    def __init__(self, open_channel: OpenChannel, remote_port: int, local_port: int = 0, *,
                 remote_host: str = "127.0.0.1", on_error: LineSink | None = None):
        self.remote = (remote_host, remote_port)
        self._open_channel = open_channel
        self._on_error = on_error
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[tuple[socket.socket, paramiko.Channel]] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(("127.0.0.1", local_port))
        except OSError:
            self._listener.close()
            raise
        self._listener.listen(128)
        self.local_port: int = self._listener.getsockname()[1]
        # Wakes the accept loop on close(); closing a listening socket does not wake a blocked select everywhere.
        self._wake_r, self._wake_w = socket.socketpair()
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"ssh-tunnel-{self.local_port}",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"SSHTunnel(127.0.0.1:{self.local_port} -> {self.remote[0]}:{self.remote[1]})"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _say(self, line: str) -> None:
        if self._on_error is not None:
            self._on_error(line)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._closed.is_set():
                        return
                    try:
                        client, addr = self._listener.accept()
                    except OSError:
                        continue
                    self.accepted += 1
                    # Opening the channel can wait on a reconnect: do it off the accept loop.
                    threading.Thread(target=self._serve, args=(client, addr), daemon=True,
                                     name=f"ssh-tunnel-{self.local_port}-conn").start()

    def _serve(self, client: socket.socket, addr: tuple[str, int]) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as OpenSSH does for forwards
        try:
            channel = self._open_channel(self.remote, addr)
        except Exception as e:  # noqa: BLE001 (any failure ends only this one client connection)
            self.refused += 1
            self._say(f"tunnel 127.0.0.1:{self.local_port}: the host could not open "
                      f"{self.remote[0]}:{self.remote[1]} ({type(e).__name__}: {e})")
            with contextlib.suppress(OSError):
                client.close()
            return
        pair = (client, channel)
        with self._lock:
            if self._closed.is_set():
                client.close()
                channel.close()
                return
            self._conns.add(pair)
        try:
            self._pump(client, channel)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client or the connection went away: this one forward is over, the tunnel stays
        finally:
            with self._lock:
                self._conns.discard(pair)
            channel.close()
            with contextlib.suppress(OSError):
                client.close()

    def _pump(self, client: socket.socket, channel: paramiko.Channel) -> None:
        """Copy both ways until both sides are done, passing a half-close (EOF) from one side to the other."""
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, "client")
            sel.register(channel, selectors.EVENT_READ, "channel")
            while sel.get_map() and not self._closed.is_set():
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "client":
                        try:
                            data = client.recv(CHUNK)
                        except OSError:
                            return
                        if data:
                            channel.sendall(data)
                        else:
                            channel.shutdown_write()
                            sel.unregister(key.fd)
                    else:
                        data = channel.recv(CHUNK)
                        if data:
                            try:
                                client.sendall(data)
                            except OSError:
                                return
                        else:
                            with contextlib.suppress(OSError):
                                client.shutdown(socket.SHUT_WR)
                            # By the registered fd: a closed paramiko channel's fileno() is a new pipe, which the
                            # selector would not know (KeyError in the tunnel's thread).
                            sel.unregister(key.fd)
                            if channel.closed:
                                return
                if channel.closed and not channel.recv_ready():
                    return

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()
        with self._lock:
            conns = list(self._conns)
        for client, channel in conns:
            channel.close()
            with contextlib.suppress(OSError):
                client.close()

    def __enter__(self) -> SSHTunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
