"""A thin, careful layer over pydo: token from the environment, our own retries, real status codes, pagination.

Why not pydo's defaults:
- its retry policy retries POST (on 500/503/504 and on anything carrying Retry-After), which can create a droplet
  twice; the client here is built with `retry_total=0` and `_call` retries only what is safe: any request answered
  429 (the API did not process it) after `retry-after`, and idempotent methods (GET, PUT, DELETE) on 5xx and
  connection errors. A failed POST is surfaced, and the caller recovers idempotently (looks up by tag first).
- several pydo calls *return* the 404 error body instead of raising; every call here passes `cls=` to get the
  real status code back, so a 404 is None and any other non-success is a `DOApiError`.
- over plain http (a local fake, a test) azure-core's bearer policy refuses to send the token; for a loopback http
  URL we pass our own policy that sets the header. Plain http to any other host is refused: it would send the token
  in clear.

The token is read from DIGITALOCEAN_TOKEN or DIGITALOCEAN_ACCESS_TOKEN and nowhere else; it is never printed,
logged, or put into an exception message.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from mistral_lab.errors import BadInput, TargetError
from mistral_lab.options import check_token_host, is_loopback

TOKEN_ENVS = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")


@dataclass(frozen=True)
class Operation:
    """One pydo call we make: where it is on the client, its HTTP method, the success statuses we take (a 404 is
    always returned as "absent"), and the token scopes it needs (DigitalOcean's OpenAPI spec: each operation's
    `security`, and the notes "Requires `x:y` scope" in droplet_create.yml and droplets/parameters.yml;
    digitalocean/openapi, read 2026-12-07). A 403 from a custom-scoped token does not say which scope is missing
    ("You are not authorized to perform this operation."), so the error names the ones this call needs."""

    group: str
    method: str
    verb: str
    ok: tuple[int, ...]
    scopes: tuple[str, ...]


OPERATIONS: dict[str, Operation] = {
    "get account": Operation("account", "get", "GET", (200,), ("account:read",)),
    "list sizes": Operation("sizes", "list", "GET", (200,), ("sizes:read", "regions:read")),
    "list droplets": Operation("droplets", "list", "GET", (200,), ("droplet:read", "tag:read")),
    "get droplet": Operation("droplets", "get", "GET", (200,), ("droplet:read",)),
    "get droplet action": Operation("droplet_actions", "get", "GET", (200,), ("droplet:read",)),
    "create droplet": Operation("droplets", "create", "POST", (202,),
                                ("droplet:create", "image:read", "ssh_key:read", "tag:create")),
    "destroy droplet": Operation("droplets", "destroy", "DELETE", (204,), ("droplet:delete",)),
    "get ssh key": Operation("ssh_keys", "get", "GET", (200,), ("ssh_key:read",)),
    "list ssh keys": Operation("ssh_keys", "list", "GET", (200,), ("ssh_key:read",)),
    "create ssh key": Operation("ssh_keys", "create", "POST", (201,), ("ssh_key:create",)),
    "delete ssh key": Operation("ssh_keys", "delete", "DELETE", (204,), ("ssh_key:delete",)),
    "list firewalls": Operation("firewalls", "list", "GET", (200,), ("firewall:read",)),
    "create firewall": Operation("firewalls", "create", "POST", (202,), ("firewall:create",)),
    "update firewall": Operation("firewalls", "update", "PUT", (200,), ("firewall:update",)),
    "delete firewall": Operation("firewalls", "delete", "DELETE", (204,), ("firewall:delete",)),
    "create tag": Operation("tags", "create", "POST", (201,), ("tag:create",)),
    "delete tag": Operation("tags", "delete", "DELETE", (204,), ("tag:delete",)),
}
# The calls only a cache volume makes (hosts/do_volumes.py): a token without their scopes still deploys without one.
# Scopes from the same spec files (specification/resources/volumes/*.yml; volumes_list and volumes_create also list
# the legacy `api:read` / `api:write`, which a custom-scoped token does not hold).
CACHE_OPERATIONS: dict[str, Operation] = {
    "list volumes": Operation("volumes", "list", "GET", (200,), ("block_storage:read",)),
    "get volume": Operation("volumes", "get", "GET", (200,), ("block_storage:read",)),
    "create volume": Operation("volumes", "create", "POST", (201,), ("block_storage:create",)),
    "delete volume": Operation("volumes", "delete", "DELETE", (204,), ("block_storage:delete",)),
    "post volume action": Operation("volume_actions", "post_by_id", "POST", (202,),
                                    ("block_storage_action:create",)),
    "get volume action": Operation("volume_actions", "get", "GET", (200,), ("block_storage_action:read",)),
}
OPERATION_SCOPES = {name: op.scopes for name, op in {**OPERATIONS, **CACHE_OPERATIONS}.items()}
REQUIRED_SCOPES: tuple[str, ...] = tuple(sorted({s for op in OPERATIONS.values() for s in op.scopes}))
CACHE_SCOPES: tuple[str, ...] = tuple(sorted({s for op in CACHE_OPERATIONS.values() for s in op.scopes}))
# A second DELETE while the first destroy is under way (DigitalOcean serialises a droplet's events).
PENDING_EVENT = "already has a pending event"
API_URL_ENV = "DIGITALOCEAN_API_URL"
DEFAULT_API_URL = "https://api.digitalocean.com"
TOKEN_REFUSED = "the token was refused"
SAFE_METHODS = frozenset({"GET", "PUT", "DELETE"})


class DOApiError(TargetError):
    """The API answered with an error (or not at all: status None)."""

    def __init__(self, status: int | None, error_id: str | None, message: str, *, operation: str,
                 fix: str | None = None):
        self.status = status
        self.error_id = error_id
        self.api_message = message
        self.operation = operation
        code = f"{status} {error_id}" if status else "no answer"
        super().__init__(f"DigitalOcean {operation}: {code}: {message}", fix=fix)


class TokenRefused(DOApiError):
    pass


def read_token() -> str:
    for name in TOKEN_ENVS:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    raise BadInput("no DigitalOcean API token in the environment", field="DIGITALOCEAN_TOKEN",
                   fix="export DIGITALOCEAN_TOKEN=... (a personal access token; a custom-scoped one needs "
                       f"{', '.join(REQUIRED_SCOPES)}); it is read from the environment only")


def api_url(override: str | None = None) -> str:
    """The API base URL: the `api_url` option, else DIGITALOCEAN_API_URL, else DigitalOcean's. An option (a preset
    or a flag, which someone else may have written) may only send the token elsewhere with the environment's
    consent (`MISTRAL_LAB_TOKEN_HOSTS`)."""
    url = (override or os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadInput(f"not an http(s) URL: {url!r}", field="api_url",
                       fix=f"pass a base URL like {DEFAULT_API_URL} (or set {API_URL_ENV})")
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise BadInput(f"refusing to send the DigitalOcean token over plain http to {parsed.hostname}",
                       field="api_url", fix="use an https:// URL; plain http is allowed only for 127.0.0.1/localhost")
    if override:
        check_token_host(url, field="api_url", default_host=urlparse(DEFAULT_API_URL).hostname or "",
                         token="DIGITALOCEAN_TOKEN")
    return url


def _bearer_policy(token: str) -> Any:
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class StaticBearer(SansIOHTTPPolicy):
        """Sets the bearer header without azure-core's https check; used only for loopback http URLs."""

        def on_request(self, request: Any) -> None:
            request.http_request.headers["Authorization"] = f"Bearer {token}"

    return StaticBearer()


