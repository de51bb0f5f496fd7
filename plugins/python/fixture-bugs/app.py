"""Test fixture (tests/engine/plugins.rs, tests/e2e/plugins.rs): a Python transform with a bug.

It prints a line, then looks up a key the payload does not have: `KeyError('amount')`, which
traps; the host reports the traceback (its last frame names `amount_of`). With config
`mode = fail` it fails on purpose instead (plugin-error); with `mode = no-content-type` it sends
the body unchanged with no headers at all (the host adds the event's content type).
"""

import json

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Event,
    Request,
    TransformResult,
    TransformResult_Fail,
    TransformResult_Send,
)


def amount_of(payload: dict) -> int:
    return payload["amount"]


class Transform(exports.Transform):
    def transform(self, event: Event) -> TransformResult:
        print(f"fixture-bugs: transforming {event.id}")
        mode = host.config_get("mode")
        if mode == "fail":
            return TransformResult_Fail("refused on purpose")
        if mode == "no-content-type":
            return TransformResult_Send(
                Request(method="POST", url=event.endpoint_url, headers=[], body=bytes(event.body))
            )
        payload = json.loads(bytes(event.body))
        amount_of(payload)
        raise AssertionError("unreachable: the payload has no amount")
