"""From a plan to a running endpoint: provision -> facts -> install -> model -> serve.

Every step reads what the step before produced and is timed into the Deployment record, which is saved after
each step, so a crash leaves a record that `teardown` can act on and a re-run can resume. Deploying a name that
is already up and healthy reuses it. The engine writes the serve command; the record keeps the one that ran.
"""

from __future__ import annotations

import re
import shlex
from secrets import token_hex
from typing import Any

from mistral_lab import hardware, session, state
from mistral_lab.catalog import get_model
from mistral_lab.engines import get_engine, service, weights
from mistral_lab.engines.base import Engine, Installed, Layout, ModelFiles
from mistral_lab.errors import BadInput, EngineError, MistralLabError
from mistral_lab.hosts import do_volumes, get_target
from mistral_lab.hosts.base import Host, HostFacts, LineSink, ProvisionRequest
from mistral_lab.hosts.ports import free_port
from mistral_lab.lifecycle import services
from mistral_lab.lifecycle.steps import Steps, print_line
from mistral_lab.lifecycle.teardown import teardown
from mistral_lab.options import (
    TARGET_OPTIONS,
    EngineOptions,
    HostOptions,
    Secrets,
    check_token_host,
    refuse_secrets,
)
from mistral_lab.planning import Plan, PlanRequest, make_plan, require_fit, resolve

__all__ = ["deploy"]

PORT_ATTEMPTS = 3
_PORT_TAKEN = re.compile(r"couldn't bind|address already in use|EADDRINUSE", re.IGNORECASE)


def deploy(
    req: PlanRequest,
    *,
    options: dict[str, Any] | None = None,
    secrets: Secrets | None = None,
    say: LineSink = print_line,
    start_timeout: float = 900,
    keep_on_failure: bool | None = None,
) -> state.Deployment:
    """Deploy `req` and return the saved record. Idempotent by name: a second deploy of the same name waits for
    the first (one lock per name) and then reuses what it made. `secrets` default to the environment's."""
    refuse_secrets(options or {})
    options = dict(options or {})
    secrets = secrets or Secrets.from_env()
    endpoint = EngineOptions.of(options).hf_endpoint
    if secrets.hf_token and endpoint:  # the token goes wherever hf_endpoint points
        check_token_host(endpoint, field="hf_endpoint", default_host="huggingface.co", token="HF_TOKEN")
    plan = make_plan(req, api_url=options.get("api_url"))
    name = state.check_name(plan.name)
    if plan.target == "digitalocean":
        require_fit(plan)
        options.setdefault("owner", state.installation_id())
        if options.get("cache_volume"):  # sized for this plan's weights, not the GPU's memory
            options.setdefault("cache_volume_gib", do_volumes.volume_gib(plan.memory["weights_gb"]))
    with state.lock(name, wait_note=say):
        return _deploy(req, plan, name, options, secrets, say, start_timeout, keep_on_failure)


