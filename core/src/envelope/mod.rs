//! The envelope: the SQS message body a producer sends, decoded and validated.
//!
//! Version 1 is a JSON object (schema: `docs/envelope.schema.json`, example:
//! `examples/envelope.json`):
//!
//! ```json
//! { "version": 1, "id": "evt_1", "app_id": "billing", "type": "invoice.paid",
//!   "endpoint": "https://hooks.example.com/squall", "created_at": "2026-11-28T10:00:00Z",
//!   "payload": {"amount": 42}, "headers": {"x-tenant": "42"}, "signing_key": "default" }
//! ```
//!
//! Instead of `endpoint`, an envelope may name `endpoint_id`: an endpoint registered for its
//! application (`[apps.NAME.endpoints.ID]`, or `squall endpoints create` in the registry), whose
//! URL and settings are looked up at every attempt (see `crate::endpoints`). Exactly one of the
//! two is given.
//!
//! [`decode`] is a pure function on the per-event path: it never panics, never touches the
//! network, and every way an envelope can be wrong is a distinct [`EnvelopeError`] variant whose
//! message names the field. A JSON `payload` is kept as the producer's exact bytes, so the body
//! on the wire equals what was sent.

use std::fmt;

use base64::Engine as _;
use serde_json::value::RawValue;

use crate::hooks::{Event, Headers};

mod endpoint;
mod fields;
mod rfc3339;

pub use endpoint::{check_endpoint_url, parse_url};
pub(crate) use fields::is_tchar;
use fields::*;
pub use fields::{check_header, is_endpoint_id};
pub use rfc3339::{format_rfc3339_ms, parse_rfc3339_ms};

/// The only envelope version this host understands.
pub const VERSION: u64 = 1;
/// Default cap on the message body: the SQS maximum message size (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The last instant RFC 3339 can write (four-digit years): 9999-12-31T23:59:59.999Z.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;
/// Longest accepted `id` (it becomes the `webhook-id` header).
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted `app_id`.
pub const MAX_APP_ID_LEN: usize = 128;
/// Longest accepted `type`.
pub const MAX_TYPE_LEN: usize = 256;
/// Longest accepted `endpoint` URL.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// Longest accepted `endpoint_id` (the rule of application ids: 1-64 of a-z, A-Z, 0-9, '_', '-').
pub const MAX_ENDPOINT_ID_LEN: usize = 64;
/// Longest accepted `content_type`.
pub const MAX_CONTENT_TYPE_LEN: usize = 256;
/// Longest accepted `signing_key` name.
pub const MAX_SIGNING_KEY_LEN: usize = 128;
/// Most extra headers an envelope may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header value.
pub const MAX_HEADER_VALUE_LEN: usize = 8192;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted message body, bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The event's payload, in one of the two forms a producer may use.
#[derive(Debug, Clone)]
pub enum Payload {
    /// `payload`: any JSON value, kept as the producer's exact text.
    Json(Box<RawValue>),
    /// `payload_base64`: arbitrary bytes (decoded).
    Bytes(Vec<u8>),
}

/// Equal when the form and the bytes are equal (JSON compared as text, not as values).
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Json(a), Payload::Json(b)) => a.get() == b.get(),
            (Payload::Bytes(a), Payload::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl Payload {
    /// The body bytes this payload puts on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Json(raw) => raw.get().as_bytes(),
            Payload::Bytes(b) => b,
        }
    }

    /// The body bytes, moved out without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Payload::Json(raw) => Box::<str>::from(raw).into_boxed_bytes().into_vec(),
            Payload::Bytes(b) => b,
        }
    }

    /// A JSON payload from a value (for producers, the demo and tests).
    pub fn json(value: &serde_json::Value) -> Payload {
        Payload::Json(serde_json::value::to_raw_value(value).expect("a Value always serialises"))
    }
}

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `endpoint`: an absolute http/https URL without userinfo (normalised by `url`).
    Url(String),
    /// `endpoint_id`: an endpoint registered for the event's application, its URL and settings
    /// looked up at each attempt.
    Endpoint(String),
}

impl Destination {
    /// The URL, when the producer gave one.
    pub fn url(&self) -> Option<&str> {
        match self {
            Destination::Url(u) => Some(u),
            Destination::Endpoint(_) => None,
        }
    }

    /// The endpoint id, when the producer named one.
    pub fn endpoint_id(&self) -> Option<&str> {
        match self {
            Destination::Url(_) => None,
            Destination::Endpoint(id) => Some(id),
        }
    }
}

