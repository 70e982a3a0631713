"""Every route of vLLM's server behind its API key, loaded into the server with `--middleware`.

vLLM's own `--api-key` guards only the paths under /v1, /v2, /inference and /cohere; /invocations, /tokenize,
/metrics, /openapi.json and the rest answer anyone who can reach the port, and on a shared host every local user
can reach 127.0.0.1. This ASGI middleware asks the same key (VLLM_API_KEY, from the server's 0600 env file) of
every request. Standard library only: it runs in vLLM's own environment.
"""

import hashlib
import hmac
import os

_KEY = hashlib.sha256(os.environ.get("VLLM_API_KEY", "").encode()).digest()
_UNAUTHORIZED = b'{"error": "Unauthorized: this server needs its API key on every route"}'


def _has_key(scope):
    headers = dict(scope.get("headers") or [])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    given = hashlib.sha256(token.strip().encode("latin-1")).digest()
    return bool(os.environ.get("VLLM_API_KEY")) and scheme.lower() == "bearer" and hmac.compare_digest(given, _KEY)


class EveryRoute:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or _has_key(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(_UNAUTHORIZED)).encode())]})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
