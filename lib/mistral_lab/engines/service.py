"""Run a server as a service on a Host: a systemd unit where systemd runs, else a supervised process.

Both modes run the same rendered `serve.sh` from the deployment's folder on the host, which reads its secrets
from a 0600 `env` file. For a model server, `start` waits for /health and /v1/models and, when the server dies or
never answers, raises with the log tail and the likely cause; other services (a workshop's proxy) start with
`wait=False` and check readiness their own way.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

from mistral_lab import infra_files
from mistral_lab.engines.diagnose import diagnose
from mistral_lab.errors import EngineError
from mistral_lab.hosts.base import Host, LineSink

Mode = Literal["systemd", "process"]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    model: str
    engine: str
    root: str  # absolute folder on the host
    argv: list[str]
    port: int
    key_var: str
    mode: Mode
    user: str | None = None  # who the server runs as
    owner: str | None = None  # who writes its files (the login user); a different `user` reads them as a group
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    hints: dict[str, str] = field(default_factory=dict)
    instance: str | None = None  # the host-side name when it differs from the deployment's (Deployment.instance)

    @property
    def unit(self) -> str:
        return f"mistral-lab-{self.instance or self.name}"

    @property
    def log_file(self) -> str:
        return f"{self.root}/serve.log"

    @property
    def separate_user(self) -> str:
        """The server's own user when it is not the login user ('' otherwise)."""
        return self.user if self.user and self.owner and self.user != self.owner else ""


def render_unit(spec: ServiceSpec) -> str:
    return infra_files.render("serve.service.j2", name=spec.name, model=spec.model, engine=spec.engine,
                              root=spec.root, user=spec.user)


def render_serve_script(spec: ServiceSpec) -> str:
    return infra_files.render("serve.sh.j2", name=spec.name, model=spec.model, engine=spec.engine,
                              root=spec.root, argv=spec.argv)


def render_env_file(spec: ServiceSpec) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in spec.secret_env.items())


def _env(spec: ServiceSpec, action: str, lines: int = 200) -> dict[str, str]:
    return {"ACTION": action, "ROOT": spec.root, "UNIT": spec.unit, "MODE": spec.mode, "LINES": str(lines),
            "SERVICE_USER": spec.separate_user}


def _action(host: Host, spec: ServiceSpec, action: str, *, lines: int = 200) -> str:
    return host.run_script(infra_files.with_env(infra_files.read("service.sh"), _env(spec, action, lines)),
                           check=False).stdout


def install(host: Host, spec: ServiceSpec) -> None:
    """Write serve.sh, the env file (its secrets) and (systemd) the unit into the deployment folder on the host.

    The folder and the env file are the login user's alone (0700, 0600); when the server runs as its own user,
    that user's group may read them (0750, 0640) and nothing else of the login user's."""
    root = shlex.quote(spec.root)
    host.run(f"mkdir -p {root} && chmod 700 {root}")
    host.put_text(render_env_file(spec), f"{spec.root}/env", mode=0o600)
    host.put_text(render_serve_script(spec), f"{spec.root}/serve.sh", mode=0o750)
    if spec.mode == "systemd":
        host.put_text(render_unit(spec), f"{spec.root}/{spec.unit}.service", mode=0o644)
    if spec.separate_user and spec.separate_user != "root":  # root reads the login user's files as they are
        group = shlex.quote(spec.separate_user)
        host.run(f"chgrp {group} {root} {root}/env {root}/serve.sh && chmod 750 {root} && chmod 640 {root}/env "
                 f"&& touch {root}/serve.log && chgrp {group} {root}/serve.log && chmod 660 {root}/serve.log")


def start(host: Host, spec: ServiceSpec, *, wait: bool = True, timeout: float = 900,
          on_line: LineSink | None = None) -> float:
    """Start the service; with `wait`, wait until the model server serves. Returns the seconds it took to be ready."""
    r = host.run_script(infra_files.with_env(infra_files.read("service.sh"), _env(spec, "start")), check=False,
                        on_line=on_line)
    if not r.ok:
        raise EngineError(f"could not start {spec.name}: {(r.stderr or r.stdout).strip()}", field="engine",
                          fix=diagnose(r.stdout + r.stderr, spec.hints) or f"read the log: {spec.log_file}")
    if not wait:
        return 0.0
    env = {"ROOT": spec.root, "PORT": str(spec.port), "TIMEOUT": str(int(timeout)), "MODE": spec.mode,
           "UNIT": spec.unit, "KEY_VAR": spec.key_var}
    r = host.run_script(infra_files.with_env(infra_files.read("wait-ready.sh"), env), check=False,
                        timeout=timeout + 60, on_line=on_line)
    if r.returncode != 0:
        _action(host, spec, "stop")
        what = "the server exited during start" if r.returncode == 3 else f"the server was not ready after {timeout:.0f}s"
        cause = diagnose(r.stdout, spec.hints)
        tail = "\n".join(r.stdout.strip().splitlines()[-25:])
        raise EngineError(f"{what}; last log lines:\n{tail}", field="engine",
                          fix=cause or f"read the whole log: mistral-lab logs {spec.name}")
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    try:
        return float(last.split("after ")[1].rstrip("s"))
    except (IndexError, ValueError):
        return 0.0


def stop(host: Host, spec: ServiceSpec) -> None:
    _action(host, spec, "stop")


def status(host: Host, spec: ServiceSpec) -> str:
    return _action(host, spec, "status").strip()


def logs(host: Host, spec: ServiceSpec, lines: int = 200) -> str:
    return _action(host, spec, "logs", lines=lines)
