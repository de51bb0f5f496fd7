//! GitHub-style signer: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
//! computed by the host with the application's secret (never seen by this component).
//! Only the newest secret is used: GitHub's scheme carries a single signature.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "signer-plugin",
});

use exports::squall::plugin::signer::Guest;
use squall::plugin::host;
use squall::plugin::types::{AttemptContext, Headers, PluginError, Request};

/// Faster than the default allocator for the short-lived strings of each call.
#[global_allocator]
static ALLOC: size_class_alloc::SizeClassAlloc = size_class_alloc::SizeClassAlloc::new();

struct Component;

impl Guest for Component {
    fn sign(
        _ctx: AttemptContext,
        request: Request,
        key_name: String,
        _timestamp: u64,
    ) -> Result<Headers, PluginError> {
        let mac = host::hmac_sha256(&key_name, &request.body).map_err(|message| PluginError { message })?;
        let mut value = String::with_capacity(7 + 64);
        value.push_str("sha256=");
        hex_encode(&mac, &mut value);
        Ok(vec![("X-Hub-Signature-256".to_string(), value)])
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
