//! Conformance vectors: shared tables of hook inputs and expected outputs
//! (`plugins/conformance/*.json`, one file per behaviour, `"hook"` naming the hook kind), and
//! a runner that checks any implementation of a hook against them: a WebAssembly plugin in
//! any language, or a built-in.
//!
//! Loading and judging are plain functions over values; the runner only calls the hook
//! through the [`HookFactory`] it is given, so the same vectors check a plugin through the
//! real runtime and a built-in in a unit test.
//!
//! ```
//! use squall::conformance::{self, VectorFile};
//! let file: VectorFile = conformance::parse(r#"{"hook": "retry-policy", "vectors": [
//!     {"name": "gone", "outcome": {"response": {"status": 410}}, "expect": {"discard": "gone"}}
//! ]}"#).unwrap();
//! assert_eq!(file.len(), 1);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use crate::hooks::{
    AttemptContext, Event, Headers, HookError, Outcome, Request, RetryDecision, RetryPolicy,
    Signer, Transform, TransformResult, TransportErrorKind,
};
use crate::secrets::{SecretKey, Secrets};

/// Plugin configuration for one vector, as `config-get` will answer it.
pub type PluginConfig = BTreeMap<String, String>;

/// Why a vector file could not be used. Names the file and, where known, the vector.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The file could not be read.
    #[error("cannot read conformance vectors {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid vector table.
    #[error("invalid conformance vectors {path}: {detail}")]
    Parse {
        /// The file (`<inline>` for [`parse`]).
        path: PathBuf,
        /// What was wrong, with its JSON path.
        detail: String,
    },
}

/// Which hook a vector file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// `transform` vectors.
    Transform,
    /// `signer` vectors.
    Signer,
    /// `retry-policy` vectors.
    RetryPolicy,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::Transform => "transform",
            HookKind::Signer => "signer",
            HookKind::RetryPolicy => "retry-policy",
        })
    }
}

/// A loaded vector table.
#[derive(Debug, Clone)]
pub enum VectorFile {
    /// Events in, requests (or skips, or errors) out.
    Transform(Vec<TransformVector>),
    /// Requests and secrets in, signature headers out.
    Signer(Vec<SignerVector>),
    /// Outcomes in, retry decisions out.
    RetryPolicy(Vec<RetryVector>),
}

