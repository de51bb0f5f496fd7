//! Decoding, in two stages: split the JSON object into raw fields in one pass of the parser
//! (no typed decoding), then type and validate each field, naming it in every error.

use std::borrow::Cow;

use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::*;

// ---------------------------------------------------------------------------------------------
// Stage 1: split the object into raw fields (one pass of the JSON parser, no typed decoding).

#[derive(Default)]
pub(super) struct RawFields<'a> {
    version: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    app_id: Option<&'a RawValue>,
    event_type: Option<&'a RawValue>,
    endpoint: Option<&'a RawValue>,
    endpoint_id: Option<&'a RawValue>,
    created_at: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    payload_base64: Option<&'a RawValue>,
    content_type: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
    signing_key: Option<&'a RawValue>,
    traceparent: Option<&'a RawValue>,
    /// First structural problem seen (unknown or duplicate field), reported after parsing.
    problem: Option<EnvelopeError>,
    /// Set when the top-level value is not an object.
    not_object: Option<&'static str>,
}

pub(super) fn parse_fields(text: &str) -> Result<RawFields<'_>, EnvelopeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = (&mut de)
        .deserialize_any(FieldsVisitor)
        .map_err(|e| EnvelopeError::NotJson {
            detail: e.to_string(),
        })?;
    de.end().map_err(|e| EnvelopeError::NotJson {
        detail: e.to_string(),
    })?;
    if let Some(found) = raw.not_object {
        return Err(EnvelopeError::NotAnObject { found });
    }
    Ok(raw)
}

pub(super) struct FieldsVisitor;

