"""Planning: parameters in, a Plan out. `resolve` is pure; `make_plan` adds this machine's facts and live prices;
`parameters` reads presets and papermill/CLI values; `predict` forecasts decode speed, throughput and $/Mtok.
Showing a plan with its engine's serve command is `planning.show`, which sits above the engines and is imported
from there (or from `mistral_lab`)."""

from mistral_lab.planning.make import local_size, make_plan
from mistral_lab.planning.parameters import collect, load_preset, split
from mistral_lab.planning.predict import Efficiency, Prediction, predict_plan
from mistral_lab.planning.request import PlanRequest, request
from mistral_lab.planning.resolve import DEFAULT_CONTEXT, MIN_CONTEXT, Plan, require_fit, resolve

__all__ = ["DEFAULT_CONTEXT", "MIN_CONTEXT", "Efficiency", "Plan", "PlanRequest", "Prediction", "collect",
           "load_preset", "local_size", "make_plan", "predict_plan", "request", "require_fit", "resolve", "split"]
