"""The DigitalOcean target: a GPU droplet we create, reach over SSH with a pinned host key, and destroy.

Shape follows SkyPilot's `sky/provision/do/instance.py`: everything is re-derived from the deployment's tag, so
provisioning is re-entrant: run it again after a crash and it finds what the last run made instead of making it
twice. The order of creation is SSH key, firewall (bound to the deployment tag, so the droplet is covered from
birth), droplet.

Options (`mistral_lab.options.DigitalOceanOptions`; ProvisionRequest.options over the target's own):
  api_url             DigitalOcean-compatible API base URL (also env DIGITALOCEAN_API_URL)
  region              a region slug; default: the first region that offers the size, falling back on capacity errors
  allow_from          CIDR(s) allowed to reach SSH (also env MISTRAL_LAB_ALLOW_FROM); default: this machine's public
                      address as https://api.ipify.org sees it, as a /32 (/128 for IPv6)
  https_from          CIDR(s) allowed to reach `https_port` (a workshop's proxy); default: the port stays closed
  https_port          the port `https_from` opens (default 443)
  acme_http_port      a port opened to everyone for an ACME CA's HTTP-01 check (a workshop --domain); default: none
  expires_at          unix seconds; the droplet is tagged `mistral-lab-expires:<it>` for `sweep --expired`
  ssh_user (or user)  the non-root sudo user cloud-init creates (default "mistral")
  key                 your own SSH private key (unencrypted) to log in with; default: a key made for the deployment
  ssh_port            the port SSH is reached on (default 22). DigitalOcean has no port field: this is for
                      DO-compatible clouds that put SSH elsewhere and for tests, whose fake droplets listen on one port
  image               override the base image slug
  cache_volume        keep builds and weights on a Volume in the region (true, or a label): see hosts/do_volumes.py;
                      cache_volume_gib its size when made; volume_device_dir where its link appears (tests)
  poll_interval, active_timeout, ssh_timeout, cloud_init_timeout, volume_timeout   seconds

Secrets: the token only ever lives in the environment and in the API client; the droplet's host key and our client
key live in the private folder the request names (`ProvisionRequest.key_dir`, the deployment's own, files 0600),
which the host record keeps for teardown. user_data carries the host key pair and public keys only.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mistral_lab import infra_files
from mistral_lab.errors import BadInput, MistralLabError, TargetError
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts import do_volumes as vols
from mistral_lab.hosts.base import Host, HostRecord, LineSink, ProvisionRequest
from mistral_lab.hosts.cloudinit import (
    KeyPair,
    check_user,
    generate_ed25519,
    md5_fingerprint,
    public_from_private,
    render_user_data,
)
from mistral_lab.hosts.do_api import DOApi, DOApiError, TokenRefused, read_token
from mistral_lab.options import DigitalOceanOptions

ALLOW_FROM_ENV = "MISTRAL_LAB_ALLOW_FROM"
ECHO_URL = "https://api.ipify.org"
HOST_KEY_FILE = "do-host-ed25519"
CLIENT_KEY_FILE = "do-client-ed25519"


def _quiet(line: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------- preflight


@dataclass
class Preflight:
    size: str
    region: str
    regions: list[str]
    hourly_usd: float
    monthly_usd: float
    image: str
    gpu_model: str | None
    gpu_count: int
    vram_gib: int | None
    vcpus: int
    memory_gib: float
    api_url: str
    droplet_limit: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        gpu = f"{self.gpu_count}x {self.gpu_model} ({self.vram_gib} GiB)" if self.gpu_model else "no GPU"
        return (f"{self.size} in {self.region}: {gpu}, {self.vcpus} vCPUs, {self.memory_gib:g} GiB RAM, "
                f"${self.hourly_usd:.2f}/hour (offered in {', '.join(self.regions)})")


def preflight(api: DOApi, size_slug: str, region: str | None = None, *, image: str | None = None,
              check_account: bool = True) -> Preflight:
    """Check the token works and the size can be had; choose the region; read the live price. Creates nothing.
    `check_account` also reads the account (a locked one, the droplet limit); a deploy skips it, one call less:
    the size listing proves the token, and a create over the limit says so itself."""
    account = api.account() if check_account else {}
    if account.get("status") == "locked":
        raise TargetError("the DigitalOcean account is locked", fix=str(account.get("status_message") or "contact DO"))
    size = res.find_size(api.sizes(), size_slug)
    if not size.get("available", True) or not size.get("regions"):
        raise TargetError(f"{size_slug} is not offered to this account in any region",
                          fix="NVIDIA GPU sizes may need a request to DigitalOcean support; try another --gpu")
    regions = res.region_order(size, region)
    gpu = size.get("gpu_info") or {}
    return Preflight(
        size=size_slug, region=regions[0], regions=list(size["regions"]), hourly_usd=float(size["price_hourly"]),
        monthly_usd=float(size.get("price_monthly") or 0.0), image=image or res.image_for(size),
        gpu_model=gpu.get("model"), gpu_count=int(gpu.get("count") or 0),
        vram_gib=(gpu.get("vram") or {}).get("amount"), vcpus=int(size.get("vcpus") or 0),
        memory_gib=round(int(size.get("memory") or 0) / 1024, 1), api_url=api.url,
        droplet_limit=account.get("droplet_limit"),
    )


# ---------------------------------------------------------------------------------------------- local keys


@dataclass(frozen=True)
class DropletKeys:
    host: KeyPair
    client_key_path: Path
    client_public: str


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def droplet_keys(deployment: str, folder: Path, *, create: bool, key: str | None = None) -> DropletKeys | None:
    """The droplet's host key pair and our client key pair, kept 0600 in `folder` (the deployment's own).

    Written before the droplet is created, so a run killed half-way can still verify the droplet it left behind.
    `key` is the user's own private key to log in with instead of one made for the deployment.
    """
    host_path = folder / HOST_KEY_FILE
    client_path = Path(key).expanduser() if key else folder / CLIENT_KEY_FILE
    if key and not client_path.is_file():
        raise BadInput(f"no SSH key at {client_path}", field="key", fix="give the path of an unencrypted private key")
    if not host_path.is_file() or not client_path.is_file():
        if not create:
            return None
        if not host_path.is_file():
            _write_private(host_path, generate_ed25519(f"{deployment}-host").private_openssh)
        if not client_path.is_file():
            _write_private(client_path, generate_ed25519(f"mistral-lab-{deployment}").private_openssh)
    host_private = host_path.read_text()
    host = KeyPair(host_private, public_from_private(host_private, f"{deployment}-host"))
    try:
        client_public = public_from_private(client_path.read_text(), f"mistral-lab-{deployment}")
    except (ValueError, TypeError) as e:
        raise BadInput(f"cannot read the SSH key {client_path}: {e}", field="key",
                       fix="give an unencrypted OpenSSH private key (ssh-keygen -t ed25519 -N '')") from None
    return DropletKeys(host=host, client_key_path=client_path, client_public=client_public)


def _forget_keys(folder: Path) -> None:
    for name in (HOST_KEY_FILE, CLIENT_KEY_FILE):
        (folder / name).unlink(missing_ok=True)


def detect_public_address(timeout: float = 5.0) -> list[str]:
    import ipaddress

    import httpx

    try:
        text = httpx.get(ECHO_URL, timeout=timeout).text.strip()
        ip = ipaddress.ip_address(text)
    except (httpx.HTTPError, ValueError) as e:
        raise BadInput(f"could not learn this machine's public address from {ECHO_URL} ({type(e).__name__})",
                       field="allow_from",
                       fix=f"pass it yourself: --allow-from 203.0.113.7/32 or export {ALLOW_FROM_ENV}=...") from None
    return [f"{ip}/{32 if ip.version == 4 else 128}"]


# ---------------------------------------------------------------------------------------------- the target


@dataclass
class ProvisionStats:
    """What one provision cost in calls and waiting; benchmarks read it."""

    api_requests: int = 0
    ssh_attempts: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


class RegionFailed(TargetError):
    """The droplet could not be had in this region (refused, or accepted and then failed): try the next one."""


class DigitalOceanTarget:
    """provision / reconnect / destroy, plus preflight; waiting for SSH is the SSH host's job."""

    name = "digitalocean"

    def __init__(self, options: dict[str, Any] | None = None, *, sleep: Callable[[float], None] = time.sleep):
        self.options = dict(options or {})
        self._sleep = sleep
        self.stats = ProvisionStats()

    def _api(self, settings: DigitalOceanOptions) -> DOApi:
        return DOApi(settings.api_url, sleep=self._sleep)

    def preflight(self, gpu_slug: str, region: str | None = None) -> Preflight:
        settings = DigitalOceanOptions.of(self.options, {"region": region})
        return preflight(self._api(settings), gpu_slug, settings.region, image=settings.image)

    # ------------------------------------------------------------------ provision

    def provision(self, request: ProvisionRequest, on_line: LineSink | None = None) -> Host:
        """SSH key, deployment tag, firewall (bound to the tag: the droplet is covered from birth), droplet; each
        recorded through `request.record` the moment the API accepts it, so a failure or a Ctrl-C at any point
        leaves a record teardown can act on."""
        say = on_line or _quiet
        if request.key_dir is None:
            raise BadInput("no private folder for the droplet's keys", field="key_dir",
                           fix="deploy through mistral_lab.deploy, which gives the deployment's own folder")
        settings = DigitalOceanOptions.of(self.options, request.options, {"region": request.region})
        check_user(settings.ssh_user)
        if not request.gpu_slug:
            raise BadInput("no DigitalOcean size to create", field="gpu", fix="pass --gpu, e.g. gpu-h100x1-80gb")
        if not settings.owner:
            raise BadInput("no owner for the droplet's tags", field="owner",
                           fix="deploy through mistral_lab.deploy (this installation's id), or pass owner=...")
        names = res.Names(request.deployment, settings.owner)
        api = self._api(settings)
        t0 = time.monotonic()
        pf = preflight(api, request.gpu_slug, settings.region, image=settings.image, check_account=False)
        say(pf.summary())
        say(f"billing runs at ${pf.hourly_usd:.2f}/hour from creation until destroy (powered off still bills)")
        allow_from = settings.allow_from or self._allow_from_env() or detect_public_address()
        record = HostRecord(target=self.name, port=settings.ssh_port, user=settings.ssh_user,
                            service_user=settings.service_user,
                            key_dir=str(request.key_dir), resource_ids={"tag": names.tag, "owner": names.owner},
                            extra={"deployment": names.deployment, "api_url": settings.api_url or
                                   os.environ.get("DIGITALOCEAN_API_URL"), "size": pf.size, "image": pf.image})

        def note(**ids: Any) -> None:
            record.resource_ids.update(ids)
            if request.record is not None:
                request.record(record.model_copy(deep=True))

        # A first attempt has no host key yet: nothing of this deployment can exist, so the look-ups a re-run
        # needs (an earlier droplet, an earlier firewall) are skipped.
        rerun = (request.key_dir / HOST_KEY_FILE).is_file()
        existing = self._existing_droplet(api, names, record) if rerun else None
        cache = vols.spec(settings, names, pf.vram_gib)
        cached = vols.find(api, cache.name) if cache else []
        if cache and cached and not settings.region and not existing:
            where = vols.prefer_regions(pf.regions, [vols.region_of(v) for v in cached])[0]
            if where != pf.region and where in pf.regions:
                say(f"cache volume {cache.name} is in {where}: creating the droplet there")
                pf = replace(pf, region=where)
        keys = droplet_keys(names.deployment, request.key_dir, create=True, key=settings.key)
        assert keys is not None
        ssh_key, key_created = self._ensure_ssh_key(api, names, keys.client_public, say,
                                                    look=rerun or bool(settings.key))
        note(ssh_key=ssh_key["fingerprint"], ssh_key_created=key_created)
        api.create_tag(names.tag)
        firewall = self._ensure_firewall(api, names, allow_from, say, settings, look=rerun)
        note(firewall=firewall["id"])

        if existing:
            droplet = existing
            say(f"found droplet {droplet['id']} ({droplet['status']}) from an earlier run: reusing it")
            if settings.expires_at and res.expiry_of(droplet.get("tags") or []) != settings.expires_at:
                say(f"droplet {droplet['id']} keeps the expiry it was created with; tear it down to change it")
            note(droplet=droplet["id"])
            t1 = time.monotonic()
            droplet = self._wait_active(api, droplet, None, settings, say)
        else:
            user_data = render_user_data(hostname=names.hostname, user=settings.ssh_user, host_key=keys.host,
                                         service_user=settings.service_user,
                                         authorized_key=keys.client_public,
                                         forbidden=[read_token(), keys.client_key_path.read_text()])
            t1 = time.monotonic()
            droplet = self._create_where_possible(api, names, pf, ssh_key["fingerprint"], user_data,
                                                  explicit_region=bool(settings.region), settings=settings, say=say,
                                                  note=note)
        self.stats.seconds["api"] = round(t1 - t0, 3)
        self.stats.seconds["active"] = round(time.monotonic() - t1, 3)
        if cache:
            t_attach = time.monotonic()
            volume = vols.ensure_attached(api, cache, droplet, cached, tags=names.resource_tags, note=note, say=say,
                                          wait=self._volume_wait(settings))
            self.stats.seconds["volume_attach"] = round(time.monotonic() - t_attach, 3)
            record.extra["cache_volume"] = {"name": volume["name"], "size_gib": volume.get("size_gigabytes"),
                                            "region": vols.region_of(volume), "mount": cache.mount,
                                            "attach_s": self.stats.seconds["volume_attach"]}
        address = res.public_ipv4(droplet)
        assert address is not None
        record.address = address
        record.key_path, record.host_key = str(keys.client_key_path), keys.host.public_key
        record.extra.update(region=droplet["region"]["slug"], hourly_usd=float(droplet["size"]["price_hourly"]),
                            created_at=droplet["created_at"], allow_from=allow_from, https_from=settings.https_from,
                            https_port=settings.https_port if settings.https_from else None,
                            expires_at=res.expiry_of(droplet.get("tags") or []))
        note()
        t2 = time.monotonic()
        host = self._wait_ssh(record, settings, say)
        self.stats.seconds["ssh"] = round(time.monotonic() - t2, 3)
        t3 = time.monotonic()
        try:
            self._wait_cloud_init(host, settings, say)
            self._prepare_folders(host, settings)
            self.stats.seconds["cloud_init"] = round(time.monotonic() - t3, 3)
            if cache:
                t_mount = time.monotonic()
                formatted = vols.mount(host, cache, settings.ssh_user, say)
                self.stats.seconds["volume_mount"] = round(time.monotonic() - t_mount, 3)
                record.extra["cache_volume"].update(formatted=formatted, mount_s=self.stats.seconds["volume_mount"])
                note(volume_mount=cache.mount)
        except BaseException:
            host.close()
            raise
        self.stats.api_requests += api.stats.requests
        say(f"droplet {droplet['id']} is ready at {settings.ssh_user}@{address}"
            + (f" port {settings.ssh_port}" if settings.ssh_port != 22 else ""))
        return host

    def _volume_wait(self, settings: DigitalOceanOptions) -> vols.Wait:
        return vols.Wait(settings.volume_timeout, settings.poll_interval, self._sleep)

    @staticmethod
    def _allow_from_env() -> list[str] | None:
        value = os.environ.get(ALLOW_FROM_ENV)
        return res.parse_allow_from(value) if value else None

    @staticmethod
    def _existing_droplet(api: DOApi, names: res.Names, record: HostRecord) -> dict | None:
        found = [d for d in api.list_droplets(tag_name=names.tag) if d.get("status") not in ("off", "archive")]
        if len(found) > 1:
            ids = ", ".join(str(d["id"]) for d in found)
            raise TargetError(f"deployment {names.deployment} has {len(found)} droplets ({ids}); expected one",
                              fix=f"tear it down: mistral-lab teardown {names.deployment}")
        return found[0] if found else None

    def _ensure_ssh_key(self, api: DOApi, names: res.Names, public_key: str, say: LineSink, *,
                        look: bool) -> tuple[dict, bool]:
        """Get-or-create by fingerprint: looked up first where it may exist (a re-run, the user's own key), else
        created at once (one call on a first deploy). Ours when we upload it now or an earlier run of ours did
        (its name)."""
        fingerprint = md5_fingerprint(public_key)
        key = api.get_ssh_key(fingerprint) if look else None
        if key is not None:
            return key, key.get("name") == names.resource
        try:
            key = api.create_ssh_key(names.resource, public_key)
            say(f"uploaded SSH key {fingerprint}")
            return key, True
        except DOApiError as e:
            if not (e.status == 422 and "already in use" in e.api_message):
                raise
        key = api.get_ssh_key(fingerprint)
        if key is None:
            raise TargetError(f"SSH key {fingerprint} is said to be in use but cannot be found",
                              fix="deploy again in a moment")
        return key, key.get("name") == names.resource

    def _ensure_firewall(self, api: DOApi, names: res.Names, allow_from: list[str], say: LineSink,
                         settings: DigitalOceanOptions, *, look: bool) -> dict:
        wanted = res.firewall_body(names, allow_from, https_from=settings.https_from, https_port=settings.https_port,
                                   acme_port=settings.acme_http_port)
        opened = f"SSH from {', '.join(allow_from)}" + (
            f", port {settings.https_port} from {', '.join(settings.https_from)}" if settings.https_from else "") + (
            f", port {settings.acme_http_port} from anywhere (the CA's check)" if settings.acme_http_port else "")
        for fw in api.list_firewalls() if look else []:
            if fw.get("name") == wanted["name"]:
                if not res.firewall_matches(fw, wanted):
                    fw = api.update_firewall(fw["id"], wanted)
                    say(f"updated firewall {fw['id']}: {opened} only")
                return fw
        fw = api.create_firewall(wanted)
        say(f"created firewall {fw['id']}: {opened} only, outbound open")
        return fw

    def _create_where_possible(self, api: DOApi, names: res.Names, pf: Preflight, fingerprint: str, user_data: str,
                               *, explicit_region: bool, settings: DigitalOceanOptions, say: LineSink,
                               note: Callable[..., None]) -> dict:
        """Create in the first region that has the size, and wait until it is active. A region that refuses
        (capacity, closed, restricted size, image elsewhere), or whose create is accepted and then fails (the
        action ends `errored`, or the droplet stays `new`), moves on to the next one; a droplet left behind by a
        failed create is destroyed first, since it bills."""
        regions = [pf.region] if explicit_region else [pf.region] + [r for r in pf.regions if r != pf.region]
        failed: list[str] = []
        for region in regions:
            body = res.droplet_body(names, size=pf.size, region=region, image=pf.image,
                                    ssh_key_fingerprint=fingerprint, user_data=user_data,
                                    expires_at=settings.expires_at)
            try:
                droplet, action = self._create(api, names, body, settings, say)
                note(droplet=droplet["id"], region=region)
                say(f"created droplet {droplet['id']} ({pf.size} in {region})")
                return self._wait_active(api, droplet, action, settings, say)
            except RegionFailed as e:
                failed.append(f"{region} ({e.message})")
                more = region != regions[-1]
                say(f"{pf.size} in {region}: {e.message}" + ("; trying the next region" if more else ""))
        hint = "another --region, " if explicit_region else ""
        raise TargetError(f"could not get {pf.size} in {', '.join(failed)}",
                          fix=f"try later, {hint}or another --gpu size")

    def _create(self, api: DOApi, names: res.Names, body: dict, settings: DigitalOceanOptions,
                say: LineSink) -> tuple[dict, int | None]:
        """POST the droplet: never twice. A 5xx or a lost answer may still have made it: look before trying again."""
        for attempt in range(1, 4):
            try:
                return api.create_droplet(body)
            except DOApiError as e:
                if e.status == 422 and res.not_here(e.api_message):
                    raise RegionFailed(e.api_message) from None
                if e.status == 422 and res.DROPLET_LIMIT in e.api_message:
                    raise TargetError(f"creating the droplet would exceed the account's droplet limit "
                                      f"({e.api_message})",
                                      fix="destroy droplets you no longer need (mistral-lab sweep lists this "
                                          "installation's) or ask DigitalOcean for a higher limit") from None
                if e.status is not None and e.status < 500:
                    raise
                self._sleep(min(settings.poll_interval, 5.0))
                found = [d for d in api.list_droplets(tag_name=names.tag) if d.get("status") == "new"
                         or d.get("status") == "active"]
                if found:
                    say(f"the create call failed ({e.status or 'no answer'}) but droplet {found[0]['id']} "
                        "exists: using it")
                    return found[0], None
                if attempt == 3:
                    raise
                say(f"the create call failed ({e.status or 'no answer'}) and no droplet exists; trying again")
        raise AssertionError("unreachable")

    def _wait_active(self, api: DOApi, droplet: dict, action: int | None, settings: DigitalOceanOptions,
                     say: LineSink) -> dict:
        """Until the droplet is active with an address: its create action is polled (one call a poll) and the
        droplet read once it completed. An action that ends `errored`, or a droplet still `new` at the deadline,
        fails this region (after destroying the droplet)."""
        deadline = time.monotonic() + settings.active_timeout
        start = time.monotonic()
        say(f"droplet {droplet['id']} is {droplet.get('status')}; waiting for it to become active")
        while droplet.get("status") != "active" or not res.public_ipv4(droplet):
            if droplet.get("status") in ("off", "archive"):
                raise TargetError(f"droplet {droplet['id']} is {droplet['status']} (it still bills while off)",
                                  fix="power it on in the DigitalOcean console, or tear the deployment down")
            if time.monotonic() > deadline:
                self._abandon(api, droplet, say)
                raise RegionFailed(f"droplet still {droplet.get('status')} after {settings.active_timeout:.0f} s")
            self._sleep(settings.poll_interval)
            state = (api.get_droplet_action(droplet["id"], action) or {}).get("status") if action else None
            if state == "errored":
                self._abandon(api, droplet, say)
                raise RegionFailed("the create was accepted and then failed (its action errored)")
            if action is None or state == "completed":
                fresh = api.get_droplet(droplet["id"])
                if fresh is None:
                    raise TargetError(f"droplet {droplet['id']} disappeared while starting",
                                      fix="deploy again; check the DigitalOcean console for errors")
                droplet = fresh
        say(f"droplet {droplet['id']} is active at {res.public_ipv4(droplet)} after {time.monotonic() - start:.0f} s")
        return droplet

    @staticmethod
    def _abandon(api: DOApi, droplet: dict, say: LineSink) -> None:
        api.destroy_droplet(droplet["id"])
        say(f"destroyed droplet {droplet['id']}, which never became active (it billed meanwhile)")

    def _connect(self, record: HostRecord, on_line: LineSink | None = None) -> Host:
        from mistral_lab.hosts.ssh import SSHHost

        # The pinned key is the one we generated and cloud-init installed: anything else is refused.
        return SSHHost(record, connect_timeout=15.0, on_line=on_line)

    def _wait_ssh(self, record: HostRecord, settings: DigitalOceanOptions, say: LineSink) -> Host:
        """Connect until sshd answers with our host key and takes our key. A different host key stops at once."""
        from mistral_lab.hosts.ssh import HostKeyError

        deadline = time.monotonic() + settings.ssh_timeout
        start = time.monotonic()
        last_error = ""
        while True:
            self.stats.ssh_attempts += 1
            host = self._connect(record, on_line=say)
            try:
                host.connect()  # type: ignore[attr-defined]
                say(f"SSH to {record.user}@{record.address} answered with the pinned host key "
                    f"after {time.monotonic() - start:.0f} s")
                return host
            except HostKeyError:
                host.close()
                raise
            except MistralLabError as e:
                # Refused connections while sshd starts; refused logins until cloud-init has added our key.
                host.close()
                if e.message != last_error:
                    say(f"waiting for SSH: {e.message}")
                last_error = e.message
            if time.monotonic() > deadline:
                raise TargetError(f"SSH to {record.address}:{record.port} did not answer within "
                                  f"{settings.ssh_timeout:.0f} s ({last_error})",
                                  fix="check allow_from is your public address; deploy again to keep waiting")
            self._sleep(settings.poll_interval)

    def _wait_cloud_init(self, host: Host, settings: DigitalOceanOptions, say: LineSink) -> None:
        result = host.run_script(infra_files.read("wait-cloud-init.sh"), timeout=settings.cloud_init_timeout,
                                 check=False, on_line=say)
        if not result.ok:
            raise TargetError(f"cloud-init failed on the droplet (exit {result.returncode})",
                              fix="read the lines above; tear down and deploy again")

    @staticmethod
    def _prepare_folders(host: Host, settings: DigitalOceanOptions) -> None:
        """The deployments' folder, readable by the server's group only; the shared cache, readable by all (builds
        and weights are not secret). Made through the login user's sudo: the one thing here that needs root."""
        root, cache = shlex.quote(str(settings.host_root)), shlex.quote(str(settings.host_cache))
        login, server = shlex.quote(settings.ssh_user), shlex.quote(settings.service_user)
        # The login user's home is its own (Ubuntu makes it 0750, Debian 0755): the server's user reads nothing there.
        host.run(f'chmod 0750 "$HOME" && sudo -n install -d -o {login} -g {server} -m 0750 {root} {root}/deployments '
                 f"&& sudo -n install -d -o {login} -g {login} -m 0755 {cache}", retry_safe=True)

    # ------------------------------------------------------------------ reconnect, destroy

    def reconnect(self, record: HostRecord) -> Host:
        if not (record.address and record.host_key and record.key_path):
            raise BadInput("this DigitalOcean deployment has no host to reconnect to", field="host",
                           fix="deploy it again")
        return self._connect(record)

    def destroy(self, record: HostRecord, on_line: LineSink | None = None) -> None:
        """Destroy the droplet(s), then the firewall, the SSH key if we uploaded it, and the tag. Safe to repeat.

        Droplets are found by the recorded id and by the deployment's tag; destroy is asynchronous on
        DigitalOcean, so this waits (bounded) until neither shows one any more before removing the tag. A cache
        volume is unmounted and detached first and kept (its monthly cost said); `drop_cache` deletes it."""
        say = on_line or _quiet
        names = self._names(record)
        settings = DigitalOceanOptions.of(self.options, {"api_url": record.extra.get("api_url")})
        api = self._api(settings)
        held = vols.Held.of(record)
        if held:
            vols.release(api, held, lambda: self._reach(record), self._volume_wait(settings), say)
        ids = {int(record.resource_ids["droplet"])} if record.resource_ids.get("droplet") else set()
        expiry_tags: set[str] = set()
        for droplet in api.list_droplets(tag_name=names.tag):
            ids.add(droplet["id"])
            expiry_tags.update(t for t in droplet.get("tags") or [] if t.startswith(res.EXPIRY_PREFIX))
            hours, _, cost = res.droplet_cost(droplet)
            say(f"destroying droplet {droplet['id']} after {hours:.2f} h (about ${cost:.2f})")
        for droplet_id in sorted(ids):
            api.destroy_droplet(droplet_id)
        self._wait_gone(api, names, ids, settings, say)
        _delete_unused_tags(api, expiry_tags)
        self._delete_firewall(api, names, record, say)
        self._delete_ssh_key(api, names, record, say)
        api.delete_tag(names.tag)
        if record.key_dir:
            _forget_keys(Path(record.key_dir))
        if held:
            volume = vols.wait_detached(api, held.volume_id, self._volume_wait(settings))
            if volume is not None:
                say(f"kept cache volume {vols.describe(volume)} until dropped "
                    f"(mistral-lab sweep --yes --only volume:{volume['id']})")

    def kept(self, record: HostRecord) -> list[str]:
        """What of the deployment is kept on purpose after destroy: its cache volume, with its monthly cost."""
        held = vols.Held.of(record)
        if not held:
            return []
        api = self._api(DigitalOceanOptions.of(self.options, {"api_url": record.extra.get("api_url")}))
        volume = api.get_volume(held.volume_id)
        return [f"cache volume {vols.describe(volume)}"] if volume else []

    def drop_cache(self, record: HostRecord, on_line: LineSink | None = None) -> list[str]:
        """Delete the deployment's cache volume (after destroy: once its droplet has let go of it)."""
        held = vols.Held.of(record)
        if not held:
            return []
        settings = DigitalOceanOptions.of(self.options, {"api_url": record.extra.get("api_url")})
        api = self._api(settings)
        volume = api.get_volume(held.volume_id)
        if volume is None:
            return []
        return [vols.describe(volume)] if vols.delete(api, held.volume_id, self._volume_wait(settings),
                                                      on_line or _quiet) else []

    def _reach(self, record: HostRecord) -> Host:
        """A connected host for the record, or a MistralLabError (a teardown carries on without it)."""
        if not (record.address and record.host_key and record.key_path):
            raise TargetError("the droplet has no address recorded", fix="")
        host = self._connect(record)
        try:
            host.connect()  # type: ignore[attr-defined]
        except BaseException:
            host.close()
            raise
        return host

    def leftovers(self, record: HostRecord) -> list[str]:
        """What of the deployment still exists after destroy. destroy already waited until the tag listing and
        each recorded id showed nothing; the GPU listing is asked as well, since the docs do not promise that a
        tag listing shows GPU droplets."""
        names = self._names(record)
        api = self._api(DigitalOceanOptions.of(self.options, {"api_url": record.extra.get("api_url")}))
        return [f"droplet {d['id']} ({d.get('status')}) of {names.deployment} still exists"
                for d in api.list_droplets(gpus=True) if names.tag in (d.get("tags") or [])]

    @staticmethod
    def _names(record: HostRecord) -> res.Names:
        tag = str(record.resource_ids.get("tag") or "")
        deployment = record.extra.get("deployment") or res.deployment_of([tag])
        if not deployment:
            raise BadInput("the record does not say which deployment it belongs to", field="host",
                           fix="run `mistral-lab sweep` to find and destroy what is left")
        owner = record.resource_ids.get("owner") or (tag.split(":")[1] if tag.count(":") == 2 else "")
        return res.Names(deployment, owner)

    def _wait_gone(self, api: DOApi, names: res.Names, ids: set[int], settings: DigitalOceanOptions,
                   say: LineSink) -> None:
        deadline = time.monotonic() + settings.destroy_timeout
        while True:
            # The tag listing, and the recorded ids it no longer shows looked up one by one (a 404 is final).
            left = {d["id"] for d in api.list_droplets(tag_name=names.tag)}
            left |= {i for i in ids - left if api.get_droplet(i) is not None}
            if not left:
                return
            if time.monotonic() > deadline:
                raise TargetError(f"droplet(s) {', '.join(map(str, sorted(left)))} still listed "
                                  f"{settings.destroy_timeout:.0f} s after their destroy",
                                  fix="run the teardown again in a minute; `mistral-lab sweep` lists what bills")
            self._sleep(settings.poll_interval)

    @staticmethod
    def _delete_firewall(api: DOApi, names: res.Names, record: HostRecord, say: LineSink) -> None:
        recorded = record.resource_ids.get("firewall")
        found = [recorded] if recorded else [fw["id"] for fw in api.list_firewalls()
                                             if fw.get("name") == names.resource or names.tag in (fw.get("tags") or [])]
        for fw_id in found:
            if api.delete_firewall(fw_id):
                say(f"deleted firewall {fw_id}")

    @staticmethod
    def _delete_ssh_key(api: DOApi, names: res.Names, record: HostRecord, say: LineSink) -> None:
        fingerprint = record.resource_ids.get("ssh_key")
        created = record.resource_ids.get("ssh_key_created")
        if fingerprint is None and record.key_dir:
            try:
                keys = droplet_keys(names.deployment, Path(record.key_dir), create=False, key=record.key_path)
            except BadInput:  # the key file is gone: nothing left to name the key by
                keys = None
            fingerprint = md5_fingerprint(keys.client_public) if keys else None
        if not fingerprint:
            return
        if created is None:  # not recorded: ours only if it carries our name
            key = api.get_ssh_key(fingerprint)
            created = key is not None and key.get("name") == names.resource
        if created and api.delete_ssh_key(fingerprint):
            say(f"deleted SSH key {fingerprint}")


