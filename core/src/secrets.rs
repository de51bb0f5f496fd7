//! Signing secrets: resolved once per application at start-up, held only by the host,
//! never formatted into logs (`Debug` is redacted) and never given to a plugin.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One secret: its key bytes, and the HMAC-SHA256 state keyed with them (computed once: the
/// two key-pad compressions are a tenth of signing 1 KiB).
#[derive(Clone)]
pub struct SecretKey {
    bytes: Vec<u8>,
    keyed: Hmac<Sha256>,
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SecretKey {}

impl SecretKey {
    /// Parse a secret value the Standard Webhooks way: `whsec_<base64>` decodes to its
    /// bytes; anything else is used as its UTF-8 bytes (GitHub style secrets).
    pub fn parse(value: &str) -> Result<SecretKey, SecretError> {
        SecretKey::parse_as(value, SecretFormat::StandardWebhooks)
    }

    /// Parse a secret value in `format`. Stripe's secrets also start with `whsec_` but are
    /// used as text: those need [`SecretFormat::Raw`].
    pub fn parse_as(value: &str, format: SecretFormat) -> Result<SecretKey, SecretError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(SecretError::Empty);
        }
        if format == SecretFormat::Raw {
            return Ok(SecretKey::from_bytes(value.as_bytes().to_vec()));
        }
        match value.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(SecretKey::from_bytes)
                .map_err(|_| SecretError::BadBase64),
            None => Ok(SecretKey::from_bytes(value.as_bytes().to_vec())),
        }
    }

    /// Key bytes from raw bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> SecretKey {
        let keyed = Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes any key length");
        SecretKey { bytes, keyed }
    }

    /// HMAC-SHA256 of `data` under this key.
    pub fn hmac_sha256(&self, data: &[u8]) -> [u8; 32] {
        self.hmac_sha256_parts(&[data])
    }

    /// HMAC-SHA256 over several parts, as if concatenated (avoids a copy of the body).
    pub fn hmac_sha256_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// How a secret's text becomes key bytes (`secret_format` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretFormat {
    /// `whsec_<base64>` is decoded (Standard Webhooks); any other value is its UTF-8 bytes.
    #[default]
    StandardWebhooks,
    /// Always the UTF-8 bytes of the value, `whsec_` prefix included (Stripe, GitHub).
    Raw,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Why a secret value was refused. Never includes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Empty value.
    #[error("the secret is empty")]
    Empty,
    /// `whsec_` prefix followed by invalid base64.
    #[error("the secret starts with whsec_ but the rest is not valid base64")]
    BadBase64,
}

/// An application's secrets by key name; each name may hold several active secrets
/// (newest first) during a rotation.
#[derive(Clone, Default)]
pub struct Secrets {
    keys: BTreeMap<String, Vec<SecretKey>>,
}

impl Secrets {
    /// Empty set.
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Add the active secrets for `name`, newest first.
    pub fn insert(&mut self, name: impl Into<String>, keys: Vec<SecretKey>) {
        self.keys.insert(name.into(), keys);
    }

    /// Active secrets for `name`, newest first.
    pub fn get(&self, name: &str) -> Option<&[SecretKey]> {
        self.keys
            .get(name)
            .map(Vec::as_slice)
            .filter(|k| !k.is_empty())
    }

    /// Key names (not values), for diagnostics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.keys
                    .iter()
                    .map(|(k, v)| (k, format!("<{} redacted>", v.len()))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_decodes_and_debug_redacts() {
        let k = SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(k.bytes.len(), 24);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        let mut s = Secrets::new();
        s.insert("default", vec![k]);
        assert!(!format!("{s:?}").contains("MfKQ"));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(SecretKey::parse("  "), Err(SecretError::Empty));
        assert_eq!(SecretKey::parse("whsec_!!!"), Err(SecretError::BadBase64));
        assert_eq!(SecretKey::parse("plain").unwrap().bytes, b"plain");
    }
}