/// A decoded, validated envelope (version 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Event id: becomes `webhook-id`, stable across retries. Visible ASCII, no spaces.
    pub id: String,
    /// Application id (matches `[apps.NAME]` in the configuration).
    pub app_id: String,
    /// Event type, for example `invoice.paid`.
    pub event_type: String,
    /// Subscriber endpoint: a URL (`endpoint`) or a registered endpoint's id (`endpoint_id`).
    pub endpoint: Destination,
    /// Producer's creation time, Unix ms.
    pub created_at_ms: u64,
    /// The payload.
    pub payload: Payload,
    /// MIME type of the body: as given, else `application/json` for `payload` and
    /// `application/octet-stream` for `payload_base64`.
    pub content_type: String,
    /// Extra headers, names lower-cased, in the producer's order.
    pub headers: Headers,
    /// Name of the signing secret to use (never a secret itself); `None` = the app default.
    pub signing_key: Option<String>,
    /// W3C `traceparent` of the producer's trace: the attempts' spans become its children
    /// (`crate::trace`); `None`, or a value that does not parse, starts a trace of the event.
    pub traceparent: Option<String>,
}

/// Why an envelope was refused. Every message names the field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body exceeds the size cap.
    #[error("envelope is {size} bytes, larger than the limit of {max} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The body is not UTF-8 (so not JSON).
    #[error(
        "envelope is not valid UTF-8 (first bad byte at offset {offset}); expected a JSON object"
    )]
    NotUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The body is not well-formed JSON.
    #[error("envelope is not valid JSON: {detail}")]
    NotJson {
        /// Parser message with line and column.
        detail: String,
    },
    /// The JSON is valid but not an object.
    #[error("envelope must be a JSON object, found {found}")]
    NotAnObject {
        /// JSON type found.
        found: &'static str,
    },
    /// A field this version does not define.
    #[error("unknown field {field:?} (version 1 fields: {known})", known = FIELDS.join(", "))]
    UnknownField {
        /// The field name (truncated to 64 characters).
        field: String,
    },
    /// A field given twice.
    #[error("field {field:?} appears more than once")]
    DuplicateField {
        /// The field name.
        field: &'static str,
    },
    /// A required field is absent.
    #[error("missing required field {field:?}")]
    Missing {
        /// The field name.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field {field:?} must be {expected}, found {found}")]
    WrongType {
        /// The field name.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
        /// JSON type found.
        found: &'static str,
    },
    /// `version` is not one this host understands.
    #[error("field \"version\": unsupported envelope version {found} (this host understands 1)")]
    UnsupportedVersion {
        /// The version given (its JSON text, truncated).
        found: String,
    },
    /// A string field that must not be empty is.
    #[error("field {field:?} must not be empty")]
    Empty {
        /// The field name.
        field: &'static str,
    },
    /// A string field is too long.
    #[error("field {field:?} is {len} bytes long, longer than the limit of {max}")]
    TooLong {
        /// The field name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field contains characters it may not.
    #[error("field {field:?} {reason}")]
    InvalidChars {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Both `payload` and `payload_base64` are present.
    #[error("fields \"payload\" and \"payload_base64\" are both present; give exactly one")]
    BothPayloads,
    /// Both `endpoint` and `endpoint_id` are present.
    #[error("fields \"endpoint\" and \"endpoint_id\" are both present; give exactly one")]
    BothEndpoints,
    /// Neither `endpoint` nor `endpoint_id` is present.
    #[error(
        "missing endpoint: give \"endpoint\" (a URL) or \"endpoint_id\" (an endpoint registered for the application)"
    )]
    NoEndpoint,
    /// Neither `payload` nor `payload_base64` is present.
    #[error("missing payload: give \"payload\" (JSON) or \"payload_base64\" (bytes)")]
    NoPayload,
    /// `payload_base64` is not valid base64.
    #[error("field \"payload_base64\" is not valid standard base64: {detail}")]
    BadBase64 {
        /// Decoder message.
        detail: String,
    },
    /// `payload_base64` declared as `application/json` (by `content_type`) does not decode to
    /// JSON. Refused so that a JSON content type always means a JSON body, which plugins rely on.
    #[error("field \"payload_base64\" is declared {content_type} but is not valid JSON: {detail}")]
    DeclaredJsonInvalid {
        /// The declared media type.
        content_type: String,
        /// Parser message (line and column; no payload text).
        detail: String,
    },
    /// `endpoint` is not an acceptable URL. The URL itself is not repeated (it may carry tokens).
    #[error("field \"endpoint\" {reason}")]
    BadEndpoint {
        /// What is wrong.
        reason: String,
    },
    /// `created_at` is neither RFC 3339 nor Unix milliseconds.
    #[error("field \"created_at\" {reason}")]
    BadCreatedAt {
        /// What is wrong.
        reason: String,
    },
    /// A header name is not an HTTP token.
    #[error(
        "field \"headers\": {name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
    )]
    BadHeaderName {
        /// The name (truncated).
        name: String,
    },
    /// A header value contains CR, LF or another control character, or is not a string.
    #[error("field \"headers\": value of {name:?} {reason}")]
    BadHeaderValue {
        /// The header name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header the producer may not set.
    #[error("field \"headers\": {name:?} is reserved and may not be set by the producer ({hint})")]
    ReservedHeader {
        /// The header name (lower-case).
        name: String,
        /// Why, or what to use instead.
        hint: &'static str,
    },
    /// The same header (case-insensitively) given twice.
    #[error("field \"headers\": {name:?} appears more than once (names are case-insensitive)")]
    DuplicateHeader {
        /// The header name (lower-case).
        name: String,
    },
    /// Too many headers.
    #[error("field \"headers\" has {count} entries, more than the limit of {max}")]
    TooManyHeaders {
        /// Number given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl EnvelopeError {
    /// Stable short name for metrics and DLQ attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::TooLarge { .. } => "too-large",
            EnvelopeError::NotUtf8 { .. } | EnvelopeError::NotJson { .. } => "not-json",
            EnvelopeError::NotAnObject { .. } => "not-an-object",
            EnvelopeError::UnknownField { .. } => "unknown-field",
            EnvelopeError::DuplicateField { .. } => "duplicate-field",
            EnvelopeError::Missing { .. }
            | EnvelopeError::NoPayload
            | EnvelopeError::NoEndpoint => "missing-field",
            EnvelopeError::WrongType { .. } => "wrong-type",
            EnvelopeError::UnsupportedVersion { .. } => "unsupported-version",
            EnvelopeError::Empty { .. }
            | EnvelopeError::TooLong { .. }
            | EnvelopeError::InvalidChars { .. }
            | EnvelopeError::BothPayloads
            | EnvelopeError::BothEndpoints
            | EnvelopeError::BadBase64 { .. }
            | EnvelopeError::DeclaredJsonInvalid { .. }
            | EnvelopeError::BadCreatedAt { .. } => "invalid-field",
            EnvelopeError::BadEndpoint { .. } => "bad-endpoint",
            EnvelopeError::BadHeaderName { .. }
            | EnvelopeError::BadHeaderValue { .. }
            | EnvelopeError::ReservedHeader { .. }
            | EnvelopeError::DuplicateHeader { .. }
            | EnvelopeError::TooManyHeaders { .. } => "bad-header",
        }
    }
}

