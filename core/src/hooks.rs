//! The hook contract on the host side: the values of `wit/` (0.1.0 and 0.2.0 share them) as
//! Rust types, and one trait per hook. The built-ins (`signing`, `retry`) and the WebAssembly
//! plugins (`plugin`) both implement these traits, so the pipeline never knows which it calls.
//!
//! Everything here is plain data and synchronous calls: no I/O.

use std::fmt;

/// Ordered HTTP headers as (name, value).
pub type Headers = Vec<(String, String)>;

/// One webhook event as hooks see it. Mirrors `squall:plugin/types.event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Producer-chosen id, becomes `webhook-id`, stable across retries.
    pub id: String,
    /// Application (tenant) id.
    pub app_id: String,
    /// Event type, for example `invoice.paid`.
    pub event_type: String,
    /// Subscriber endpoint URL.
    pub endpoint_url: String,
    /// Extra headers the producer asked for.
    pub headers: Headers,
    /// MIME type of `body`.
    pub content_type: String,
    /// Payload bytes.
    pub body: Vec<u8>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Producer's creation time, Unix ms.
    pub created_at_ms: u64,
    /// Time of the first attempt, Unix ms.
    pub first_attempt_at_ms: u64,
}

/// The HTTP request to send. Mirrors `squall:plugin/types.request`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `POST` or `PUT`.
    pub method: String,
    /// Absolute http(s) URL.
    pub url: String,
    /// Headers to send.
    pub headers: Headers,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The request Squall sends when no transform plugin is configured: the payload
    /// as-is, POSTed to the endpoint, with the producer's headers.
    pub fn from_event(event: &Event) -> Request {
        let mut headers = Vec::with_capacity(event.headers.len() + 1);
        headers.push(("content-type".to_string(), event.content_type.clone()));
        headers.extend(event.headers.iter().cloned());
        Request {
            method: "POST".to_string(),
            url: event.endpoint_url.clone(),
            headers,
            body: event.body.clone(),
        }
    }
}

impl Request {
    /// The content-type rule for a transform's output: a request with no `content-type` header
    /// (any case) is sent with the event's content type, as the built-in pass-through sends
    /// it; a header the transform set, even to a different type, is kept. True when it added
    /// the header (`squall plugin test` says so). An event always has a content type (the
    /// envelope's `content_type`, else `application/json` or `application/octet-stream`).
    pub fn default_content_type(&mut self, event_content_type: &str) -> bool {
        let has = self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if has || event_content_type.is_empty() {
            return false;
        }
        self.headers.insert(
            0,
            ("content-type".to_string(), event_content_type.to_string()),
        );
        true
    }
}

/// Why no HTTP status came back. Mirrors `transport-error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportErrorKind {
    /// Name did not resolve.
    Dns,
    /// TCP connect failed or was refused.
    Connect,
    /// TLS handshake or certificate failure.
    Tls,
    /// Connect or total timeout.
    Timeout,
    /// Connection reset or closed mid-exchange.
    Reset,
    /// Refused by Squall itself (SSRF guard, redirect, bad URL).
    RefusedByPolicy,
    /// Response body exceeded the cap.
    ResponseTooLarge,
    /// No OAuth2 access token: the application's token endpoint failed or refused (the
    /// request was not sent). Plugins on the frozen WIT versions see it as `other`, with a
    /// message starting `token endpoint`.
    Token,
    /// Anything else.
    Other,
}

impl TransportErrorKind {
    /// Stable lower-case name used in metrics, DLQ attributes and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Dns => "dns",
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Reset => "reset",
            TransportErrorKind::RefusedByPolicy => "refused-by-policy",
            TransportErrorKind::ResponseTooLarge => "response-too-large",
            TransportErrorKind::Token => "token",
            TransportErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened on one attempt. Mirrors `outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with a status.
    Response {
        /// HTTP status code.
        status: u16,
        /// Response headers, lower-cased names.
        headers: Headers,
    },
    /// No status came back.
    Transport {
        /// Classified cause.
        kind: TransportErrorKind,
        /// Detail for humans.
        message: String,
    },
}

impl Outcome {
    /// True for a 2xx response: the event is delivered.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Response { status, .. } if (200..300).contains(status))
    }

    /// First header value with this (lower-case) name, for responses.
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Outcome::Response { headers, .. } => headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            Outcome::Transport { .. } => None,
        }
    }

    /// Short description for DLQ reasons and logs: `status 503` or `timeout: ...`.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Response { status, .. } => format!("status {status}"),
            Outcome::Transport { kind, message } => format!("{kind}: {message}"),
        }
    }
}

/// Identity and timing of the attempt being signed or judged. Mirrors `attempt-context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptContext {
    /// Event id.
    pub event_id: String,
    /// Application id.
    pub app_id: String,
    /// Event type.
    pub event_type: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Time of the first attempt, Unix ms.
    pub first_attempt_at_ms: u64,
    /// Clock reading for this decision, Unix ms.
    pub now_ms: u64,
}

impl AttemptContext {
    /// Context for an event at a given clock reading.
    pub fn for_event(event: &Event, now_ms: u64) -> AttemptContext {
        AttemptContext {
            event_id: event.id.clone(),
            app_id: event.app_id.clone(),
            event_type: event.event_type.clone(),
            attempt: event.attempt,
            first_attempt_at_ms: event.first_attempt_at_ms,
            now_ms,
        }
    }
}

/// What to do after a failed attempt. Mirrors `retry-decision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this many seconds.
    RetryAfterSeconds(u32),
    /// Give up; dead-letter with this reason.
    DeadLetter(String),
    /// Give up; drop and record with this reason.
    Discard(String),
}

