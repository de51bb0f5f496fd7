//! A fixture for the host's tests of WIT 0.2.0 (tests/engine/plugins.rs): a signer that
//! reports, as headers, what the host answers about the request being signed, so a test can
//! compare each answer with an independent computation.
//!
//! | header | value |
//! |---|---|
//! | `x-method`, `x-url` | from `signing-request` |
//! | `x-headers` | the request's header names and values from `signing-request`, `name=value` joined by `;` |
//! | `x-body` | `signing-body`, as hex |
//! | `x-body-hmac` | `hmac-sha256-body(key-name, "pre.", ".post")`, as hex |
//! | `x-body-hmac-all` | `hmac-sha256-body-all(key-name, "pre.", ".post")`, as hex, space-separated |
//! | `x-body-sha256` | `sha256-body("pre.", ".post")`, as hex |
//! | `x-unknown-key` | the error of `hmac-sha256-body("no-such-key", ..)` |
//! | `x-event-id`, `x-key-name`, `x-timestamp` | the arguments of `sign` |
//!
//! The transform skips every event with a reason naming what `signing-body`,
//! `hmac-sha256-body` and `sha256-body` answered outside a sign call; the retry policy retries
//! after 1 second.

wit_bindgen::generate!({
    path: "../../../wit/v0.2.0",
    world: "all-hooks",
});

use exports::squall::plugin::{retry_policy, signer, transform};
use squall::plugin::host;
use squall::plugin::types::{
    AttemptContext, Event, Headers, Outcome, PluginError, RetryDecision, TransformResult,
};

struct Component;

impl signer::Guest for Component {
    fn sign(ctx: AttemptContext, key_name: String, timestamp: u64) -> Result<Headers, PluginError> {
        let err = |message: String| PluginError { message };
        let head = host::signing_request().map_err(err)?;
        let body = host::signing_body().map_err(err)?;
        let mac = host::hmac_sha256_body(&key_name, b"pre.", b".post").map_err(err)?;
        let macs = host::hmac_sha256_body_all(&key_name, b"pre.", b".post").map_err(err)?;
        let digest = host::sha256_body(b"pre.", b".post").map_err(err)?;
        let unknown = host::hmac_sha256_body("no-such-key", b"", b"")
            .err()
            .unwrap_or_default();
        let headers: Vec<String> = head.headers.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let all: Vec<String> = macs.iter().map(|m| hex(m)).collect();
        Ok(vec![
            ("x-method".into(), head.method),
            ("x-url".into(), head.url),
            ("x-headers".into(), headers.join(";")),
            ("x-body".into(), hex(&body)),
            ("x-body-hmac".into(), hex(&mac)),
            ("x-body-hmac-all".into(), all.join(" ")),
            ("x-body-sha256".into(), hex(&digest)),
            ("x-unknown-key".into(), unknown),
            ("x-event-id".into(), ctx.event_id),
            ("x-key-name".into(), key_name),
            ("x-timestamp".into(), timestamp.to_string()),
        ])
    }
}

impl transform::Guest for Component {
    fn transform(_event: Event) -> Result<TransformResult, PluginError> {
        let body = host::signing_body().err().unwrap_or_default();
        let mac = host::hmac_sha256_body("default", b"", b"").err().unwrap_or_default();
        let digest = host::sha256_body(b"", b"").err().unwrap_or_default();
        Ok(TransformResult::Skip(format!("{body} | {mac} | {digest}")))
    }
}

impl retry_policy::Guest for Component {
    fn decide(_ctx: AttemptContext, _outcome: Outcome) -> Result<RetryDecision, PluginError> {
        Ok(RetryDecision::RetryAfterSeconds(1))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

export!(Component);
