"""One Host interface for this machine, any SSH host and DigitalOcean droplets; one Target interface per place.

A Host runs commands and scripts, moves files, forwards a port and reports facts. A Target turns a Plan into a
Host (provision), finds it again from a saved record (reconnect) and removes what it created (destroy). Engines
only ever see a Host; they know nothing about where it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

# Called with each line of output as it arrives; progress displays and log files hang off this.
LineSink = Callable[[str], None]


@dataclass(frozen=True)
class Result:
    command: str
    returncode: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class GPU(BaseModel):
    name: str
    memory_mib: int
    vendor: str = Field(description="nvidia or amd")
    compute_capability: str | None = Field(default=None, description="e.g. 9.0 for Hopper; NVIDIA only")
    gfx: str | None = Field(default=None, description="e.g. gfx942 for MI300X; AMD only")


class HostFacts(BaseModel):
    hostname: str
    os: str
    arch: str
    cpus: int
    ram_mib: int
    disk_free_mib: int
    gpus: list[GPU] = Field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None
    rocm_version: str | None = None
    systemd: bool = False
    python: str | None = None
    internet: bool | None = Field(default=None, description="None when not probed")

    @property
    def gpu_vendor(self) -> str | None:
        return self.gpus[0].vendor if self.gpus else None


class HostRecord(BaseModel):
    """What a later process needs to reach the same host again; saved inside the Deployment record.

    Holds no secret: key files are referenced by path, the host key is public.
    """

    target: str
    address: str = "127.0.0.1"
    port: int = 22
    user: str | None = None
    key_path: str | None = None
    host_key: str | None = Field(default=None, description="pinned public host key, 'ssh-ed25519 AAAA...'")
    known_hosts: str | None = None
    key_dir: str | None = Field(default=None, description="the private folder holding keys the target made")
    service_user: str | None = Field(default=None, description="the unprivileged user servers run as, where the "
                                                               "target made one (else the login user)")
    resource_ids: dict[str, Any] = Field(default_factory=dict, description="cloud ids: droplet, firewall, ssh key")
    extra: dict[str, Any] = Field(default_factory=dict)


class Tunnel(Protocol):
    local_port: int

    def close(self) -> None: ...


@runtime_checkable
class Host(Protocol):
    record: HostRecord

    def run(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        on_line: LineSink | None = None,
        log: Path | None = None,
        retry_safe: bool = False,
    ) -> Result:
        """Run a shell command. `env` values are passed without ever being echoed or logged.

        `retry_safe=True` says running it twice does no harm: if the connection drops mid-way, the host
        reconnects and runs it again instead of raising.
        """
        ...

    def run_script(
        self,
        script: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        check: bool = True,
        on_line: LineSink | None = None,
        log: Path | None = None,
        retry_safe: bool = False,
    ) -> Result:
        """Run a whole bash script in one round trip (sent on stdin, not as an argument)."""
        ...

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None: ...

    def put_text(self, text: str, remote: str, *, mode: int | None = None) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...

    def forward(self, remote_port: int, local_port: int = 0) -> Tunnel:
        """Make 127.0.0.1:remote_port on the host reachable at 127.0.0.1:<tunnel.local_port> here."""
        ...

    def facts(self) -> HostFacts: ...

    def close(self) -> None: ...


@dataclass
class ProvisionRequest:
    """What a Target needs from the Plan; keeps targets ignorant of models."""

    deployment: str
    gpu_slug: str | None = None
    region: str | None = None
    hourly_usd: float | None = None
    key_dir: Path | None = None  # a private (0700) folder for the keys a target makes for this host
    options: dict[str, Any] = field(default_factory=dict)
    # Called with the host record each time the target has made something that bills or must be removed, the
    # moment the API accepts it: the caller saves it, so a failure or a Ctrl-C later leaves nothing unrecorded.
    record: Callable[[HostRecord], None] | None = None


class Target(Protocol):
    name: str

    def provision(self, request: ProvisionRequest, on_line: LineSink | None = None) -> Host: ...

    def reconnect(self, record: HostRecord) -> Host: ...

    def destroy(self, record: HostRecord, on_line: LineSink | None = None) -> None: ...