/// Field names of version 1, in documentation order.
pub const FIELDS: &[&str] = &[
    "version",
    "id",
    "app_id",
    "type",
    "endpoint",
    "endpoint_id",
    "created_at",
    "payload",
    "payload_base64",
    "content_type",
    "headers",
    "signing_key",
    "traceparent",
];

/// Decode and validate a message body.
pub fn decode(body: &[u8], limits: &Limits) -> Result<Envelope, EnvelopeError> {
    if body.len() > limits.max_body_bytes {
        return Err(EnvelopeError::TooLarge {
            size: body.len(),
            max: limits.max_body_bytes,
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| EnvelopeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let raw = parse_fields(text)?;
    raw.validate()
}

impl Envelope {
    /// The event hooks see for this attempt (copies the envelope's data).
    pub fn to_event(&self, attempt: u32, first_attempt_at_ms: u64) -> Event {
        self.clone().into_event(attempt, first_attempt_at_ms)
    }

    /// The event hooks see for this attempt, moving the payload without a copy. An envelope
    /// naming an `endpoint_id` gives an empty `endpoint_url`: the pipeline resolves the id first
    /// and sets [`Envelope::endpoint`] to the URL.
    pub fn into_event(self, attempt: u32, first_attempt_at_ms: u64) -> Event {
        Event {
            id: self.id,
            app_id: self.app_id,
            event_type: self.event_type,
            endpoint_url: match self.endpoint {
                Destination::Url(u) => u,
                Destination::Endpoint(_) => String::new(),
            },
            headers: self.headers,
            content_type: self.content_type,
            body: self.payload.into_bytes(),
            attempt,
            created_at_ms: self.created_at_ms,
            first_attempt_at_ms,
        }
    }

    /// A JSON-payload envelope with the default content type and no extra headers.
    pub fn new_json(
        id: impl Into<String>,
        app_id: impl Into<String>,
        event_type: impl Into<String>,
        endpoint: impl Into<String>,
        created_at_ms: u64,
        payload: &serde_json::Value,
    ) -> Envelope {
        Envelope {
            id: id.into(),
            app_id: app_id.into(),
            event_type: event_type.into(),
            endpoint: Destination::Url(endpoint.into()),
            created_at_ms,
            payload: Payload::json(payload),
            content_type: "application/json".to_string(),
            headers: Vec::new(),
            signing_key: None,
            traceparent: None,
        }
    }

    /// The version-1 JSON text of this envelope. `created_at` is written as RFC 3339 with
    /// milliseconds (as Unix milliseconds after year 9999, which RFC 3339 cannot express);
    /// `content_type` only when it differs from the form's default. An envelope built from
    /// invalid parts encodes fine and is refused by [`decode`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256 + self.payload.as_bytes().len() * 4 / 3);
        out.push_str("{\"version\":1,\"id\":");
        push_json_str(&mut out, &self.id);
        out.push_str(",\"app_id\":");
        push_json_str(&mut out, &self.app_id);
        out.push_str(",\"type\":");
        push_json_str(&mut out, &self.event_type);
        match &self.endpoint {
            Destination::Url(u) => {
                out.push_str(",\"endpoint\":");
                push_json_str(&mut out, u);
            }
            Destination::Endpoint(id) => {
                out.push_str(",\"endpoint_id\":");
                push_json_str(&mut out, id);
            }
        }
        out.push_str(",\"created_at\":");
        if self.created_at_ms <= MAX_RFC3339_MS {
            push_json_str(&mut out, &format_rfc3339_ms(self.created_at_ms));
        } else {
            // RFC 3339 has four-digit years; decode accepts later times as integers only.
            out.push_str(&self.created_at_ms.to_string());
        }
        let default_ct = match &self.payload {
            Payload::Json(raw) => {
                out.push_str(",\"payload\":");
                out.push_str(raw.get());
                "application/json"
            }
            Payload::Bytes(b) => {
                out.push_str(",\"payload_base64\":\"");
                base64::engine::general_purpose::STANDARD.encode_string(b, &mut out);
                out.push('"');
                "application/octet-stream"
            }
        };
        if self.content_type != default_ct {
            out.push_str(",\"content_type\":");
            push_json_str(&mut out, &self.content_type);
        }
        if !self.headers.is_empty() {
            out.push_str(",\"headers\":{");
            for (i, (n, v)) in self.headers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(&mut out, n);
                out.push(':');
                push_json_str(&mut out, v);
            }
            out.push('}');
        }
        if let Some(k) = &self.signing_key {
            out.push_str(",\"signing_key\":");
            push_json_str(&mut out, k);
        }
        if let Some(t) = &self.traceparent {
            out.push_str(",\"traceparent\":");
            push_json_str(&mut out, t);
        }
        out.push('}');
        out.into_bytes()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a str always serialises"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/envelope.json");

    fn dec(s: &str) -> Result<Envelope, EnvelopeError> {
        decode(s.as_bytes(), &Limits::default())
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "version": 1, "id": "evt_1", "app_id": "billing", "type": "invoice.paid",
            "endpoint": "https://hooks.example.com/squall", "created_at": "2026-11-28T10:00:00Z",
            "payload": {"a": 1}
        })
    }

    fn with(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v = base();
        edit(v.as_object_mut().unwrap());
        v.to_string()
    }

    #[test]
    fn remembered_url_parses_equal_fresh_ones_before_and_after_the_memo_fills() {
        // More distinct URLs than the memo holds, each asked for twice, plus ones it refuses
        // to keep (too long) and ones that do not parse.
        let long = format!("https://hooks.example.com/{}", "p".repeat(600));
        let mut urls: Vec<String> = (0..700)
            .map(|i| format!("https://h{}.example.com:{}/in?n={i}", i % 7, 8000 + i))
            .collect();
        urls.extend([
            long,
            "HTTPS://Bücher.example/ä".to_string(),
            "not a url".to_string(),
            "http://[::1".to_string(),
        ]);
        for round in 0..2 {
            for u in &urls {
                assert_eq!(parse_url(u), url::Url::parse(u), "round {round}: {u}");
            }
        }
    }

    #[test]
    fn an_endpoint_id_decodes_and_encodes_back() {
        let text = with(|m| {
            m.remove("endpoint");
            m.insert("endpoint_id".into(), "subscriber-42".into());
        });
        let env = dec(&text).unwrap();
        assert_eq!(env.endpoint, Destination::Endpoint("subscriber-42".into()));
        assert_eq!(env.endpoint.endpoint_id(), Some("subscriber-42"));
        let again = dec(std::str::from_utf8(&env.encode()).unwrap()).unwrap();
        assert_eq!(again, env);
        assert!(
            String::from_utf8(env.encode())
                .unwrap()
                .contains(r#""endpoint_id":"subscriber-42""#)
        );
    }

    #[test]
    fn the_example_decodes() {
        let env = dec(EXAMPLE).unwrap();
        assert_eq!(env.app_id, "billing");
        assert_eq!(env.event_type, "invoice.paid");
        assert_eq!(env.signing_key.as_deref(), Some("default"));
        assert_eq!(
            env.headers,
            vec![("x-tenant".to_string(), "42".to_string())]
        );
        assert_eq!(env.created_at_ms, 1_795_860_000_000);
        assert_eq!(env.content_type, "application/json");
    }

    #[test]
    fn payload_bytes_are_the_producers_exact_bytes() {
        let body = r#"{"version":1,"id":"e","app_id":"a","type":"t","endpoint":"http://x.test/",
            "created_at":1,"payload":  {"b" : 2,  "a":[1, 2.50, "\u00e9"]}  }"#;
        let ev = dec(body).unwrap().into_event(3, 99);
        assert_eq!(ev.body, br#"{"b" : 2,  "a":[1, 2.50, "\u00e9"]}"#);
        assert_eq!(ev.attempt, 3);
        assert_eq!(ev.first_attempt_at_ms, 99);
        assert_eq!(ev.created_at_ms, 1);
        assert_eq!(ev.endpoint_url, "http://x.test/");
    }

    #[test]
    fn base64_payload_and_content_type() {
        let body = with(|m| {
            m.remove("payload");
            m.insert("payload_base64".into(), "AAEC/w==".into());
        });
        let env = dec(&body).unwrap();
        assert_eq!(env.payload, Payload::Bytes(vec![0, 1, 2, 255]));
        assert_eq!(env.content_type, "application/octet-stream");
        let body = with(|m| {
            m.remove("payload");
            m.insert("payload_base64".into(), "AAEC/w".into());
            m.insert("content_type".into(), "image/png".into());
        });
        let env = dec(&body).unwrap();
        assert_eq!(env.payload.as_bytes(), &[0, 1, 2, 255]);
        assert_eq!(env.content_type, "image/png");
    }

    #[test]
    fn base64_declared_json_must_be_json() {
        let declared = |b64: &str, ct: &str| {
            dec(&with(|m| {
                m.remove("payload");
                m.insert("payload_base64".into(), b64.into());
                m.insert("content_type".into(), ct.into());
            }))
        };
        // {"a":1}
        let ok = declared("eyJhIjoxfQ==", "Application/JSON; charset=utf-8").unwrap();
        assert_eq!(ok.payload.as_bytes(), br#"{"a":1}"#);
        // {"a":
        let err = declared("eyJhIjo=", "application/json").unwrap_err();
        assert!(
            matches!(err, EnvelopeError::DeclaredJsonInvalid { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("payload_base64") && text.contains("application/json"),
            "{text}"
        );
        assert_eq!(err.kind(), "invalid-field");
        // Other media types are not parsed.
        assert!(declared("eyJhIjo=", "text/plain").is_ok());
        assert!(
            is_json_media_type(" application/json ;x=y")
                && !is_json_media_type("application/jsonl")
        );
    }

    #[test]
    fn encode_round_trips() {
        let mut env = dec(EXAMPLE).unwrap();
        assert_eq!(
            dec(std::str::from_utf8(&env.encode()).unwrap()).unwrap(),
            env
        );
        env.payload = Payload::Bytes(vec![9; 100]);
        env.content_type = "application/octet-stream".into();
        env.signing_key = None;
        env.created_at_ms = 1_795_860_000_123;
        let again = dec(std::str::from_utf8(&env.encode()).unwrap()).unwrap();
        assert_eq!(again, env);
        let j = Envelope::new_json(
            "e 1",
            "a",
            "t \"q\"",
            "http://h.test/",
            5,
            &serde_json::json!([1]),
        );
        let text = String::from_utf8(j.encode()).unwrap();
        // `e 1` is not a valid id: encoding is faithful, decoding refuses it.
        assert!(matches!(
            dec(&text),
            Err(EnvelopeError::InvalidChars { field: "id", .. })
        ));
    }

    #[test]
    fn rfc3339_and_unix_ms() {
        let cases = [
            ("1970-01-01T00:00:00Z", Ok(0)),
            ("2026-11-28T10:00:00Z", Ok(1_795_860_000_000)),
            ("2026-11-28T10:00:00.5Z", Ok(1_795_860_000_500)),
            ("2026-11-28T10:00:00.123456789Z", Ok(1_795_860_000_123)),
            ("2026-11-28t10:00:00z", Ok(1_795_860_000_000)),
            ("2026-11-28 12:00:00+02:00", Ok(1_795_860_000_000)),
            ("2026-11-28T05:30:00-04:30", Ok(1_795_860_000_000)),
            ("2024-02-29T00:00:00Z", Ok(1_709_164_800_000)),
            ("2016-12-31T23:59:60Z", Ok(1_483_228_799_000)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339_ms(s), want, "{s}");
        }
        for bad in [
            "2026-11-28",
            "2026-11-28T10:00:00",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T10:00:00.Z",
            "2026-11-28T10:00:00+0200",
            "2026-11-28T10:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "２０２６-11-28T10:00:00Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
        for ms in [0, 1, 951_782_400_000, 1_795_860_000_123, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Ok(ms));
        }
        let env = dec(&with(|m| {
            m.insert("created_at".into(), 1_795_860_000_000u64.into());
        }))
        .unwrap();
        assert_eq!(env.created_at_ms, 1_795_860_000_000);
    }

    /// Each kind of bad input gets its own variant, and the message names the field.
    #[test]
    fn error_table() {
        type Edit = Box<dyn Fn(&mut serde_json::Map<String, serde_json::Value>)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (
                Box::new(|m| {
                    m.remove("id");
                }),
                "missing-field",
                "\"id\"",
            ),
            (
                Box::new(|m| {
                    m.remove("version");
                }),
                "missing-field",
                "\"version\"",
            ),
            (
                Box::new(|m| {
                    m.remove("created_at");
                }),
                "missing-field",
                "\"created_at\"",
            ),
            (
                Box::new(|m| {
                    m.remove("payload");
                }),
                "missing-field",
                "payload",
            ),
            (
                Box::new(|m| {
                    m.insert("payload_base64".into(), "AA==".into());
                }),
                "invalid-field",
                "both present",
            ),
            (
                Box::new(|m| {
                    m.remove("endpoint");
                }),
                "missing-field",
                "give \"endpoint\" (a URL) or \"endpoint_id\"",
            ),
            (
                Box::new(|m| {
                    m.insert("endpoint_id".into(), "E".into());
                }),
                "invalid-field",
                "\"endpoint\" and \"endpoint_id\" are both present",
            ),
            (
                Box::new(|m| {
                    m.remove("endpoint");
                    m.insert("endpoint_id".into(), "a/b".into());
                }),
                "invalid-field",
                "field \"endpoint_id\" may contain only",
            ),
            (
                Box::new(|m| {
                    m.remove("endpoint");
                    m.insert("endpoint_id".into(), "e".repeat(65).into());
                }),
                "invalid-field",
                "field \"endpoint_id\" is 65 bytes long",
            ),
            (
                Box::new(|m| {
                    m.remove("endpoint");
                    m.insert("endpoint_id".into(), 7.into());
                }),
                "wrong-type",
                "field \"endpoint_id\" must be a string",
            ),
            (
                Box::new(|m| {
                    m.insert("version".into(), 2.into());
                }),
                "unsupported-version",
                "version 2",
            ),
            (
                Box::new(|m| {
                    m.insert("version".into(), "1".into());
                }),
                "wrong-type",
                "\"version\" must be the integer 1, found a string",
            ),
            (
                Box::new(|m| {
                    m.insert("version".into(), 1.5.into());
                }),
                "wrong-type",
                "non-integer",
            ),
            (
                Box::new(|m| {
                    m.insert("id".into(), 7.into());
                }),
                "wrong-type",
                "\"id\" must be a string, found a number",
            ),
            (
                Box::new(|m| {
                    m.insert("id".into(), "".into());
                }),
                "invalid-field",
                "\"id\" must not be empty",
            ),
            (
                Box::new(|m| {
                    m.insert("id".into(), "x".repeat(257).into());
                }),
                "invalid-field",
                "\"id\" is 257 bytes",
            ),
            (
                Box::new(|m| {
                    m.insert("id".into(), "a b".into());
                }),
                "invalid-field",
                "\"id\" may contain only visible ASCII",
            ),
            (
                Box::new(|m| {
                    m.insert("type".into(), "x".repeat(300).into());
                }),
                "invalid-field",
                "\"type\" is 300 bytes",
            ),
            (
                Box::new(|m| {
                    m.insert("type".into(), "a\nb".into());
                }),
                "invalid-field",
                "\"type\" must not contain control",
            ),
            (
                Box::new(|m| {
                    m.insert("app_id".into(), serde_json::Value::Null);
                }),
                "wrong-type",
                "\"app_id\" must be a string, found null",
            ),
            (
                Box::new(|m| {
                    m.insert("endpoint".into(), "/relative".into());
                }),
                "bad-endpoint",
                "\"endpoint\" is not an absolute URL",
            ),
            (
                Box::new(|m| {
                    m.insert("endpoint".into(), "ftp://h.test/".into());
                }),
                "bad-endpoint",
                "http or https",
            ),
            (
                Box::new(|m| {
                    m.insert("endpoint".into(), "https://u:p@h.test/".into());
                }),
                "bad-endpoint",
                "user name or password",
            ),
            (
                Box::new(|m| {
                    m.insert("endpoint".into(), "https://u@h.test/".into());
                }),
                "bad-endpoint",
                "user name or password",
            ),
            (
                Box::new(|m| {
                    m.insert("endpoint".into(), "https://".into());
                }),
                "bad-endpoint",
                "\"endpoint\"",
            ),
            (
                Box::new(|m| {
                    m.insert("created_at".into(), "yesterday".into());
                }),
                "invalid-field",
                "\"created_at\" is not an RFC 3339",
            ),
            (
                Box::new(|m| {
                    m.insert("created_at".into(), (-5).into());
                }),
                "invalid-field",
                "\"created_at\" must not be negative",
            ),
            (
                Box::new(|m| {
                    m.insert("created_at".into(), 1.5.into());
                }),
                "invalid-field",
                "\"created_at\" must be an integer",
            ),
            (
                Box::new(|m| {
                    m.insert("created_at".into(), true.into());
                }),
                "wrong-type",
                "\"created_at\" must be an RFC 3339 string",
            ),
            (
                Box::new(|m| {
                    m.remove("payload");
                    m.insert("payload_base64".into(), "**".into());
                }),
                "invalid-field",
                "\"payload_base64\" is not valid",
            ),
            (
                Box::new(|m| {
                    m.remove("payload");
                    m.insert("payload_base64".into(), 5.into());
                }),
                "wrong-type",
                "\"payload_base64\" must be a string",
            ),
            (
                Box::new(|m| {
                    m.insert("content_type".into(), "text/plain\r\nx: y".into());
                }),
                "invalid-field",
                "\"content_type\" must not contain control",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!(["a"]));
                }),
                "wrong-type",
                "\"headers\" must be an object",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"bad name": "x"}));
                }),
                "bad-header",
                "\"bad name\" is not a valid HTTP header name",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"": "x"}));
                }),
                "bad-header",
                "not a valid HTTP header name",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"x-a": "1\r\nevil: 1"}));
                }),
                "bad-header",
                "\"x-a\" contains CR or LF",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"x-a": "a\u{0}b"}));
                }),
                "bad-header",
                "control character",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"x-a": 5}));
                }),
                "bad-header",
                "must be a string",
            ),
            (
                Box::new(|m| {
                    m.insert(
                        "headers".into(),
                        serde_json::json!({"Webhook-Signature": "v1,x"}),
                    );
                }),
                "bad-header",
                "\"webhook-signature\" is reserved",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"Content-Length": "1"}));
                }),
                "bad-header",
                "\"content-length\" is reserved",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"host": "evil"}));
                }),
                "bad-header",
                "\"host\" is reserved",
            ),
            (
                Box::new(|m| {
                    m.insert(
                        "headers".into(),
                        serde_json::json!({"Transfer-Encoding": "chunked"}),
                    );
                }),
                "bad-header",
                "reserved",
            ),
            (
                Box::new(|m| {
                    m.insert("headers".into(), serde_json::json!({"content-type": "a/b"}));
                }),
                "bad-header",
                "use the \"content_type\" field",
            ),
            (
                Box::new(|m| {
                    m.insert(
                        "headers".into(),
                        serde_json::json!({"X-A": "1", "x-a": "2"}),
                    );
                }),
                "bad-header",
                "\"x-a\" appears more than once",
            ),
            (
                Box::new(|m| {
                    let h: serde_json::Map<_, _> = (0..65)
                        .map(|i| (format!("x-{i}"), serde_json::Value::from("v")))
                        .collect();
                    m.insert("headers".into(), h.into());
                }),
                "bad-header",
                "65 entries",
            ),
            (
                Box::new(|m| {
                    m.insert("signing_key".into(), "a/b".into());
                }),
                "invalid-field",
                "\"signing_key\" is a key name",
            ),
            (
                Box::new(|m| {
                    m.insert("signing_key".into(), "".into());
                }),
                "invalid-field",
                "\"signing_key\" must not be empty",
            ),
            (
                Box::new(|m| {
                    m.insert("payloadd".into(), 1.into());
                }),
                "unknown-field",
                "unknown field \"payloadd\"",
            ),
        ];
        for (edit, kind, needle) in cases {
            let body = with(&*edit);
            let err = dec(&body).expect_err(&body);
            assert_eq!(err.kind(), kind, "{body}: {err}");
            assert!(
                err.to_string().contains(needle),
                "{body}: {err} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn structural_errors() {
        let d = |b: &[u8]| decode(b, &Limits::default()).unwrap_err();
        assert!(matches!(
            d(b"\xff\xfe"),
            EnvelopeError::NotUtf8 { offset: 0 }
        ));
        assert!(matches!(d(b"{\"version\":"), EnvelopeError::NotJson { .. }));
        assert!(matches!(d(b""), EnvelopeError::NotJson { .. }));
        assert!(matches!(d(b"{} x"), EnvelopeError::NotJson { .. }));
        assert_eq!(
            d(b"[1,2]"),
            EnvelopeError::NotAnObject { found: "an array" }
        );
        assert_eq!(
            d(b"\"s\""),
            EnvelopeError::NotAnObject { found: "a string" }
        );
        assert_eq!(d(b"null"), EnvelopeError::NotAnObject { found: "null" });
        assert_eq!(d(b"12"), EnvelopeError::NotAnObject { found: "a number" });
        assert_eq!(
            d(br#"{"version":1,"version":1}"#),
            EnvelopeError::DuplicateField { field: "version" }
        );
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(DEFAULT_MAX_BODY_BYTES));
        assert!(matches!(
            d(big.as_bytes()),
            EnvelopeError::TooLarge {
                max: DEFAULT_MAX_BODY_BYTES,
                ..
            }
        ));
        let small = Limits { max_body_bytes: 10 };
        assert!(matches!(
            decode(EXAMPLE.as_bytes(), &small),
            Err(EnvelopeError::TooLarge { max: 10, .. })
        ));
        // Escaped keys are keys like any other.
        let escaped = EXAMPLE.replacen("\"app_id\"", "\"app\\u005fid\"", 1);
        assert_eq!(dec(&escaped).unwrap().app_id, "billing");
    }

    /// The published schema describes exactly the fields and limits the decoder enforces.
    #[test]
    fn schema_matches_the_decoder() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/envelope.schema.json")).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let mut documented: Vec<&str> = props.keys().map(String::as_str).collect();
        let mut fields = FIELDS.to_vec();
        documented.sort();
        fields.sort();
        assert_eq!(documented, fields);
        assert_eq!(props["id"]["maxLength"], MAX_ID_LEN);
        assert_eq!(props["app_id"]["maxLength"], MAX_APP_ID_LEN);
        assert_eq!(props["type"]["maxLength"], MAX_TYPE_LEN);
        assert_eq!(props["endpoint"]["maxLength"], MAX_ENDPOINT_LEN);
        assert_eq!(props["endpoint_id"]["maxLength"], MAX_ENDPOINT_ID_LEN);
        assert_eq!(props["headers"]["maxProperties"], MAX_HEADERS);
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in FIELDS {
            let mut v = base();
            v.as_object_mut().unwrap().remove(*field);
            let missing_is_error = dec(&v.to_string()).is_err();
            assert_eq!(
                missing_is_error,
                required.contains(field) || *field == "payload" || *field == "endpoint",
                "{field}"
            );
        }
    }

    /// No input makes decode panic: random bytes and mutations of a valid envelope.
    #[test]
    fn never_panics_on_random_or_mutated_input() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let seed = EXAMPLE.as_bytes();
        let alphabet = b"{}[]\":,\\0123456789.eE+-truefalsnul \n\tabcxyz\xc3\xa9\xff";
        let mut decoded = 0;
        for i in 0..4000 {
            let input: Vec<u8> = if i % 4 == 0 {
                (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect()
            } else {
                let mut v = seed.to_vec();
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..v.len().max(1));
                    match rng.u8(0..4) {
                        0 if !v.is_empty() => {
                            v.remove(at.min(v.len() - 1));
                        }
                        1 => v.insert(at.min(v.len()), alphabet[rng.usize(..alphabet.len())]),
                        2 if !v.is_empty() => {
                            let at = at.min(v.len() - 1);
                            v[at] = alphabet[rng.usize(..alphabet.len())];
                        }
                        _ => v.truncate(at),
                    }
                }
                v
            };
            if let Ok(env) = decode(&input, &Limits::default()) {
                decoded += 1;
                // Whatever decodes re-encodes to an equal envelope.
                assert_eq!(decode(&env.encode(), &Limits::default()).unwrap(), env);
            }
        }
        assert!(
            decoded > 0,
            "no mutation survived: the test exercises nothing valid"
        );
    }

    /// Decode cost on the per-event path. Run:
    /// `cargo test --release -p squall --lib envelope::tests::decode_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark"]
    fn decode_speed() {
        let payload = serde_json::json!({"items": (0..40).map(|i| serde_json::json!({"sku": format!("sku-{i}"), "qty": i, "price": 12.5})).collect::<Vec<_>>()});
        let mut env = dec(EXAMPLE).unwrap();
        env.payload = Payload::json(&payload);
        let body = env.encode();
        let n = 100_000;
        let started = std::time::Instant::now();
        let mut total = 0;
        for _ in 0..n {
            let e = decode(std::hint::black_box(&body), &Limits::default()).unwrap();
            total += e.into_event(1, 0).body.len();
        }
        let per = started.elapsed() / n;
        eprintln!(
            "envelope of {} bytes: decode + into_event {per:?} per event ({total})",
            body.len()
        );
    }
}
