//! Endpoints as data: an application's registered endpoints, which an envelope may name by id
//! (`endpoint_id`) instead of giving a URL.
//!
//! An endpoint is an id, a URL, an enabled flag, an optional signing key name and extra headers.
//! In a configuration file it is `[apps.NAME.endpoints.ID]`; in the DynamoDB registry it is an
//! entry of the application item's `endpoints` map, written by `squall endpoints`. The engine
//! resolves the id at every attempt from what the registry cache holds, so a changed URL,
//! signing key or header applies to events already queued, waiting for a retry, or redriven.
//!
//! What an attempt takes from its endpoint (see [`Endpoint::apply`]):
//! - the URL (the SSRF guard checks it at every attempt, as any URL);
//! - the signing key name, unless the envelope names one (the event's own choice wins);
//! - the endpoint's headers, before the envelope's; a header the envelope also gives takes the
//!   envelope's value (the event is the more specific).
//!
//! An id the application does not have dead-letters the event (`field "endpoint_id"` named); a
//! disabled endpoint dead-letters it with reason [`DISABLED_REASON`], redrivable once the
//! endpoint is enabled again.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::envelope::{self, MAX_ENDPOINT_LEN};
use crate::hooks::Headers;

/// The kind of a dead letter whose endpoint was disabled (`squall-last-error`, and the start of
/// `squall-reason`).
pub const DISABLED_REASON: &str = "endpoint-disabled";
/// The kind of a dead letter whose `endpoint_id` the application does not have.
pub const UNKNOWN_REASON: &str = "unknown-endpoint";
/// Most extra headers an endpoint may carry.
pub const MAX_ENDPOINT_HEADERS: usize = 32;
/// Most endpoints one application may have. The DynamoDB registry keeps them in the
/// application's item, whose size DynamoDB caps at 400 KB: 1,000 endpoints of typical size
/// (a 100-byte URL, a key name, two short headers: about 250 bytes each) fit with room.
pub const MAX_ENDPOINTS_PER_APP: usize = 1_000;

/// One registered endpoint, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its id (unique within the application).
    pub id: String,
    /// Absolute http/https URL without userinfo, normalised.
    pub url: String,
    /// Disabled endpoints' events are dead-lettered with [`DISABLED_REASON`].
    pub enabled: bool,
    /// The signing key name used for its events (an envelope's `signing_key` wins); `None` =
    /// the application's `signing_key`.
    pub signing_key: Option<String>,
    /// Extra headers (names lower-cased), sent before the envelope's own.
    pub headers: Headers,
}

/// What is wrong with an endpoint's settings: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct EndpointError {
    /// `id`, `url`, `signing_key` or `headers` (with the header name).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> EndpointError {
    EndpointError {
        field: field.into(),
        message: message.into(),
    }
}

