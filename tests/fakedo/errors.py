"""The fake's error answers: DigitalOcean's `{id, message}` bodies and its error ids, shared by every resource."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from .quirks import RATE_LIMITED

TAG_RE = re.compile(r"^[a-zA-Z0-9_\-:]+$")

ERROR_IDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
             422: "unprocessable_entity", 429: "too_many_requests", 500: "server_error", 503: "service_unavailable"}
DEFAULT_MESSAGES = {
    400: "error parsing request body",
    401: "Unable to authenticate you",
    404: "The resource you were accessing could not be found.",
    403: "You do not have access for the attempted action.",
    429: RATE_LIMITED,
    500: "Server was unable to give you a response.",
    503: "Service is temporarily unavailable.",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.status = status
        self.message = message or DEFAULT_MESSAGES.get(status, "error")
        self.headers = headers or {}
        super().__init__(f"{status} {self.message}")

    def body(self) -> dict[str, Any]:
        return {"id": ERROR_IDS.get(self.status, "error"), "message": self.message}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
