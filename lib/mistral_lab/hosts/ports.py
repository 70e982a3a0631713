"""Ports on a host, asked in one round trip (`infra/free-port.sh`)."""

from __future__ import annotations

from mistral_lab import infra_files
from mistral_lab.hosts.base import Host

__all__ = ["free_port"]


def free_port(host: Host, start: int) -> int:
    """The first port at or above `start` that nothing listens on on the host."""
    out = host.run_script(infra_files.with_env(infra_files.read("free-port.sh"), {"START": str(start)}),
                          retry_safe=True).stdout
    return int(out.strip().splitlines()[-1])