impl Endpoint {
    /// An endpoint from its parts, validated: the id by the rule of application ids, the URL by
    /// the envelope's `endpoint` rules (normalised), the key name by the envelope's
    /// `signing_key` rule, the headers by the envelope's `headers` rules.
    pub fn new(
        id: &str,
        url: &str,
        enabled: bool,
        signing_key: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<Endpoint, EndpointError> {
        if !envelope::is_endpoint_id(id) {
            return Err(err(
                "id",
                "must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'",
            ));
        }
        let url = check_url(url).map_err(|m| err("url", m))?;
        if let Some(k) = signing_key
            && (k.is_empty()
                || k.len() > envelope::MAX_SIGNING_KEY_LEN
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
        {
            return Err(err(
                "signing_key",
                "must be 1-128 letters, digits, '_', '-' or '.' (a key name of the application's secrets)",
            ));
        }
        if headers.len() > MAX_ENDPOINT_HEADERS {
            return Err(err(
                "headers",
                format!(
                    "has {} entries, more than the limit of {MAX_ENDPOINT_HEADERS}",
                    headers.len()
                ),
            ));
        }
        let mut checked: Headers = Vec::with_capacity(headers.len());
        for (n, v) in headers {
            let (name, value) =
                envelope::check_header(n, v).map_err(|e| err("headers", strip_field(&e)))?;
            if checked.iter().any(|(c, _)| *c == name) {
                return Err(err(
                    "headers",
                    format!("{name:?} appears more than once (names are case-insensitive)"),
                ));
            }
            checked.push((name, value));
        }
        Ok(Endpoint {
            id: id.to_string(),
            url,
            enabled,
            signing_key: signing_key.map(str::to_string),
            headers: checked,
        })
    }

    /// The endpoint's settings as the body of its TOML table (`url`, `enabled`, `signing_key`
    /// when set, `headers` when any): what the registry stores and `[apps.NAME.endpoints.ID]`
    /// holds.
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert("url".into(), toml::Value::String(self.url.clone()));
        t.insert("enabled".into(), toml::Value::Boolean(self.enabled));
        if let Some(k) = &self.signing_key {
            t.insert("signing_key".into(), toml::Value::String(k.clone()));
        }
        if !self.headers.is_empty() {
            let h: toml::Table = self
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), toml::Value::String(v.clone())))
                .collect();
            t.insert("headers".into(), toml::Value::Table(h));
        }
        toml::to_string(&t).expect("a table of strings and booleans always serialises")
    }

    /// The headers of an attempt at this endpoint: the endpoint's, then the envelope's, an
    /// envelope header replacing the endpoint's header of the same name.
    pub fn merged_headers(&self, event_headers: Headers) -> Headers {
        if self.headers.is_empty() {
            return event_headers;
        }
        let mut out: Headers = self
            .headers
            .iter()
            .filter(|(n, _)| !event_headers.iter().any(|(e, _)| e == n))
            .cloned()
            .collect();
        out.extend(event_headers);
        out
    }
}

/// The envelope's message without its own field prefix (`field "headers": ...`), so the
/// endpoint's error can name its own field.
fn strip_field(e: &envelope::EnvelopeError) -> String {
    let text = e.to_string();
    match text.strip_prefix("field \"headers\": ") {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// An endpoint URL checked and normalised as the envelope's `endpoint` is.
pub fn check_url(url: &str) -> Result<String, String> {
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    let parsed = envelope::parse_url(url).map_err(|e| format!("is not an absolute URL: {e}"))?;
    envelope::check_endpoint_url(&parsed).map_err(str::to_string)?;
    let normalised: String = parsed.into();
    if normalised.len() > MAX_ENDPOINT_LEN {
        return Err(format!(
            "is {} bytes long once normalised, longer than the limit of {MAX_ENDPOINT_LEN}",
            normalised.len()
        ));
    }
    Ok(normalised)
}

/// An application's endpoints by id, as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointTable {
    by_id: BTreeMap<String, Arc<Endpoint>>,
}

/// What an `endpoint_id` resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// An enabled endpoint: deliver to it.
    Endpoint(Arc<Endpoint>),
    /// The endpoint exists but is disabled: dead-letter with [`DISABLED_REASON`].
    Disabled,
    /// The application has no such endpoint: dead-letter, naming `endpoint_id`.
    Unknown,
}

impl EndpointTable {
    /// No endpoints.
    pub const fn empty() -> EndpointTable {
        EndpointTable {
            by_id: BTreeMap::new(),
        }
    }

