//! The one independent check of Standard Webhooks signatures, as a subscriber does it. The
//! signature itself is computed by the `standardwebhooks` crate (by the specification's
//! authors), so the check shares no code with Squall's signer; the timestamp is checked here
//! against a given clock reading, so that a request recorded minutes ago (the fault run verifies
//! after the run) is judged at its arrival.

use standardwebhooks::{Webhook, WebhookError};

use crate::receiver::Recorded;

/// Timestamps further than this from the receiver's clock are refused (replay protection).
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent or not text.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not an integer")]
    BadTimestamp,
    /// The timestamp is too far from the receiver's clock.
    #[error("webhook-timestamp is {0} s away from now (tolerance 300 s)")]
    OutOfTolerance(u64),
    /// The receiver's secret is unusable.
    #[error("the receiver's secret is not valid (whsec_ followed by bad base64)")]
    BadSecret,
    /// The `standardwebhooks` crate signs UTF-8 bodies only.
    #[error("the body is not UTF-8, which the standardwebhooks crate cannot verify")]
    BodyNotUtf8,
    /// No `v1,` signature matched.
    #[error("no v1 signature matches")]
    NoMatch,
}

/// Verify a Standard Webhooks signature: HMAC-SHA256 over `id.timestamp.body` with the secret
/// (`whsec_<base64>` decodes to the key; any other string is its own UTF-8 bytes, as Squall's
/// secrets are), compared with each space-separated `v1,<base64>` entry of `signatures`;
/// `now_secs` is the receiver's clock (Unix seconds).
pub fn verify(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_secs: u64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = ts.abs_diff(i64::try_from(now_secs).unwrap_or(i64::MAX));
    if skew > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::OutOfTolerance(skew));
    }
    let webhook = if secret.starts_with("whsec_") {
        Webhook::new(secret).map_err(|_| VerifyError::BadSecret)?
    } else {
        Webhook::from_bytes(secret.as_bytes().to_vec()).map_err(|_| VerifyError::BadSecret)?
    };
    let expected = webhook.sign(msg_id, ts, body).map_err(|e| match e {
        WebhookError::InvalidPayload => VerifyError::BodyNotUtf8,
        _ => VerifyError::NoMatch,
    })?;
    let expected = expected.strip_prefix("v1,").ok_or(VerifyError::NoMatch)?;
    let matches = |given: &str| {
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0, |acc, (a, b)| acc | (a ^ b))
                == 0
    };
    if signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(matches)
    {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

/// Verify a recorded request against `secret`, at the time it arrived. Returns its
/// `webhook-id`.
pub fn verify_recorded(secret: &str, req: &Recorded) -> Result<String, VerifyError> {
    let header = |name: &'static str| req.header(name).ok_or(VerifyError::MissingHeader(name));
    let id = header("webhook-id")?;
    let now = req
        .received_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify(
        secret,
        id,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
        &req.body,
        now,
    )?;
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_the_specification_vector_and_refuses_tampering() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let now = 1614265330;
        assert_eq!(verify(secret, id, ts, sig, body, now), Ok(()));
        // Rotation: another signature first, the right one second.
        let two = format!("v1,AAAA {sig}");
        assert_eq!(verify(secret, id, ts, &two, body, now), Ok(()));
        assert_eq!(
            verify(secret, id, ts, sig, b"{\"test\": 1}", now),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(secret, "other", ts, sig, body, now),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(secret, id, ts, sig, body, now + 301),
            Err(VerifyError::OutOfTolerance(301))
        );
        assert_eq!(
            verify(secret, id, "x", sig, body, now),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify("whsec_!!", id, ts, sig, body, now),
            Err(VerifyError::BadSecret)
        );
        assert_eq!(
            verify(secret, id, ts, sig, b"\xff", now),
            Err(VerifyError::BodyNotUtf8)
        );
    }

    #[test]
    fn a_secret_without_whsec_is_its_own_bytes() {
        // The same vector's key, given as raw bytes: only the prefix form is base64.
        assert_eq!(
            verify(
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                br#"{"test": 2432232314}"#,
                1614265330
            ),
            Err(VerifyError::NoMatch)
        );
    }
}