# ---------------------------------------------------------------------------------------------- sweep


@dataclass
class SweepItem:
    kind: str  # droplet | firewall | ssh_key | volume
    id: str
    name: str
    deployment: str | None
    owner: str | None = None  # the installation that made it; None for resources made before owners
    region: str | None = None
    size: str | None = None
    created_at: str | None = None
    hours: float = 0.0
    hourly_usd: float = 0.0
    cost_usd: float = 0.0
    expires_at: int | None = None  # droplets: unix seconds from the expiry tag
    monthly_usd: float = 0.0  # volumes: what keeping it costs a month
    attached_to: list[int] = field(default_factory=list)  # volumes: the droplet holding it
    destroyed: bool = False

    @property
    def ref(self) -> str:
        """How `sweep --only` names it."""
        return f"{self.kind}:{self.id}"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def find_leftovers(api: DOApi, owner: str | None) -> list[SweepItem]:
    """What mistral-lab made: droplets (GPU ones too), firewalls, SSH keys and cache volumes; `owner` None: every
    installation's, else only that one's. A custom-scoped token without block_storage:read sees no volumes."""
    droplets: dict[int, dict] = {}
    # A tag listing includes GPU droplets; `type=gpus` is asked as well because the docs do not promise it, and
    # it cannot be combined with tag_name, so its result is filtered here.
    for d in api.list_droplets(tag_name=res.OWNER_TAG) + api.list_droplets(gpus=True):
        if res.is_ours(d.get("tags") or []):
            droplets[d["id"]] = d
    items = []
    for d in droplets.values():
        tags = d.get("tags") or []
        hours, price, cost = res.droplet_cost(d)
        items.append(SweepItem("droplet", str(d["id"]), d["name"], res.deployment_of(tags), res.owner_of(tags),
                               region=(d.get("region") or {}).get("slug"), size=d.get("size_slug"),
                               created_at=d.get("created_at"), hours=round(hours, 3), hourly_usd=price,
                               cost_usd=round(cost, 2), expires_at=res.expiry_of(tags)))
    prefix = res.OWNER_TAG + "-"
    for fw in api.list_firewalls():
        tags = fw.get("tags") or []
        if fw.get("name", "").startswith(prefix) or any(t.startswith(res.OWNER_TAG + ":") for t in tags):
            fw_owner = res.owner_of_name(fw["name"])
            items.append(SweepItem("firewall", fw["id"], fw["name"], res.deployment_of(tags) or
                                   res.deployment_of_name(fw["name"], fw_owner), fw_owner,
                                   created_at=fw.get("created_at")))
    for key in api.list_ssh_keys():
        if key.get("name", "").startswith(prefix):
            key_owner = res.owner_of_name(key["name"])
            items.append(SweepItem("ssh_key", key["fingerprint"], key["name"],
                                   res.deployment_of_name(key["name"], key_owner), key_owner))
    items += _cache_volumes(api, owner)
    return [i for i in items if owner is None or i.owner == owner]