def _deploy(req: PlanRequest, plan: Plan, name: str, options: dict[str, Any], secrets: Secrets, say: LineSink,
            start_timeout: float, keep_on_failure: bool | None) -> state.Deployment:
    dep = _existing(name, plan, say)
    if dep is not None and dep.status == "up":
        return dep
    if dep is None:
        # The key folder is in the record from the start: a provision that fails half-way leaves keys a
        # teardown must find.
        dep = state.Deployment(name=name, status="provisioning", plan=plan,
                               host=state.HostRecord(target=plan.target, extra={"deployment": name},
                                                     key_dir=str(state.deployment_dir(name))))
        dep.instance = f"{name}-{token_hex(3)}"
        state.save(dep)

    steps = Steps(dep, say)
    host: Host | None = None
    try:
        with steps.step("provision", "provisioning"):
            if plan.hourly_usd:
                say(f"  {plan.gpu} costs ${plan.hourly_usd:.2f}/hour until torn down")
            host = get_target(plan.target, options).provision(
                ProvisionRequest(deployment=name, gpu_slug=plan.gpu, region=plan.region, hourly_usd=plan.hourly_usd,
                                 key_dir=dep.folder, options=options, record=lambda rec: _note_host(dep, rec)),
                on_line=steps.lines(),
            )
            dep.host = host.record.model_copy(update={"extra": {**host.record.extra, "deployment": name}})

        with steps.step("facts"):
            facts = dep.facts = host.facts()
            if plan.target != "digitalocean":  # the host's own hardware decides: re-plan against it
                plan = dep.plan = resolve(req.model_copy(update={"name": name}), host=hardware.size_from_facts(facts))
            require_fit(plan)
            say(f"  {facts.hostname}: {facts.os}, {facts.cpus} CPUs, {facts.ram_mib // 1024} GiB RAM, "
                + (", ".join(f"{g.name} {g.memory_mib // 1024} GiB" for g in facts.gpus) or "no GPU"))

        engine = get_engine(plan.engine, options)
        layout = _layout(host, dep, TARGET_OPTIONS[plan.target].of(options))
        with steps.step(f"install {plan.engine}", "installing") as info:
            installed = engine.install(host, plan, facts, layout, steps.lines())
            info["skipped"] = installed.skipped
            dep.versions.update(installed.versions)
            dep.versions.update({k: v for k, v in (("driver", facts.driver_version), ("cuda", facts.cuda_version),
                                                   ("rocm", facts.rocm_version)) if v})

        secret_env = {"HF_TOKEN": secrets.hf_token} if secrets.hf_token else {}
        with steps.step("model") as info:
            files = weights.fetch(engine, host, plan, layout, secret_env, steps.lines())
            info["skipped"] = files.skipped
            dep.model_ref, dep.tools = files.ref, dict(installed.tools)

        with steps.step("start server", "starting") as info:
            # The token reaches the server's env file only when the server itself downloads.
            env = {**installed.env, **(secret_env if engine.downloads_at_start else {})}
            info["ready_s"] = _start(host, dep, engine, installed, files, layout, facts, env, options, start_timeout,
                                     steps)
            plan = dep.plan

        dep.status = "up"
        state.save(dep)
        say(f"✔ {name} is up: {plan.model} on {plan.engine}, {plan.gpu_name}; "
            f"`mistral-lab status {name}` / Client.from_deployment({name!r})")
        return dep
    except BaseException as e:
        _failed(dep, e, keep_on_failure, say)
        raise
    finally:
        if host is not None:
            host.close()


def _note_host(dep: state.Deployment, record: state.HostRecord) -> None:
    """The target made something: save it in the record at once (teardown finds it from there)."""
    dep.host = record.model_copy(update={"extra": {**record.extra, "deployment": dep.name}})
    state.save(dep)


def _existing(name: str, plan: Plan, say: LineSink) -> state.Deployment | None:
    """The record of `name` to reuse (up and serving) or resume (anything else), None when there is none."""
    if not state.exists(name):
        return None
    old = state.load(name)
    if (old.plan.model, old.plan.engine, old.plan.target) != (plan.model, plan.engine, plan.target):
        raise BadInput(f"deployment {name} already runs {old.plan.model} on {old.plan.engine} ({old.plan.target})",
                       field="name", fix=f"tear it down first (mistral-lab teardown {name}) or pick another --name")
    if session.healthy(old):
        say(f"✔ {name} is already up: reusing it ({old.plan.model} on {old.plan.engine}, {old.plan.gpu_name})")
        return old
    say(f"… {name} exists but is not serving ({old.status}): resuming")
    # Two clients may both call a deployment `demo` on one SSH host: the instance id keeps their folders and
    # units apart. A record from before instances keeps the folder it already has on the host.
    old.instance = old.instance or (old.service.root.rstrip("/").rsplit("/", 1)[-1] if old.service else
                                    f"{name}-{token_hex(3)}")
    old.plan, old.error, old.status = plan, None, "provisioning"
    return old


def _layout(host: Host, dep: state.Deployment, options: HostOptions) -> Layout:
    home, user = host.run('printf "%s\\n%s\\n" "$HOME" "$(id -un)"').stdout.strip().splitlines()[-2:]
    base = options.host_root or f"{home}/mistral-lab"
    cache = options.host_cache or f"{home}/.cache/mistral-lab"
    return Layout(home=home, cache=cache, root=f"{base}/deployments/{dep.instance}", user=user)