/// A top-level key: borrowed when unescaped.
pub(super) struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The JSON type of a value from its first byte (values here are already well-formed).
pub(super) fn json_kind_of_first_byte(b: Option<u8>) -> &'static str {
    match b {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

pub(super) fn kind(raw: &RawValue) -> &'static str {
    json_kind_of_first_byte(raw.get().as_bytes().first().copied())
}

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFields<'de>, A::Error> {
        let mut raw = RawFields::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let (slot, name): (&mut Option<&'de RawValue>, &'static str) = match key.0.as_ref() {
                "version" => (&mut raw.version, "version"),
                "id" => (&mut raw.id, "id"),
                "app_id" => (&mut raw.app_id, "app_id"),
                "type" => (&mut raw.event_type, "type"),
                "endpoint" => (&mut raw.endpoint, "endpoint"),
                "endpoint_id" => (&mut raw.endpoint_id, "endpoint_id"),
                "created_at" => (&mut raw.created_at, "created_at"),
                "payload" => (&mut raw.payload, "payload"),
                "payload_base64" => (&mut raw.payload_base64, "payload_base64"),
                "content_type" => (&mut raw.content_type, "content_type"),
                "headers" => (&mut raw.headers, "headers"),
                "signing_key" => (&mut raw.signing_key, "signing_key"),
                "traceparent" => (&mut raw.traceparent, "traceparent"),
                other => {
                    if raw.problem.is_none() {
                        raw.problem = Some(EnvelopeError::UnknownField {
                            field: truncate(other, 64),
                        });
                    }
                    continue;
                }
            };
            if slot.is_some() {
                if raw.problem.is_none() {
                    raw.problem = Some(EnvelopeError::DuplicateField { field: name });
                }
            } else {
                *slot = Some(value);
            }
        }
        Ok(raw)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawFields<'de>, E> {
        Ok(not_object("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawFields<'de>, E> {
        Ok(not_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawFields<'de>, E> {
        Ok(not_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawFields<'de>, E> {
        Ok(not_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawFields<'de>, E> {
        Ok(not_object("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawFields<'de>, E> {
        Ok(not_object("null"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawFields<'de>, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(not_object("an array"))
    }
}

pub(super) fn not_object(found: &'static str) -> RawFields<'static> {
    RawFields {
        not_object: Some(found),
        ..RawFields::default()
    }
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: typed, validated fields.

/// The content of a JSON string value: borrowed when it has no escapes.
pub(super) fn string_of<'a>(
    raw: &'a RawValue,
    field: &'static str,
) -> Result<Cow<'a, str>, EnvelopeError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(EnvelopeError::WrongType {
            field,
            expected: "a string",
            found: kind(raw),
        });
    }
    if !text.contains('\\') {
        // A RawValue string is well-formed JSON: `"` ... `"` with no escapes inside.
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| EnvelopeError::NotJson {
            detail: format!("field {field:?}: {e}"),
        })
}

pub(super) fn required<'a>(
    raw: Option<&'a RawValue>,
    field: &'static str,
) -> Result<&'a RawValue, EnvelopeError> {
    raw.ok_or(EnvelopeError::Missing { field })
}

/// A non-empty, bounded string of visible ASCII (no spaces, no control characters).
pub(super) fn token_string(
    raw: &RawValue,
    field: &'static str,
    max: usize,
) -> Result<String, EnvelopeError> {
    let s = string_of(raw, field)?;
    check_len(&s, field, max)?;
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(EnvelopeError::InvalidChars {
            field,
            reason: "may contain only visible ASCII characters (no spaces or control characters)",
        });
    }
    Ok(s.into_owned())
}

/// A non-empty, bounded string without control characters.
pub(super) fn text_string(
    raw: &RawValue,
    field: &'static str,
    max: usize,
) -> Result<String, EnvelopeError> {
    let s = string_of(raw, field)?;
    check_len(&s, field, max)?;
    if s.chars().any(char::is_control) {
        return Err(EnvelopeError::InvalidChars {
            field,
            reason: "must not contain control characters (CR, LF, NUL...)",
        });
    }
    Ok(s.into_owned())
}

pub(super) fn check_len(s: &str, field: &'static str, max: usize) -> Result<(), EnvelopeError> {
    if s.is_empty() {
        return Err(EnvelopeError::Empty { field });
    }
    if s.len() > max {
        return Err(EnvelopeError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

impl RawFields<'_> {
    pub(super) fn validate(self) -> Result<Envelope, EnvelopeError> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        let version = required(self.version, "version")?;
        match version.get().parse::<u64>() {
            Ok(VERSION) => {}
            Ok(_) => {
                return Err(EnvelopeError::UnsupportedVersion {
                    found: truncate(version.get(), 32),
                });
            }
            Err(_) => {
                return Err(EnvelopeError::WrongType {
                    field: "version",
                    expected: "the integer 1",
                    found: if kind(version) == "a number" {
                        "a non-integer number"
                    } else {
                        kind(version)
                    },
                });
            }
        }
        let id = token_string(required(self.id, "id")?, "id", MAX_ID_LEN)?;
        let app_id = token_string(required(self.app_id, "app_id")?, "app_id", MAX_APP_ID_LEN)?;
        let event_type = text_string(required(self.event_type, "type")?, "type", MAX_TYPE_LEN)?;
        let endpoint = match (self.endpoint, self.endpoint_id) {
            (Some(_), Some(_)) => return Err(EnvelopeError::BothEndpoints),
            (None, None) => return Err(EnvelopeError::NoEndpoint),
            (Some(url), None) => Destination::Url(validate_endpoint(url)?),
            (None, Some(id)) => Destination::Endpoint(validate_endpoint_id(id)?),
        };
        let created_at_ms = parse_created_at(required(self.created_at, "created_at")?)?;
        let (payload, default_ct) = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => return Err(EnvelopeError::BothPayloads),
            (None, None) => return Err(EnvelopeError::NoPayload),
            (Some(json), None) => (Payload::Json(json.to_owned()), "application/json"),
            (None, Some(b64)) => {
                let s = string_of(b64, "payload_base64")?;
                let bytes = BASE64
                    .decode(s.as_bytes())
                    .map_err(|e| EnvelopeError::BadBase64 {
                        detail: e.to_string(),
                    })?;
                (Payload::Bytes(bytes), "application/octet-stream")
            }
        };
        let content_type = match self.content_type {
            Some(ct) => text_string(ct, "content_type", MAX_CONTENT_TYPE_LEN)?,
            None => default_ct.to_string(),
        };
        // A JSON content type always comes with a JSON body: `payload` is JSON by construction,
        // and bytes declared as JSON are checked here, once, instead of by every plugin.
        if let Payload::Bytes(bytes) = &payload
            && is_json_media_type(&content_type)
            && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        {
            return Err(EnvelopeError::DeclaredJsonInvalid {
                content_type: media_type(&content_type),
                detail: e.to_string(),
            });
        }
        let headers = match self.headers {
            Some(h) => validate_headers(h)?,
            None => Vec::new(),
        };
        let signing_key = match self.signing_key {
            Some(k) => {
                let k = token_string(k, "signing_key", MAX_SIGNING_KEY_LEN)?;
                if !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                {
                    return Err(EnvelopeError::InvalidChars {
                        field: "signing_key",
                        reason: "is a key name and may contain only letters, digits, '_', '-' and '.'",
                    });
                }
                Some(k)
            }
            None => None,
        };
        // W3C Trace Context: a value that does not parse starts a new trace (the event is not
        // refused for it); only its type and length are checked here.
        let traceparent = match self.traceparent {
            Some(t) => Some(token_string(t, "traceparent", 128)?),
            None => None,
        };
        Ok(Envelope {
            id,
            app_id,
            event_type,
            endpoint,
            created_at_ms,
            payload,
            content_type,
            headers,
            signing_key,
            traceparent,
        })
    }
}

/// The media type of a content type: before any `;`, trimmed of spaces and tabs, ASCII
/// lower-cased.
pub(super) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t'])
        .to_ascii_lowercase()
}

