"""Host options as CLI flags, declared once: `deploy`, `workshop up` and `hosts check` take the same flags, their
help read from the option models (`mistral_lab.options`), and `host_options()` turns them back into options."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mistral_lab.options import DigitalOceanOptions, SSHOptions, cache_volume_flag


def _help(model: type, name: str) -> str:
    return model.model_fields[name].description or name


Host = Annotated[str | None, typer.Option(help=_help(SSHOptions, "host"))]
SSHPort = Annotated[int | None, typer.Option(help=_help(SSHOptions, "ssh_port"))]
User = Annotated[str | None, typer.Option(help=_help(SSHOptions, "user"))]
Key = Annotated[str | None, typer.Option(help=_help(SSHOptions, "key"))]
KnownHosts = Annotated[str | None, typer.Option(help=_help(SSHOptions, "known_hosts"))]
HostKey = Annotated[str | None, typer.Option(help=_help(SSHOptions, "host_key"))]
TrustOnFirstUse = Annotated[bool, typer.Option(help=_help(SSHOptions, "trust_on_first_use"))]
ApiUrl = Annotated[str | None, typer.Option(help=_help(DigitalOceanOptions, "api_url"))]
AllowFrom = Annotated[str | None, typer.Option(help=_help(DigitalOceanOptions, "allow_from"))]
CacheVolume = Annotated[str | None, typer.Option(
    help="digitalocean: keep builds and weights on a Volume in the region for the next deploy there: a label, or "
         "'yes' for the default one (kept at teardown, billed monthly; --drop-cache deletes it)")]
Option = Annotated[list[str] | None, typer.Option("--option", help="more options, KEY=VALUE (repeatable), e.g. "
                                                                   "host_cache=/srv/cache")]


def cache_option(value: str | None) -> bool | str | None:
    """--cache-volume's value as the option takes it: yes for the default label, no for none, else the label."""
    return None if value is None else cache_volume_flag(value)


def host_options(*, host: str | None = None, ssh_port: int | None = None, user: str | None = None,
                 key: str | None = None, known_hosts: str | None = None, host_key: str | None = None,
                 trust_on_first_use: bool = False, api_url: str | None = None,
                 allow_from: str | None = None, cache_volume: str | None = None) -> dict[str, Any]:
    """The host flags a command was given, as options (the ones left unset are left out)."""
    given = {"host": host, "ssh_port": ssh_port, "user": user, "key": key, "known_hosts": known_hosts,
             "host_key": host_key, "trust_on_first_use": trust_on_first_use or None, "api_url": api_url,
             "allow_from": allow_from, "cache_volume": cache_option(cache_volume)}
    return {k: v for k, v in given.items() if v is not None}
