//! The properties the fuzz targets check, one function per target, each taking the raw
//! fuzzer input. Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the
//! regression test in `tests/engine/fuzz_regressions.rs` (which includes this file), so a
//! crashing input kept under `fuzz/regressions/<target>/` is replayed by `cargo test`.
//!
//! Every function must return normally for every input: a panic is a finding. Besides "does
//! not panic", each checks properties that must hold for any input (round trips, bounds).
//!
//! Structured inputs are split into fields on the byte 0xFF, which never occurs in UTF-8, so
//! every field can still be any string (invalid UTF-8 inside a field is replaced lossily).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use squall_core::config::Config;
use squall_core::envelope::{self, Limits};
use squall_core::hooks::{AttemptContext, Outcome, Request, RetryDecision, TransformResult};
use squall_core::output;
use squall_core::retry::{self, Backoff, RetryLimits};

/// Field separator of structured inputs.
pub const SEP: u8 = 0xFF;

fn fields(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == SEP)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

fn field(fs: &[String], i: usize) -> &str {
    fs.get(i).map(String::as_str).unwrap_or("")
}

/// A number from the first 8 bytes of a field (little-endian, zero-padded).
fn num(fs: &[String], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(field(fs, i).bytes()) {
        *d = s;
    }
    u64::from_le_bytes(b)
}

/// Target `envelope_decode`: the raw SQS message body. Decoding never panics; an accepted
/// envelope re-encodes to a body that decodes to the same envelope; errors render.
pub fn envelope_decode(data: &[u8]) {
    match envelope::decode(data, &Limits::default()) {
        Ok(env) => {
            let text = env.encode();
            let unlimited = Limits {
                max_body_bytes: usize::MAX,
            };
            let again = envelope::decode(&text, &unlimited).unwrap_or_else(|e| {
                panic!(
                    "an accepted envelope re-encodes to one decode refuses: {e}\n{}",
                    String::from_utf8_lossy(&text)
                )
            });
            assert_eq!(again, env, "decode(encode(e)) != e");
            let event = env.to_event(1, 0);
            assert_eq!(event.body, env.payload.as_bytes());
        }
        Err(e) => {
            let _ = (e.to_string(), e.kind());
        }
    }
}

