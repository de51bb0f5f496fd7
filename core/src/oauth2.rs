//! OAuth2 client credentials (RFC 6749 section 4.4) to endpoints, as values: the token request
//! an application sends, the reading of the token endpoint's answer, and when a cached token
//! must be refreshed. The engine (`squall::oauth2`) sends the request through the application's
//! SSRF-guarded client, holds the cache and attaches `Authorization: Bearer` after the plugins
//! ran.
//!
//! The access token and the client secret are secrets: their `Debug` is redacted, no error
//! here carries either, and the token endpoint's error body is reduced to its `error` code.

use std::fmt;

use base64::Engine as _;

/// A token endpoint's answer without `expires_in` is used for this long, seconds (a 401 from
/// the endpoint refreshes it sooner).
pub const DEFAULT_LIFETIME_SECS: u64 = 300;

/// Largest token endpoint answer read, bytes (a JWT access token is a few KiB).
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// How the client authenticates to the token endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// HTTP Basic with the form-urlencoded id and secret (`client_secret_basic`; every server
    /// must support it).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// `[apps.NAME.oauth2]` once validated (`token_url` set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    /// The token endpoint (absolute http(s) URL; checked by the SSRF guard when used).
    pub token_url: String,
    /// The client id (not a secret).
    pub client_id: String,
    /// Name of the application's secret holding the client secret (in `secrets`; never
    /// given to the signer or to plugins).
    pub client_secret: String,
    /// `scope` of the token request; empty = none sent.
    pub scope: String,
    /// `audience` of the token request (Auth0, Okta...); empty = none sent.
    pub audience: String,
    /// Endpoint origins (`scheme://host:port`) the token is sent to; requests elsewhere carry
    /// no token.
    pub origins: Vec<String>,
    /// A cached token is refreshed this long before it expires, seconds.
    pub refresh_before_secs: u64,
    /// How the client authenticates.
    pub auth_method: AuthMethod,
}

impl OAuth2Config {
    /// Whether a request to `url` carries the token: its origin is one of [`Self::origins`].
    pub fn sends_to(&self, url: &str) -> bool {
        crate::health::origin_of(url).is_some_and(|o| self.origins.contains(&o))
    }

    /// The token request: headers and `application/x-www-form-urlencoded` body.
    pub fn token_request(&self, client_secret: &[u8]) -> TokenRequest {
        let secret = String::from_utf8_lossy(client_secret);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if !self.scope.is_empty() {
            form.append_pair("scope", &self.scope);
        }
        if !self.audience.is_empty() {
            form.append_pair("audience", &self.audience);
        }
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept".to_string(), "application/json".to_string()),
        ];
        let mut authorization = None;
        match self.auth_method {
            AuthMethod::Basic => {
                // RFC 6749 2.3.1: each part form-urlencoded, then Basic.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
                let (id, secret): (String, String) = (enc(&self.client_id), enc(&secret));
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
                authorization = Some(Credential(format!("Basic {b64}")));
            }
            AuthMethod::Post => {
                form.append_pair("client_id", &self.client_id);
                form.append_pair("client_secret", &secret);
            }
        }
        TokenRequest {
            headers,
            authorization,
            body: Credential(form.finish()),
        }
    }
}

/// A string that is (or contains) a secret: `Debug` redacted, no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// A secret string.
    pub fn new(value: String) -> Credential {
        Credential(value)
    }

    /// The secret itself, to put on the wire (never into a log, metric or error).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The token request of an application. `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Headers other than `authorization`.
    pub headers: Vec<(String, String)>,
    /// `Basic ...` (client_secret_basic), else `None`.
    pub authorization: Option<Credential>,
    /// The form body (holds the secret with client_secret_post).
    pub body: Credential,
}

