//! The built-in Standard Webhooks signer (<https://www.standardwebhooks.com>):
//! `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one signature per
//! active secret, space-separated, during a rotation.

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
    for (i, key) in keys.iter().enumerate() {
        let mac = key.hmac_sha256_parts(&[msg_id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        if i > 0 {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(mac));
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
