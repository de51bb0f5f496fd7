"""Status-aware retry policy: the Python retry sample (plugins/conformance/retry-status.json).

Config (per application, all optional):
  delays            comma-separated seconds to wait after failed attempt 1, 2, ...
                    (default "30,120,600,3600,21600"); when they run out the event is dead-lettered
  max-retry-after   cap in seconds on a Retry-After the endpoint sends (default 86400)

Decisions:
  410 Gone                           -> discard (the subscriber removed the endpoint)
  other 4xx except 408 and 429       -> dead-letter (the request itself is wrong)
  refused-by-policy transport error  -> dead-letter (the host will never send it)
  429 or 503 with Retry-After: <n>   -> retry after n seconds (1 .. max-retry-after)
  anything else                      -> retry after delays[attempt - 1], or dead-letter when exhausted
"""

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    AttemptContext,
    Outcome,
    Outcome_Response,
    Outcome_Transport,
    RetryDecision,
    RetryDecision_DeadLetter,
    RetryDecision_Discard,
    RetryDecision_Fail,
    RetryDecision_RetryAfterSeconds,
    TransportErrorKind,
)

DEFAULT_DELAYS = "30,120,600,3600,21600"
DEFAULT_MAX_RETRY_AFTER = "86400"
MAX_U32 = 2**32 - 1


class ConfigError(Exception):
    pass


def whole_seconds(key: str, text: str) -> int:
    text = text.strip(" \t")
    if not text or not all("0" <= c <= "9" for c in text) or int(text) > MAX_U32:
        raise ConfigError(f"config {key}: {text!r} is not a whole number of seconds (0 to {MAX_U32})")
    return int(text)


def config_delays() -> list:
    raw = host.config_get("delays")
    raw = DEFAULT_DELAYS if raw is None else raw
    delays = [whole_seconds("delays", part) for part in raw.split(",")]
    return delays


def config_max_retry_after() -> int:
    raw = host.config_get("max-retry-after")
    return whole_seconds("max-retry-after", DEFAULT_MAX_RETRY_AFTER if raw is None else raw)


def retry_after_header(headers) -> int | None:
    for name, value in headers:
        if name.lower() == "retry-after":
            value = value.strip(" \t")
            if value and all("0" <= c <= "9" for c in value):
                return int(value)
            return None  # an HTTP-date is left to the schedule
    return None


def decide(ctx: AttemptContext, outcome: Outcome) -> RetryDecision:
    if isinstance(outcome, Outcome_Response):
        status = outcome.value.status
        if status == 410:
            return RetryDecision_Discard("endpoint answered 410 Gone")
        if 400 <= status < 500 and status not in (408, 429):
            return RetryDecision_DeadLetter(f"status {status} is permanent")
        if status in (429, 503):
            after = retry_after_header(outcome.value.headers)
            if after is not None:
                return RetryDecision_RetryAfterSeconds(max(1, min(after, config_max_retry_after())))
    elif isinstance(outcome, Outcome_Transport):
        if outcome.value.kind == TransportErrorKind.REFUSED_BY_POLICY:
            return RetryDecision_DeadLetter(f"refused by policy: {outcome.value.message}")
    delays = config_delays()
    if ctx.attempt > len(delays):
        return RetryDecision_DeadLetter(f"gave up after {ctx.attempt} attempts")
    return RetryDecision_RetryAfterSeconds(delays[max(ctx.attempt, 1) - 1])


class RetryPolicy(exports.RetryPolicy):
    def decide(self, ctx: AttemptContext, outcome: Outcome) -> RetryDecision:
        # Bad config is a deliberate failure (plugin-error); any other exception is a bug: it
        # traps, and the host reports its traceback.
        try:
            return decide(ctx, outcome)
        except ConfigError as e:
            return RetryDecision_Fail(f"status-retry: {e}")
