"""Access to the files under `mistral_lab/infra/`: the shell that runs on hosts, and its jinja2 templates.

Scripts are plain files so shellcheck can read them; templates are rendered with StrictUndefined so a missing
value fails here, not on a droplet.
"""

from __future__ import annotations

import shlex
from importlib import resources

import jinja2

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("mistral_lab", "infra"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
_env.filters["q"] = lambda v: shlex.quote(str(v))
_env.filters["qjoin"] = lambda argv: shlex.join([str(a) for a in argv])


def read(filename: str) -> str:
    return resources.files("mistral_lab").joinpath("infra", filename).read_text(encoding="utf-8")


def render(template: str, /, **values: object) -> str:
    return _env.get_template(template).render(**values)


def with_env(script: str, env: dict[str, str]) -> str:
    """Prefix a script with exported variables, quoted, so values reach it without a command line."""
    lines = [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
    return "\n".join([*lines, script]) if lines else script
