//! Traces of delivery attempts (issue 21): one span per attempt, in a W3C Trace Context, encoded
//! as OTLP/HTTP JSON for a collector. Pure: the engine (`squall::traces`) supplies the random
//! span ids and the clock, sends the spans and puts [`TraceContext::traceparent`] on the request.
//!
//! - **Parent.** An envelope's `traceparent` (version `00`, or a later version read as `00`
//!   per the W3C rules) makes each attempt's span a child of the producer's span, in the
//!   producer's trace, with its sampled flag. Without one (or with one that does not parse,
//!   which W3C says to ignore), the trace id is derived from the application and event id, so
//!   every attempt of one event, in any process, lands in the same trace.
//! - **To the endpoint.** The request carries `traceparent: 00-<trace>-<this span>-<flags>`, so
//!   the subscriber's own spans join the same trace.

use sha2::{Digest, Sha256};

use crate::metrics::{MetricOutcome, MetricRecord};

/// One attempt's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This attempt's span.
    pub span_id: [u8; 8],
    /// The producer's span, when the envelope carried a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

/// A W3C `traceparent`: trace id, parent span id, flags; `None` if it does not parse (or has
/// an all-zero id, or the forbidden version `ff`).
pub fn parse_traceparent(s: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = hex_byte(&s[0..2])?;
    // Version 00 is exactly 55 characters; a later one may add fields after a '-'.
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, t) in trace_id.iter_mut().enumerate() {
        *t = hex_byte(&s[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span_id = [0u8; 8];
    for (i, p) in span_id.iter_mut().enumerate() {
        *p = hex_byte(&s[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&s[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags))
}

/// Lower-case hex only, as W3C requires.
fn hex_byte(s: &str) -> Option<u8> {
    if !s
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl TraceContext {
    /// The context of an attempt of event `event_id` of `app_id`, under the envelope's
    /// `traceparent` if it parses; `span_bits` is a random draw for the span id.
    pub fn for_attempt(
        traceparent: Option<&str>,
        app_id: &str,
        event_id: &str,
        span_bits: u64,
    ) -> TraceContext {
        // A span id of zero is invalid.
        let span_id = span_bits.max(1).to_be_bytes();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                flags,
            },
            None => {
                let digest = Sha256::new()
                    .chain_update(b"squall-trace\0")
                    .chain_update(app_id.as_bytes())
                    .chain_update(b"\0")
                    .chain_update(event_id.as_bytes())
                    .finalize();
                let mut trace_id = [0u8; 16];
                trace_id.copy_from_slice(&digest[..16]);
                TraceContext {
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    flags: 1,
                }
            }
        }
    }

    /// The `traceparent` header for the request: this attempt's span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }

    /// Whether the producer asked for this trace to be recorded (bit 0 of the flags).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Time spent in the hooks of one attempt, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookTimes {
    /// The transform.
    pub transform_us: u64,
    /// The signer.
    pub sign_us: u64,
    /// The retry policy (0 when the attempt succeeded).
    pub retry_policy_us: u64,
}

/// One finished attempt: its context, its metrics record (what happened) and its hook times.
#[derive(Debug, Clone)]
pub struct Span {
    /// Where it sits in the trace.
    pub ctx: TraceContext,
    /// The attempt's record (ids, endpoint host, status or error kind, outcome, times).
    pub record: MetricRecord,
    /// Hook timings.
    pub hooks: HookTimes,
}

/// The spans as one OTLP/HTTP JSON `ExportTraceServiceRequest` (ids in hex, 64-bit integers
/// as decimal strings, as the OTLP JSON encoding requires), from service `service_name`.
pub fn otlp_json(service_name: &str, spans: &[Span]) -> String {
    use serde_json::{Value, json};
    let s = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let i = |k: &str, v: u64| json!({"key": k, "value": {"intValue": v.to_string()}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|sp| {
            let r = &sp.record;
            let mut attributes = vec![
                s("squall.event_id", &r.event_id),
                s("squall.app_id", &r.app_id),
                s("squall.event_type", &r.event_type),
                s("server.address", &r.endpoint_host),
                i("squall.attempt", u64::from(r.attempt)),
                s("squall.outcome", r.outcome.as_str()),
                i("squall.hook.transform_us", sp.hooks.transform_us),
                i("squall.hook.sign_us", sp.hooks.sign_us),
                i("squall.hook.retry_policy_us", sp.hooks.retry_policy_us),
                s("squall.transform", &r.transform),
                s("squall.signer", &r.signer),
                s("squall.retry_policy", &r.retry_policy),
            ];
            if let Some(e) = &r.endpoint_id {
                attributes.push(s("squall.endpoint_id", e));
            }
            if let Some(status) = r.status {
                attributes.push(i("http.response.status_code", u64::from(status)));
            }
            if let Some(kind) = &r.error_kind {
                attributes.push(s("error.type", kind));
            }
            if let Some(secs) = r.retry_in_secs {
                attributes.push(i("squall.retry_in_secs", u64::from(secs)));
            }
            let ok = r.outcome == MetricOutcome::Delivered;
            let status = if ok {
                json!({"code": 1})
            } else {
                let why = match (r.status, &r.error_kind) {
                    (Some(st), _) => format!("HTTP {st}: {}", r.outcome.as_str()),
                    (None, Some(k)) => format!("{k}: {}", r.outcome.as_str()),
                    (None, None) => r.outcome.as_str().to_string(),
                };
                json!({"code": 2, "message": why})
            };
            let mut span = json!({
                "traceId": hex(&sp.ctx.trace_id),
                "spanId": hex(&sp.ctx.span_id),
                "name": "squall.attempt",
                // SPAN_KIND_CLIENT: an outgoing request.
                "kind": 3,
                "startTimeUnixNano": (u128::from(r.started_at_ms) * 1_000_000).to_string(),
                "endTimeUnixNano": (u128::from(r.finished_at_ms) * 1_000_000).to_string(),
                "attributes": attributes,
                "status": status,
            });
            if let Some(p) = sp.ctx.parent_span_id {
                span["parentSpanId"] = Value::String(hex(&p));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [s("service.name", service_name)]},
            "scopeSpans": [{"scope": {"name": "squall"}, "spans": spans}],
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_parse_as_w3c_says() {
        let (t, p, f) = parse_traceparent(W3C).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A later version with more fields is read as version 00.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert_eq!(parse_traceparent(later).map(|x| x.2), Some(1));
    }

    #[test]
    fn attempts_join_the_producers_trace_or_one_of_their_event() {
        let a = TraceContext::for_attempt(Some(W3C), "shop", "evt_1", 42);
        assert_eq!(hex(&a.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            a.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            a.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000002a-01"
        );
        let b1 = TraceContext::for_attempt(None, "shop", "evt_1", 1);
        let b2 = TraceContext::for_attempt(Some("garbage"), "shop", "evt_1", 2);
        let c = TraceContext::for_attempt(None, "shop", "evt_2", 1);
        assert_eq!(
            b1.trace_id, b2.trace_id,
            "every attempt of an event, one trace"
        );
        assert_ne!(b1.trace_id, c.trace_id);
        assert_ne!(b1.span_id, b2.span_id);
        assert_eq!(b1.parent_span_id, None);
        assert!(parse_traceparent(&b1.traceparent()).is_some());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let record = MetricRecord {
            v: 1,
            event_id: "evt_1".into(),
            app_id: "shop".into(),
            event_type: "order.paid".into(),
            endpoint_host: "hooks.example.com".into(),
            endpoint_id: None,
            attempt: 2,
            status: Some(503),
            error_kind: None,
            latency_ms: 12,
            outcome: MetricOutcome::Retry,
            retry_in_secs: Some(30),
            transform: "builtin:identity".into(),
            signer: "builtin:standard-webhooks".into(),
            retry_policy: "builtin:backoff".into(),
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_000_012,
        };
        let span = Span {
            ctx: TraceContext::for_attempt(Some(W3C), "shop", "evt_1", 7),
            record,
            hooks: HookTimes {
                transform_us: 3,
                sign_us: 5,
                retry_policy_us: 1,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&otlp_json("squall", &[span])).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "squall"
        );
        let sp = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(sp["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sp["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(sp["spanId"], "0000000000000007");
        assert_eq!(sp["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(sp["status"]["code"], 2);
        let attr = |k: &str| {
            sp["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            attr("http.response.status_code").unwrap()["intValue"],
            "503"
        );
        assert_eq!(attr("squall.attempt").unwrap()["intValue"], "2");
        assert_eq!(attr("squall.hook.sign_us").unwrap()["intValue"], "5");
        assert_eq!(
            attr("server.address").unwrap()["stringValue"],
            "hooks.example.com"
        );
    }
}