def _capture(pipeline_response: Any, body: Any, headers: Any) -> tuple[int, Any, dict[str, Any]]:
    return pipeline_response.http_response.status_code, body, dict(headers or {})


def _hourly_limit_spent(response: Any) -> bool:
    """A 429 without retry-after and with nothing remaining is the hourly limit (5,000 requests), not the
    per-minute one: waiting seconds will not help (DigitalOcean's API reference, "Rate Limit": only the burst
    limit's 429 carries retry-after)."""
    headers = getattr(response, "headers", None) or {}
    return "retry-after" not in {k.lower() for k in headers} and str(headers.get("ratelimit-remaining", "")) == "0"


def _reset_hint(response: Any) -> str:
    reset = (getattr(response, "headers", None) or {}).get("ratelimit-reset")
    try:
        at = time.strftime("%H:%M:%S UTC", time.gmtime(int(reset)))
    except (TypeError, ValueError):
        at = "within the hour"
    return f"wait until the limit resets ({at}); a teardown is safe to run again then: it finds what is left"


def _error_fields(response: Any) -> tuple[str | None, str]:
    try:
        body = response.json()
    except Exception:
        return None, (getattr(response, "text", lambda: "")() or "")[:200]
    return _body_error(body)


def _body_error(body: Any) -> tuple[str | None, str]:
    if isinstance(body, dict):
        # {id, message} almost everywhere; tag creation answers {error, messages, root_causes} (tags_bad_request).
        text = body.get("message") or "; ".join(str(x) for x in [body.get("error"), *(body.get("root_causes") or [])]
                                                if x)
        return body.get("id"), str(text or body)[:500]
    return None, str(body)[:200]


