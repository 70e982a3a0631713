"""Every host and engine option, declared once as typed models: what presets, papermill parameters and CLI flags
may set beside the plan's own fields, and what targets and engines read.

A leaf module (it imports no target, engine or planning code), so a target or an engine reads its own model here
and `planning.parameters` derives the accepted keys from the same models. Options never hold secrets: tokens and
keys come from the environment (`Secrets`), and `planning.parameters` refuses them by name in one place.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlparse

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from mistral_lab.errors import BadInput
from mistral_lab.hosts import do_resources as res

__all__ = ["ALL", "ENGINE_OPTIONS", "SECRET_NAMES", "TARGET_OPTIONS", "DigitalOceanOptions", "EngineOptions",
           "HostOptions", "LlamaCppOptions", "LocalOptions", "Options", "SSHOptions", "Secrets", "VllmOptions",
           "TOKEN_HOSTS_ENV", "cache_volume_flag", "check_token_host", "declared", "is_loopback", "refuse_secrets"]

SECRET_NAMES = {"token", "do_token", "digitalocean_token", "hf_token", "api_key", "password"}


def refuse_secrets(keys: Any) -> None:
    """Refuse any secret given as a parameter or an option: those end up in records, notebooks and shell history.
    The one check there is: parameters, presets, CLI options and every option model come through here."""
    given = sorted(str(k) for k in keys if str(k).lower() in SECRET_NAMES)
    if given:
        raise BadInput(f"secrets are not parameters: {', '.join(given)}", field=given[0],
                       fix="set DIGITALOCEAN_TOKEN / HF_TOKEN in the environment instead")


class Options(BaseModel):
    """Base of every option model: built from a loose mapping that may hold other models' keys (one preset drives
    a target and an engine), with errors that name the field."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @classmethod
    def of(cls, *layers: dict[str, Any] | BaseModel | None) -> Self:
        merged: dict[str, Any] = {}
        for layer in layers:
            if isinstance(layer, BaseModel):
                layer = layer.model_dump(exclude_unset=True)
            merged.update({k: v for k, v in (layer or {}).items() if v is not None})
        refuse_secrets(merged)
        try:
            return cls.model_validate(merged)
        except ValidationError as e:
            err = e.errors()[0]
            name = ".".join(str(p) for p in err["loc"])
            known = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
            raise BadInput(f"invalid option {name}: {err['msg']}", field=name,
                           fix=(known.description if known and known.description else
                                f"see `{cls.__name__}` in mistral_lab.options for the options and their types")) from None


# ---------------------------------------------------------------------------------------------- hosts


# A path that goes into a systemd unit, a shell line and nginx's config as it is: plain characters only.
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._+/-]*$")
# Hosts a token may be sent to beyond the defaults (DigitalOcean's API, Hugging Face): named in the environment by
# the person who runs it, never in a parameter file, which anyone may have written.
TOKEN_HOSTS_ENV = "MISTRAL_LAB_TOKEN_HOSTS"


def check_token_host(url: str, *, field: str, default_host: str, token: str) -> None:
    """Refuse to send `token` (the name of the secret) to `url` unless it is the default host, this machine, or a
    host the environment allows: a preset that sets api_url or hf_endpoint must not be able to harvest tokens."""
    host = (urlparse(url).hostname or "").lower()
    allowed = {h.strip().lower() for h in os.environ.get(TOKEN_HOSTS_ENV, "").split(",") if h.strip()}
    if host == default_host or host in allowed or is_loopback(host):
        return
    raise BadInput(f"{field} {url!r} would receive {token}, and {host} is not {default_host}", field=field,
                   fix=f"if you trust {host} with {token}, allow it in your environment: "
                       f"export {TOKEN_HOSTS_ENV}={host}")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostOptions(Options):
    """Where a deployment lives on any host, and how its server runs there."""

    host_root: str | None = Field(default=None, description="folder for deployments on the host (default ~/mistral-lab)")
    host_cache: str | None = Field(default=None, description="shared cache for builds and weights "
                                                              "(default ~/.cache/mistral-lab)")
    service: Literal["auto", "systemd", "process"] = Field(
        default="auto", description="auto: a systemd unit where systemd runs, else a supervised process")

    @field_validator("host_root", "host_cache")
    @classmethod
    def _plain_path(cls, v: str | None) -> str | None:
        if v is not None and (not _PLAIN_PATH.match(v) or "/../" in f"{v}/"):
            raise ValueError("must be a plain absolute path (letters, digits, . _ + - /), e.g. /srv/mistral-lab")
        return v


