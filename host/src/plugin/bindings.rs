//! Host bindings generated from `wit/v0.1.0`, and conversions between them and the
//! plain hook types of [`crate::hooks`].
//!
//! One `bindgen!` over the `all-hooks` world gives the `host` imports once for every
//! world; each hook's export is then looked up on its own (`GuestIndices` per exported
//! interface), so a component exporting only `signer` (world `signer-plugin`) loads as a
//! signer and fails at load time, not at the first event, when asked for a transform.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
    world: "all-hooks",
});

// `self::`: rustdoc passes this crate, `squall`, as an extern too; the generated module of the
// same name would be ambiguous.
pub use self::exports::squall::plugin::{retry_policy, signer, transform};
pub use self::squall::plugin::host;
pub use self::squall::plugin::types as wit;

use crate::hooks;

impl From<&hooks::Event> for wit::Event {
    fn from(e: &hooks::Event) -> Self {
        wit::Event {
            id: e.id.clone(),
            app_id: e.app_id.clone(),
            event_type: e.event_type.clone(),
            endpoint_url: e.endpoint_url.clone(),
            headers: e.headers.clone(),
            content_type: e.content_type.clone(),
            body: e.body.clone(),
            attempt: e.attempt,
            created_at: e.created_at_ms,
            first_attempt_at: e.first_attempt_at_ms,
        }
    }
}

impl From<&hooks::Request> for wit::Request {
    fn from(r: &hooks::Request) -> Self {
        wit::Request {
            method: r.method.clone(),
            url: r.url.clone(),
            headers: r.headers.clone(),
            body: r.body.clone(),
        }
    }
}

impl From<wit::Request> for hooks::Request {
    fn from(r: wit::Request) -> Self {
        hooks::Request {
            method: r.method,
            url: r.url,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<&hooks::AttemptContext> for wit::AttemptContext {
    fn from(c: &hooks::AttemptContext) -> Self {
        wit::AttemptContext {
            event_id: c.event_id.clone(),
            app_id: c.app_id.clone(),
            event_type: c.event_type.clone(),
            attempt: c.attempt,
            first_attempt_at: c.first_attempt_at_ms,
            now: c.now_ms,
        }
    }
}

impl From<hooks::TransportErrorKind> for wit::TransportErrorKind {
    fn from(k: hooks::TransportErrorKind) -> Self {
        use hooks::TransportErrorKind as H;
        match k {
            H::Dns => wit::TransportErrorKind::Dns,
            H::Connect => wit::TransportErrorKind::Connect,
            H::Tls => wit::TransportErrorKind::Tls,
            H::Timeout => wit::TransportErrorKind::Timeout,
            H::Reset => wit::TransportErrorKind::Reset,
            H::RefusedByPolicy => wit::TransportErrorKind::RefusedByPolicy,
            H::ResponseTooLarge => wit::TransportErrorKind::ResponseTooLarge,
            H::Other => wit::TransportErrorKind::Other,
        }
    }
}

impl From<&hooks::Outcome> for wit::Outcome {
    fn from(o: &hooks::Outcome) -> Self {
        match o {
            hooks::Outcome::Response { status, headers } => wit::Outcome::Response(wit::Response {
                status: *status,
                headers: headers.clone(),
            }),
            hooks::Outcome::Transport { kind, message } => {
                wit::Outcome::Transport(wit::TransportError {
                    kind: (*kind).into(),
                    message: message.clone(),
                })
            }
        }
    }
}

impl From<wit::RetryDecision> for hooks::RetryDecision {
    fn from(d: wit::RetryDecision) -> Self {
        match d {
            wit::RetryDecision::RetryAfterSeconds(s) => hooks::RetryDecision::RetryAfterSeconds(s),
            wit::RetryDecision::DeadLetter(r) => hooks::RetryDecision::DeadLetter(r),
            wit::RetryDecision::Discard(r) => hooks::RetryDecision::Discard(r),
        }
    }
}

impl From<wit::TransformResult> for hooks::TransformResult {
    fn from(t: wit::TransformResult) -> Self {
        match t {
            wit::TransformResult::Send(r) => hooks::TransformResult::Send(r.into()),
            wit::TransformResult::Skip(r) => hooks::TransformResult::Skip(r),
        }
    }
}
