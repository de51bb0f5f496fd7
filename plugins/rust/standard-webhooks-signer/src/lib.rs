//! Standard Webhooks signer as a plugin: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, one signature per
//! active secret (newest first, space-separated). The HMAC is computed by the host with
//! the application's secret, which never enters this component. Built against WIT 0.2.0:
//! the host HMACs `id.timestamp.` and the body it holds (`hmac-sha256-body-all`), so the
//! body never enters it either. Byte-identical to the host's built-in signer
//! (`core/src/signing.rs`).

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
    fn sign(ctx: AttemptContext, key_name: String, timestamp: u64) -> Result<Headers, PluginError> {
        let ts = timestamp.to_string();
        let mut prefix = Vec::with_capacity(ctx.event_id.len() + ts.len() + 2);
        prefix.extend_from_slice(ctx.event_id.as_bytes());
        prefix.push(b'.');
        prefix.extend_from_slice(ts.as_bytes());
        prefix.push(b'.');
        let macs = host::hmac_sha256_body_all(&key_name, &prefix, &[])
            .map_err(|message| PluginError { message })?;
        let mut signature = String::with_capacity(macs.len() * 48);
        for (i, mac) in macs.iter().enumerate() {
            if i > 0 {
                signature.push(' ');
            }
            signature.push_str("v1,");
            base64_encode(mac, &mut signature);
        }
        Ok(vec![
            ("webhook-id".to_string(), ctx.event_id),
            ("webhook-timestamp".to_string(), ts),
            ("webhook-signature".to_string(), signature),
        ])
    }
}

/// Standard base64 with padding (RFC 4648 section 4), built in a stack buffer and appended
/// once (a signature is 44 characters; pushing them one by one was a visible part of a call).
fn base64_encode(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // 48 input bytes (a multiple of 3) make 64 characters: longer input goes piece by piece.
    for piece in bytes.chunks(48) {
        let mut buf = [0u8; 64];
        for (chunk, quad) in piece.chunks(3).zip(buf.chunks_exact_mut(4)) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            quad[0] = ALPHABET[(n >> 18) as usize & 63];
            quad[1] = ALPHABET[(n >> 12) as usize & 63];
            quad[2] = if chunk.len() > 1 { ALPHABET[(n >> 6) as usize & 63] } else { b'=' };
            quad[3] = if chunk.len() > 2 { ALPHABET[n as usize & 63] } else { b'=' };
        }
        let len = piece.len().div_ceil(3) * 4;
        // Only ASCII was written.
        out.push_str(core::str::from_utf8(&buf[..len]).unwrap_or_default());
    }
}

export!(Component);
