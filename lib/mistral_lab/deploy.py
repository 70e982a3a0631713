"""From a plan to a running endpoint and back: provision -> facts -> install -> model -> serve, then teardown.

Every step reads what the step before produced and is timed into the Deployment record, which is saved after
each step, so a crash leaves a record that `teardown` can act on and a re-run can resume. Deploying a name
that is already up and healthy reuses it.
"""

from __future__ import annotations

import re
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from mistral_lab import hardware, infra_files, state
from mistral_lab.catalog import get_model
from mistral_lab.engines import get_engine, service
from mistral_lab.engines.base import Layout
from mistral_lab.errors import BadInput, EngineError, MistralLabError
from mistral_lab.hosts import get_target
from mistral_lab.hosts.base import Host, LineSink, ProvisionRequest, Tunnel
from mistral_lab.plan import Plan, PlanRequest, require_fit, resolve
from mistral_lab.planning import make_plan

Printer = Callable[[str], None]
PORT_ATTEMPTS = 3
_PORT_TAKEN = re.compile(r"couldn't bind|address already in use|EADDRINUSE", re.IGNORECASE)


def _default_printer(text: str) -> None:
    print(text, flush=True)


@dataclass
class Steps:
    """Times each step into the record, saves it after each, and prints progress lines."""

    dep: state.Deployment
    say: Printer = _default_printer
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def step(self, name: str, status: state.Status | None = None) -> Iterator[dict[str, Any]]:
        if status:
            self.dep.status = status
            state.save(self.dep)
        t0, at = time.monotonic(), state.now()
        self.say(f"▶ {name}")
        info: dict[str, Any] = {"skipped": False}
        yield info
        dt = time.monotonic() - t0
        state.record_step(self.dep, name, dt, at, skipped=info["skipped"])
        state.save(self.dep)
        self.say(f"✔ {name} {'(already done) ' if info['skipped'] else ''}in {dt:.1f}s "
                 f"[total {time.monotonic() - self.started:.0f}s]")

    def lines(self, prefix: str = "  ") -> LineSink:
        return lambda line: self.say(prefix + line.rstrip())


def _instance(dep: state.Deployment) -> str:
    """The deployment's name on its host: `<name>-<id>`, the id made once with the record.

    Two clients (two MISTRAL_LAB_HOMEs, two laptops on one SSH host) may both call a deployment `demo`; by name
    alone they would share a folder and a unit, and the second deploy would stop the first one's server."""
    if "instance" not in dep.extra:
        # A record from before instances keeps the folder (and unit) it already has on the host.
        old = dep.service.root.rstrip("/").rsplit("/", 1)[-1] if dep.service else None
        dep.extra["instance"] = old or f"{dep.name}-{secrets.token_hex(3)}"
    return str(dep.extra["instance"])


def _layout(host: Host, instance: str, options: dict[str, Any]) -> Layout:
    home = host.run('printf %s "$HOME"').stdout.strip()
    base = options.get("host_root") or f"{home}/mistral-lab"
    cache = options.get("host_cache") or f"{home}/.cache/mistral-lab"
    return Layout(home=home, cache=cache, root=f"{base}/deployments/{instance}")


def _service_spec(dep: state.Deployment, argv: list[str], key_var: str, env: dict[str, str], api_key: str,
                  layout_root: str, facts_systemd: bool, user: str | None) -> service.ServiceSpec:
    model = get_model(dep.plan.model)
    recipe = getattr(model.engines, dep.plan.engine)
    return service.ServiceSpec(
        name=dep.name, model=dep.plan.model, engine=dep.plan.engine, root=layout_root, argv=argv,
        port=dep.plan.port, key_var=key_var, mode="systemd" if facts_systemd else "process", user=user,
        secret_env={**env, key_var: api_key}, hints=dict(recipe.hints) if recipe else {},
        instance=dep.extra.get("instance"),
    )


def _wants_systemd(systemd: bool, options: dict[str, Any]) -> bool:
    return systemd and options.get("service", "auto") != "process"


def _service_stub(dep: state.Deployment, root: str, systemd: bool, options: dict[str, Any]) -> service.ServiceSpec:
    """Enough of a spec to stop what an earlier attempt of this deployment may have left running."""
    return service.ServiceSpec(name=dep.name, model=dep.plan.model, engine=dep.plan.engine, root=root, argv=[],
                               port=dep.plan.port, key_var="",
                               mode="systemd" if _wants_systemd(systemd, options) else "process",
                               instance=dep.extra.get("instance"))


