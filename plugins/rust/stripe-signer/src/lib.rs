//! Stripe-style signer: `Stripe-Signature: t=<timestamp>,v1=<hex HMAC-SHA256 of
//! "<timestamp>.<body>">`, one `v1=` entry per active secret (newest first), as Stripe
//! does during a secret rotation. Built against WIT 0.2.0: the host HMACs the timestamp and
//! the body it holds (`hmac-sha256-body-all`), so the body never enters this component.
//!
//! Stripe's secrets look like `whsec_...` but Stripe uses them as text: configure the
//! application with `secret_format = "raw"` (docs/config.md) so the host does not base64-decode
//! them.

wit_bindgen::generate!({
    path: "../../../wit/v0.2.0",
    world: "signer-plugin",
});

use exports::squall::plugin::signer::Guest;
use squall::plugin::host;
use squall::plugin::types::{AttemptContext, Headers, PluginError};

/// Faster than the default allocator for the short-lived strings of each call.
#[global_allocator]
static ALLOC: size_class_alloc::SizeClassAlloc = size_class_alloc::SizeClassAlloc::new();

struct Component;

impl Guest for Component {
    fn sign(_ctx: AttemptContext, key_name: String, timestamp: u64) -> Result<Headers, PluginError> {
        let ts = timestamp.to_string();
        let mut prefix = Vec::with_capacity(ts.len() + 1);
        prefix.extend_from_slice(ts.as_bytes());
        prefix.push(b'.');
        let macs = host::hmac_sha256_body_all(&key_name, &prefix, &[])
            .map_err(|message| PluginError { message })?;
        let mut value = String::with_capacity(2 + ts.len() + macs.len() * 68);
        value.push_str("t=");
        value.push_str(&ts);
        for mac in &macs {
            value.push_str(",v1=");
            hex_encode(mac, &mut value);
        }
        Ok(vec![("Stripe-Signature".to_string(), value)])
    }
}

fn hex_encode(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

export!(Component);
