//! Retry decisions as plain functions: the built-in exponential backoff policy, the
//! `Retry-After` parser, and the application limits (max attempts, horizon) the host
//! enforces on every policy, built-in or plugin. No clock, no randomness inside: both
//! come in as arguments so every decision is reproducible in a test. The built-in policy as a
//! hook (`squall::retry::BackoffPolicy`) lives in the engine, which draws the jitter and calls
//! [`Backoff::decide`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::hooks::{AttemptContext, Outcome, RetryDecision, TransportErrorKind};

/// Parameters of the built-in backoff policy. Defaults live in `config.default.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt, seconds.
    pub initial_delay_secs: u32,
    /// Each further failure multiplies the delay by this.
    pub multiplier: f64,
    /// No single computed delay exceeds this, seconds.
    pub max_delay_secs: u32,
    /// Spread each delay uniformly over +/- this fraction (0.0..=1.0).
    pub jitter: f64,
    /// A `Retry-After` above this is clamped to it, seconds.
    pub retry_after_max_secs: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_delay_secs: 5,
            multiplier: 3.0,
            max_delay_secs: 6 * 3600,
            jitter: 0.2,
            retry_after_max_secs: 24 * 3600,
        }
    }
}

/// Limits every policy is held to, per application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLimits {
    /// Attempts in all, the first included. After the last, the event is dead-lettered.
    pub max_attempts: u32,
    /// No retry is scheduled later than this after the first attempt, seconds.
    pub horizon_secs: u64,
}

impl Default for RetryLimits {
    fn default() -> Self {
        RetryLimits {
            max_attempts: 25,
            horizon_secs: 3 * 24 * 3600,
        }
    }
}

/// Statuses that are never retried by the built-in policy: 4xx except those that say
/// "try later" (408 Request Timeout, 409 Conflict, 425 Too Early, 429 Too Many Requests).
pub fn is_permanent_status(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 409 | 425 | 429)
}

/// Parse a `Retry-After` value: delta-seconds or an HTTP-date, relative to `now`.
/// Returns seconds to wait (0 for a date in the past); `None` if unparsable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings saturate instead of failing.
        return Some(value.parse::<u64>().unwrap_or(u64::MAX));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).map(|d| d.as_secs()).unwrap_or(0))
}

impl Backoff {
    /// The delay after `attempt` failures, before jitter, seconds.
    pub fn base_delay_secs(&self, attempt: u32) -> f64 {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let d = self.initial_delay_secs as f64 * self.multiplier.powi(exp);
        d.min(self.max_delay_secs as f64)
    }

    /// The built-in decision. `unit_random` is uniform in [0, 1) and drives the jitter.
    pub fn decide(
        &self,
        ctx: &AttemptContext,
        outcome: &Outcome,
        unit_random: f64,
    ) -> RetryDecision {
        match outcome {
            Outcome::Response { status, .. } if is_permanent_status(*status) => {
                return RetryDecision::DeadLetter(format!(
                    "status {status} is not retryable (4xx other than 408, 409, 425, 429)"
                ));
            }
            Outcome::Transport {
                kind: TransportErrorKind::RefusedByPolicy,
                message,
            } => {
                return RetryDecision::DeadLetter(format!("refused by policy: {message}"));
            }
            _ => {}
        }
        let now = UNIX_EPOCH + Duration::from_millis(ctx.now_ms);
        if let Some(secs) = outcome
            .header("retry-after")
            .and_then(|v| parse_retry_after(v, now))
        {
            let secs = secs.clamp(1, self.retry_after_max_secs as u64);
            return RetryDecision::RetryAfterSeconds(secs as u32);
        }
        let base = self.base_delay_secs(ctx.attempt);
        let spread = self.jitter.clamp(0.0, 1.0) * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        let secs = (base * (1.0 + spread)).round().max(1.0);
        RetryDecision::RetryAfterSeconds(secs.min(u32::MAX as f64) as u32)
    }
}