/// Target `config_parse`: field 0 is the TOML file, the next fields are environment
/// variables `NAME=value` (prefixed with `SQUALL__` when they lack it). Loading never panics;
/// a loaded config answers `require_queues` and resolves secrets through a lookup that
/// returns the last field, without panicking.
pub fn config_parse(data: &[u8]) {
    let fs = fields(data);
    let toml_text = field(&fs, 0);
    let mut env = Vec::new();
    for f in fs.iter().skip(1) {
        let (k, v) = f.split_once('=').unwrap_or((f.as_str(), ""));
        let k = if k.starts_with(squall_core::config::ENV_PREFIX) {
            k.to_string()
        } else {
            format!("{}{k}", squall_core::config::ENV_PREFIX)
        };
        env.push((k, v.to_string()));
    }
    let secret = fs.last().cloned().unwrap_or_default();
    match Config::from_toml_str(toml_text, Path::new("/nonexistent-fuzz-base"), env) {
        Ok(config) => {
            let _ = config.require_queues().map_err(|e| e.to_string());
            let _ = config
                .resolve_secrets_with(&|_| Some(secret.clone()))
                .map_err(|e| e.to_string());
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Target `retry_after`: field 0 is a `Retry-After` value as a server sends it, fields 1-4
/// are numbers (the clock, the attempt, the first-attempt time, the jitter draw), field 5 the
/// status. Parsing never panics; delta-seconds parse to their value (saturating); the
/// built-in policy's answer to a `Retry-After` stays within `[1, retry_after_max_secs]`;
/// the limits never let a retry pass `max_attempts` or the horizon.
pub fn retry_after(data: &[u8]) {
    let fs = fields(data);
    let value = field(&fs, 0);
    let now_ms = num(&fs, 1) % (20_000 * 365 * 86_400_000); // within the year 21970
    let now = UNIX_EPOCH + Duration::from_millis(now_ms);
    let parsed = retry::parse_retry_after(value, now);
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(
            parsed,
            Some(trimmed.parse::<u64>().unwrap_or(u64::MAX)),
            "delta-seconds {trimmed:?}"
        );
    }
    let _ = retry::parse_retry_after(value, SystemTime::now());

    let attempt = (num(&fs, 2) % 40) as u32;
    let first_ms = now_ms.saturating_sub(num(&fs, 3) % (10 * 86_400_000));
    let unit_random = (num(&fs, 4) % 1_000_000) as f64 / 1_000_000.0;
    let status = 100 + (num(&fs, 5) % 500) as u16;
    let ctx = AttemptContext {
        event_id: "evt".into(),
        app_id: "app".into(),
        event_type: "t".into(),
        attempt,
        first_attempt_at_ms: first_ms,
        now_ms,
    };
    let outcome = Outcome::Response {
        status,
        headers: vec![("retry-after".into(), value.to_string())],
    };
    let backoff = Backoff::default();
    let decision = backoff.decide(&ctx, &outcome, unit_random);
    if let (RetryDecision::RetryAfterSeconds(s), Some(_)) = (&decision, parsed)
        && !retry::is_permanent_status(status)
    {
        assert!(
            (1..=backoff.retry_after_max_secs).contains(s),
            "Retry-After {value:?} gave {s} s"
        );
    }
    let limits = RetryLimits {
        max_attempts: 1 + (num(&fs, 2) % 30) as u32,
        horizon_secs: num(&fs, 3) % (4 * 86_400),
    };
    match retry::enforce_limits(decision, &ctx, &outcome, &limits) {
        RetryDecision::RetryAfterSeconds(s) => {
            assert!(ctx.attempt < limits.max_attempts, "retry past max_attempts");
            let at = now_ms.saturating_sub(first_ms) + s as u64 * 1000;
            assert!(at <= limits.horizon_secs * 1000, "retry past the horizon");
        }
        RetryDecision::DeadLetter(r) | RetryDecision::Discard(r) => assert!(!r.is_empty()),
    }
}

/// Target `plugin_output`: what a plugin may return. Field 0 picks the check and the
/// limit, then method, URL, body, and header name/value pairs. The checks never panic;
/// whatever they accept is within the limit, has an http(s) URL with a host that the
/// deliverer can parse, POST or PUT, header names that are HTTP tokens, and values without
/// CR, LF or NUL.
pub fn plugin_output(data: &[u8]) {
    let fs = fields(data);
    let selector = num(&fs, 0);
    let max_bytes = 1 + (selector >> 8) as usize % (2 << 20);
    let headers: Vec<(String, String)> = fs
        .get(4..)
        .unwrap_or(&[])
        .chunks(2)
        .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
        .collect();
    let request = Request {
        method: field(&fs, 1).to_string(),
        url: field(&fs, 2).to_string(),
        headers,
        body: field(&fs, 3).as_bytes().to_vec(),
    };
    let reason = field(&fs, 3).to_string();
    let accepted = match selector % 6 {
        0 => output::check_request(&request, max_bytes).is_ok(),
        1 => output::check_transform(&TransformResult::Send(request.clone()), max_bytes, None)
            .is_ok(),
        2 => {
            let r =
                output::check_transform(&TransformResult::Skip(reason.clone()), max_bytes, None);
            if r.is_ok() {
                assert!(reason.len() <= max_bytes && !reason.contains('\0'));
            }
            return;
        }
        3 => {
            for d in [
                RetryDecision::DeadLetter(reason.clone()),
                RetryDecision::Discard(reason.clone()),
                RetryDecision::RetryAfterSeconds(selector as u32),
            ] {
                if output::check_decision(&d, max_bytes).is_ok()
                    && let RetryDecision::DeadLetter(r) | RetryDecision::Discard(r) = &d
                {
                    assert!(r.len() <= max_bytes && !r.contains('\0'));
                }
            }
            return;
        }
        4 => {
            if let Ok(total) = output::check_headers(&request.headers, max_bytes) {
                assert!(total <= max_bytes);
                check_header_shapes(&request);
            }
            return;
        }
        _ => {
            if output::check_url(&request.url).is_ok() {
                check_url_shape(&request.url);
            }
            return;
        }
    };
    if accepted {
        assert!(request.method == "POST" || request.method == "PUT");
        check_url_shape(&request.url);
        check_header_shapes(&request);
        let header_bytes: usize = request
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        assert!(request.body.len() + header_bytes <= max_bytes);
    }
}

fn check_url_shape(u: &str) {
    let parsed = url::Url::parse(u).expect("an accepted URL parses");
    assert!(matches!(parsed.scheme(), "http" | "https"));
    assert!(parsed.host_str().is_some_and(|h| !h.is_empty()));
}

fn check_header_shapes(request: &Request) {
    for (n, v) in &request.headers {
        assert!(!n.is_empty());
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "header name {n:?}"
        );
        assert!(!v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    }
}
