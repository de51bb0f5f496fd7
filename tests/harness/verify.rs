//! Independent verification of Standard Webhooks signatures, written from the specification
//! (not from Squall's signer), as a subscriber would do it.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::receiver::Recorded;

/// Check `webhook-signature` of a recorded request against a `whsec_` secret. Returns the
/// `webhook-id` on success.
pub fn verify_standard_webhooks(secret: &str, req: &Recorded) -> Result<String, String> {
    let id = req.header("webhook-id").ok_or("no webhook-id header")?;
    let ts = req
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp header")?;
    let sigs = req
        .header("webhook-signature")
        .ok_or("no webhook-signature header")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(
            secret
                .strip_prefix("whsec_")
                .ok_or("secret must start with whsec_")?,
        )
        .map_err(|e| format!("secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&req.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if sigs
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    {
        Ok(id.to_string())
    } else {
        Err(format!("no signature in {sigs:?} matches"))
    }
}
