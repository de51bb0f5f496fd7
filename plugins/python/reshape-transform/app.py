"""Reshape transform: the Python sample of Squall's shared reshape (plugins/conformance/README.md).

The JavaScript (plugins/js/reshape-transform) and Rust (plugins/rust/reshape-transform) twins
produce byte-identical requests; plugins/conformance/transform-reshape.json checks all three.
"""

import json
import re

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Event,
    Request,
    TransformResult,
    TransformResult_Fail,
    TransformResult_Send,
    TransformResult_Skip,
)

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64


class ReshapeError(Exception):
    pass


# customerId -> customer_id: an ASCII capital after an ASCII lower-case letter or digit gets an
# underscore; every ASCII capital is lower-cased; nothing else changes. (Regex and translate
# tables run at C speed: the per-character loop cost ~40% of a call.)
_CAPITAL_AFTER_LOWER_OR_DIGIT = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_TO_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TO_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def ascii_upper(s: str) -> str:
    return s.upper() if s.isascii() else s.translate(_TO_ASCII_UPPER)


def ascii_lower(s: str) -> str:
    return s.lower() if s.isascii() else s.translate(_TO_ASCII_LOWER)


_SNAKE_CACHE: dict = {}
_SNAKE_CACHE_MAX = 4096


def snake_case(key: str) -> str:
    # Payloads repeat their keys (every item of a list has the same ones): remember the
    # rewrites (bounded; an instance serves one application, whose payloads look alike).
    new = _SNAKE_CACHE.get(key)
    if new is not None:
        return new
    if key.isascii() and key.islower():
        new = key  # no capital to rewrite
    else:
        new = ascii_lower(_CAPITAL_AFTER_LOWER_OR_DIGIT.sub("_", key))
    if len(_SNAKE_CACHE) < _SNAKE_CACHE_MAX:
        _SNAKE_CACHE[key] = new
    return new


def has_lone_surrogate(value) -> bool:
    # A "\ud800" escape parses into a str that cannot be encoded as UTF-8 (Python keeps a
    # valid pair as one code point, so any surrogate left is lone).
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    return False


def quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def render_path(path) -> str:
    # A path is built as nested tuples (parent, ".key" or "[i]") and joined only for an error
    # message: formatting a string for every value cost a sixth of a call.
    parts = []
    while path is not None:
        path, part = path
        parts.append(f"[{part}]" if type(part) is int else part)
    return "".join(reversed(parts))


def reshape_value(value, path, depth: int):
    if depth > MAX_DEPTH:
        raise ReshapeError(f"body nests deeper than {MAX_DEPTH} levels")
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise ReshapeError(f"number at {render_path(path)} is outside the safe integer range")
    depth += 1
    if t is list:
        return [reshape_value(v, (path, i), depth) for i, v in enumerate(value)]
    out = {}
    origin = {}
    for key in sorted(value):
        new_key = snake_case(key)
        if new_key in origin:
            raise ReshapeError(
                f"fields {quote(origin[new_key])} and {quote(key)} at {render_path(path)} "
                f"both become {quote(new_key)}"
            )
        origin[new_key] = key
        v = value[key]
        tv = type(v)
        if (tv is str or tv is bool or v is None) and depth <= MAX_DEPTH:
            out[new_key] = v  # the common leaves, without a call
        else:
            out[new_key] = reshape_value(v, (path, "." + new_key), depth)
    return out


def parse_body(body: bytes):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ReshapeError("body is not valid UTF-8")
    floats = []

    def float_token(token):
        floats.append(token)
        return 0

    def constant(token):
        raise ValueError(token)  # NaN and Infinity are not JSON

    try:
        payload = json.loads(text, parse_float=float_token, parse_constant=constant)
    except (ValueError, RecursionError):
        raise ReshapeError("body is not valid JSON")
    # Only a \u escape can produce a lone surrogate: skip the walk when there is none.
    if "\\u" in text and has_lone_surrogate(payload):
        raise ReshapeError("body contains a lone surrogate escape")
    if floats:
        raise ReshapeError("body contains a number that is not an integer")
    if not isinstance(payload, dict):
        raise ReshapeError("body is not a JSON object")
    return payload


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def add_computed(data: dict) -> None:
    cents = data.get("amount_cents")
    if isinstance(cents, int) and not isinstance(cents, bool):
        data["amount"] = format_cents(cents)
    currency = data.get("currency")
    if isinstance(currency, str):
        data["currency"] = ascii_upper(currency)
    items = data.get("items")
    if isinstance(items, list):
        data["item_count"] = len(items)


def media_type(content_type: str) -> str:
    return ascii_lower(content_type.split(";", 1)[0].strip(" \t"))


def skip_list() -> list:
    raw = host.config_get("skip-event-types")
    if raw is None:
        return []
    return [t.strip(" \t") for t in raw.split(",") if t.strip(" \t")]


def reshape(event: Event) -> TransformResult:
    if event.event_type in skip_list():
        return TransformResult_Skip(f"event type {event.event_type} is listed in skip-event-types")
    mt = media_type(event.content_type)
    if mt != "application/json":
        return TransformResult_Skip(f"content type {mt} is not application/json")
    payload = parse_body(bytes(event.body))
    data = reshape_value(payload, (None, "$"), 1)
    add_computed(data)
    body = {
        "attempt": event.attempt,
        "data": data,
        "id": event.id,
        "occurred_at": event.created_at // 1000,
        "source": event.app_id,
        "type": event.event_type,
    }
    encoded = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    headers = [("content-type", "application/json")]
    headers += [(n, v) for (n, v) in event.headers if ascii_lower(n) != "content-type"]
    return TransformResult_Send(
        Request(method="POST", url=event.endpoint_url, headers=headers, body=encoded.encode("utf-8"))
    )


class Transform(exports.Transform):
    def transform(self, event: Event) -> TransformResult:
        # A payload the reshape refuses is a deliberate failure (plugin-error); any other
        # exception is a bug: it traps, and the host reports its traceback.
        try:
            return reshape(event)
        except ReshapeError as e:
            return TransformResult_Fail(f"reshape: {e}")
