"""Planning: parameters in, a Plan out. `resolve` is pure; `make_plan` adds this machine's facts when the plan is
for it; `parameters` reads presets and papermill/CLI values; `show` prints a plan with its engine's serve command."""

from mistral_lab.planning.parameters import collect, load_preset, split
from mistral_lab.planning.request import PlanRequest, request
from mistral_lab.planning.resolve import DEFAULT_CONTEXT, MIN_CONTEXT, Plan, require_fit, resolve
from mistral_lab.planning.show import local_size, make_plan, plan_json, plan_table, serve_preview, show_plan

__all__ = ["DEFAULT_CONTEXT", "MIN_CONTEXT", "Plan", "PlanRequest", "collect", "load_preset", "local_size",
           "make_plan", "plan_json", "plan_table", "request", "require_fit", "resolve", "serve_preview", "split",
           "show_plan"]