class LocalOptions(HostOptions):
    workdir: str | None = Field(default=None, description="the folder commands run in (default: a fresh temp folder)")


class SSHOptions(HostOptions):
    host: str | None = Field(default=None, description="ssh: host name or address")
    ssh_port: int = Field(default=22, ge=1, le=65535, description="ssh/digitalocean: SSH port")
    user: str | None = Field(default=None, description="ssh/digitalocean: login user")
    key: str | None = Field(default=None, validation_alias=AliasChoices("key", "key_path"),
                            description="ssh/digitalocean: private key file")
    known_hosts: str | None = Field(default=None, description="ssh: known_hosts file with the host's key")
    host_key: str | None = Field(default=None, description="ssh: the host's public key, 'ssh-ed25519 AAAA...'")
    trust_on_first_use: bool = Field(default=False, description="ssh: accept and record an unknown host key")


def cache_volume_flag(v: Any) -> Any:
    """A cache volume asked for in words (`--cache-volume yes`, `--option cache_volume=off`): the words of a flag
    are a flag, anything else a label."""
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0", ""):
        return v.strip().lower() in ("true", "yes", "on", "1")
    return v


class DigitalOceanOptions(HostOptions):
    """The DigitalOcean target's options (see hosts/digitalocean.py for what each does)."""

    api_url: str | None = Field(default=None, description="digitalocean: API base URL "
                                                           "(default DIGITALOCEAN_API_URL or DigitalOcean's)")
    region: str | None = Field(default=None, description="digitalocean: region slug")
    allow_from: list[str] | None = Field(default=None, description="digitalocean: CIDRs allowed to SSH in "
                                                                   "(default: this machine's public address)")
    https_from: list[str] | None = Field(default=None, description="digitalocean: CIDRs allowed to reach https_port")
    https_port: int = Field(default=443, ge=1, le=65535)
    acme_http_port: int | None = Field(default=None, ge=1, le=65535,
                                       description="digitalocean: a port opened to the whole internet for an ACME "
                                                   "CA's HTTP-01 check (a workshop --domain; the proxy serves only "
                                                   "the CA's token there)")
    expires_at: int | None = Field(default=None, gt=0, description="unix seconds: the droplet's expiry tag")
    ssh_user: str = Field(default="mistral", validation_alias=AliasChoices("ssh_user", "user"))
    service_user: str = Field(default="mlserve", description="digitalocean: the unprivileged user the model server "
                                                             "runs as (no sudo, no login)")
    host_root: str | None = Field(default="/srv/mistral-lab", description="folder for deployments on the droplet")
    host_cache: str | None = Field(default="/srv/mistral-lab/cache", description="builds and weights on the droplet")
    key: str | None = Field(default=None, validation_alias=AliasChoices("key", "key_path"))
    ssh_port: int = Field(default=22, ge=1, le=65535)
    image: str | None = Field(default=None, description="digitalocean: override the base image slug")
    owner: str | None = Field(default=None, description="digitalocean: whose resources these are (default: this "
                                                        "installation's id; the same value on two machines shares "
                                                        "their deployments)")
    cache_volume: bool | str | None = Field(
        default=None, description="digitalocean: keep builds and weights on a Volume in the droplet's region "
                                  "(true, or a label naming which cache); teardown keeps it (billed monthly), the next "
                                  "deploy in that region attaches it and skips the download")
    cache_volume_gib: int | None = Field(default=None, ge=1, le=16384,
                                         description="digitalocean: the cache volume's size when it is created "
                                                     "(default: the GPU's memory with headroom; a caller with the "
                                                     "plan passes do_volumes.volume_gib of its weights)")
    volume_device_dir: str = Field(default="/dev/disk/by-id",
                                   description="digitalocean: where an attached volume's link appears "
                                               "(DigitalOcean's by-id links; for tests and DO-compatible clouds)")
    volume_timeout: float = Field(default=300.0, gt=0, description="digitalocean: seconds an attach or detach "
                                                                   "may take")
    poll_interval: float = Field(default=5.0, gt=0)
    active_timeout: float = Field(default=600.0, gt=0)
    destroy_timeout: float = Field(default=300.0, gt=0)
    ssh_timeout: float = Field(default=600.0, gt=0)
    cloud_init_timeout: float = Field(default=1200.0, gt=0)

    @field_validator("allow_from", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return res.parse_allow_from(v) if v is not None else None

    @field_validator("cache_volume", mode="before")
    @classmethod
    def _cache_flag(cls, v: Any) -> Any:
        return cache_volume_flag(v)

    @field_validator("volume_device_dir")
    @classmethod
    def _device_dir(cls, v: str) -> str:
        if not _PLAIN_PATH.match(v) or "/../" in f"{v}/":
            raise ValueError("must be a plain absolute path, e.g. /dev/disk/by-id")
        return v.rstrip("/") or "/"

    @field_validator("https_from", mode="before")
    @classmethod
    def _split_https(cls, v: Any) -> Any:
        return res.parse_cidrs(v, field="https_from", service="HTTPS") if v is not None else None


# ---------------------------------------------------------------------------------------------- engines


class EngineOptions(Options):
    extra_args: list[str] = Field(default_factory=list, description="flags added to the serve command")
    hf_endpoint: str | None = Field(default=None, description="Hugging Face endpoint (a mirror)")
    download_timeout: float = Field(default=7200, gt=0, description="seconds a weights download may take")

    @field_validator("extra_args", mode="before")
    @classmethod
    def _split_args(cls, v: Any) -> Any:
        import shlex

        return shlex.split(v) if isinstance(v, str) else [str(a) for a in (v or [])]


class LlamaCppOptions(EngineOptions):
    llamacpp_source: Literal["pypi", "git", "tarball"] = "pypi"
    llamacpp_version: str | None = None
    llamacpp_tarball: str | None = Field(default=None, description="a source archive on this machine (tarball)")
    llamacpp_backend: str | None = Field(default=None, description="cpu | cuda | rocm (default: from the host's GPUs)")
    llamacpp_arch: str | None = None
    model_source: Literal["download", "hf"] = Field(
        default="download", description="download: fetched first with progress; hf: llama-server's own -hf")
    pypi_url: str | None = None
    build_timeout: float = Field(default=7200, gt=0)

    @field_validator("llamacpp_version", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if v is not None else None


class VllmOptions(EngineOptions):
    vllm_install: Literal["pip", "docker"] | None = Field(default=None, description="default: docker where the "
                                                                                   "card names an image, else pip")
    vllm_spec: str | None = None
    vllm_image: str | None = None
    vllm_python: str | None = None
    vllm_extra_packages: list[str] = Field(default_factory=list)
    max_model_len: Literal["plan", "auto"] = Field(
        default="plan", description="plan: the planned context (set it with --context); auto: vLLM fits it")
    find_links: str | None = None
    index_url: str | None = None
    extra_index_url: str | None = None
    torch_backend: str | None = None
    cpu_kv_cache_gib: int | None = Field(default=None, gt=0)
    hf_revision: str = "main"
    install_timeout: float | None = Field(default=None, gt=0)
    uv_version: str | None = None


TARGET_OPTIONS: dict[str, type[HostOptions]] = {"local": LocalOptions, "ssh": SSHOptions,
                                                "digitalocean": DigitalOceanOptions}
ENGINE_OPTIONS: dict[str, type[EngineOptions]] = {"llamacpp": LlamaCppOptions, "vllm": VllmOptions}
ALL: tuple[type[Options], ...] = (*TARGET_OPTIONS.values(), *ENGINE_OPTIONS.values())


def declared() -> set[str]:
    """Every option key a preset, papermill parameter or CLI flag may set (aliases included)."""
    keys: set[str] = set()
    for model in ALL:
        for name, f in model.model_fields.items():
            keys.add(name)
            if isinstance(f.validation_alias, AliasChoices):
                keys.update(str(c) for c in f.validation_alias.choices)
    return keys


# ---------------------------------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """Secrets deploy hands on, read from the environment only: never an option, a parameter or a record field."""

    hf_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> Secrets:
        return cls(hf_token=os.environ.get("HF_TOKEN") or None)
