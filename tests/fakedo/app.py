"""The WSGI side of the fake: routes, auth, scopes, rate limits, pagination, faults, the request log and the
conformance check of every response, on werkzeug.

werkzeug because it is small, well kept and synchronous: its threaded dev server runs in a thread of the test
process, its routing map names every route, and nothing here needs an event loop.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from . import conformance, quirks
from .state import ApiError, LogEntry, State

Handler = Callable[[Request, State, dict[str, Any]], tuple[int, dict[str, Any] | None]]

# (method, rule, handler name, the spec's operationId)
_ROUTES: list[tuple[str, str, str, str]] = [
    ("GET", "/v2/account", "account", "account_get"),
    ("GET", "/v2/sizes", "sizes", "sizes_list"),
    ("GET", "/v2/regions", "regions", "regions_list"),
    ("GET", "/v2/images", "images", "images_list"),
    ("GET", "/v2/droplets", "droplets_list", "droplets_list"),
    ("POST", "/v2/droplets", "droplets_create", "droplets_create"),
    ("DELETE", "/v2/droplets", "droplets_destroy_by_tag", "droplets_destroy_byTag"),
    ("GET", "/v2/droplets/<int:droplet_id>", "droplets_get", "droplets_get"),
    ("DELETE", "/v2/droplets/<int:droplet_id>", "droplets_destroy", "droplets_destroy"),
    ("GET", "/v2/droplets/<int:droplet_id>/actions", "droplet_actions_list", "dropletActions_list"),
    ("GET", "/v2/droplets/<int:droplet_id>/actions/<int:action_id>", "droplet_actions_get",
     "dropletActions_get"),
    ("GET", "/v2/actions/<int:action_id>", "actions_get", "actions_get"),
    ("GET", "/v2/account/keys", "keys_list", "sshKeys_list"),
    ("POST", "/v2/account/keys", "keys_create", "sshKeys_create"),
    ("GET", "/v2/account/keys/<ident>", "keys_get", "sshKeys_get"),
    ("DELETE", "/v2/account/keys/<ident>", "keys_delete", "sshKeys_delete"),
    ("GET", "/v2/firewalls", "firewalls_list", "firewalls_list"),
    ("POST", "/v2/firewalls", "firewalls_create", "firewalls_create"),
    ("GET", "/v2/firewalls/<fw_id>", "firewalls_get", "firewalls_get"),
    ("PUT", "/v2/firewalls/<fw_id>", "firewalls_update", "firewalls_update"),
    ("DELETE", "/v2/firewalls/<fw_id>", "firewalls_delete", "firewalls_delete"),
    ("POST", "/v2/tags", "tags_create", "tags_create"),
    ("GET", "/v2/tags/<name>", "tags_get", "tags_get"),
    ("DELETE", "/v2/tags/<name>", "tags_delete", "tags_delete"),
    ("GET", "/v2/volumes", "volumes_list", "volumes_list"),
    ("POST", "/v2/volumes", "volumes_create", "volumes_create"),
    ("GET", "/v2/volumes/<volume_id>", "volumes_get", "volumes_get"),
    ("DELETE", "/v2/volumes/<volume_id>", "volumes_delete", "volumes_delete"),
    ("POST", "/v2/volumes/<volume_id>/actions", "volume_actions_post", "volumeActions_post_byId"),
    ("GET", "/v2/volumes/<volume_id>/actions/<int:action_id>", "volume_actions_get", "volumeActions_get"),
]


def route_key(method: str, rule: str) -> str:
    """`GET /v2/droplets/<int:droplet_id>` -> `GET /v2/droplets/{id}`: the names tests use for counting and faults."""
    return f"{method} " + re.sub(r"<[^>]+>", "{id}", rule)


ROUTE_KEYS = sorted({route_key(m, r) for m, r, _, _ in _ROUTES})
OPERATION_IDS = {route_key(m, r): op for m, r, _, op in _ROUTES}

# Scopes the spec asks for beyond the operation's own, when a request names another kind of resource (the
# notes "Requires `x:y` scope." in droplets/models/droplet_create.yml, droplets/parameters.yml and
# droplets/droplets_destroy_byTag.yml).
_BODY_SCOPES = {"droplets_create": {"image": "image:read", "ssh_keys": "ssh_key:read", "tags": "tag:create",
                                    "vpc_uuid": "vpc:read"}}
_QUERY_SCOPES = {"droplets_list": {"tag_name": "tag:read"},
                 "droplets_destroy_byTag": {"tag_name": "tag:read"}}

# (operationId, status) whose error body is the spec's `error_with_root_causes` ({error, messages,
# root_causes}), not the usual {id, message}: tags_create.yml answers 400 with tags_bad_request.yml.
_ROOT_CAUSE_ERRORS = {("tags_create", 400)}

# Every operation's `default` response is the shared unexpected_error.yml: the shape of an answer to a request
# that matched no route.
_UNROUTED = "account_get"


def required_scopes(route: str) -> tuple[tuple[str, ...], ...]:
    """The spec's scope alternatives for a route key ("POST /v2/droplets"): a token must hold all of one."""
    return conformance.operations()[OPERATION_IDS[route]].security