def _extra_args(value: str | list[str] | None) -> list[str]:
    """Flags the user adds to the serve command (e.g. "--flash-attn on"); they never carry secrets."""
    if not value:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def free_port(host: Host, start: int) -> int:
    """The first port at or above `start` that nothing listens on on the host (infra/free-port.sh, one round trip)."""
    out = host.run_script(infra_files.with_env(infra_files.read("free-port.sh"), {"START": str(start)}),
                          retry_safe=True).stdout
    return int(out.strip().splitlines()[-1])


def _spec_from_record(dep: state.Deployment) -> service.ServiceSpec:
    assert dep.service is not None
    return service.ServiceSpec(name=dep.name, model=dep.plan.model, engine=dep.plan.engine, root=dep.service.root,
                               argv=[], port=dep.plan.port, key_var="", mode=dep.service.kind,
                               instance=dep.extra.get("instance"))


def add_companion(name: str, spec: service.ServiceSpec) -> None:
    """Record a service that lives and dies with deployment `name` (a workshop's TLS proxy, say), so that a plain
    `teardown` stops it too and leaves nothing running on the host."""
    dep = state.load(name)
    companions = [c for c in dep.extra.get("companions", []) if c.get("root") != spec.root]
    companions.append({"name": spec.name, "root": spec.root, "mode": spec.mode, "engine": spec.engine})
    dep.extra["companions"] = companions
    state.save(dep)


def _companion_specs(dep: state.Deployment) -> list[service.ServiceSpec]:
    return [service.ServiceSpec(name=c["name"], model=dep.plan.model, engine=c.get("engine", "?"), root=c["root"],
                                argv=[], port=0, key_var="", mode=c["mode"])
            for c in dep.extra.get("companions", [])]


