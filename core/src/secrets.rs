//! Signing secrets: resolved once per application at start-up, held only by the host,
//! never formatted into logs (`Debug` is redacted) and never given to a plugin.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One secret: its key bytes, and what signs with them: the HMAC-SHA256 state keyed with them
/// (computed once: the two key-pad compressions are a tenth of signing 1 KiB), or, for a
/// Standard Webhooks asymmetric key (`whsk_`), the ed25519 key pair.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Vec<u8>,
    kind: KeyKind,
}

#[derive(Clone)]
enum KeyKind {
    Hmac(Hmac<Sha256>),
    Ed25519(Arc<ring::signature::Ed25519KeyPair>),
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && self.is_ed25519() == other.is_ed25519()
    }
}

impl Eq for SecretKey {}

impl SecretKey {
    /// Parse a secret value the Standard Webhooks way: `whsec_<base64>` decodes to its
    /// bytes; `whsk_<base64>` is an ed25519 signing key (the 32-byte seed, or the 64-byte
    /// seed and public key); anything else is used as its UTF-8 bytes (GitHub style secrets).
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
        if let Some(b64) = value.strip_prefix("whsk_") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| SecretError::BadBase64)?;
            return SecretKey::ed25519(&bytes);
        }
        match value.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(SecretKey::from_bytes)
                .map_err(|_| SecretError::BadBase64),
            None => Ok(SecretKey::from_bytes(value.as_bytes().to_vec())),
        }
    }

    /// An ed25519 signing key from its 32-byte seed, or the 64 bytes of seed and public key
    /// (libsodium's form; the public half must be the seed's).
    pub fn ed25519(bytes: &[u8]) -> Result<SecretKey, SecretError> {
        use ring::signature::{Ed25519KeyPair, KeyPair as _};
        let seed = match bytes.len() {
            32 | 64 => &bytes[..32],
            n => return Err(SecretError::Ed25519Length(n)),
        };
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| SecretError::Ed25519)?;
        if bytes.len() == 64 && pair.public_key().as_ref() != &bytes[32..] {
            return Err(SecretError::Ed25519);
        }
        Ok(SecretKey {
            bytes: seed.to_vec(),
            kind: KeyKind::Ed25519(Arc::new(pair)),
        })
    }

    /// A new random ed25519 signing key (`whsk_...`) and its public key (`whpk_...`).
    pub fn generate_ed25519() -> (String, String) {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .expect("the system's random source");
        let key = SecretKey::ed25519(&seed).expect("32 bytes");
        let public = key.public_key().expect("an ed25519 key");
        let b64 = base64::engine::general_purpose::STANDARD.encode(seed);
        (format!("whsk_{b64}"), public)
    }

    /// Key bytes from raw bytes (an HMAC key).
    pub fn from_bytes(bytes: Vec<u8>) -> SecretKey {
        let keyed = Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes any key length");
        SecretKey {
            bytes,
            kind: KeyKind::Hmac(keyed),
        }
    }

    /// The secret's bytes as resolved, for material that is not a signing key and goes on
    /// the wire as it is (a TLS client certificate or key, PEM; an OAuth2 client secret, as
    /// text): never into a log, a metric, an error or a plugin.
    pub fn material(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether this is an ed25519 signing key (`whsk_`): it signs `v1a`, never an HMAC.
    pub fn is_ed25519(&self) -> bool {
        matches!(self.kind, KeyKind::Ed25519(_))
    }

    /// An ed25519 key's public key, `whpk_<base64>` (what subscribers pin); `None` for an
    /// HMAC key (which has no public half).
    pub fn public_key(&self) -> Option<String> {
        use ring::signature::KeyPair as _;
        match &self.kind {
            KeyKind::Ed25519(pair) => Some(format!(
                "whpk_{}",
                base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref())
            )),
            KeyKind::Hmac(_) => None,
        }
    }

    /// The ed25519 signature (64 bytes) of the parts, concatenated; `None` for an HMAC key.
    pub fn ed25519_sign_parts(&self, parts: &[&[u8]]) -> Option<[u8; 64]> {
        let KeyKind::Ed25519(pair) = &self.kind else {
            return None;
        };
        let message = parts.concat();
        let sig = pair.sign(&message);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        Some(out)
    }

    /// HMAC-SHA256 of `data` under this key.
    pub fn hmac_sha256(&self, data: &[u8]) -> [u8; 32] {
        self.hmac_sha256_parts(&[data])
    }

    /// HMAC-SHA256 over several parts, as if concatenated (avoids a copy of the body). An
    /// ed25519 key is keyed by its seed here: callers check [`SecretKey::is_ed25519`] first
    /// (the signer signs `v1a` with it; plugins' HMAC calls refuse it).
    pub fn hmac_sha256_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = match &self.kind {
            KeyKind::Hmac(keyed) => keyed.clone(),
            KeyKind::Ed25519(_) => {
                Hmac::<Sha256>::new_from_slice(&self.bytes).expect("HMAC takes any key length")
            }
        };
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
    /// `whsec_` or `whsk_` prefix followed by invalid base64.
    #[error("the secret starts with whsec_ or whsk_ but the rest is not valid base64")]
    BadBase64,
    /// A `whsk_` key of the wrong length.
    #[error(
        "the secret starts with whsk_ (an ed25519 signing key) but holds {0} bytes: 32 (the seed) or 64 (seed and public key) expected"
    )]
    Ed25519Length(usize),
    /// A `whsk_` key that is not a valid ed25519 key pair.
    #[error(
        "the secret starts with whsk_ but is not a valid ed25519 key (the public half does not match the seed)"
    )]
    Ed25519,
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

    /// These secrets without `name`, and `name`'s keys (newest first): the OAuth2 client
    /// secret is taken out before the signer and the plugins get the set, so no envelope,
    /// endpoint or plugin can use it as a signing key.
    pub fn split_off(&self, name: &str) -> (Secrets, Option<Vec<SecretKey>>) {
        let mut rest = self.clone();
        let taken = rest.keys.remove(name);
        (rest, taken)
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
