"""`mistral-lab hosts ...`: look at the machines models run on. Other modules add commands to `hosts_app`.

`hosts check` exits 3 when the host's key is unknown or has changed (HostKeyError), 2 on bad input, 1 on other
failures (unreachable, refused login).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import HostFacts, ProvisionRequest

from . import _options as flags
from ._app import app, console, console_err

hosts_app = typer.Typer(no_args_is_help=True, help="Check the machines models run on.")
app.add_typer(hosts_app, name="hosts")


def _facts_table(facts: HostFacts, about: dict[str, Any]) -> Table:
    t = Table(show_header=False, box=None)
    for k, v in about.items():
        if v is not None:
            t.add_row(k, str(v))
    t.add_row("hostname", facts.hostname)
    t.add_row("os", f"{facts.os} ({facts.arch})")
    t.add_row("cpus", str(facts.cpus))
    t.add_row("ram", f"{facts.ram_mib / 1024:.1f} GiB")
    t.add_row("disk free", f"{facts.disk_free_mib / 1024:.1f} GiB")
    for i, g in enumerate(facts.gpus):
        arch = g.compute_capability and f"compute {g.compute_capability}" or g.gfx or ""
        t.add_row(f"gpu {i}", f"{g.name}, {g.memory_mib / 1024:.0f} GiB" + (f", {arch}" if arch else ""))
    if not facts.gpus:
        t.add_row("gpus", "none")
    for label, value in (("driver", facts.driver_version), ("cuda", facts.cuda_version),
                         ("rocm", facts.rocm_version), ("python", facts.python)):
        if value:
            t.add_row(label, value)
    t.add_row("systemd", "yes" if facts.systemd else "no")
    return t


@hosts_app.command("check")
def check_cmd(
    target: Annotated[str, typer.Option(help="ssh | local")] = "ssh",
    host: flags.Host = None,
    ssh_port: flags.SSHPort = None,
    port: Annotated[int | None, typer.Option(hidden=True, help="the same as --ssh-port")] = None,
    user: flags.User = None,
    key: flags.Key = None,
    known_hosts: flags.KnownHosts = None,
    host_key: flags.HostKey = None,
    trust_on_first_use: flags.TrustOnFirstUse = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the facts as JSON")] = False,
) -> None:
    """Connect to a host and print its facts: OS, CPUs, RAM, disk, GPUs, driver and CUDA versions, systemd.

    Over SSH the host key must be pinned (--host-key), listed (--known-hosts, else ~/.ssh/known_hosts) or
    explicitly trusted on first use; an unknown or changed key exits with status 3.
    """
    about: dict[str, Any]
    if target == "local":
        from mistral_lab.hosts.local import LocalHost

        facts = LocalHost().facts()
        about = {"target": "local"}
    elif target == "ssh":
        from mistral_lab.hosts.ssh import SSHTarget

        options = flags.host_options(host=host, ssh_port=ssh_port or port, user=user, key=key,
                                     known_hosts=known_hosts, host_key=host_key,
                                     trust_on_first_use=trust_on_first_use)
        ssh = SSHTarget()
        conn = ssh.provision(ProvisionRequest(deployment="hosts-check", options=options),
                             on_line=lambda line: console_err.print(line, highlight=False, markup=False))
        try:
            facts = conn.facts()
        finally:
            conn.close()
        about = {"target": "ssh", "address": f"{conn.user}@{conn.record.address}:{conn.record.port}",
                 "host key": conn.host_key_fingerprint}
        if conn.trust_on_first_use and conn.record.host_key:
            about["pin with"] = f"--host-key '{conn.record.host_key}'"
    else:
        raise BadInput(f"hosts check works on ssh and local hosts, not {target!r}", field="target",
                       fix="use --target ssh or --target local")
    if as_json:
        data = {k.replace(" ", "_"): v for k, v in about.items()}
        if target == "ssh":
            data["host_key"] = conn.host_key
            data["host_key_fingerprint"] = conn.host_key_fingerprint
        print(json.dumps({**data, "facts": facts.model_dump()}, indent=2))
        return
    console.print(_facts_table(facts, about))
