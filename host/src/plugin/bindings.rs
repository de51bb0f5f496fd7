//! The WIT types the host passes and receives, and conversions between them and the plain
//! hook types of [`crate::hooks`].
//!
//! The records are generated from `wit/v0.1.0` (`bindgen!` over the `all-hooks` world). The
//! component model checks record and variant types by shape (field and case names and
//! types), not by package, so the same Rust types serve every supported version whose types
//! have the same shape: 0.2.0 changed the signer's parameters and added host functions, not
//! a type the host lowers or lifts but `request-head` ([`RequestHead`]). The host functions
//! are linked by hand, once per version (`state::link_host`), and each hook's export is
//! looked up by name in the version the component exports it in (`hook::HookExport`).

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
    world: "all-hooks",
});

// `self::`: rustdoc passes this crate, `squall`, as an extern too; the generated module of the
// same name would be ambiguous.
pub use self::squall::plugin::host;
pub use self::squall::plugin::types as wit;

use std::marker::PhantomData;

use wasmtime::AsContext;
use wasmtime::component::{ComponentNamedList, ComponentType, Func, Lift, Lower, TypedFunc};

use crate::hooks;

// Borrowed views of the hook arguments, lowered into the guest straight from the host's own
// values: the generated `call_*` functions take the owned `wit` records, which would mean
// cloning every string and the body once per call only to copy them again into guest memory.
// Each view has the WIT record's shape; `Checked::new` checks that once per instance before
// any call goes through it.

/// `types.event`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct EventRef<'a> {
    pub id: &'a str,
    #[component(name = "app-id")]
    pub app_id: &'a str,
    #[component(name = "event-type")]
    pub event_type: &'a str,
    #[component(name = "endpoint-url")]
    pub endpoint_url: &'a str,
    pub headers: &'a [(String, String)],
    #[component(name = "content-type")]
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub attempt: u32,
    #[component(name = "created-at")]
    pub created_at: u64,
    #[component(name = "first-attempt-at")]
    pub first_attempt_at: u64,
}

impl<'a> From<&'a hooks::Event> for EventRef<'a> {
    fn from(e: &'a hooks::Event) -> Self {
        EventRef {
            id: &e.id,
            app_id: &e.app_id,
            event_type: &e.event_type,
            endpoint_url: &e.endpoint_url,
            headers: &e.headers,
            content_type: &e.content_type,
            body: &e.body,
            attempt: e.attempt,
            created_at: e.created_at_ms,
            first_attempt_at: e.first_attempt_at_ms,
        }
    }
}

/// `types.request`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RequestRef<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl<'a> From<&'a hooks::Request> for RequestRef<'a> {
    fn from(r: &'a hooks::Request) -> Self {
        RequestRef {
            method: &r.method,
            url: &r.url,
            headers: &r.headers,
            body: &r.body,
        }
    }
}

/// `types.attempt-context`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct AttemptContextRef<'a> {
    #[component(name = "event-id")]
    pub event_id: &'a str,
    #[component(name = "app-id")]
    pub app_id: &'a str,
    #[component(name = "event-type")]
    pub event_type: &'a str,
    pub attempt: u32,
    #[component(name = "first-attempt-at")]
    pub first_attempt_at: u64,
    pub now: u64,
}

impl<'a> From<&'a hooks::AttemptContext> for AttemptContextRef<'a> {
    fn from(c: &'a hooks::AttemptContext) -> Self {
        AttemptContextRef {
            event_id: &c.event_id,
            app_id: &c.app_id,
            event_type: &c.event_type,
            attempt: c.attempt,
            first_attempt_at: c.first_attempt_at_ms,
            now: c.now_ms,
        }
    }
}

/// The parameter and result types this host calls one hook export with.
pub trait HookSig: Send + Sync + 'static {
    type Params<'a>: ComponentNamedList + Lower;
    type Return: ComponentNamedList + Lift;
}

/// `transform.transform` with a borrowed event.
pub enum TransformSig {}
impl HookSig for TransformSig {
    type Params<'a> = (EventRef<'a>,);
    type Return = (Result<wit::TransformResult, wit::PluginError>,);
}