/// Result of a transform. Mirrors `transform-result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformResult {
    /// Send this request.
    Send(Request),
    /// Do not deliver; delete and record with the reason.
    Skip(String),
}

/// How a hook call failed. Every variant is recoverable for the host: the pipeline
/// turns it into a retry or a dead-letter per the application's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The plugin returned `plugin-error`.
    #[error("plugin {plugin} reported an error: {message}")]
    Plugin {
        /// Plugin identity (path or built-in name).
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin trapped (panic, unreachable, bad memory access...).
    #[error("plugin {plugin} trapped: {detail}")]
    Trap {
        /// Plugin identity.
        plugin: String,
        /// Trap description.
        detail: String,
    },
    /// The plugin ran past its wall-time limit.
    #[error("plugin {plugin} exceeded its time limit of {limit_ms} ms")]
    Timeout {
        /// Plugin identity.
        plugin: String,
        /// The limit it broke.
        limit_ms: u64,
    },
    /// The plugin tried to grow memory past its limit.
    #[error("plugin {plugin} exceeded its memory limit of {limit_bytes} bytes")]
    Memory {
        /// Plugin identity.
        plugin: String,
        /// The limit it broke.
        limit_bytes: usize,
    },
    /// The plugin returned something the host refuses (bad URL, CR/LF in a header, oversize body...).
    #[error("plugin {plugin} returned invalid output: {reason}")]
    InvalidOutput {
        /// Plugin identity.
        plugin: String,
        /// What was wrong.
        reason: String,
    },
    /// A built-in hook could not run (for example a missing signing secret).
    #[error("{0}")]
    Host(String),
}

impl HookError {
    /// Stable short kind name for metrics and DLQ attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            HookError::Plugin { .. } => "plugin-error",
            HookError::Trap { .. } => "plugin-trap",
            HookError::Timeout { .. } => "plugin-timeout",
            HookError::Memory { .. } => "plugin-memory",
            HookError::InvalidOutput { .. } => "plugin-invalid-output",
            HookError::Host(_) => "host-error",
        }
    }
}

/// Turns an event into a request, or skips it.
pub trait Transform: Send + Sync {
    /// Identity for metrics and logs (plugin path and digest, or `builtin:...`).
    fn identity(&self) -> &str;
    /// Run the transform.
    fn transform(&self, event: &Event) -> Result<TransformResult, HookError>;
}

/// Computes signature headers for a request.
pub trait Signer: Send + Sync {
    /// Identity for metrics and logs.
    fn identity(&self) -> &str;
    /// Headers to add; `timestamp` is Unix seconds.
    fn sign(
        &self,
        ctx: &AttemptContext,
        request: &Request,
        key_name: &str,
        timestamp: u64,
    ) -> Result<Headers, HookError>;
}

/// Decides what follows a failed attempt.
pub trait RetryPolicy: Send + Sync {
    /// Identity for metrics and logs.
    fn identity(&self) -> &str;
    /// Decide. Called only for non-2xx responses and transport errors.
    fn decide(&self, ctx: &AttemptContext, outcome: &Outcome) -> Result<RetryDecision, HookError>;
}

/// The built-in transform: the payload as-is (see [`Request::from_event`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Transform for PassThrough {
    fn identity(&self) -> &str {
        "builtin:pass-through"
    }
    fn transform(&self, event: &Event) -> Result<TransformResult, HookError> {
        Ok(TransformResult::Send(Request::from_event(event)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            url: "https://example.com/".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: b"a,b\n".to_vec(),
        }
    }

    #[test]
    fn a_transform_output_without_content_type_gets_the_events() {
        let mut r = request(&[("x-tenant", "42")]);
        assert!(r.default_content_type("text/csv; charset=utf-8"));
        assert_eq!(
            r.headers,
            vec![
                (
                    "content-type".to_string(),
                    "text/csv; charset=utf-8".to_string()
                ),
                ("x-tenant".to_string(), "42".to_string())
            ]
        );
    }

    #[test]
    fn a_content_type_the_transform_set_is_kept_in_any_case() {
        let mut r = request(&[("Content-Type", "application/xml")]);
        assert!(!r.default_content_type("application/json"));
        assert_eq!(
            r.headers,
            vec![("Content-Type".to_string(), "application/xml".to_string())]
        );
    }
}
