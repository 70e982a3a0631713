"""What a notebook talks to, and cleaning up after it: find the deployment (or deploy the generated tiny model
here), and tear down at the end only what the notebook itself made."""

from __future__ import annotations

from mistral_lab import session, state
from mistral_lab.client import Client
from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import LineSink
from mistral_lab.lifecycle.deploy import deploy
from mistral_lab.lifecycle.steps import print_line
from mistral_lab.lifecycle.teardown import TeardownReport, teardown
from mistral_lab.planning import PlanRequest

__all__ = ["FALLBACK", "connect_or_deploy", "find_or_deploy", "teardown_if_made", "the_only"]

FALLBACK = "tiny-local"  # the generated tiny model on this machine: seconds to deploy once llama.cpp is built


def the_only(*, up: bool = False) -> str | None:
    """The name of the one deployment there is (that is up, with `up`); None when there is none."""
    found = [n for n in state.names() if not up or state.load(n).status == "up"]
    if len(found) > 1:
        raise BadInput(f"{len(found)} deployments {'are up' if up else 'exist'}: {', '.join(found)}",
                       field="deployment", fix="say which one: -p deployment NAME (papermill) or --name NAME")
    return found[0] if found else None


def find_or_deploy(name: str | None = None, *, say: LineSink = print_line) -> tuple[state.Deployment, bool]:
    """The deployment a notebook should talk to, and whether it was deployed just now (so the notebook tears down
    only what it made, `teardown_if_made`).

    With a name: that deployment (deployed again from its record when it stopped serving). Without one: the only
    deployment that is up; if none is, the generated tiny model on this machine as `tiny-local`. Several up and no
    name is an error that lists them.
    """
    name = name or the_only(up=True) or FALLBACK
    req = PlanRequest(model="tiny-random", name=name)
    if state.exists(name):
        dep = state.load(name)
        if session.healthy(dep):
            return dep, False
        req = PlanRequest(model=dep.plan.model, target=dep.plan.target, engine=dep.plan.engine, name=name)
    elif name != FALLBACK:
        state.load(name)  # raises "unknown deployment" with the close names
    say(f"… deploying {req.model} on {req.target} as {name!r}")
    return deploy(req, say=say), True


def connect_or_deploy(deployment: str | None = None, *, base_url: str | None = None, key_env: str = "MISTRAL_API_KEY",
                      model: str | None = None, say: LineSink = print_line) -> tuple[Client, bool]:
    """A Client for a bare URL (key from `key_env`, `model` its catalog id), or for `find_or_deploy(deployment)`;
    and whether that deployment was made just now."""
    if base_url:
        return Client.from_env(base_url, key_env=key_env, catalog_id=model), False
    dep, made_here = find_or_deploy(deployment, say=say)
    return Client.from_deployment(dep.name), made_here


def teardown_if_made(name: str | None, made_here: bool, force: bool | None = None, *,
                     say: LineSink = print_line) -> TeardownReport | None:
    """A notebook's last step: tear `name` down if this notebook deployed it (`force` True/False overrides), else
    leave it up. None when nothing was torn down."""
    if not name or not (made_here if force is None else force):
        return None
    return teardown(name, say=say)