/// `signer.sign` with a borrowed context and request.
pub enum SignSig {}
impl HookSig for SignSig {
    type Params<'a> = (AttemptContextRef<'a>, RequestRef<'a>, &'a str, u64);
    type Return = (Result<hooks::Headers, wit::PluginError>,);
}

/// `signer.sign` of WIT 0.2.0: the request stays in the host, which answers the plugin's
/// `signing-*`, `hmac-sha256-body(-all)` and `sha256-body` calls about it during the call.
pub enum SignSigV2 {}
impl HookSig for SignSigV2 {
    type Params<'a> = (AttemptContextRef<'a>, &'a str, u64);
    type Return = (Result<hooks::Headers, wit::PluginError>,);
}

/// `transform.transform` of WIT 0.3.0: no `result`; a deliberate failure is a case.
pub enum TransformSigV3 {}
impl HookSig for TransformSigV3 {
    type Params<'a> = (EventRef<'a>,);
    type Return = (TransformResultV3,);
}

/// `signer.sign` of WIT 0.3.0.
pub enum SignSigV3 {}
impl HookSig for SignSigV3 {
    type Params<'a> = (AttemptContextRef<'a>, &'a str, u64);
    type Return = (SignResultV3,);
}

/// `retry-policy.decide` of WIT 0.3.0.
pub enum DecideSigV3 {}
impl HookSig for DecideSigV3 {
    type Params<'a> = (AttemptContextRef<'a>, &'a wit::Outcome);
    type Return = (RetryDecisionV3,);
}

/// `types.transform-result` of WIT 0.3.0 (with `fail`).
#[derive(ComponentType, Lift, Debug)]
#[component(variant)]
pub enum TransformResultV3 {
    #[component(name = "send")]
    Send(wit::Request),
    #[component(name = "skip")]
    Skip(String),
    #[component(name = "fail")]
    Fail(String),
}

/// `types.sign-result` of WIT 0.3.0.
#[derive(ComponentType, Lift, Debug)]
#[component(variant)]
pub enum SignResultV3 {
    #[component(name = "signed")]
    Signed(hooks::Headers),
    #[component(name = "fail")]
    Fail(String),
}

/// `types.retry-decision` of WIT 0.3.0: seconds as `s64` (a negative number arrives as one and
/// is refused, instead of wrapping in the guest's conversion to `u32`), and `fail`.
#[derive(ComponentType, Lift, Debug)]
#[component(variant)]
pub enum RetryDecisionV3 {
    #[component(name = "retry-after-seconds")]
    RetryAfterSeconds(i64),
    #[component(name = "dead-letter")]
    DeadLetter(String),
    #[component(name = "discard")]
    Discard(String),
    #[component(name = "fail")]
    Fail(String),
}

/// `types.request-head` (WIT 0.2.0): what `host.signing-request` returns.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RequestHead {
    pub method: String,
    pub url: String,
    pub headers: hooks::Headers,
}

/// `retry-policy.decide` with a borrowed context.
pub enum DecideSig {}
impl HookSig for DecideSig {
    type Params<'a> = (AttemptContextRef<'a>, &'a wit::Outcome);
    type Return = (Result<wit::RetryDecision, wit::PluginError>,);
}

/// An export whose type was checked against `S` (the only way to make one).
pub struct Checked<S> {
    func: Func,
    sig: PhantomData<S>,
}

impl<S: HookSig> Checked<S> {
    /// Check `func`'s component type against `S`.
    pub fn new(func: Func, store: impl AsContext) -> wasmtime::Result<Self> {
        func.typed::<S::Params<'static>, S::Return>(store)?;
        Ok(Checked {
            func,
            sig: PhantomData,
        })
    }

    /// The function, typed, for arguments borrowed for `'a`.
    #[allow(unsafe_code)]
    pub fn typed<'a>(&self) -> TypedFunc<S::Params<'a>, S::Return> {
        // SAFETY: `new` checked the function's type against `S::Params<'static>`; a type check
        // looks at the component types only, which do not depend on the borrows' lifetime.
        unsafe { TypedFunc::new_unchecked(self.func) }
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
            // The frozen WIT enums have no `token`: its message says "token endpoint ...".
            H::Token | H::Other => wit::TransportErrorKind::Other,
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