    /// A table of these endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> EndpointTable {
        EndpointTable {
            by_id: endpoints
                .into_iter()
                .map(|e| (e.id.clone(), Arc::new(e)))
                .collect(),
        }
    }

    /// The endpoint `id`, if any.
    pub fn get(&self, id: &str) -> Option<&Arc<Endpoint>> {
        self.by_id.get(id)
    }

    /// What an event naming `id` is sent to.
    pub fn resolve(&self, id: &str) -> Resolved {
        match self.by_id.get(id) {
            Some(e) if e.enabled => Resolved::Endpoint(e.clone()),
            Some(_) => Resolved::Disabled,
            None => Resolved::Unknown,
        }
    }

    /// Every endpoint, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_id.values()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn an_endpoint_is_validated_field_by_field() {
        let ok = Endpoint::new(
            "E_1",
            "HTTPS://Hooks.Example.com/in",
            true,
            Some("k2"),
            &h(&[("X-Tenant", "42")]),
        )
        .unwrap();
        assert_eq!(ok.url, "https://hooks.example.com/in");
        assert_eq!(ok.headers, h(&[("x-tenant", "42")]));
        let cases: Vec<(Result<Endpoint, EndpointError>, &str, &str)> = vec![
            (
                Endpoint::new("a/b", "https://x.example", true, None, &[]),
                "id",
                "1-64",
            ),
            (
                Endpoint::new("", "https://x.example", true, None, &[]),
                "id",
                "1-64",
            ),
            (
                Endpoint::new("e", "ftp://x.example", true, None, &[]),
                "url",
                "http or https",
            ),
            (
                Endpoint::new("e", "not a url", true, None, &[]),
                "url",
                "absolute URL",
            ),
            (
                Endpoint::new("e", "https://u:p@x.example", true, None, &[]),
                "url",
                "user name",
            ),
            (Endpoint::new("e", "", true, None, &[]), "url", "empty"),
            (
                Endpoint::new("e", "https://x.example", true, Some("a b"), &[]),
                "signing_key",
                "key name",
            ),
            (
                Endpoint::new(
                    "e",
                    "https://x.example",
                    true,
                    None,
                    &h(&[("webhook-id", "x")]),
                ),
                "headers",
                "reserved",
            ),
            (
                Endpoint::new(
                    "e",
                    "https://x.example",
                    true,
                    None,
                    &h(&[("x-a", "1\r\n2")]),
                ),
                "headers",
                "CR or LF",
            ),
            (
                Endpoint::new(
                    "e",
                    "https://x.example",
                    true,
                    None,
                    &h(&[("x-a", "1"), ("X-A", "2")]),
                ),
                "headers",
                "more than once",
            ),
        ];
        for (result, field, text) in cases {
            let e = result.unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(text), "{e}");
        }
    }

    #[test]
    fn settings_round_trip_through_their_toml_body() {
        let e = Endpoint::new(
            "E",
            "https://hooks.example.com/a?b=1",
            false,
            Some("k"),
            &h(&[("x-b", "2"), ("x-a", "1")]),
        )
        .unwrap();
        let text = e.to_toml();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["url"].as_str(), Some("https://hooks.example.com/a?b=1"));
        assert_eq!(t["enabled"].as_bool(), Some(false));
        assert_eq!(t["signing_key"].as_str(), Some("k"));
        assert_eq!(t["headers"]["x-a"].as_str(), Some("1"));
    }

    #[test]
    fn the_envelopes_headers_follow_and_replace_the_endpoints() {
        let e = Endpoint::new(
            "E",
            "https://x.example",
            true,
            None,
            &h(&[("x-a", "endpoint"), ("x-b", "endpoint")]),
        )
        .unwrap();
        assert_eq!(
            e.merged_headers(h(&[("x-b", "event"), ("x-c", "event")])),
            h(&[("x-a", "endpoint"), ("x-b", "event"), ("x-c", "event")])
        );
    }

    #[test]
    fn resolution_tells_enabled_disabled_and_unknown_apart() {
        let on = Endpoint::new("on", "https://a.example", true, None, &[]).unwrap();
        let off = Endpoint::new("off", "https://b.example", false, None, &[]).unwrap();
        let t = EndpointTable::new([on.clone(), off]);
        assert_eq!(t.resolve("on"), Resolved::Endpoint(Arc::new(on)));
        assert_eq!(t.resolve("off"), Resolved::Disabled);
        assert_eq!(t.resolve("gone"), Resolved::Unknown);
    }
}