/// True for `application/json` (any case, any parameters): the content type whose bodies the
/// host guarantees to be JSON.
pub(super) fn is_json_media_type(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

/// Standard alphabet; padding optional (some producers strip it).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub(super) fn validate_endpoint(raw: &RawValue) -> Result<String, EnvelopeError> {
    let s = string_of(raw, "endpoint")?;
    check_len(&s, "endpoint", MAX_ENDPOINT_LEN)?;
    let url = parse_url(&s).map_err(|e| EnvelopeError::BadEndpoint {
        reason: format!("is not an absolute URL: {e}"),
    })?;
    check_endpoint_url(&url).map_err(|reason| EnvelopeError::BadEndpoint {
        reason: reason.to_string(),
    })?;
    // Normalising can lengthen a URL (an IDN host becomes punycode, characters become
    // percent-escapes): the limit holds for what is stored and re-encoded too.
    let normalised: String = url.into();
    if normalised.len() > MAX_ENDPOINT_LEN {
        return Err(EnvelopeError::BadEndpoint {
            reason: format!(
                "is {} bytes long once normalised (punycode host, percent-escapes), longer than the limit of {MAX_ENDPOINT_LEN}",
                normalised.len()
            ),
        });
    }
    Ok(normalised)
}

pub(super) fn validate_endpoint_id(raw: &RawValue) -> Result<String, EnvelopeError> {
    let s = string_of(raw, "endpoint_id")?;
    check_len(&s, "endpoint_id", MAX_ENDPOINT_ID_LEN)?;
    if !is_endpoint_id(&s) {
        return Err(EnvelopeError::InvalidChars {
            field: "endpoint_id",
            reason: "may contain only letters, digits, '_' and '-'",
        });
    }
    Ok(s.into_owned())
}