def _cache_volumes(api: DOApi, owner: str | None) -> list[SweepItem]:
    try:
        volumes = vols.ours(api, owner)
    except TokenRefused as e:
        if e.status != 403:
            raise
        return []
    out = []
    for v in volumes:
        size = int(v.get("size_gigabytes") or 0)
        out.append(SweepItem("volume", str(v["id"]), v["name"], None, vols.owner_of(v), region=vols.region_of(v),
                             size=f"{size} GiB", created_at=v.get("created_at"),
                             hours=round(res.hours_since(v["created_at"]), 3) if v.get("created_at") else 0.0,
                             monthly_usd=vols.monthly_usd(size),
                             attached_to=[int(i) for i in v.get("droplet_ids") or []]))
    return out


def _delete_unused_tags(api: DOApi, tags: set[str]) -> None:
    """Delete tags no droplet carries any more. Deleting a tag untags everything carrying it, and two deployments
    made in the same second share one expiry tag."""
    for t in sorted(tags):
        if not api.list_droplets(tag_name=t):
            api.delete_tag(t)


def expired_only(items: list[SweepItem], now: float) -> list[SweepItem]:
    """The droplets past their expiry, and the firewalls and SSH keys of their deployments."""
    gone = {i.deployment for i in items if i.kind == "droplet" and i.expired(now) and i.deployment}
    return [i for i in items if (i.kind == "droplet" and i.expired(now)) or
            (i.kind != "droplet" and i.deployment in gone)]


