//! Retry policy with a fixed schedule.
//!
//! Config:
//! - `schedule`: comma-separated delays, one per failed attempt, each a number with a
//!   unit `s`, `m`, `h` or `d` (default `5s,5m,30m,2h,5h,10h,10h`). When the attempt
//!   that failed is past the end of the schedule, the event is dead-lettered.
//! - `retry_after_max`: the largest `Retry-After` (seconds) honoured; larger values are
//!   clamped to it (default 86400).
//!
//! 4xx responses other than 408, 409, 425 and 429 are dead-lettered at once, as are
//! requests the host refused by policy (SSRF guard, bad URL).

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "retry-policy-plugin",
});

use exports::squall::plugin::retry_policy::Guest;
use squall::plugin::host;
use squall::plugin::types::{AttemptContext, Outcome, PluginError, RetryDecision, TransportErrorKind};

const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";
const DEFAULT_RETRY_AFTER_MAX: u32 = 86_400;

/// Faster than the default allocator for the short-lived strings of each call.
#[global_allocator]
static ALLOC: size_class_alloc::SizeClassAlloc = size_class_alloc::SizeClassAlloc::new();

struct Component;

/// The schedule (seconds per failed attempt) and the Retry-After cap, from the config.
fn read_config() -> Result<(Vec<u32>, u32), String> {
    let schedule_text = host::config_get("schedule").unwrap_or_else(|| DEFAULT_SCHEDULE.to_string());
    let schedule = parse_schedule(&schedule_text).map_err(|message| format!("config key schedule: {message}"))?;
    let retry_after_max = match host::config_get("retry_after_max") {
        None => DEFAULT_RETRY_AFTER_MAX,
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("config key retry_after_max: {v:?} is not a whole number of seconds"))?,
    };
    Ok((schedule, retry_after_max))
}

impl Guest for Component {
    fn decide(ctx: AttemptContext, outcome: Outcome) -> Result<RetryDecision, PluginError> {
        // An instance serves one application for its whole life, and that application's
        // config does not change meanwhile: read and parse it on the first call only.
        static CONFIG: std::sync::OnceLock<Result<(Vec<u32>, u32), String>> = std::sync::OnceLock::new();
        let (schedule, retry_after_max) = CONFIG
            .get_or_init(read_config)
            .as_ref()
            .map_err(|message| PluginError { message: message.clone() })?;
        let (schedule, retry_after_max) = (schedule.as_slice(), *retry_after_max);

        let retry_after = match &outcome {
            Outcome::Response(r) if is_permanent(r.status) => {
                return Ok(RetryDecision::DeadLetter(format!(
                    "status {} is not retryable (4xx other than 408, 409, 425, 429)",
                    r.status
                )));
            }
            Outcome::Response(r) => r
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| parse_seconds(v)),
            Outcome::Transport(t) if t.kind == TransportErrorKind::RefusedByPolicy => {
                return Ok(RetryDecision::DeadLetter(format!("refused by policy: {}", t.message)));
            }
            Outcome::Transport(_) => None,
        };

        let index = ctx.attempt.saturating_sub(1) as usize;
        let Some(&scheduled) = schedule.get(index) else {
            return Ok(RetryDecision::DeadLetter(format!(
                "retry schedule exhausted after {} attempts; last: {}",
                ctx.attempt,
                describe(&outcome)
            )));
        };
        let delay = match retry_after {
            Some(secs) => secs.clamp(1, u64::from(retry_after_max.max(1))) as u32,
            None => scheduled,
        };
        Ok(RetryDecision::RetryAfterSeconds(delay))
    }
}

fn is_permanent(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 409 | 425 | 429)
}

/// `Retry-After` as delta-seconds; HTTP-dates are not honoured by this plugin.
fn parse_seconds(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

fn parse_schedule(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("{text:?} has an empty entry"));
        }
        let (digits, unit) = item.split_at(item.len() - 1);
        let factor: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("{item:?} has no unit (s, m, h or d)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{item:?} is not a number followed by s, m, h or d"))?;
        let secs = n.checked_mul(factor).filter(|s| *s >= 1 && *s <= u64::from(u32::MAX));
        out.push(secs.ok_or_else(|| format!("{item:?} is out of range (1 s to 136 years)"))? as u32);
    }
    Ok(out)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Response(r) => format!("status {}", r.status),
        Outcome::Transport(t) => {
            let kind = match t.kind {
                TransportErrorKind::Dns => "dns",
                TransportErrorKind::Connect => "connect",
                TransportErrorKind::Tls => "tls",
                TransportErrorKind::Timeout => "timeout",
                TransportErrorKind::Reset => "reset",
                TransportErrorKind::RefusedByPolicy => "refused-by-policy",
                TransportErrorKind::ResponseTooLarge => "response-too-large",
                TransportErrorKind::Other => "other",
            };
            format!("{kind}: {}", t.message)
        }
    }
}

export!(Component);
