"""The one error envelope: every error the node answers is this JSON object.

The HTTP stack uses it for the errors it produces itself (framing, limits,
routing); the routes layer uses the same function, so a client parses one
shape whatever went wrong and wherever.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

# The codes the stack itself answers with, by status.
CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    431: "request_header_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}

INTERNAL_MESSAGE = "internal error; the node keeps serving (please report this as a bug)"


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """`{"error": code, "message": message, ...extra}` as JSON bytes."""
    return orjson.dumps({"error": code, "message": message, **extra})


def code_for(status: int) -> str:
    """The error code for a bare status (a router that answers only a number)."""
    code = CODES.get(status)
    if code is not None:
        return code
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"status_{status}"
    return "".join(c if c.isalnum() else "_" for c in phrase if c != "'")