def sweep(*, owner: str | None, api_url: str | None = None, destroy: bool = False, only: list[str] | None = None,
          on_line: LineSink | None = None, sleep: Callable[[float], None] = time.sleep, expired: bool = False,
          now: float | None = None, wait_s: float = 300.0, volumes: bool = False) -> list[SweepItem]:
    """List (and with destroy=True remove) what mistral-lab made on the account.

    `owner`: this installation's id (None: every installation's, which destroys nothing unless each resource is
    named in `only` as kind:id). `expired`: only the droplets past their expiry tag and what belongs to their
    deployments. Droplets are destroyed first and waited for (destroy is asynchronous) before their firewalls,
    keys and tags go. Cache volumes are kept on purpose: deleted only with `volumes=True` or when named in
    `only`, and never while a running droplet holds one."""
    say = on_line or _quiet
    api = DOApi(api_url, sleep=sleep)
    items = find_leftovers(api, owner)
    if expired:
        items = expired_only(items, time.time() if now is None else now)
    if only:
        known = {i.ref for i in items}
        unknown = [r for r in only if r not in known]
        if unknown:
            raise BadInput(f"not found among mistral-lab's resources: {', '.join(unknown)}", field="only",
                           fix="name them as `mistral-lab sweep --all-owners` lists them: kind:id, e.g. droplet:123")
        items = [i for i in items if i.ref in only]
    elif destroy and owner is None:
        raise BadInput("refusing to destroy every installation's resources at once", field="all_owners",
                       fix="name each one: mistral-lab sweep --all-owners --yes --only droplet:ID --only ...")
    if not destroy:
        return items
    droplets = [i for i in items if i.kind == "droplet"]
    for item in droplets:
        item.destroyed = api.destroy_droplet(int(item.id))
        say(f"{'destroying' if item.destroyed else 'already going'}: droplet {item.id} ({item.name})")
    deadline = time.monotonic() + wait_s
    waiting = {int(i.id) for i in droplets}
    while waiting:
        waiting = {i for i in waiting if api.get_droplet(i) is not None}
        if waiting and time.monotonic() > deadline:
            raise TargetError(f"droplet(s) {', '.join(map(str, sorted(waiting)))} still there {wait_s:.0f} s after "
                              "their destroy", fix="run the sweep again in a minute")
        if waiting:
            sleep(2.0)
    for item in items:
        if item.kind == "firewall":
            item.destroyed = api.delete_firewall(item.id)
        elif item.kind == "ssh_key":
            item.destroyed = api.delete_ssh_key(item.id)
        if item.kind in ("firewall", "ssh_key"):
            say(f"{'deleted' if item.destroyed else 'already gone'}: {item.kind} {item.id} ({item.name})")
    tags = {res.Names(i.deployment, i.owner or "").tag for i in droplets if i.deployment}
    _delete_unused_tags(api, tags | {res.expiry_tag(i.expires_at) for i in droplets if i.expires_at})
    gone = {int(i.id) for i in droplets}
    for item in items:
        if item.kind != "volume" or not (volumes or only):
            continue
        holders = [d for d in item.attached_to if d not in gone and (api.get_droplet(d) or {}).get("status") == "active"]
        if holders:
            say(f"kept: volume {item.id} ({item.name}) is attached to droplet {holders[0]}, which is running")
            continue
        item.destroyed = vols.delete(api, item.id, vols.Wait(wait_s, 2.0, sleep), _quiet)
        say(f"{'deleted' if item.destroyed else 'already gone'}: volume {item.id} ({item.name}), "
            f"${item.monthly_usd:.2f}/month")
    return items