impl VectorFile {
    /// The hook kind the table is for.
    pub fn kind(&self) -> HookKind {
        match self {
            VectorFile::Transform(_) => HookKind::Transform,
            VectorFile::Signer(_) => HookKind::Signer,
            VectorFile::RetryPolicy(_) => HookKind::RetryPolicy,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        match self {
            VectorFile::Transform(v) => v.len(),
            VectorFile::Signer(v) => v.len(),
            VectorFile::RetryPolicy(v) => v.len(),
        }
    }

    /// True when the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes given as UTF-8 text (`body`) or as base64 (`body_base64`), never both.
fn body_bytes(body: &Option<String>, body_base64: &Option<String>) -> Result<Vec<u8>, String> {
    {
        match (body, body_base64) {
            (Some(_), Some(_)) => Err("give either body or body_base64, not both".into()),
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("body_base64 is not valid base64: {e}")),
            (None, None) => Ok(Vec::new()),
        }
    }
}

fn default_event_id() -> String {
    "evt_test".into()
}
fn default_app_id() -> String {
    "app".into()
}
fn default_event_type() -> String {
    "test.event".into()
}
fn default_endpoint() -> String {
    "https://example.com/webhook".into()
}
fn default_content_type() -> String {
    "application/json".into()
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    #[serde(default = "default_event_id")]
    id: String,
    #[serde(default = "default_app_id")]
    app_id: String,
    #[serde(default = "default_event_type")]
    event_type: String,
    #[serde(default = "default_endpoint")]
    endpoint_url: String,
    #[serde(default)]
    headers: Headers,
    #[serde(default = "default_content_type")]
    content_type: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: Option<String>,
    #[serde(default = "one")]
    attempt: u32,
    #[serde(default)]
    created_at_ms: u64,
    #[serde(default)]
    first_attempt_at_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: String,
    url: String,
    #[serde(default)]
    headers: Headers,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: Option<String>,
}

impl RequestSpec {
    fn to_request(&self) -> Result<Request, String> {
        Ok(Request {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: self.headers.clone(),
            body: body_bytes(&self.body, &self.body_base64)?,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextSpec {
    #[serde(default = "default_event_id")]
    event_id: String,
    #[serde(default = "default_app_id")]
    app_id: String,
    #[serde(default = "default_event_type")]
    event_type: String,
    #[serde(default = "one")]
    attempt: u32,
    #[serde(default)]
    first_attempt_at_ms: u64,
    #[serde(default)]
    now_ms: u64,
}

impl Default for ContextSpec {
    fn default() -> Self {
        ContextSpec {
            event_id: default_event_id(),
            app_id: default_app_id(),
            event_type: default_event_type(),
            attempt: 1,
            first_attempt_at_ms: 0,
            now_ms: 0,
        }
    }
}

impl From<ContextSpec> for AttemptContext {
    fn from(c: ContextSpec) -> AttemptContext {
        AttemptContext {
            event_id: c.event_id,
            app_id: c.app_id,
            event_type: c.event_type,
            attempt: c.attempt,
            first_attempt_at_ms: c.first_attempt_at_ms,
            now_ms: c.now_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TransformExpectSpec {
    Send(RequestSpec),
    Skip(String),
    ErrorContains(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum SignerExpectSpec {
    Headers(Headers),
    ErrorContains(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OutcomeSpec {
    Response {
        status: u16,
        #[serde(default)]
        headers: Headers,
    },
    Transport {
        kind: String,
        #[serde(default)]
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RetryExpectSpec {
    RetryAfterSeconds(u32),
    DeadLetter(String),
    Discard(String),
    ErrorContains(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformVectorSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    config: PluginConfig,
    event: EventSpec,
    expect: TransformExpectSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignerVectorSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    config: PluginConfig,
    #[serde(default)]
    secrets: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    context: ContextSpec,
    request: RequestSpec,
    key_name: String,
    timestamp: u64,
    expect: SignerExpectSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryVectorSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    config: PluginConfig,
    #[serde(default)]
    context: ContextSpec,
    outcome: OutcomeSpec,
    expect: RetryExpectSpec,
}

/// What an error vector expects: a plugin error (or host error) whose message contains this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorContaining(pub String);

/// What a transform vector expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformExpect {
    /// This exact result (request bytes, header order, or skip reason).
    Result(TransformResult),
    /// A reported error.
    Error(ErrorContaining),
}

/// One transform vector.
#[derive(Debug, Clone)]
pub struct TransformVector {
    /// Unique name within the file.
    pub name: String,
    /// Plugin config for this vector.
    pub config: PluginConfig,
    /// The event given to the transform.
    pub event: Event,
    /// What must come out.
    pub expect: TransformExpect,
}

/// What a signer vector expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerExpect {
    /// These headers, in this order (names compared case-insensitively, values exactly).
    Headers(Headers),
    /// A reported error.
    Error(ErrorContaining),
}

/// One signer vector.
#[derive(Debug, Clone)]
pub struct SignerVector {
    /// Unique name within the file.
    pub name: String,
    /// Plugin config for this vector.
    pub config: PluginConfig,
    /// The application's secrets (the host holds them; the plugin sees only HMACs).
    pub secrets: Arc<Secrets>,
    /// Attempt context.
    pub context: AttemptContext,
    /// The request to sign.
    pub request: Request,
    /// Key name passed to `sign`.
    pub key_name: String,
    /// Unix seconds passed to `sign`.
    pub timestamp: u64,
    /// What must come out.
    pub expect: SignerExpect,
}

/// What a retry vector expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryExpect {
    /// This exact decision.
    Decision(RetryDecision),
    /// A reported error.
    Error(ErrorContaining),
}

/// One retry-policy vector.
#[derive(Debug, Clone)]
pub struct RetryVector {
    /// Unique name within the file.
    pub name: String,
    /// Plugin config for this vector.
    pub config: PluginConfig,
    /// Attempt context.
    pub context: AttemptContext,
    /// The failed attempt's outcome.
    pub outcome: Outcome,
    /// What must come out.
    pub expect: RetryExpect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    hook: HookKind,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    vectors: serde_json::Value,
}

/// Load a vector file.
pub fn load(path: &Path) -> Result<VectorFile, ConformanceError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConformanceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_at(&text, path)
}

/// Parse vector-file text (for tests and embedded tables).
pub fn parse(text: &str) -> Result<VectorFile, ConformanceError> {
    parse_at(text, Path::new("<inline>"))
}

fn parse_at(text: &str, path: &Path) -> Result<VectorFile, ConformanceError> {
    let bad = |detail: String| ConformanceError::Parse {
        path: path.to_path_buf(),
        detail,
    };
    let de = &mut serde_json::Deserializer::from_str(text);
    let file: FileSpec = serde_path_to_error::deserialize(de).map_err(|e| bad(e.to_string()))?;
    fn specs<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<Vec<T>, String> {
        serde_path_to_error::deserialize(v)
            .map_err(|e| format!("vectors{}: {}", e.path(), e.inner()))
    }
    let mut names = std::collections::BTreeSet::new();
    let mut check_name = |name: &str| -> Result<(), ConformanceError> {
        if name.is_empty() || !names.insert(name.to_string()) {
            return Err(bad(format!("vector name {name:?} is empty or repeated")));
        }
        Ok(())
    };
    let in_vector = |name: &str, reason: String| bad(format!("vector {name:?}: {reason}"));
    match file.hook {
        HookKind::Transform => {
            let mut out = Vec::new();
            for s in specs::<TransformVectorSpec>(file.vectors).map_err(bad)? {
                check_name(&s.name)?;
                let e = s.event;
                let event = Event {
                    body: body_bytes(&e.body, &e.body_base64).map_err(|r| in_vector(&s.name, r))?,
                    id: e.id,
                    app_id: e.app_id,
                    event_type: e.event_type,
                    endpoint_url: e.endpoint_url,
                    headers: e.headers,
                    content_type: e.content_type,
                    attempt: e.attempt,
                    created_at_ms: e.created_at_ms,
                    first_attempt_at_ms: e.first_attempt_at_ms,
                };
                let expect = match s.expect {
                    TransformExpectSpec::Send(r) => TransformExpect::Result(TransformResult::Send(
                        r.to_request().map_err(|r| in_vector(&s.name, r))?,
                    )),
                    TransformExpectSpec::Skip(reason) => {
                        TransformExpect::Result(TransformResult::Skip(reason))
                    }
                    TransformExpectSpec::ErrorContains(m) => {
                        TransformExpect::Error(ErrorContaining(m))
                    }
                };
                let _ = s.description;
                out.push(TransformVector {
                    name: s.name,
                    config: s.config,
                    event,
                    expect,
                });
            }
            Ok(VectorFile::Transform(out))
        }
        HookKind::Signer => {
            let mut out = Vec::new();
            for s in specs::<SignerVectorSpec>(file.vectors).map_err(bad)? {
                check_name(&s.name)?;
                let mut secrets = Secrets::new();
                for (key_name, values) in &s.secrets {
                    let keys = values
                        .iter()
                        .map(|v| SecretKey::parse(v))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| in_vector(&s.name, format!("secrets.{key_name}: {e}")))?;
                    secrets.insert(key_name.clone(), keys);
                }
                let _ = s.description;
                out.push(SignerVector {
                    request: s.request.to_request().map_err(|r| in_vector(&s.name, r))?,
                    name: s.name,
                    config: s.config,
                    secrets: Arc::new(secrets),
                    context: s.context.into(),
                    key_name: s.key_name,
                    timestamp: s.timestamp,
                    expect: match s.expect {
                        SignerExpectSpec::Headers(h) => SignerExpect::Headers(h),
                        SignerExpectSpec::ErrorContains(m) => {
                            SignerExpect::Error(ErrorContaining(m))
                        }
                    },
                });
            }
            Ok(VectorFile::Signer(out))
        }
        HookKind::RetryPolicy => {
            let mut out = Vec::new();
            for s in specs::<RetryVectorSpec>(file.vectors).map_err(bad)? {
                check_name(&s.name)?;
                let outcome = match s.outcome {
                    OutcomeSpec::Response { status, headers } => {
                        Outcome::Response { status, headers }
                    }
                    OutcomeSpec::Transport { kind, message } => Outcome::Transport {
                        kind: transport_kind(&kind).ok_or_else(|| {
                            in_vector(
                                &s.name,
                                format!(
                                "outcome.transport.kind {kind:?} is not one of dns, connect, tls, \
                                 timeout, reset, refused-by-policy, response-too-large, other"
                                ),
                            )
                        })?,
                        message,
                    },
                };
                let _ = s.description;
                out.push(RetryVector {
                    name: s.name,
                    config: s.config,
                    context: s.context.into(),
                    outcome,
                    expect: match s.expect {
                        RetryExpectSpec::RetryAfterSeconds(n) => {
                            RetryExpect::Decision(RetryDecision::RetryAfterSeconds(n))
                        }
                        RetryExpectSpec::DeadLetter(r) => {
                            RetryExpect::Decision(RetryDecision::DeadLetter(r))
                        }
                        RetryExpectSpec::Discard(r) => {
                            RetryExpect::Decision(RetryDecision::Discard(r))
                        }
                        RetryExpectSpec::ErrorContains(m) => RetryExpect::Error(ErrorContaining(m)),
                    },
                });
            }
            Ok(VectorFile::RetryPolicy(out))
        }
    }
}

fn transport_kind(name: &str) -> Option<TransportErrorKind> {
    use TransportErrorKind::*;
    [
        Dns,
        Connect,
        Tls,
        Timeout,
        Reset,
        RefusedByPolicy,
        ResponseTooLarge,
        Token,
        Other,
    ]
    .into_iter()
    .find(|k| k.as_str() == name)
}

/// Makes the hook under test, once per vector, with that vector's config and secrets.
pub trait HookFactory {
    /// A transform.
    fn transform(
        &self,
        config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn Transform>, String>;
    /// A signer.
    fn signer(
        &self,
        config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn Signer>, String>;
    /// A retry policy.
    fn retry_policy(
        &self,
        config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn RetryPolicy>, String>;
}

/// What the hook returned for one vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actual {
    /// The hook could not be made (bad plugin, missing export...).
    Setup(String),
    /// A transform's answer.
    Transform(Result<TransformResult, HookError>),
    /// A signer's answer.
    Signer(Result<Headers, HookError>),
    /// A retry policy's answer.
    RetryPolicy(Result<RetryDecision, HookError>),
}

/// The verdict on one vector.
#[derive(Debug, Clone)]
pub struct VectorReport {
    /// Vector name.
    pub name: String,
    /// `None` when it passed, else what differed.
    pub failure: Option<String>,
    /// What the hook returned.
    pub actual: Actual,
}

impl VectorReport {
    /// True when the vector passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// The verdicts on a whole vector file, in file order.
#[derive(Debug, Clone)]
pub struct Report {
    /// Which hook the file was for.
    pub kind: HookKind,
    /// One entry per vector.
    pub vectors: Vec<VectorReport>,
}

impl Report {
    /// Number of passing vectors.
    pub fn passed(&self) -> usize {
        self.vectors.iter().filter(|v| v.passed()).count()
    }

    /// Number of failing vectors.
    pub fn failed(&self) -> usize {
        self.vectors.len() - self.passed()
    }

    /// True when every vector passed.
    pub fn all_passed(&self) -> bool {
        self.failed() == 0
    }

    /// The actual answer for a vector by name.
    pub fn actual(&self, name: &str) -> Option<&Actual> {
        self.vectors
            .iter()
            .find(|v| v.name == name)
            .map(|v| &v.actual)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for v in &self.vectors {
            match &v.failure {
                None => writeln!(f, "ok   {}", v.name)?,
                Some(why) => writeln!(f, "FAIL {}: {why}", v.name)?,
            }
        }
        write!(
            f,
            "{} vectors: {} passed, {} failed",
            self.vectors.len(),
            self.passed(),
            self.failed()
        )
    }
}

/// Run every vector of `file` against hooks made by `factory`.
pub fn run(file: &VectorFile, factory: &dyn HookFactory) -> Report {
    let vectors = match file {
        VectorFile::Transform(vs) => vs
            .iter()
            .map(|v| {
                let actual = match factory.transform(&v.config, Arc::new(Secrets::new())) {
                    Ok(hook) => Actual::Transform(hook.transform(&v.event)),
                    Err(e) => Actual::Setup(e),
                };
                let failure = match (&actual, &v.expect) {
                    (Actual::Transform(Ok(got)), TransformExpect::Result(want)) => (got != want)
                        .then(|| differ(&describe_transform(want), &describe_transform(got))),
                    (Actual::Transform(Err(e)), TransformExpect::Error(want)) => {
                        error_mismatch(e, want)
                    }
                    (actual, expect) => Some(format!(
                        "expected {}, got {}",
                        match expect {
                            TransformExpect::Result(r) => describe_transform(r),
                            TransformExpect::Error(e) => describe_expected_error(e),
                        },
                        describe_actual(actual)
                    )),
                };
                VectorReport {
                    name: v.name.clone(),
                    failure,
                    actual,
                }
            })
            .collect(),
        VectorFile::Signer(vs) => vs
            .iter()
            .map(|v| {
                let actual = match factory.signer(&v.config, v.secrets.clone()) {
                    Ok(hook) => {
                        Actual::Signer(hook.sign(&v.context, &v.request, &v.key_name, v.timestamp))
                    }
                    Err(e) => Actual::Setup(e),
                };
                let failure = match (&actual, &v.expect) {
                    (Actual::Signer(Ok(got)), SignerExpect::Headers(want)) => {
                        (!same_headers(got, want))
                            .then(|| differ(&format!("{want:?}"), &format!("{got:?}")))
                    }
                    (Actual::Signer(Err(e)), SignerExpect::Error(want)) => error_mismatch(e, want),
                    (actual, expect) => Some(format!(
                        "expected {}, got {}",
                        match expect {
                            SignerExpect::Headers(h) => format!("headers {h:?}"),
                            SignerExpect::Error(e) => describe_expected_error(e),
                        },
                        describe_actual(actual)
                    )),
                };
                VectorReport {
                    name: v.name.clone(),
                    failure,
                    actual,
                }
            })
            .collect(),
        VectorFile::RetryPolicy(vs) => vs
            .iter()
            .map(|v| {
                let actual = match factory.retry_policy(&v.config, Arc::new(Secrets::new())) {
                    Ok(hook) => Actual::RetryPolicy(hook.decide(&v.context, &v.outcome)),
                    Err(e) => Actual::Setup(e),
                };
                let failure = match (&actual, &v.expect) {
                    (Actual::RetryPolicy(Ok(got)), RetryExpect::Decision(want)) => {
                        (got != want).then(|| differ(&format!("{want:?}"), &format!("{got:?}")))
                    }
                    (Actual::RetryPolicy(Err(e)), RetryExpect::Error(want)) => {
                        error_mismatch(e, want)
                    }
                    (actual, expect) => Some(format!(
                        "expected {}, got {}",
                        match expect {
                            RetryExpect::Decision(d) => format!("{d:?}"),
                            RetryExpect::Error(e) => describe_expected_error(e),
                        },
                        describe_actual(actual)
                    )),
                };
                VectorReport {
                    name: v.name.clone(),
                    failure,
                    actual,
                }
            })
            .collect(),
    };
    Report {
        kind: file.kind(),
        vectors,
    }
}

/// Header lists match when they have the same length and order, names equal ignoring ASCII
/// case (HTTP names are case-insensitive), values byte for byte.
fn same_headers(got: &Headers, want: &Headers) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|((gn, gv), (wn, wv))| gn.eq_ignore_ascii_case(wn) && gv == wv)
}

/// A reported error passes when the plugin (or a built-in) said so in a message containing
/// the expected text. A trap, timeout or memory blow-up never conforms.
fn error_mismatch(got: &HookError, want: &ErrorContaining) -> Option<String> {
    let reported = matches!(got, HookError::Plugin { .. } | HookError::Host(_));
    let text = got.to_string();
    if reported && text.contains(&want.0) {
        None
    } else {
        Some(format!(
            "expected {}, got {}",
            describe_expected_error(want),
            describe_hook_error(got)
        ))
    }
}

fn describe_expected_error(e: &ErrorContaining) -> String {
    format!("a reported error containing {:?}", e.0)
}

fn describe_hook_error(e: &HookError) -> String {
    format!("{} ({})", e.kind(), e)
}

fn describe_actual(actual: &Actual) -> String {
    match actual {
        Actual::Setup(e) => format!("no hook: {e}"),
        Actual::Transform(Ok(r)) => describe_transform(r),
        Actual::Signer(Ok(h)) => format!("headers {h:?}"),
        Actual::RetryPolicy(Ok(d)) => format!("{d:?}"),
        Actual::Transform(Err(e)) | Actual::Signer(Err(e)) | Actual::RetryPolicy(Err(e)) => {
            describe_hook_error(e)
        }
    }
}

fn describe_transform(r: &TransformResult) -> String {
    match r {
        TransformResult::Skip(reason) => format!("skip({reason:?})"),
        TransformResult::Send(req) => format!(
            "send {} {} headers {:?} body {}",
            req.method,
            req.url,
            req.headers,
            match std::str::from_utf8(&req.body) {
                Ok(text) => format!("{text:?}"),
                Err(_) => format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(&req.body)
                ),
            }
        ),
    }
}

fn differ(want: &str, got: &str) -> String {
    // Point at the first differing character: long bodies are otherwise hard to compare.
    let at = want
        .chars()
        .zip(got.chars())
        .take_while(|(a, b)| a == b)
        .count();
    format!("expected {want}\n       got      {got}\n       (first difference at character {at})")
}

/// The built-in hooks as a [`HookFactory`]: checks the native Standard Webhooks signer
/// against the same vectors as plugins. Transforms are the pass-through; there is no
/// deterministic built-in retry policy (its jitter takes a random number), so none is offered.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinHooks;

impl HookFactory for BuiltinHooks {
    fn transform(
        &self,
        _config: &PluginConfig,
        _secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn Transform>, String> {
        Ok(Arc::new(crate::hooks::PassThrough))
    }

    fn signer(
        &self,
        _config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn Signer>, String> {
        Ok(Arc::new(crate::signing::StandardWebhooksSigner::new(
            secrets,
        )))
    }

    fn retry_policy(
        &self,
        _config: &PluginConfig,
        _secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn RetryPolicy>, String> {
        Err("the built-in retry policy is randomised (jitter) and has no vectors".into())
    }
}

/// Plugins loaded through the real runtime as a [`HookFactory`]: every vector gets a hook of
/// its own with that vector's config and secrets, exactly as an application would (the
/// compiled component is shared, so this costs one instantiation per vector).
pub struct PluginHooks<'a> {
    runtime: &'a crate::plugin::PluginRuntime,
    spec: crate::plugin::PluginSpec,
    app_id: String,
}

impl<'a> PluginHooks<'a> {
    /// Check the component at `spec.path` (its limits and isolation are kept; its config is
    /// replaced by each vector's).
    pub fn new(runtime: &'a crate::plugin::PluginRuntime, spec: crate::plugin::PluginSpec) -> Self {
        PluginHooks {
            runtime,
            spec,
            app_id: "conformance".to_string(),
        }
    }

    fn spec_with(&self, config: &PluginConfig) -> crate::plugin::PluginSpec {
        let mut spec = self.spec.clone();
        spec.config = config.clone();
        spec
    }
}

impl HookFactory for PluginHooks<'_> {
    fn transform(
        &self,
        config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn Transform>, String> {
        self.runtime
            .transform(&self.app_id, &self.spec_with(config), secrets)
            .map_err(|e| e.to_string())
    }

    fn signer(
        &self,
        config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn Signer>, String> {
        self.runtime
            .signer(&self.app_id, &self.spec_with(config), secrets)
            .map_err(|e| e.to_string())
    }

    fn retry_policy(
        &self,
        config: &PluginConfig,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn RetryPolicy>, String> {
        self.runtime
            .retry_policy(&self.app_id, &self.spec_with(config), secrets)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/conformance")
            .join(name)
    }

    #[test]
    fn builtin_signer_passes_the_standard_webhooks_vectors() {
        let file = load(&repo_file("signer-standard-webhooks.json")).unwrap();
        assert_eq!(file.kind(), HookKind::Signer);
        let report = run(&file, &BuiltinHooks);
        assert!(report.all_passed(), "{report}");
        assert_eq!(report.vectors.len(), 3);
    }

    #[test]
    fn every_shipped_vector_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/conformance");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let file = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!file.is_empty(), "{} has no vectors", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 5, "only {seen} vector files found");
    }

    #[test]
    fn a_wrong_signature_fails_and_names_the_difference() {
        let file = parse(
            r#"{"hook": "signer", "vectors": [{
                "name": "wrong", "secrets": {"main": ["k"]},
                "context": {"event_id": "e"},
                "request": {"method": "POST", "url": "https://x", "body": "b"},
                "key_name": "main", "timestamp": 1,
                "expect": {"headers": [["webhook-id", "e"], ["webhook-timestamp", "1"], ["webhook-signature", "v1,AAAA"]]}
            }]}"#,
        )
        .unwrap();
        let report = run(&file, &BuiltinHooks);
        assert_eq!((report.passed(), report.failed()), (0, 1));
        let why = report.vectors[0].failure.as_deref().unwrap();
        assert!(why.contains("v1,AAAA"), "{why}");
        assert!(report.to_string().contains("FAIL wrong"));
    }

    #[test]
    fn pass_through_transform_is_judged_byte_for_byte() {
        let file = parse(
            r#"{"hook": "transform", "vectors": [
              {"name": "same", "event": {"body": "{}", "headers": [["x-a", "1"]]},
               "expect": {"send": {"method": "POST", "url": "https://example.com/webhook",
                 "headers": [["content-type", "application/json"], ["x-a", "1"]], "body": "{}"}}},
              {"name": "other-body", "event": {"body": "{}"},
               "expect": {"send": {"method": "POST", "url": "https://example.com/webhook",
                 "headers": [["content-type", "application/json"]], "body": "{ }"}}},
              {"name": "wants-error", "event": {"body": "{}"}, "expect": {"error_contains": "x"}}
            ]}"#,
        )
        .unwrap();
        let report = run(&file, &BuiltinHooks);
        let verdicts: Vec<bool> = report.vectors.iter().map(VectorReport::passed).collect();
        assert_eq!(verdicts, [true, false, false]);
        assert!(
            report.vectors[2]
                .failure
                .as_ref()
                .unwrap()
                .contains("error containing")
        );
    }

    #[test]
    fn a_trap_never_matches_an_expected_error() {
        let trap = HookError::Trap {
            plugin: "p".into(),
            detail: "absent-key".into(),
        };
        assert!(error_mismatch(&trap, &ErrorContaining("absent-key".into())).is_some());
        let reported = HookError::Plugin {
            plugin: "p".into(),
            message: "no secret named absent-key".into(),
        };
        assert!(error_mismatch(&reported, &ErrorContaining("absent-key".into())).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_place() {
        let err = parse(r#"{"hook": "signer", "vectors": [{"name": "a"}]}"#).unwrap_err();
        assert!(err.to_string().contains("vectors[0]"), "{err}");
        let err = parse(r#"{"hook": "retry-policy", "vectors": [
            {"name": "a", "outcome": {"transport": {"kind": "boom"}}, "expect": {"discard": "x"}}]}"#)
        .unwrap_err();
        assert!(
            err.to_string().contains("\"a\"") && err.to_string().contains("boom"),
            "{err}"
        );
        let err = parse(
            r#"{"hook": "transform", "vectors": [
            {"name": "a", "event": {"body": "x", "body_base64": "eA=="}, "expect": {"skip": "x"}},
            {"name": "a", "event": {}, "expect": {"skip": "x"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err = parse(r#"{"hook": "unknown", "vectors": []}"#).unwrap_err();
        assert!(err.to_string().contains("hook"), "{err}");
        let err = load(Path::new("/nonexistent/v.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/v.json"), "{err}");
    }
}