/// The rule of endpoint ids (and application ids): 1-64 of a-z, A-Z, 0-9, '_', '-'.
pub fn is_endpoint_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ENDPOINT_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn parse_created_at(raw: &RawValue) -> Result<u64, EnvelopeError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s = string_of(raw, "created_at")?;
            parse_rfc3339_ms(&s).map_err(|reason| EnvelopeError::BadCreatedAt {
                reason: format!(
                    "is not an RFC 3339 date-time such as 2026-11-28T10:00:00Z: {reason}"
                ),
            })
        }
        Some(b'0'..=b'9') => text
            .parse::<u64>()
            .map_err(|_| EnvelopeError::BadCreatedAt {
                reason: "must be an integer number of Unix milliseconds (or an RFC 3339 string)"
                    .to_string(),
            }),
        Some(b'-') => Err(EnvelopeError::BadCreatedAt {
            reason: "must not be negative (Unix milliseconds since 1970)".to_string(),
        }),
        _ => Err(EnvelopeError::WrongType {
            field: "created_at",
            expected: "an RFC 3339 string or an integer of Unix milliseconds",
            found: kind(raw),
        }),
    }
}

/// Headers whose value Squall or the HTTP layer controls.
pub(super) fn reserved_header(name: &str) -> Option<&'static str> {
    if name.starts_with("webhook-") {
        return Some("the signer sets webhook-* headers");
    }
    if name.starts_with("proxy-") {
        return Some("hop-by-hop proxy header");
    }
    match name {
        "content-type" => Some("use the \"content_type\" field"),
        "content-length" | "transfer-encoding" => Some("the HTTP client frames the body"),
        "host" => Some("the host comes from \"endpoint\""),
        "connection" | "keep-alive" | "upgrade" | "te" | "trailer" | "expect" => {
            Some("hop-by-hop header controlled by the HTTP client")
        }
        _ => None,
    }
}

/// `tchar` of RFC 9110: the bytes of an HTTP header name.
pub(crate) const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

pub(super) fn validate_headers(raw: &RawValue) -> Result<Headers, EnvelopeError> {
    if !raw.get().starts_with('{') {
        return Err(EnvelopeError::WrongType {
            field: "headers",
            expected: "an object of string values",
            found: kind(raw),
        });
    }
    // Keep the producer's order and see duplicates: parse as a sequence of pairs.
    let pairs: Vec<(Key<'_>, &RawValue)> = {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Vec<(Key<'de>, &'de RawValue)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    out.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(out)
            }
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        (&mut de)
            .deserialize_map(Pairs)
            .map_err(|e| EnvelopeError::NotJson {
                detail: format!("field \"headers\": {e}"),
            })?
    };
    if pairs.len() > MAX_HEADERS {
        return Err(EnvelopeError::TooManyHeaders {
            count: pairs.len(),
            max: MAX_HEADERS,
        });
    }
    let mut out: Headers = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let name = check_header_name(&key.0)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(EnvelopeError::DuplicateHeader { name });
        }
        if !value.get().starts_with('"') {
            return Err(EnvelopeError::BadHeaderValue {
                name,
                reason: "must be a string",
            });
        }
        let v = string_of(value, "headers")?;
        check_header_value(&name, &v)?;
        out.push((name, v.into_owned()));
    }
    Ok(out)
}

/// One extra header a producer (or an endpoint's settings) may add: the name an HTTP token and
/// not reserved, the value bounded and free of CR, LF and control characters. Returns the name
/// lower-cased.
pub fn check_header(name: &str, value: &str) -> Result<(String, String), EnvelopeError> {
    let name = check_header_name(name)?;
    check_header_value(&name, value)?;
    Ok((name, value.to_string()))
}

fn check_header_name(name: &str) -> Result<String, EnvelopeError> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(is_tchar) {
        return Err(EnvelopeError::BadHeaderName {
            name: truncate(name, 64),
        });
    }
    let name = name.to_ascii_lowercase();
    if let Some(hint) = reserved_header(&name) {
        return Err(EnvelopeError::ReservedHeader { name, hint });
    }
    Ok(name)
}

fn check_header_value(name: &str, value: &str) -> Result<(), EnvelopeError> {
    let bad = |reason| {
        Err(EnvelopeError::BadHeaderValue {
            name: name.to_string(),
            reason,
        })
    };
    if value.len() > MAX_HEADER_VALUE_LEN {
        return bad("is longer than 8192 bytes");
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return bad("contains CR or LF");
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return bad("contains a control character");
    }
    Ok(())
}
