"""Where models run: this machine, an SSH host, a DigitalOcean GPU droplet. One Target per place.

Targets are found by name in a small registry, papermill-style, so the flow never branches on the target:

    target = get_target("ssh", options)
    host = target.provision(request)
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import Target

# name -> "module:Class"; imported on first use so a missing optional SDK never breaks `import mistral_lab`.
_TARGETS: dict[str, str] = {
    "local": "mistral_lab.hosts.local:LocalTarget",
    "ssh": "mistral_lab.hosts.ssh:SSHTarget",
    "digitalocean": "mistral_lab.hosts.digitalocean:DigitalOceanTarget",
}


def register(name: str, ref: str) -> None:
    _TARGETS[name] = ref


def _load(ref: str) -> Callable[..., Target]:
    module, _, cls = ref.partition(":")
    return getattr(import_module(module), cls)


def get_target(name: str, options: dict[str, Any] | None = None) -> Target:
    if name not in _TARGETS:
        raise BadInput(f"unknown target {name!r}", field="target", fix=f"one of: {', '.join(_TARGETS)}")
    return _load(_TARGETS[name])(options or {})