/// An access token and when to stop using it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: Credential,
    /// Unix ms from which the token is refreshed before use.
    pub refresh_at_ms: u64,
    /// Unix ms the token endpoint said it expires (fetch time + `expires_in`).
    pub expires_at_ms: u64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("refresh_at_ms", &self.refresh_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

impl Token {
    /// A token obtained at `now_ms` for `lifetime_secs`, refreshed `refresh_before_secs` before
    /// it expires, but never in the first half of its life (a lifetime shorter than the margin
    /// would otherwise be refreshed on every use).
    pub fn new(value: String, now_ms: u64, lifetime_secs: u64, refresh_before_secs: u64) -> Token {
        let lifetime_ms = lifetime_secs.saturating_mul(1000);
        let margin_ms = refresh_before_secs
            .saturating_mul(1000)
            .min(lifetime_ms / 2);
        Token {
            value: Credential(value),
            refresh_at_ms: now_ms.saturating_add(lifetime_ms - margin_ms),
            expires_at_ms: now_ms.saturating_add(lifetime_ms),
        }
    }

    /// Usable now (not yet due for a refresh).
    pub fn fresh(&self, now_ms: u64) -> bool {
        now_ms < self.refresh_at_ms
    }

    /// The `Authorization` value: `Bearer <token>`.
    pub fn bearer(&self) -> Credential {
        Credential(format!("Bearer {}", self.value.0))
    }
}

/// Why no token came from the token endpoint. Never holds the token, the secret or the body
/// (only the RFC 6749 `error` code, sanitised).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No HTTP answer (the transport error's own description: connect, timeout, SSRF...).
    #[error("token endpoint {url}: {detail}")]
    Transport {
        /// The token URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// A non-2xx answer.
    #[error("token endpoint {url} answered status {status}{}", error_code.as_ref().map(|c| format!(" (error {c:?})")).unwrap_or_default())]
    Status {
        /// The token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The `error` field of the JSON body (RFC 6749 section 5.2), when there is one.
        error_code: Option<String>,
    },
    /// A 2xx answer that is not a usable token.
    #[error("token endpoint {url}: {reason}")]
    Invalid {
        /// The token URL.
        url: String,
        /// What was wrong (never the body).
        reason: String,
    },
}

/// Read the token endpoint's answer (`status`, the body up to
/// [`MAX_TOKEN_RESPONSE_BYTES`], `truncated` when it was longer) at `now_ms`.
pub fn read_token_response(
    cfg: &OAuth2Config,
    status: u16,
    body: &[u8],
    truncated: bool,
    now_ms: u64,
) -> Result<Token, TokenError> {
    let url = cfg.token_url.clone();
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let error_code = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .map(|e| {
                e.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect::<String>()
            });
        return Err(TokenError::Status {
            url,
            status,
            error_code,
        });
    }
    let invalid = |reason: &str| TokenError::Invalid {
        url: cfg.token_url.clone(),
        reason: reason.to_string(),
    };
    if truncated {
        return Err(invalid("the answer is longer than 65536 bytes"));
    }
    let json = json.ok_or_else(|| invalid("the answer is not JSON"))?;
    let token = json
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("the answer has no access_token"))?;
    // b64token (RFC 6750 2.1) is printable ASCII; anything else cannot go in a header.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the access_token holds characters a header cannot carry",
        ));
    }
    match json.get("token_type").and_then(|t| t.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(invalid("token_type is not Bearer")),
        None => return Err(invalid("the answer has no token_type")),
    }
    let lifetime = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => DEFAULT_LIFETIME_SECS,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| invalid("expires_in is not a number of seconds"))?,
    };
    if lifetime == 0 {
        return Err(invalid("expires_in is 0"));
    }
    Ok(Token::new(
        token.to_string(),
        now_ms,
        lifetime,
        cfg.refresh_before_secs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(method: AuthMethod) -> OAuth2Config {
        OAuth2Config {
            token_url: "https://auth.example/token".into(),
            client_id: "squall app".into(),
            client_secret: "oauth".into(),
            scope: "hooks:write".into(),
            audience: "https://hooks.example".into(),
            origins: vec!["https://hooks.example:443".into()],
            refresh_before_secs: 60,
            auth_method: method,
        }
    }

    #[test]
    fn the_request_authenticates_by_basic_or_form() {
        let r = cfg(AuthMethod::Basic).token_request(b"s3cr:t");
        // RFC 6749 2.3.1: "squall+app" : "s3cr%3At", then base64.
        let b64 = base64::engine::general_purpose::STANDARD.encode("squall+app:s3cr%3At");
        assert_eq!(r.authorization.unwrap().expose(), format!("Basic {b64}"));
        assert_eq!(
            r.body.expose(),
            "grant_type=client_credentials&scope=hooks%3Awrite&audience=https%3A%2F%2Fhooks.example"
        );
        let r = cfg(AuthMethod::Post).token_request(b"s3cr:t");
        assert!(r.authorization.is_none());
        assert!(
            r.body
                .expose()
                .ends_with("&client_id=squall+app&client_secret=s3cr%3At")
        );
        assert!(!format!("{r:?}").contains("s3cr"), "{r:?}");
    }

    #[test]
    fn a_token_is_refreshed_before_it_expires_never_in_its_first_half() {
        let t = Token::new("abc".into(), 1_000_000, 3600, 60);
        assert_eq!(t.expires_at_ms, 1_000_000 + 3_600_000);
        assert_eq!(t.refresh_at_ms, 1_000_000 + 3_540_000);
        assert!(t.fresh(1_000_000 + 3_539_999));
        assert!(!t.fresh(1_000_000 + 3_540_000));
        // A 2-s token with a 60-s margin: refreshed after 1 s, not at once.
        let short = Token::new("abc".into(), 0, 2, 60);
        assert_eq!(short.refresh_at_ms, 1000);
        assert!(short.fresh(999) && !short.fresh(1000));
        assert_eq!(short.bearer().expose(), "Bearer abc");
        assert!(!format!("{short:?}").contains("abc"));
    }

    #[test]
    fn answers_are_read_per_rfc_6749_without_echoing_secrets() {
        let c = cfg(AuthMethod::Basic);
        let ok = br#"{"access_token":"tok-1","token_type":"bearer","expires_in":120}"#;
        let t = read_token_response(&c, 200, ok, false, 0).unwrap();
        assert_eq!(t.bearer().expose(), "Bearer tok-1");
        assert_eq!((t.expires_at_ms, t.refresh_at_ms), (120_000, 60_000));
        let no_expiry = br#"{"access_token":"tok-1","token_type":"Bearer"}"#;
        let t = read_token_response(&c, 200, no_expiry, false, 0).unwrap();
        assert_eq!(t.expires_at_ms, DEFAULT_LIFETIME_SECS * 1000);
        let string_expiry = br#"{"access_token":"t","token_type":"Bearer","expires_in":"30"}"#;
        assert_eq!(
            read_token_response(&c, 200, string_expiry, false, 0)
                .unwrap()
                .expires_at_ms,
            30_000
        );

        let e = read_token_response(
            &c,
            401,
            br#"{"error":"invalid_client","error_description":"secret s3cr"}"#,
            false,
            0,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token endpoint https://auth.example/token answered status 401 (error \"invalid_client\")"
        );
        for (body, reason) in [
            (&b"<html>"[..], "the answer is not JSON"),
            (
                br#"{"token_type":"Bearer"}"#,
                "the answer has no access_token",
            ),
            (
                br#"{"access_token":"sekrit","token_type":"mac"}"#,
                "token_type is not Bearer",
            ),
            (
                br#"{"access_token":"sek rit","token_type":"Bearer"}"#,
                "the access_token holds characters a header cannot carry",
            ),
            (
                br#"{"access_token":"sekrit","token_type":"Bearer","expires_in":0}"#,
                "expires_in is 0",
            ),
        ] {
            let e = read_token_response(&c, 200, body, false, 0).unwrap_err();
            assert_eq!(
                e,
                TokenError::Invalid {
                    url: c.token_url.clone(),
                    reason: reason.into()
                }
            );
            assert!(!e.to_string().contains("sek"), "{e}");
        }
    }

    #[test]
    fn the_token_goes_only_to_the_listed_origins() {
        let c = cfg(AuthMethod::Basic);
        assert!(c.sends_to("https://hooks.example/in"));
        assert!(c.sends_to("https://HOOKS.example:443/x?y"));
        assert!(!c.sends_to("https://hooks.example:8443/in"));
        assert!(!c.sends_to("http://hooks.example/in"));
        assert!(!c.sends_to("https://evil.example/in"));
    }
}