@dataclass
class CallStats:
    requests: int = 0
    retries: int = 0
    waited_s: float = 0.0
    ratelimit_remaining: int | None = None


class DOApi:
    """DigitalOcean API v2 through pydo, with the rules above. Methods return plain dicts (DO's JSON)."""

    def __init__(self, url: str | None = None, *, max_attempts: int = 6, max_wait_s: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep, token: str | None = None):
        """`token`: another token than the environment's DIGITALOCEAN_TOKEN (a narrowly scoped one)."""
        import pydo

        self.url = api_url(url)
        token = token or read_token()
        kwargs: dict[str, Any] = {"endpoint": self.url, "retry_total": 0, "connection_timeout": 15,
                                  "read_timeout": 120}
        if self.url.startswith("http://"):
            kwargs["authentication_policy"] = _bearer_policy(token)
        self._client = pydo.Client(token, **kwargs)
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self._sleep = sleep
        self.stats = CallStats()

    # ------------------------------------------------------------------ the one place that talks HTTP

    def _call(self, operation: str, method: str, fn: Callable[..., Any], *args: Any,
              ok: tuple[int, ...] = (200,), **kwargs: Any) -> tuple[int, Any]:
        """Call `fn`, retrying what is safe; returns (status, body). 404 is returned, other errors raise."""
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        attempt = 0
        while True:
            attempt += 1
            self.stats.requests += 1
            try:
                status, body, headers = fn(*args, cls=_capture, **kwargs)
            except HttpResponseError as e:
                status = e.status_code
                error_id, message = _error_fields(e.response) if e.response is not None else (None, str(e.reason))
                if status == 401:
                    raise TokenRefused(401, error_id, f"{TOKEN_REFUSED} ({message})", operation=operation,
                                       fix="check DIGITALOCEAN_TOKEN: it may be mistyped, revoked or expired") from None
                if status == 403:
                    needs = OPERATION_SCOPES.get(operation, ())
                    raise TokenRefused(403, error_id, f"{message} — the token lacks a scope this call needs: "
                                       f"{', '.join(needs) or 'unknown'}", operation=operation,
                                       fix=f"give the token these scopes (all a deploy uses: "
                                           f"{', '.join(REQUIRED_SCOPES)}"
                                           + (f"; a cache volume also {', '.join(CACHE_SCOPES)}"
                                              if operation in CACHE_OPERATIONS else "")
                                           + "), or use a full-access token") from None
                if status == 429 and _hourly_limit_spent(e.response):
                    raise DOApiError(429, error_id, f"the hourly API limit of this token is spent ({message})",
                                     operation=operation, fix=_reset_hint(e.response)) from None
                if status == 429 and attempt < self.max_attempts:
                    self._wait(self._retry_after(e.response, attempt))
                    continue
                if status is not None and status >= 500 and method in SAFE_METHODS and attempt < self.max_attempts:
                    self._wait(self._backoff(attempt))
                    continue
                raise DOApiError(status, error_id, message, operation=operation) from None
            except (ServiceRequestError, ServiceResponseError) as e:
                # ServiceRequestError: never sent, safe to repeat for any method. ServiceResponseError: sent, answer
                # lost: the request may have been carried out, so only idempotent methods are repeated.
                may_retry = isinstance(e, ServiceRequestError) or method in SAFE_METHODS
                if may_retry and attempt < self.max_attempts:
                    self._wait(self._backoff(attempt))
                    continue
                raise DOApiError(None, None, f"{type(e).__name__}: {e.message}", operation=operation) from None
            remaining = headers.get("ratelimit-remaining")
            if isinstance(remaining, int):
                self.stats.ratelimit_remaining = remaining
            if status in ok or status == 404:
                return status, body
            # pydo returns some error bodies instead of raising (a 400 on tag or firewall create).
            error_id, message = _body_error(body)
            raise DOApiError(status, error_id, message, operation=operation)

    def _retry_after(self, response: Any, attempt: int) -> float:
        value = response.headers.get("retry-after") if response is not None else None
        try:
            return min(max(float(value), 0.0), self.max_wait_s)
        except (TypeError, ValueError):
            return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return min(0.5 * 2 ** (attempt - 1) + random.uniform(0, 0.25), self.max_wait_s)

    def _wait(self, seconds: float) -> None:
        self.stats.retries += 1
        self.stats.waited_s += seconds
        self._sleep(seconds)

    def _op(self, operation: str, /, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        op = OPERATIONS.get(operation) or CACHE_OPERATIONS[operation]
        fn = getattr(getattr(self._client, op.group), op.method)
        return self._call(operation, op.verb, fn, *args, ok=op.ok, **kwargs)

    def _all(self, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of a list call (per_page=200, following links.pages.next)."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            _, body = self._op(operation, per_page=200, page=page, **params)
            items.extend(body.get(key) or [])
            nxt = ((body.get("links") or {}).get("pages") or {}).get("next")
            if not nxt:
                return items
            page = int(parse_qs(urlparse(nxt).query).get("page", [page + 1])[0])

    # ------------------------------------------------------------------ account, catalog

    def account(self) -> dict[str, Any]:
        return self._op("get account")[1]["account"]

    def sizes(self) -> list[dict[str, Any]]:
        return self._all("list sizes", "sizes")

    # ------------------------------------------------------------------ droplets

    def list_droplets(self, *, tag_name: str | None = None, gpus: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"tag_name": tag_name} if tag_name else {}
        if gpus:
            params["type"] = "gpus"
        return self._all("list droplets", "droplets", **params)

    def get_droplet(self, droplet_id: int) -> dict[str, Any] | None:
        status, body = self._op("get droplet", droplet_id)
        return None if status == 404 else body["droplet"]

    def create_droplet(self, body: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """The new droplet (status `new`) and the id of its create action, which says whether it succeeds."""
        _, out = self._op("create droplet", body=body)
        actions = (out.get("links") or {}).get("actions") or []
        action = next((a.get("id") for a in actions if a.get("rel") == "create"), None)
        return out["droplet"], action

    def get_droplet_action(self, droplet_id: int, action_id: int) -> dict[str, Any] | None:
        status, body = self._op("get droplet action", droplet_id, action_id)
        return None if status == 404 else body["action"]

    def destroy_droplet(self, droplet_id: int) -> bool:
        """True if a destroy was started now, False if it was gone or already going (destroy is asynchronous: the
        droplet stays listed a while, and a second DELETE then answers 422 "already has a pending event")."""
        try:
            status, _ = self._op("destroy droplet", droplet_id)
        except DOApiError as e:
            if e.status == 422 and PENDING_EVENT in e.api_message.lower():
                return False
            raise
        return status != 404

    # ------------------------------------------------------------------ ssh keys

    def get_ssh_key(self, ident: str | int) -> dict[str, Any] | None:
        status, body = self._op("get ssh key", ident)
        return None if status == 404 else body["ssh_key"]

    def list_ssh_keys(self) -> list[dict[str, Any]]:
        return self._all("list ssh keys", "ssh_keys")

    def create_ssh_key(self, name: str, public_key: str) -> dict[str, Any]:
        body = {"name": name, "public_key": public_key}
        return self._op("create ssh key", body=body)[1]["ssh_key"]

    def delete_ssh_key(self, ident: str | int) -> bool:
        status, _ = self._op("delete ssh key", ident)
        return status != 404

    # ------------------------------------------------------------------ firewalls, tags

    def list_firewalls(self) -> list[dict[str, Any]]:
        return self._all("list firewalls", "firewalls")

    def create_firewall(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._op("create firewall", body=body)[1]["firewall"]

    def update_firewall(self, firewall_id: str, body: dict[str, Any]) -> dict[str, Any]:
        status, out = self._op("update firewall", firewall_id, body=body)
        if status == 404:
            raise DOApiError(404, "not_found", f"firewall {firewall_id} is gone", operation="update firewall")
        return out["firewall"]

    def delete_firewall(self, firewall_id: str) -> bool:
        status, _ = self._op("delete firewall", firewall_id)
        return status != 404

    def create_tag(self, name: str) -> None:
        self._op("create tag", body={"name": name})

    def delete_tag(self, name: str) -> bool:
        status, _ = self._op("delete tag", name)
        return status != 404

    # ------------------------------------------------------------------ volumes (a cache volume only)

    def list_volumes(self, *, name: str | None = None, region: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("name", name), ("region", region)) if v}
        return self._all("list volumes", "volumes", **params)

    def get_volume(self, volume_id: str) -> dict[str, Any] | None:
        status, body = self._op("get volume", volume_id)
        return None if status == 404 else body["volume"]

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._op("create volume", body=body)[1]["volume"]

    def delete_volume(self, volume_id: str) -> bool:
        status, _ = self._op("delete volume", volume_id)
        return status != 404

    def volume_action(self, volume_id: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Start an attach or detach; the action (in progress), None when the volume or droplet is not found
        (a detach from a droplet it is not attached to answers 404 too)."""
        status, out = self._op("post volume action", volume_id, body=body)
        return None if status == 404 else out["action"]

    def get_volume_action(self, volume_id: str, action_id: int) -> dict[str, Any] | None:
        status, body = self._op("get volume action", volume_id, action_id)
        return None if status == 404 else body["action"]