def _start(host: Host, dep: state.Deployment, engine: Engine, installed: Installed, files: ModelFiles,
           layout: Layout, facts: HostFacts, env: dict[str, str], options: dict[str, Any], timeout: float,
           steps: Steps) -> float:
    """Write the service and start it on a free port; record the command that ran and the endpoint."""
    name, plan = dep.name, dep.plan
    key_file = "api_key"
    api_key = state.read_secret(name, key_file) if (dep.folder / key_file).is_file() else state.new_api_key()
    state.write_secret(name, key_file, api_key)
    mode = services.mode_for(facts.systemd, HostOptions.of(options).service, local=dep.plan.target == "local")
    runs_as = dep.host.service_user or layout.user  # the target's unprivileged server user, where it made one
    service.stop(host, services.bare(dep, layout.root, mode, runs_as))  # what an earlier attempt may have left
    recipe = getattr(get_model(plan.model).engines, plan.engine)
    # The free port is checked, then bound a moment later: something else may take it in between (another
    # deployment starting at the same time). A bind failure moves on to the next port.
    port = plan.port
    for attempt in range(PORT_ATTEMPTS):
        port = free_port(host, port)
        if port != plan.port:
            steps.say(f"  port {plan.port} is taken on the host; serving on {port}")
        dep.plan = plan = plan.model_copy(update={"port": port})
        argv = engine.serve_argv(plan, files, installed)
        spec = service.ServiceSpec(
            name=name, model=plan.model, engine=plan.engine, root=layout.root, argv=argv, port=port,
            key_var=engine.key_var, mode=mode, user=runs_as, owner=layout.user,
            secret_env={**env, engine.key_var: api_key},
            hints=dict(recipe.hints) if recipe else {}, instance=dep.instance)
        service.install(host, spec)
        dep.service = state.Service(kind=mode, unit=spec.unit if mode == "systemd" else None,
                                    pid_file=f"{layout.root}/serve.pid" if mode == "process" else None,
                                    log_file=spec.log_file, root=layout.root, user=runs_as)
        dep.serve_command = shlex.join(argv)
        state.save(dep)
        try:
            ready_s = service.start(host, spec, timeout=timeout, on_line=steps.lines())
            break
        except EngineError as e:
            if attempt + 1 == PORT_ATTEMPTS or not _PORT_TAKEN.search(str(e)):
                raise
            steps.say(f"  port {port} was taken while the server started; trying the next one")
            port += 1
    dep.endpoint = state.Endpoint(remote_port=port, served_model=plan.model, api_key_file=key_file)
    if plan.engine == "vllm":
        served = dep.served_context = session.served_context(host, dep.endpoint, api_key)
        if served and served != plan.context:
            steps.say(f"  the server fitted a context of {served} tokens (the plan estimated {plan.context})")
    return ready_s


def _failed(dep: state.Deployment, e: BaseException, keep_on_failure: bool | None, say: LineSink) -> None:
    """Record the failure; destroy what bills unless asked to keep it; say what still bills and how to remove it.

    Runs for a Ctrl-C too (KeyboardInterrupt): a droplet made a second before is in the record and goes."""
    interrupted = not isinstance(e, Exception)
    dep.status = "failed"
    dep.error = str(e) if isinstance(e, MistralLabError) else ("interrupted" if interrupted else
                                                               f"{type(e).__name__}: {e}")
    state.save(dep)
    billed = _billed(dep)
    if not billed:
        return
    keep = bool(keep_on_failure)
    if not keep:
        why = "interrupted" if interrupted else "deploy failed"
        say(f"✘ {why}; destroying {dep.name} ({billed}) so it stops costing money "
            "(keep it next time with --keep-on-failure)")
        try:
            teardown(dep.name, say=say)
            return
        except (MistralLabError, KeyboardInterrupt) as te:
            say(f"✘ the teardown did not finish: {te}")
    say(f"✘ {dep.name} is left as it is ({billed}; a droplet bills ${dep.plan.hourly_usd:.2f}/hour until "
        f"destroyed); remove it with: mistral-lab teardown {dep.name} --yes")


def _billed(dep: state.Deployment) -> str:
    """What the target made that bills or must be removed, in words ('' when it made nothing)."""
    ids = dep.host.resource_ids
    made = [f"{kind.replace('_', ' ')} {ids[kind]}" for kind in ("droplet", "firewall", "ssh_key") if ids.get(kind)]
    return ", ".join(made) if dep.plan.hourly_usd else ""
