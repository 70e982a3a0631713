"""The files under the top-level `infra/` folder: the shell that runs on hosts, and its jinja2 templates.

`infra/` ships inside the wheel as the resource package `mistral_lab.infra` (pyproject maps the folder there),
so an install and a checkout find it the same way. Scripts are plain files so shellcheck can read them;
templates are rendered with StrictUndefined so a missing value fails here, not on a droplet.
"""

from __future__ import annotations

import shlex
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2

__all__ = ["path", "read", "render", "render_html", "with_env"]

PACKAGE = "mistral_lab.infra"


@cache
def _folder() -> Path:
    return Path(str(resources.files(PACKAGE)))


@cache
def _env(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_folder()), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=html)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["qjoin"] = lambda argv: shlex.join([str(a) for a in argv])
    return env


def path(filename: str) -> Path:
    """Where an infra file lies on this machine (to run it locally or hand it to shellcheck)."""
    return _folder() / filename


def read(filename: str) -> str:
    return path(filename).read_text(encoding="utf-8")


def render(template: str, /, **values: object) -> str:
    """A shell or config template: values go in as they are (quote them with the `q` filter)."""
    return _env(False).get_template(template).render(**values)


def render_html(template: str, /, **values: object) -> str:
    """An HTML template: values are escaped."""
    return _env(True).get_template(template).render(**values)


def with_env(script: str, env: dict[str, str]) -> str:
    """Prefix a script with exported variables, quoted, so values reach it without a command line."""
    lines = [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
    return "\n".join([*lines, script]) if lines else script