def _served_context(host: Host, endpoint: state.Endpoint, api_key: str) -> int | None:
    """The context the server really serves: vLLM lists it as max_model_len in /v1/models (with
    `--max-model-len auto` it is only known once the server has measured its memory)."""
    tunnel = host.forward(endpoint.remote_port)
    try:
        r = httpx.get(endpoint.base_url(tunnel.local_port) + "/models",
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        value = ((r.json().get("data") or [{}])[0]).get("max_model_len")
        return int(value) if value else None
    except (httpx.HTTPError, ValueError, TypeError, AttributeError, OSError):
        return None
    finally:
        tunnel.close()


def _healthy(dep: state.Deployment) -> bool:
    """Whether a recorded deployment still serves: reconnect, tunnel, /health and /v1/models with its key."""
    if dep.status != "up" or dep.endpoint is None:
        return False
    try:
        with _connection(dep) as conn:
            r = httpx.get(conn.base_url + "/models", headers={"Authorization": f"Bearer {conn.api_key}"}, timeout=10)
            return r.status_code == 200
    except (MistralLabError, httpx.HTTPError, OSError):
        return False


def deploy(
    req: PlanRequest,
    *,
    options: dict[str, Any] | None = None,
    say: Printer = _default_printer,
    start_timeout: float = 900,
    keep_on_failure: bool | None = None,
) -> state.Deployment:
    """Deploy `req` and return the saved record. Idempotent by name."""
    options = dict(options or {})
    plan = make_plan(req)
    name = state.check_name(plan.name)
    if plan.target == "digitalocean":
        require_fit(plan)

    if state.exists(name):
        old = state.load(name)
        if (old.plan.model, old.plan.engine, old.plan.target) != (plan.model, plan.engine, plan.target):
            raise BadInput(
                f"deployment {name} already runs {old.plan.model} on {old.plan.engine} ({old.plan.target})",
                field="name", fix=f"tear it down first (mistral-lab teardown {name}) or pick another --name")
        if _healthy(old):
            say(f"✔ {name} is already up: reusing it ({old.plan.model} on {old.plan.engine}, {old.plan.gpu_name})")
            return old
        say(f"… {name} exists but is not serving ({old.status}): resuming")
        dep = old
        dep.plan = plan
        dep.error = None
    else:
        dep = state.Deployment(name=name, status="provisioning", plan=plan,
                               host=state.HostRecord(target=plan.target, extra={"deployment": name}))
        state.save(dep)

    steps = Steps(dep, say)
    target = get_target(plan.target, options)
    host: Host | None = None
    try:
        with steps.step("provision", "provisioning"):
            if plan.hourly_usd:
                say(f"  {plan.gpu} costs ${plan.hourly_usd:.2f}/hour until torn down")
            host = target.provision(
                ProvisionRequest(deployment=name, gpu_slug=plan.gpu, region=plan.region, hourly_usd=plan.hourly_usd,
                                 options=options),
                on_line=steps.lines(),
            )
            dep.host = host.record.model_copy(update={"extra": {**host.record.extra, "deployment": name}})

        with steps.step("facts"):
            facts = host.facts()
            dep.facts = facts
            if plan.target != "digitalocean":
                # The host's own hardware decides: re-plan against it.
                plan = resolve(req.model_copy(update={"name": name}), host=hardware.size_from_facts(facts))
                dep.plan = plan
            require_fit(plan)
            say(f"  {facts.hostname}: {facts.os}, {facts.cpus} CPUs, {facts.ram_mib // 1024} GiB RAM, "
                + (", ".join(f"{g.name} {g.memory_mib // 1024} GiB" for g in facts.gpus) or "no GPU"))

        engine = get_engine(plan.engine, options)
        model = get_model(plan.model)
        layout = _layout(host, _instance(dep), options)
        with steps.step(f"install {plan.engine}", "installing") as info:
            installed = engine.install(host, plan, facts, layout, steps.lines())
            info["skipped"] = installed.skipped
            dep.versions.update(installed.versions)
            for k, v in (("driver", facts.driver_version), ("cuda", facts.cuda_version), ("rocm", facts.rocm_version)):
                if v:
                    dep.versions[k] = v

        secret_env = {"HF_TOKEN": options["hf_token"]} if options.get("hf_token") else {}
        with steps.step("model") as info:
            files = engine.fetch_model(host, plan, model, layout, secret_env, steps.lines())
            info["skipped"] = files.skipped
            dep.extra["model_ref"] = files.ref
            dep.extra["tools"] = dict(installed.tools)

        with steps.step("start server", "starting") as info:
            key_file = "api_key"
            api_key = state.read_secret(name, key_file) if (dep.folder / key_file).is_file() else state.new_api_key()
            state.write_secret(name, key_file, api_key)
            service.stop(host, _service_stub(dep, layout.root, facts.systemd, options))
            # The free port is checked, then bound a moment later: something else may take it in between
            # (another deployment starting at the same time). A bind failure moves on to the next port.
            port = plan.port
            for attempt in range(PORT_ATTEMPTS):
                port = free_port(host, port)
                if port != plan.port:
                    say(f"  port {plan.port} is taken on the host; serving on {port}")
                argv = engine.argv(plan.model_copy(update={"port": port}), model, installed, files)
                argv += _extra_args(options.get("extra_args"))
                plan = plan.model_copy(update={"port": port, "serve_argv": argv, "serve_command": shlex.join(argv)})
                dep.plan = plan
                # The token stays out of the server's env file unless the server itself downloads.
                serve_secrets = secret_env if engine.downloads_at_start else {}
                spec = _service_spec(dep, argv, engine.key_var, {**installed.env, **serve_secrets}, api_key,
                                     layout.root, _wants_systemd(facts.systemd, options), dep.host.user)
                service.install(host, spec)
                dep.service = state.Service(kind=spec.mode, unit=spec.unit if spec.mode == "systemd" else None,
                                            pid_file=f"{layout.root}/serve.pid" if spec.mode == "process" else None,
                                            log_file=spec.log_file, root=layout.root)
                dep.extra["serve_command"] = shlex.join(argv)
                state.save(dep)
                try:
                    info["ready_s"] = service.start(host, spec, timeout=start_timeout, on_line=steps.lines())
                    break
                except EngineError as e:
                    if attempt + 1 == PORT_ATTEMPTS or not _PORT_TAKEN.search(str(e)):
                        raise
                    say(f"  port {port} was taken while the server started; trying the next one")
                    port += 1
            dep.endpoint = state.Endpoint(remote_port=plan.port, served_model=plan.model, api_key_file=key_file)
            served = _served_context(host, dep.endpoint, api_key) if plan.engine == "vllm" else None
            if served:
                dep.extra["max_model_len"] = served
                if served != plan.context:
                    say(f"  the server fitted a context of {served} tokens (the plan estimated {plan.context})")

        dep.status = "up"
        state.save(dep)
        say(f"✔ {name} is up: {plan.model} on {plan.engine}, {plan.gpu_name}; "
            f"`mistral-lab status {name}` / Client.from_deployment({name!r})")
        return dep
    except BaseException as e:
        dep.status = "failed"
        dep.error = str(e) if isinstance(e, MistralLabError) else f"{type(e).__name__}: {e}"
        state.save(dep)
        billed = bool(dep.plan.hourly_usd) and dep.host.resource_ids
        keep = keep_on_failure if keep_on_failure is not None else not billed
        if billed and not keep:
            say(f"✘ deploy failed; destroying {name} so it stops costing money (keep it with keep_on_failure=True)")
            try:
                teardown(name, say=say)
            except MistralLabError as te:
                say(f"✘ teardown after the failure also failed: {te}; run `mistral-lab sweep`")
        elif billed:
            say(f"✘ deploy failed; {name} is still running at ${dep.plan.hourly_usd:.2f}/hour: "
                f"fix and re-run deploy, or `mistral-lab teardown {name}`")
        raise
    finally:
        if host is not None:
            host.close()


DEMO_NAME = "tiny-local"


def the_only(*, up: bool = False) -> str | None:
    """The name of the one deployment there is (that is up, with `up`); None when there is none."""
    found = [n for n in state.names() if not up or state.load(n).status == "up"]
    if len(found) > 1:
        raise BadInput(f"{len(found)} deployments {'are up' if up else 'exist'}: {', '.join(found)}",
                       field="deployment", fix="say which one: -p deployment NAME (papermill) or --name NAME")
    return found[0] if found else None


def ensure(name: str | None = None, *, model: str = "tiny-random", target: str = "local", engine: str = "auto",
           options: dict[str, Any] | None = None, fallback: str = DEMO_NAME,
           say: Printer = _default_printer) -> state.Deployment:
    """The deployment a notebook should talk to, deployed first when it is missing or not serving.

    With a name: that deployment (re-deployed from its record when it stopped serving). Without one: the only
    deployment that is up; if none is, the generated tiny model on this machine as `fallback` (`tiny-local`), which
    takes seconds once the llama.cpp build is cached. Several up and no name is an error that lists them.
    """
    name = name or the_only(up=True) or fallback
    if state.exists(name):
        dep = state.load(name)
        if _healthy(dep):
            return dep
        model, target, engine = dep.plan.model, dep.plan.target, dep.plan.engine
    elif name != fallback:
        state.load(name)  # raises "unknown deployment" with the close names
    say(f"… deploying {model} on {target} as {name!r}")
    return deploy(PlanRequest(model=model, target=target, engine=engine, name=name), options=options, say=say)


def ensure_made(name: str | None = None, *, fallback: str = DEMO_NAME,
                say: Printer = _default_printer) -> tuple[state.Deployment, bool]:
    """`ensure`, and whether the deployment was created just now: a notebook then tears down only what it made
    and leaves a deployment it found alone (see `teardown_if_made`)."""
    existed = set(state.names())
    dep = ensure(name, fallback=fallback, say=say)
    return dep, dep.name not in existed


def teardown_if_made(name: str | None, made_here: bool, force: bool | None = None, *,
                     say: Printer = _default_printer) -> TeardownReport | None:
    """A notebook's last step: tear `name` down if this notebook deployed it (`force` True/False overrides), else
    leave it up. None when nothing was torn down."""
    if not name or not (made_here if force is None else force):
        return None
    return teardown(name, say=say)


@dataclass
class Connection:
    """A live way to the deployment's server: for remote hosts, an SSH tunnel that lives as long as this object."""

    name: str
    base_url: str
    api_key: str = field(repr=False)
    served_model: str
    engine: str
    catalog_id: str
    plan: Plan
    host: Host
    tunnel: Tunnel

    def close(self) -> None:
        try:
            self.tunnel.close()
        finally:
            self.host.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connection(dep: state.Deployment) -> Connection:
    if dep.endpoint is None:
        raise BadInput(f"deployment {dep.name} has no endpoint ({dep.status})", field="name",
                       fix=f"deploy it again: mistral-lab deploy {dep.plan.model} --name {dep.name}")
    target = get_target(dep.plan.target, {})
    host = target.reconnect(dep.host)
    try:
        tunnel = host.forward(dep.endpoint.remote_port)
    except BaseException:
        host.close()
        raise
    return Connection(name=dep.name, base_url=dep.endpoint.base_url(tunnel.local_port), api_key=dep.api_key(),
                      served_model=dep.endpoint.served_model, engine=dep.plan.engine, catalog_id=dep.plan.model,
                      plan=dep.plan, host=host, tunnel=tunnel)


def connect(name: str) -> Connection:
    """Reopen the way to a deployment from its saved record (host, pinned key, port, API key)."""
    dep = state.load(name)
    if dep.status != "up":
        raise BadInput(f"deployment {name} is {dep.status}, not up", field="name",
                       fix=f"deploy it again: mistral-lab deploy {dep.plan.model} --name {name}")
    return _connection(dep)


def hours_up(dep: state.Deployment, now: datetime | None = None) -> float:
    created = datetime.fromisoformat(dep.created_at)
    return max(((now or datetime.now(UTC)) - created).total_seconds() / 3600, 0.0)


def cost_so_far(dep: state.Deployment, now: datetime | None = None) -> float:
    return round(hours_up(dep, now) * (dep.plan.hourly_usd or 0.0), 4)


def status(name: str) -> dict[str, Any]:
    dep = state.load(name)
    info = dep.model_dump(mode="json")
    info["healthy"] = _healthy(dep)
    info["hours_up"] = round(hours_up(dep), 3)
    info["cost_usd"] = cost_so_far(dep)
    if dep.endpoint is not None:
        info["endpoint"] = {"base_url": dep.endpoint.base_url(dep.plan.port) if dep.plan.target == "local"
                            else f"ssh tunnel to 127.0.0.1:{dep.endpoint.remote_port} on {dep.host.address}",
                            "served_model": dep.endpoint.served_model,
                            "api_key_file": str(dep.folder / dep.endpoint.api_key_file)}
    return info


def logs(name: str, lines: int = 200) -> str:
    dep = state.load(name)
    if dep.service is None:
        return f"(no server started for {name} yet)"
    host = get_target(dep.plan.target, {}).reconnect(dep.host)
    try:
        return service.logs(host, _spec_from_record(dep), lines)
    finally:
        host.close()


@dataclass
class TeardownReport:
    name: str
    stopped: bool
    destroyed: bool
    hours: float
    cost_usd: float
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def teardown(name: str, *, say: Printer = _default_printer) -> TeardownReport:
    """Stop the server, destroy what the target created, and forget the deployment. Safe to repeat."""
    dep = state.load(name)
    target = get_target(dep.plan.target, {})
    notes: list[str] = []
    stopped = False
    if dep.service is not None:
        try:
            host = target.reconnect(dep.host)
            try:
                for companion in _companion_specs(dep):
                    service.stop(host, companion)
                    say(f"✔ stopped {companion.name}")
                service.stop(host, _spec_from_record(dep))
                stopped = True
                say(f"✔ stopped the server of {name}")
            finally:
                host.close()
        except MistralLabError as e:
            notes.append(f"could not reach the host to stop the server: {e}")
            say(f"… could not reach the host to stop the server ({e.message}); destroying anyway")
    left: list[str] = []
    if stopped and dep.plan.target != "digitalocean":
        host = target.reconnect(dep.host)
        try:
            if service.status(host, _spec_from_record(dep)) != "stopped":
                left.append(f"the server of {name} still runs on {dep.host.address}")
            left += [f"{c.name} still runs on {dep.host.address}" for c in _companion_specs(dep)
                     if service.status(host, c) != "stopped"]
        finally:
            host.close()
    target.destroy(dep.host, on_line=lambda line: say("  " + line))
    finder = getattr(target, "leftovers", None)
    if finder is not None:
        left += finder(dep.host)
    report = TeardownReport(name=name, stopped=stopped, destroyed=True, hours=round(hours_up(dep), 3),
                            cost_usd=cost_so_far(dep), leftovers=left, notes=notes)
    dep.status = "destroyed"
    state.save(dep)
    state.remove(name)
    say(f"✔ {name} torn down after {report.hours:.2f} h" + (f", about ${report.cost_usd:.2f}" if report.cost_usd else ""))
    return report


__all__ = ["Connection", "TeardownReport", "add_companion", "connect", "deploy", "ensure", "ensure_made", "free_port",
           "logs", "status", "teardown", "teardown_if_made", "the_only"]