/// Hold a policy's decision to the application's limits: past the last attempt, or a
/// retry that would land beyond the horizon, becomes a dead-letter naming the limit.
pub fn enforce_limits(
    decision: RetryDecision,
    ctx: &AttemptContext,
    outcome: &Outcome,
    limits: &RetryLimits,
) -> RetryDecision {
    let RetryDecision::RetryAfterSeconds(delay) = decision else {
        return decision;
    };
    if ctx.attempt >= limits.max_attempts {
        return RetryDecision::DeadLetter(format!(
            "gave up after {} attempts (max_attempts); last: {}",
            ctx.attempt,
            outcome.describe()
        ));
    }
    let elapsed_ms = ctx.now_ms.saturating_sub(ctx.first_attempt_at_ms);
    let next_ms = elapsed_ms.saturating_add(delay as u64 * 1000);
    if next_ms > limits.horizon_secs.saturating_mul(1000) {
        return RetryDecision::DeadLetter(format!(
            "retry horizon of {} s would be exceeded after {} attempts; last: {}",
            limits.horizon_secs,
            ctx.attempt,
            outcome.describe()
        ));
    }
    RetryDecision::RetryAfterSeconds(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(attempt: u32, first: u64, now: u64) -> AttemptContext {
        AttemptContext {
            event_id: "e".into(),
            app_id: "a".into(),
            event_type: "t".into(),
            attempt,
            first_attempt_at_ms: first,
            now_ms: now,
        }
    }

    fn status(s: u16, headers: &[(&str, &str)]) -> Outcome {
        Outcome::Response {
            status: s,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn decision_table() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let t = 1_700_000_000_000;
        let cases: Vec<(Outcome, u32, RetryDecision)> = vec![
            (status(500, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
            (status(503, &[]), 2, RetryDecision::RetryAfterSeconds(15)),
            (status(502, &[]), 3, RetryDecision::RetryAfterSeconds(45)),
            (
                status(500, &[]),
                30,
                RetryDecision::RetryAfterSeconds(6 * 3600),
            ),
            (
                status(429, &[("retry-after", "7")]),
                1,
                RetryDecision::RetryAfterSeconds(7),
            ),
            (
                status(503, &[("retry-after", "999999")]),
                1,
                RetryDecision::RetryAfterSeconds(86400),
            ),
            (
                status(429, &[("retry-after", "0")]),
                1,
                RetryDecision::RetryAfterSeconds(1),
            ),
            (
                status(429, &[("retry-after", "soon")]),
                2,
                RetryDecision::RetryAfterSeconds(15),
            ),
            (status(408, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
            (status(409, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
            (status(425, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
            (status(301, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
            (
                Outcome::Transport {
                    kind: TransportErrorKind::Timeout,
                    message: "x".into(),
                },
                1,
                RetryDecision::RetryAfterSeconds(5),
            ),
        ];
        for (outcome, attempt, want) in cases {
            assert_eq!(
                b.decide(&ctx(attempt, t, t), &outcome, 0.5),
                want,
                "{outcome:?} #{attempt}"
            );
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(b.decide(&ctx(1, t, t), &status(s, &[]), 0.5), RetryDecision::DeadLetter(r) if r.contains(&s.to_string()))
            );
        }
        let refused = Outcome::Transport {
            kind: TransportErrorKind::RefusedByPolicy,
            message: "127.0.0.1 is loopback".into(),
        };
        assert!(
            matches!(b.decide(&ctx(1, t, t), &refused, 0.5), RetryDecision::DeadLetter(r) if r.contains("loopback"))
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default();
        let c = ctx(3, 0, 0);
        let lo = b.decide(&c, &status(500, &[]), 0.0);
        let hi = b.decide(&c, &status(500, &[]), 0.999_999);
        assert_eq!(lo, RetryDecision::RetryAfterSeconds(36));
        assert_eq!(hi, RetryDecision::RetryAfterSeconds(54));
    }

    #[test]
    fn retry_after_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(60)
        );
        assert_eq!(parse_retry_after("120", now), Some(120));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(u64::MAX)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn default_schedule_spans_days() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let limits = RetryLimits::default();
        let (mut elapsed, mut attempt) = (0u64, 1u32);
        loop {
            let c = ctx(attempt, 0, elapsed * 1000);
            match enforce_limits(
                b.decide(&c, &status(500, &[]), 0.5),
                &c,
                &status(500, &[]),
                &limits,
            ) {
                RetryDecision::RetryAfterSeconds(d) => elapsed += d as u64,
                RetryDecision::DeadLetter(reason) => {
                    assert!(
                        reason.contains("horizon") || reason.contains("max_attempts"),
                        "{reason}"
                    );
                    break;
                }
                other => panic!("{other:?}"),
            }
            attempt += 1;
        }
        assert!(
            elapsed > 2 * 24 * 3600,
            "horizon reached after only {elapsed} s"
        );
    }

    #[test]
    fn limits_turn_retries_into_dead_letters() {
        let limits = RetryLimits {
            max_attempts: 3,
            horizon_secs: 60,
        };
        let o = status(500, &[]);
        let r = RetryDecision::RetryAfterSeconds(10);
        assert_eq!(enforce_limits(r.clone(), &ctx(2, 0, 0), &o, &limits), r);
        assert!(
            matches!(enforce_limits(r.clone(), &ctx(3, 0, 0), &o, &limits), RetryDecision::DeadLetter(m) if m.contains("3 attempts") && m.contains("status 500"))
        );
        assert!(
            matches!(enforce_limits(r, &ctx(1, 0, 55_000), &o, &limits), RetryDecision::DeadLetter(m) if m.contains("horizon"))
        );
        let d = RetryDecision::Discard("x".into());
        assert_eq!(enforce_limits(d.clone(), &ctx(9, 0, 0), &o, &limits), d);
    }
}
