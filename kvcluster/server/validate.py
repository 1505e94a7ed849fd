"""Turning what a client sent into values the node layer can trust, or a clear 4xx.

Every check of client input the routes make lives here, once: JSON bodies,
keys and values within their limits, the retry session, member addresses,
query arguments. A failed check raises `ApiError`, which the routes answer
with the one error envelope.
"""

from __future__ import annotations

from typing import Any, TypeGuard
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

import orjson

MAX_SEQ = 1 << 63  # what a 64-bit integer holds on the wire between nodes
MAX_CLIENT_ID = 128
MAX_MEMBER_ID = 64


class ApiError(Exception):
    """A request the node will not serve: answered with `status` and the envelope."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def json_object(raw: bytes, *, required: bool) -> dict[str, Any]:
    """A request body as a JSON object, or an ApiError saying what is wrong with it."""
    if not raw:
        if required:
            raise ApiError(400, "bad_request", "a JSON object body is required")
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses invalid UTF-8, lone surrogates and documents nested
        # over 1024 deep (integers beyond 64 bits become floats, which no
        # field takes): nothing it returns can fail to encode later.
        raise ApiError(400, "bad_request", _json_problem(str(exc))) from exc
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


def _json_problem(error: str) -> str:
    """orjson's complaint, said so that a person knows what to fix."""
    if "byte order mark" in error:
        return "the body is not valid JSON: it starts with a byte order mark (BOM)"
    if "depth limit" in error:
        return "the body is JSON nested too deeply (over 1024 levels)"
    if "surrogate" in error and "UTF-8" not in error:
        return f"the body is not valid Unicode: a string holds a lone surrogate ({error})"
    if "UTF-8" in error:
        return f"the body is not valid UTF-8 ({error})"
    return f"the body is not valid JSON: {error}"


def path_segment(raw: str, what: str) -> str:
    """A percent-encoded path segment as text (invalid unicode: 400)."""
    if raw.isascii() and "%" not in raw:
        return raw
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "bad_request", f"invalid unicode in the {what}: {raw[:40]!r} is not UTF-8"
        ) from exc


def key_from_path(raw: str, max_bytes: int) -> str:
    """The key in a /v1/kv/<key> path: percent-decoded UTF-8, within the limit."""
    key = path_segment(raw, "key")
    if not key:
        raise ApiError(400, "bad_request", "the key must not be empty: use /v1/kv/<key>")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ApiError(414, "key_too_long", f"the key is {size} bytes; the limit is {max_bytes}")
    return key


def value_of(body: dict[str, Any], max_bytes: int) -> str:
    value = body.get("value")
    if value is None:
        raise ApiError(400, "bad_request", 'the body needs a "value": {"value": "..."}')
    if not isinstance(value, str):
        raise ApiError(400, "bad_request", '"value" must be a string')
    if len(value) > max_bytes // 4 and len(value.encode("utf-8")) > max_bytes:
        raise ApiError(413, "value_too_large", f"the value is over the limit of {max_bytes} bytes")
    return value


def session_of(body: dict[str, Any]) -> tuple[str | None, int | None]:
    """The client's (client_id, seq), which make a retried write apply once."""
    client_id, seq = body.get("client_id"), body.get("seq")
    if (client_id is None) != (seq is None):
        raise ApiError(400, "bad_request", "client_id and seq go together")
    if client_id is None:
        return None, None
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID:
        raise ApiError(
            400, "bad_request", f"client_id must be a string of 1-{MAX_CLIENT_ID} characters"
        )
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < MAX_SEQ:
        raise ApiError(400, "bad_request", "seq must be an integer from 0 to 2**63 - 1")
    return client_id, seq


def nonce_of(body: dict[str, Any]) -> str | None:
    """An open-session request's nonce: retries of one open carry the same one, so
    a leader appends one entry for them however many arrive (as for a write's seq)."""
    nonce = body.get("nonce")
    if nonce is None:
        return None
    if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_CLIENT_ID:
        raise ApiError(
            400, "bad_request", f"nonce must be a string of 1-{MAX_CLIENT_ID} characters"
        )
    return nonce


def member_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MEMBER_ID:
        raise ApiError(400, "bad_request", f'"id" must be a string of 1-{MAX_MEMBER_ID} characters')
    if not value.isprintable() or "/" in value:
        raise ApiError(400, "bad_request", '"id" must be printable and hold no "/"')
    return value


def is_base_url(address: Any) -> TypeGuard[str]:
    """http(s)://host:port and nothing else: what a peer link can connect to.

    A member's address goes into the log and every node opens a link to it, so
    one it cannot parse would break every node.
    """
    if not isinstance(address, str) or not address.isascii() or not address.isprintable():
        return False
    if len(address) > 256:
        return False
    try:
        parts = urlsplit(address)
        port = parts.port  # raises ValueError if not a number in 0-65535
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and bool(port)
        and parts.username is None
        and not (parts.path or parts.query or parts.fragment)
        and not any(c in address for c in " ?#")
    )


def query_args(query: str) -> dict[str, str]:
    """The query's arguments (the last value of each), decoded as UTF-8."""
    if not query:
        return {}
    args: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
        try:
            args[name.encode("latin-1").decode("utf-8")] = value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(
                400, "bad_request", f"query argument {name[:40]!r} is not UTF-8"
            ) from exc
    return args


def choice(args: dict[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = args.get(name)
    if value is not None and value not in choices:
        raise ApiError(400, "bad_request", f"{name} must be one of {list(choices)}")
    return value


def positive_int(args: dict[str, str], name: str) -> int | None:
    """A positive integer argument; over 18 digits means "no limit" (no store is
    that large, and int() of thousands of digits is slow)."""
    text = args.get(name)
    if text is None:
        return None
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or not digits:
        raise ApiError(400, "bad_request", f"{name} must be a positive integer")
    return int(digits) if len(digits) <= 18 else None
