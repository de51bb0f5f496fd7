//! The built-in Standard Webhooks signer (<https://www.standardwebhooks.com>):
//! `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one signature per
//! active secret, space-separated, during a rotation. An asymmetric key (`whsk_`) signs
//! `v1a,<base64 ed25519 signature of the same content>`: a key list holding both kinds sends
//! `v1` and `v1a` side by side (a migration), in the list's order.

use std::sync::Arc;

use base64::Engine as _;

use crate::hooks::{AttemptContext, Headers, HookError, Request, Signer};
use crate::secrets::{SecretKey, Secrets};

/// The `webhook-signature` value for one message under the given keys (newest first).
/// Pure: the same inputs always give the same bytes.
pub fn standard_webhooks_signature(
    keys: &[SecretKey],
    msg_id: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    let ts = timestamp.to_string();
    let mut out = String::with_capacity(keys.len() * 48);
    let parts: [&[u8]; 5] = [msg_id.as_bytes(), b".", ts.as_bytes(), b".", body];
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match key.ed25519_sign_parts(&parts) {
            Some(sig) => {
                out.push_str("v1a,");
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(sig));
            }
            None => {
                out.push_str("v1,");
                let mac = key.hmac_sha256_parts(&parts);
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(mac));
            }
        }
    }
    out
}

/// The three Standard Webhooks headers for one message.
pub fn standard_webhooks_headers(
    keys: &[SecretKey],
    msg_id: &str,
    timestamp: u64,
    body: &[u8],
) -> Headers {
    vec![
        ("webhook-id".to_string(), msg_id.to_string()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
        (
            "webhook-signature".to_string(),
            standard_webhooks_signature(keys, msg_id, timestamp, body),
        ),
    ]
}

/// The built-in signer, used when an application configures no signer plugin.
#[derive(Debug, Clone)]
pub struct StandardWebhooksSigner {
    secrets: Arc<Secrets>,
}

impl StandardWebhooksSigner {
    /// A signer over one application's secrets.
    pub fn new(secrets: Arc<Secrets>) -> StandardWebhooksSigner {
        StandardWebhooksSigner { secrets }
    }
}

impl Signer for StandardWebhooksSigner {
    fn identity(&self) -> &str {
        "builtin:standard-webhooks"
    }

    fn sign(
        &self,
        ctx: &AttemptContext,
        request: &Request,
        key_name: &str,
        timestamp: u64,
    ) -> Result<Headers, HookError> {
        let keys = self.secrets.get(key_name).ok_or_else(|| {
            HookError::Host(format!(
                "application {} has no signing secret named {key_name:?}",
                ctx.app_id
            ))
        })?;
        Ok(standard_webhooks_headers(
            keys,
            &ctx.event_id,
            timestamp,
            &request.body,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vector of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_vector() {
        let key = SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard_webhooks_signature(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_gives_one_signature_per_secret_newest_first() {
        let a = SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SecretKey::parse("older-secret").unwrap();
        let both = standard_webhooks_signature(&[a.clone(), b.clone()], "id", 1, b"x");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], standard_webhooks_signature(&[a], "id", 1, b"x"));
        assert_eq!(parts[1], standard_webhooks_signature(&[b], "id", 1, b"x"));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032, section 7.1, TEST 1: the key's public half and its signature of the empty
    /// message.
    #[test]
    fn ed25519_keys_match_rfc_8032() {
        use base64::engine::general_purpose::STANDARD;
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = SecretKey::parse(&format!("whsk_{}", STANDARD.encode(&seed))).unwrap();
        assert!(key.is_ed25519());
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(
            key.public_key().unwrap(),
            format!("whpk_{}", STANDARD.encode(&public))
        );
        let sig = hex(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        );
        assert_eq!(key.ed25519_sign_parts(&[]).unwrap().to_vec(), sig);
        // The 64-byte form (seed and public key) is the same key; a wrong public half is refused.
        let full = [seed.clone(), public.clone()].concat();
        assert_eq!(
            SecretKey::parse(&format!("whsk_{}", STANDARD.encode(&full))).unwrap(),
            key
        );
        let mut bad = full.clone();
        bad[40] ^= 1;
        assert_eq!(
            SecretKey::parse(&format!("whsk_{}", STANDARD.encode(&bad))),
            Err(crate::secrets::SecretError::Ed25519)
        );
        assert_eq!(
            SecretKey::parse(&format!("whsk_{}", STANDARD.encode([1u8; 31]))),
            Err(crate::secrets::SecretError::Ed25519Length(31))
        );
        assert!(format!("{key:?}").contains("redacted"));
    }

    #[test]
    fn v1_and_v1a_go_side_by_side_in_the_list_order() {
        use base64::engine::general_purpose::STANDARD;
        use ring::signature::{ED25519, UnparsedPublicKey};
        let (sk, pk) = SecretKey::generate_ed25519();
        let asym = SecretKey::parse(&sk).unwrap();
        let sym = SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = standard_webhooks_signature(&[sym.clone(), asym], "msg_1", 1614265330, b"{}");
        let (v1, v1a) = header.split_once(' ').unwrap();
        assert_eq!(
            v1,
            standard_webhooks_signature(&[sym], "msg_1", 1614265330, b"{}")
        );
        let sig = STANDARD.decode(v1a.strip_prefix("v1a,").unwrap()).unwrap();
        let public = STANDARD.decode(pk.strip_prefix("whpk_").unwrap()).unwrap();
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"msg_1.1614265330.{}", &sig)
            .unwrap();
    }

    #[test]
    fn missing_key_is_a_host_error_naming_the_key() {
        let signer = StandardWebhooksSigner::new(Arc::new(Secrets::new()));
        let ctx = AttemptContext {
            event_id: "e".into(),
            app_id: "billing".into(),
            event_type: "t".into(),
            attempt: 1,
            first_attempt_at_ms: 0,
            now_ms: 0,
        };
        let req = Request {
            method: "POST".into(),
            url: "https://x".into(),
            headers: vec![],
            body: vec![],
        };
        let err = signer.sign(&ctx, &req, "main", 1).unwrap_err();
        assert!(err.to_string().contains("billing") && err.to_string().contains("main"));
    }
}
