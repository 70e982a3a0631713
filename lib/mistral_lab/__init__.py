"""mistral-lab: a Mistral open-weight model from nothing to a served, queried and benchmarked endpoint, and back.

The workflow, in the order it runs (everything else in the package is private by convention):

    from mistral_lab import PlanRequest, make_plan, show_plan, deploy, Client, bench, teardown

    plan = make_plan(PlanRequest(model="ministral-3b", target="digitalocean"))   # pure: memory, GPU, price
    show_plan(plan)                                                              # with the exact serve command
    dep = deploy(PlanRequest(model="tiny-random"))                               # provision -> serve, saved by name
    with Client.from_deployment(dep.name) as client:
        print(client.chat("Say hello").content)
    bench.run(dep.name, workload="128/128")
    teardown(dep.name)

Notebooks use `collect(globals())` for their parameters, `find_or_deploy` / `connect_or_deploy` to find what to
talk to, and `teardown_if_made` to clean up only what they made.
"""

from mistral_lab import bench, suites, ui
from mistral_lab._version import __version__
from mistral_lab.client import Client, show_stream, system_prompt
from mistral_lab.errors import BadInput, DoesNotFit, EngineError, MistralLabError, TargetError
from mistral_lab.lifecycle.deploy import deploy
from mistral_lab.lifecycle.notebook import connect_or_deploy, find_or_deploy, teardown_if_made, the_only
from mistral_lab.lifecycle.status import cost_so_far, hours_up, logs, status
from mistral_lab.lifecycle.teardown import TeardownReport, teardown
from mistral_lab.options import Secrets
from mistral_lab.planning import Plan, PlanRequest, collect, load_preset, make_plan, require_fit, split
from mistral_lab.planning.show import plan_json, show_plan
from mistral_lab.session import Connection, connect
from mistral_lab.state import Deployment

__all__ = ["BadInput", "Client", "Connection", "Deployment", "DoesNotFit", "EngineError", "MistralLabError", "Plan",
           "PlanRequest", "Secrets", "TargetError", "TeardownReport", "__version__", "bench", "collect", "connect",
           "connect_or_deploy", "cost_so_far", "deploy", "find_or_deploy", "hours_up", "load_preset", "logs",
           "make_plan", "plan_json", "require_fit", "show_plan", "show_stream", "split", "status", "suites",
           "system_prompt", "teardown", "teardown_if_made", "the_only", "ui"]