# `api:read` / `api:write` beside a resource's own scope (volumes_list, volumes_create) are the legacy read and
# read-write token scopes, not scopes a custom-scoped token is asked to hold as well.
_LEGACY_SCOPES = {"api:read", "api:write"}


def _missing_scopes(operation_id: str, req: Request, body: Any, held: frozenset[str]) -> list[str]:
    alternatives = [tuple(s for s in alt if s not in _LEGACY_SCOPES) or alt
                    for alt in conformance.operations()[operation_id].security or ((),)]
    extra = [scope for key, scope in _BODY_SCOPES.get(operation_id, {}).items()
             if isinstance(body, dict) and body.get(key)]
    extra += [scope for key, scope in _QUERY_SCOPES.get(operation_id, {}).items() if req.args.get(key)]
    gaps = [[s for s in (*alt, *extra) if s not in held] for alt in alternatives]
    return min(gaps, key=len)


def _json(req: Request) -> dict[str, Any]:
    try:
        body = json.loads(req.get_data(as_text=True) or "{}")
    except json.JSONDecodeError:
        raise ApiError(400) from None
    if not isinstance(body, dict):
        raise ApiError(400)
    return body


def _page(req: Request, items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """One page in DO's shape: `links.pages.{first,prev,next,last}` as full URLs and `meta.total`."""
    try:
        per_page = min(max(int(req.args.get("per_page", 20)), 1), 200)
        page = max(int(req.args.get("page", 1)), 1)
    except ValueError:
        raise ApiError(400, "page and per_page must be integers") from None
    total = len(items)
    last = max((total + per_page - 1) // per_page, 1)
    start = (page - 1) * per_page

    def url(n: int) -> str:
        args = {k: v for k, v in req.args.items() if k not in ("page", "per_page")}
        return f"{req.base_url}?{urlencode({**args, 'page': n, 'per_page': per_page})}"

    pages: dict[str, str] = {}
    if page > 1:
        pages.update(first=url(1), prev=url(page - 1))
    if page < last:
        pages.update(next=url(page + 1), last=url(last))
    return {key: items[start:start + per_page], "links": {"pages": pages} if pages else {}, "meta": {"total": total}}


def _h_account(req, st, kw):
    return 200, {"account": st.account()}


def _h_sizes(req, st, kw):
    return 200, _page(req, st.sizes, "sizes")


def _h_regions(req, st, kw):
    return 200, _page(req, st.regions(), "regions")


def _h_images(req, st, kw):
    return 200, _page(req, [st.image_body(i) for i in st.images], "images")


def _h_droplets_list(req, st, kw):
    items = st.list_droplets(tag_name=req.args.get("tag_name"), name=req.args.get("name"), type_=req.args.get("type"))
    return 200, _page(req, items, "droplets")


def _h_droplets_create(req, st, kw):
    fake = st.create_droplet(_json(req))
    if st.create_delay:
        time.sleep(st.create_delay)
    href = f"{req.host_url}v2/actions/{fake.action_id}"
    return 202, {"droplet": dict(fake.body),
                 "links": {"actions": [{"id": fake.action_id, "rel": "create", "href": href}]}}


def _h_droplets_destroy_by_tag(req, st, kw):
    st.destroy_by_tag(req.args.get("tag_name"))
    return 204, None


def _h_droplets_get(req, st, kw):
    return 200, {"droplet": st.droplet(kw["droplet_id"])}


def _h_droplets_destroy(req, st, kw):
    st.destroy_droplet(kw["droplet_id"])
    return 204, None


def _h_droplet_actions_list(req, st, kw):
    return 200, _page(req, st.droplet_actions(kw["droplet_id"]), "actions")


def _h_droplet_actions_get(req, st, kw):
    return 200, {"action": st.droplet_action(kw["droplet_id"], kw["action_id"])}


def _h_actions_get(req, st, kw):
    return 200, {"action": st.action(kw["action_id"])}


def _h_keys_list(req, st, kw):
    with st.lock:
        keys = [dict(k) for k in st.ssh_keys.values()]
    return 200, _page(req, keys, "ssh_keys")


def _h_keys_create(req, st, kw):
    return 201, {"ssh_key": st.create_key(_json(req))}


def _h_keys_get(req, st, kw):
    return 200, {"ssh_key": dict(st.find_key(kw["ident"]))}


def _h_keys_delete(req, st, kw):
    st.delete_key(kw["ident"])
    return 204, None


def _h_firewalls_list(req, st, kw):
    with st.lock:
        fws = [dict(f) for f in st.firewalls.values()]
    return 200, _page(req, fws, "firewalls")


def _h_firewalls_create(req, st, kw):
    return 202, {"firewall": st.create_firewall(_json(req))}


def _h_firewalls_get(req, st, kw):
    return 200, {"firewall": st.firewall(kw["fw_id"])}


def _h_firewalls_update(req, st, kw):
    return 200, {"firewall": st.update_firewall(kw["fw_id"], _json(req))}


def _h_firewalls_delete(req, st, kw):
    st.delete_firewall(kw["fw_id"])
    return 204, None


def _h_tags_create(req, st, kw):
    return 201, {"tag": st.create_tag(_json(req).get("name"))}


def _h_tags_get(req, st, kw):
    if kw["name"] not in st.tags:
        raise ApiError(404)
    return 200, {"tag": st.tag_body(kw["name"])}


def _h_tags_delete(req, st, kw):
    st.delete_tag(kw["name"])
    return 204, None


def _h_volumes_list(req, st, kw):
    return 200, _page(req, st.list_volumes(name=req.args.get("name"), region=req.args.get("region")), "volumes")


def _h_volumes_create(req, st, kw):
    return 201, {"volume": st.create_volume(_json(req))}


def _h_volumes_get(req, st, kw):
    return 200, {"volume": st.volume(kw["volume_id"])}


def _h_volumes_delete(req, st, kw):
    st.delete_volume(kw["volume_id"])
    return 204, None


def _h_volume_actions_post(req, st, kw):
    return 202, {"action": st.volume_action(kw["volume_id"], _json(req))}


def _h_volume_actions_get(req, st, kw):
    return 200, {"action": st.volume_action_get(kw["volume_id"], kw["action_id"])}


_HANDLERS: dict[str, Handler] = {name: globals()[f"_h_{name}"] for _, _, name, _ in _ROUTES}


class FakeDOApp:
    """A WSGI app speaking DigitalOcean API v2 against a `State`; every answer is checked against the spec."""

    def __init__(self, state: State):
        self.state = state
        self.url_map = Map([Rule(rule, endpoint=(name, route_key(m, rule), op), methods=[m])
                            for m, rule, name, op in _ROUTES], strict_slashes=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        req = Request(environ)
        resp = self.handle(req)
        return resp(environ, start_response)

    @staticmethod
    def _error(err: ApiError, operation_id: str) -> Response:
        body = err.body()
        if (operation_id, err.status) in _ROOT_CAUSE_ERRORS:
            body = {"error": err.message, "messages": None,
                    "root_causes": [f"rpc error: code = InvalidArgument desc = {err.message}"]}
        return Response(json.dumps(body), status=err.status, content_type="application/json; charset=utf-8")

    def _gate(self, req: Request, route: str, operation_id: str) -> None:
        """What a request meets before the handler: the token, its rate limits, its scopes."""
        st = self.state
        given = req.headers.get("Authorization", "").removeprefix("Bearer ")
        if given == st.token:
            scopes = st.scopes
        elif given and given in st.other_tokens:
            scopes = st.other_tokens[given]
        else:
            raise ApiError(401)
        refused = st.admit(route)
        if refused is not None:
            raise refused
        if scopes is not None:
            try:
                body = json.loads(req.get_data(as_text=True) or "{}")
            except json.JSONDecodeError:
                body = {}
            if _missing_scopes(operation_id, req, body, scopes):
                raise ApiError(403, quirks.NOT_AUTHORIZED)

    def handle(self, req: Request) -> Response:
        st = self.state
        route, operation_id = f"{req.method} {req.path}", _UNROUTED
        error_headers: dict[str, str] = {}
        try:
            try:
                (name, route, operation_id), kwargs = self.url_map.bind_to_environ(req.environ).match()
            except NotFound:
                raise ApiError(404) from None
            except MethodNotAllowed:
                raise ApiError(405, "Method not allowed") from None
            except HTTPException as e:
                raise ApiError(e.code or 400, e.description) from None
            self._gate(req, route, operation_id)
            fault = st.faults.take(route)
            if fault and fault.delay:
                time.sleep(fault.delay)
            if fault and fault.status and not fault.after_commit:
                raise self._fault_error(fault)
            status, body = _HANDLERS[name](req, st, kwargs)
            if fault and fault.status and fault.after_commit:
                raise self._fault_error(fault)
            if status == 204:
                resp = Response(b"", status=204, content_type="application/json; charset=utf-8")
            else:
                resp = Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")
        except ApiError as err:
            resp, error_headers = self._error(err, operation_id), err.headers
        resp.headers.update(st.rate_headers())
        resp.headers.update(error_headers)  # after: a burst-limit 429 shows ratelimit-remaining 0
        resp.headers["x-request-id"] = str(uuid.uuid4())
        st.conformance.check(operation_id, route, resp.status_code, dict(resp.headers), resp.get_data())
        st.record(LogEntry(req.method, req.path, route, resp.status_code, req.query_string.decode(), time.time()))
        return resp

    @staticmethod
    def _fault_error(fault: Any) -> ApiError:
        headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.status == 429 and "retry-after" not in headers:
            headers["retry-after"] = "1"
        return ApiError(fault.status, fault.message, headers=headers)
