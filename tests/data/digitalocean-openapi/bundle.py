"""Regenerate the bundled response schemas from a checkout of github.com/digitalocean/openapi.

    python tests/data/digitalocean-openapi/bundle.py /path/to/openapi-checkout [--read-on 2026-12-07]

The spec is split into many YAML files joined by relative `$ref`s; the fake's conformance check wants one
self-contained JSON file per operation it serves. For each operation in OPERATIONS this follows the path
item in `specification/DigitalOcean-public.v2.yaml` to the operation file, resolves every `$ref` (relative
files and JSON pointers), keeps what a response check needs (status codes, header names and schemas, body
schema, the scopes a custom-scoped token needs) and drops prose and examples. Commit and date come from git.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT_SPEC = "specification/DigitalOcean-public.v2.yaml"

# (method, path) of every operation the fake serves, or that a client of ours may call next.
OPERATIONS: list[tuple[str, str]] = [
    ("get", "/v2/account"),
    ("get", "/v2/sizes"),
    ("get", "/v2/regions"),
    ("get", "/v2/images"),
    ("get", "/v2/droplets"),
    ("post", "/v2/droplets"),
    ("delete", "/v2/droplets"),
    ("get", "/v2/droplets/{droplet_id}"),
    ("delete", "/v2/droplets/{droplet_id}"),
    ("get", "/v2/droplets/{droplet_id}/actions"),
    ("get", "/v2/droplets/{droplet_id}/actions/{action_id}"),
    ("get", "/v2/actions/{action_id}"),
    ("get", "/v2/account/keys"),
    ("post", "/v2/account/keys"),
    ("get", "/v2/account/keys/{ssh_key_identifier}"),
    ("delete", "/v2/account/keys/{ssh_key_identifier}"),
    ("get", "/v2/firewalls"),
    ("post", "/v2/firewalls"),
    ("get", "/v2/firewalls/{firewall_id}"),
    ("put", "/v2/firewalls/{firewall_id}"),
    ("delete", "/v2/firewalls/{firewall_id}"),
    ("post", "/v2/tags"),
    ("get", "/v2/tags/{tag_id}"),
    ("delete", "/v2/tags/{tag_id}"),
    # A cache volume (hosts/do_volumes.py): find, create, delete; attach and detach are actions polled by id.
    ("get", "/v2/volumes"),
    ("post", "/v2/volumes"),
    ("get", "/v2/volumes/{volume_id}"),
    ("delete", "/v2/volumes/{volume_id}"),
    ("post", "/v2/volumes/{volume_id}/actions"),
    ("get", "/v2/volumes/{volume_id}/actions/{action_id}"),
]

# Schema keywords that carry prose or samples only; a response check never reads them.
_PROSE = {"description", "example", "examples", "externalDocs", "title", "summary"}
# Schema keywords whose value is a map of name -> schema, a schema, or a list of schemas.
_SCHEMA_MAPS = {"properties", "patternProperties"}
_SCHEMA_ONE = {"items", "additionalProperties", "not"}
_SCHEMA_LIST = {"allOf", "anyOf", "oneOf"}


@dataclass(frozen=True)
class Source:
    repository: str
    commit: str
    committed: str
    read: str


class SpecLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: the spec's enums hold `off` (droplet status), which YAML 1.1 reads as a boolean."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool",
                                 re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class Resolver:
    """Loads spec files on demand and replaces every `$ref` with what it points at."""

    def __init__(self, checkout: Path):
        self.checkout = checkout
        self._files: dict[Path, Any] = {}

    def load(self, path: Path) -> Any:
        path = path.resolve()
        if path not in self._files:
            self._files[path] = yaml.load(path.read_text(), Loader=SpecLoader)  # noqa: S506
        return self._files[path]

    def resolve(self, node: Any, base: Path, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [self.resolve(x, base, seen) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target_file, target, key = self._follow(node["$ref"], base)
            if key in seen:
                raise ValueError(f"recursive $ref {key}: the bundle format has no way to express it")
            resolved = self.resolve(target, target_file, (*seen, key))
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return {**resolved, **self.resolve(siblings, base, seen)} if siblings else resolved
        return {k: self.resolve(v, base, seen) for k, v in node.items()}

    def _follow(self, ref: str, base: Path) -> tuple[Path, Any, str]:
        file_part, _, pointer = ref.partition("#")
        target_file = (base.parent / file_part).resolve() if file_part else base.resolve()
        target = self.load(target_file)
        for part in filter(None, pointer.split("/")):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return target_file, target, f"{target_file}#{pointer}"


def strip_prose(schema: Any) -> Any:
    """Drop descriptions and examples from a schema, keeping property names (one is `description`)."""
    if isinstance(schema, list):
        return [strip_prose(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _PROSE or key.startswith("x-"):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip_prose(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE or key in _SCHEMA_LIST:
            out[key] = strip_prose(value)
        else:
            out[key] = value
    return out


def response_entry(response: dict[str, Any]) -> dict[str, Any]:
    content = response.get("content") or {}
    media, body = next(iter(content.items()), (None, {}))
    return {
        "headers": {name: strip_prose(h.get("schema", {}))
                    for name, h in (response.get("headers") or {}).items()},
        "content_type": media,
        "schema": strip_prose(body.get("schema")) if media else None,
    }


def operation_entry(resolver: Resolver, method: str, path: str, source: Source) -> dict[str, Any]:
    root_file = resolver.checkout / ROOT_SPEC
    path_item = resolver.load(root_file)["paths"][path]
    op_file, _, _ = resolver._follow(path_item[method]["$ref"], root_file)
    op = resolver.resolve(resolver.load(op_file), op_file)
    # OpenAPI: `security` lists alternatives; a token must hold every scope of one of them.
    security = [list(req.get("bearer_auth") or []) for req in op.get("security") or []]
    return {
        "source": {**source.__dict__, "file": str(op_file.relative_to(resolver.checkout.resolve()))},
        "operationId": op["operationId"],
        "method": method.upper(),
        "path": path,
        "security": security,
        "responses": {code: response_entry(r) for code, r in op["responses"].items()},
    }


def git_source(checkout: Path, read_on: str) -> Source:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    return Source(repository="https://github.com/digitalocean/openapi", commit=git("rev-parse", "HEAD"),
                  committed=git("log", "-1", "--format=%cs"), read=read_on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a git checkout of github.com/digitalocean/openapi")
    parser.add_argument("--read-on", default=date.today().isoformat(), help="the date the spec was read")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    resolver = Resolver(args.checkout)
    source = git_source(args.checkout, args.read_on)
    for old in args.out.glob("*.json"):
        old.unlink()
    for method, path in OPERATIONS:
        entry = operation_entry(resolver, method, path, source)
        text = json.dumps(entry, indent=1, sort_keys=True) + "\n"
        (args.out / f"{entry['operationId']}.json").write_text(text)
        print(f"{method.upper():6} {path:50} -> {entry['operationId']}.json")


if __name__ == "__main__":
    main()
