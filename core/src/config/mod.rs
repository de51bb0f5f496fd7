//! Configuration: one TOML format with every default in `core/config.default.toml` (embedded),
//! overlaid by the user's file, then by environment variables `SQUALL__SECTION__KEY=value`.
//!
//! Loading is three steps, each naming the key path on error: merge the tables deeply
//! (`layering`), deserialize with `deny_unknown_fields` (through `serde_path_to_error`), then
//! check values (`validate`: ranges, URLs, CIDR networks, secret references, plugin limits). The
//! result is typed and immutable: [`Config`] for the process, [`AppConfig`] per application.
//! This module is given text and variables; it reads no file, environment or secret itself: the
//! engine's `squall::config::load` reads them, checks that plugin files exist
//! ([`Config::check_plugin_files`]) and resolves secrets ([`Config::resolve_secrets_with`]).
//!
//! Reference: `docs/config.md` (a test checks it lists every key of the defaults file).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::envelope;
use crate::retry::{Backoff, RetryLimits};
use crate::secrets::{SecretError, SecretFormat, SecretKey, Secrets};
use crate::ssrf::Allowlist;

mod layering;
mod validate;

use validate::load_inner;

/// The defaults file, embedded.
pub const DEFAULTS_TOML: &str = include_str!("../../config.default.toml");
/// Prefix of the environment variables that overlay the configuration.
pub const ENV_PREFIX: &str = "SQUALL__";
/// SQS retention maximum: the retry horizon must fit inside it (14 days).
pub const MAX_HORIZON_SECS: u64 = 14 * 24 * 3600;

/// Why a configuration was refused. Every message names where (file or environment variable)
/// and which key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The file is not valid TOML.
    #[error("{origin}: not valid TOML: {message}")]
    Syntax {
        /// File path, `built-in defaults` or `inline config`.
        origin: String,
        /// Parser message with line and column.
        message: String,
    },
    /// An environment variable cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A key has a wrong type, an unknown name, or a value out of range.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// File path or `environment variable NAME`.
        origin: String,
        /// Key path, for example `apps.billing.http.timeout_ms`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A secret reference names an environment variable that is not set.
    #[error("{key}: environment variable {var} is not set (secret reference env:{var})")]
    SecretEnvMissing {
        /// Key path of the reference.
        key: String,
        /// The variable.
        var: String,
    },
    /// A secret reference names an SSM parameter that does not exist (or cannot be read).
    #[error("{key}: SSM parameter {name} was not found (secret reference ssm:{name})")]
    SecretSsmMissing {
        /// Key path of the reference.
        key: String,
        /// The parameter name.
        name: String,
    },
    /// A secret's value is unusable (the value itself is never shown).
    #[error("{key}: the secret from {source_name} is unusable: {reason}")]
    SecretInvalid {
        /// Key path of the reference.
        key: String,
        /// `env:NAME` or `literal`.
        source_name: String,
        /// Why.
        reason: SecretError,
    },
    /// Several problems, reported together.
    #[error("{} problems:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Multiple(Vec<ConfigError>),
}

// ---------------------------------------------------------------------------------------------
// Typed configuration.

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The user's file, if any.
    pub path: Option<PathBuf>,
    /// Directory relative paths are resolved against (the file's directory, else the current one).
    pub base_dir: PathBuf,
    /// `literal:` secret references are accepted (demos and tests only).
    pub allow_literal_secrets: bool,
    /// Shared SQS settings.
    pub sqs: SqsConfig,
    /// `squall run` settings.
    pub runner: RunnerConfig,
    /// Plugin runtime settings.
    pub plugins: PluginsConfig,
    /// Deployed function settings.
    pub lambda: LambdaConfig,
    /// OpenTelemetry traces of delivery attempts.
    pub traces: TracesConfig,
    /// Where the applications' settings live.
    pub registry: RegistryConfig,
    /// Applications, sorted by id (the file registry's; empty with another backend).
    pub apps: Vec<AppConfig>,
    /// `[app_defaults]` as written (defaults and file laid over each other), for settings that
    /// arrive later: a registry item is laid over it as an `[apps.NAME]` table is.
    pub(crate) app_defaults: toml::Table,
}

/// `[registry] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryBackend {
    /// The `[apps.NAME]` tables of the configuration.
    File,
    /// A DynamoDB table read at run time.
    Dynamodb,
}

/// `[registry]`: where the applications' settings live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The backend.
    pub backend: RegistryBackend,
    /// The DynamoDB table (set when the backend is DynamoDB).
    pub table: Option<String>,
    /// How long read settings and secrets are trusted.
    pub ttl: Duration,
    /// Built applications kept per process.
    pub max_cached_apps: usize,
    /// Endpoint override for DynamoDB and SSM (already defaulted to `sqs.endpoint_url`).
    pub endpoint_url: Option<String>,
    /// The SSM path of the applications' secrets, `/.../`.
    pub secret_path: String,
}

/// `[sqs]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// Region; `None` = the AWS default chain.
    pub region: Option<String>,
    /// Endpoint override for an SQS-compatible server; `None` = AWS.
    pub endpoint_url: Option<String>,
    /// The shared dead-letter queue.
    pub dead_letter_queue_url: Option<String>,
    /// The shared metrics queue; `None` = records are only logged.
    pub metrics_queue_url: Option<String>,
    /// The stack's shared queue (the shared tier's applications, `MessageGroupId = app_id`);
    /// `None` = no shared queue is served.
    pub shared_queue_url: Option<String>,
    /// ReceiveMessage long-poll wait, seconds (0-20).
    pub wait_time_secs: u32,
    /// Messages per ReceiveMessage (1-10).
    pub receive_batch: u32,
    /// Backoffs up to this use ChangeMessageVisibility; longer ones re-send (0-900).
    pub visibility_backoff_max_secs: u32,
}

/// `[runner]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Grace period for in-flight deliveries on shutdown, seconds.
    pub shutdown_grace_secs: u64,
    /// Shared-queue messages in `squall run`'s hands at once (1-10000).
    pub shared_concurrency: u32,
}

/// `[plugins]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    /// Compiled-plugin cache directory, resolved against the config file's directory; `None`
    /// (the key empty) = the plugin runtime's default (`squall::plugin::default_cache_dir`).
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances held at once: the size of the pooling allocator.
    pub pool_instances: u32,
}

/// Function CPU architecture (`[lambda] architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Architecture {
    /// `arm64`.
    #[serde(rename = "arm64")]
    Arm64,
    /// `x86_64`.
    #[serde(rename = "x86_64")]
    X86_64,
}

/// How the deployed function reaches endpoints (`[lambda] egress`, `egress_azs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// `"default"`: Lambda's own networking; requests leave from AWS's changing addresses.
    Default,
    /// `"fixed-ips"`: in a VPC of the stack's own, through one NAT gateway with an Elastic IP
    /// in each of `azs` availability zones (`egress_azs`, 1-3).
    FixedIps {
        /// Availability zones, so NAT gateways and addresses.
        azs: u8,
    },
}

/// `[lambda]`: the deployed function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaConfig {
    /// CPU architecture.
    pub architecture: Architecture,
    /// Memory, MB.
    pub memory_mb: u32,
    /// Function timeout, seconds; `None` = derived.
    pub timeout_secs: Option<u64>,
    /// Log group retention, days.
    pub log_retention_days: u32,
    /// CloudWatch namespace of the Embedded Metric Format lines the function prints after each
    /// invocation; `None` (the key set to `off`) = none printed.
    pub emf_namespace: Option<String>,
    /// How the function reaches endpoints (the template's VPC, if any).
    pub egress: Egress,
}

/// `[traces]`: OpenTelemetry spans of delivery attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP traces URL; `None` = no traces, no `traceparent` sent.
    pub otlp_endpoint: Option<String>,
    /// The spans' `service.name`.
    pub service_name: String,
    /// Longest wait for the collector per export, ms.
    pub timeout_ms: u64,
}

/// What a plugin failure does to the event (`on_plugin_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnPluginError {
    /// Retry with the application's backoff, within its limits.
    Retry,
    /// Dead-letter at once.
    DeadLetter,
}

impl From<OnPluginError> for crate::pipeline::PluginErrorPolicy {
    fn from(v: OnPluginError) -> Self {
        match v {
            OnPluginError::Retry => crate::pipeline::PluginErrorPolicy::Retry,
            OnPluginError::DeadLetter => crate::pipeline::PluginErrorPolicy::DeadLetter,
        }
    }
}

/// Plugin instance sharing (`isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Pooled instances reused across events of one application.
    Reuse,
    /// A fresh instance per call.
    Fresh,
}

/// Limits of one plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimitsConfig {
    /// Wall time per call, ms.
    pub timeout_ms: u64,
    /// Largest memory, bytes.
    pub memory_bytes: usize,
    /// Largest output, bytes.
    pub max_output_bytes: usize,
    /// Instance sharing.
    pub isolation: Isolation,
}

/// One configured plugin (`[apps.NAME.plugins.HOOK]`). Convert to the plugin runtime's spec
/// with its fields: path, config map, limits, isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Its key path (`apps.NAME.plugins.HOOK`), for messages about it.
    pub key: String,
    /// The component file, resolved against the config file's directory. Whether it exists is
    /// checked by the engine's loader ([`Config::check_plugin_files`]), not here.
    pub path: PathBuf,
    /// Values the plugin reads with `config-get` (numbers and booleans are given as text).
    pub config: BTreeMap<String, String>,
    /// Limits and isolation (the app's `plugin_limits`, overridden by this table's keys).
    pub limits: PluginLimitsConfig,
    /// `sha256`: the digest the plugin file must have (a `.cwasm` is held to the source
    /// digest it carries); `None` = not pinned. Checked by the engine when it loads the plugin.
    pub sha256: Option<[u8; 32]>,
}

/// `[apps.NAME.plugins]`: the plugin of each hook; `None` = the built-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppPlugins {
    /// Transform hook.
    pub transform: Option<PluginConfig>,
    /// Signer hook.
    pub signer: Option<PluginConfig>,
    /// Retry-policy hook.
    pub retry_policy: Option<PluginConfig>,
}

impl AppPlugins {
    /// Each hook's config key with its plugin, in a fixed order.
    pub fn by_hook(&self) -> [(&'static str, Option<&PluginConfig>); 3] {
        [
            ("transform", self.transform.as_ref()),
            ("signer", self.signer.as_ref()),
            ("retry_policy", self.retry_policy.as_ref()),
        ]
    }

    /// [`AppPlugins::by_hook`], mutable.
    pub fn by_hook_mut(&mut self) -> [(&'static str, Option<&mut PluginConfig>); 3] {
        [
            ("transform", self.transform.as_mut()),
            ("signer", self.signer.as_mut()),
            ("retry_policy", self.retry_policy.as_mut()),
        ]
    }

    /// True when any hook is a plugin rather than the built-in.
    pub fn any(&self) -> bool {
        self.by_hook().iter().any(|(_, p)| p.is_some())
    }
}

/// `[app_defaults.lambda]`: the event source mapping of the app's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLambdaConfig {
    /// Messages per invocation.
    pub batch_size: u32,
    /// MaximumBatchingWindowInSeconds.
    pub batching_window_secs: u32,
    /// Oldest-message age alarm threshold, seconds.
    pub age_alarm_secs: u64,
}

/// Where a secret comes from. `Debug` never shows a literal value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: the environment variable, read at start-up.
    Env(String),
    /// `literal:VALUE` (only with `allow_literal_secrets`).
    Literal(String),
    /// `ssm:NAME`: an SSM Parameter Store parameter (a SecureString), read at run time and
    /// read again after the registry's TTL, so a rotation needs no redeploy.
    Ssm(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::Literal(_) => f.write_str("literal:<redacted>"),
            SecretRef::Ssm(name) => write!(f, "ssm:{name}"),
        }
    }
}

/// One application, with `app_defaults` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Application id (the key under `[apps]`).
    pub id: String,
    /// The application's queue; `None` when not configured (the demo's in-process queue) and
    /// for a shared application (its events are on `sqs.shared_queue_url`).
    pub queue_url: Option<String>,
    /// Dedicated (the file's applications, and a registry item's default) or shared (a registry
    /// item's `tier`; not a key of the table).
    pub tier: crate::registry::Tier,
    /// Connect timeout per delivery, ms.
    pub connect_timeout_ms: u64,
    /// Total timeout per delivery, ms.
    pub timeout_ms: u64,
    /// Response body read cap, bytes.
    pub max_response_bytes: usize,
    /// Largest accepted envelope, bytes.
    pub max_body_bytes: usize,
    /// Concurrent deliveries for the application.
    pub max_concurrency: u32,
    /// Concurrent deliveries per endpoint host.
    pub max_per_endpoint: u32,
    /// Longest wait for a slot at a saturated endpoint host before the message is deferred.
    pub endpoint_wait_secs: u32,
    /// Networks allowed despite the SSRF guard.
    pub allowed_networks: Allowlist,
    /// What a plugin failure does.
    pub on_plugin_error: OnPluginError,
    /// Default signing key name.
    pub signing_key: String,
    /// How secret values become key bytes.
    pub secret_format: SecretFormat,
    /// mTLS: the secret holding the client certificate chain (PEM), if any.
    pub tls_client_cert: Option<String>,
    /// mTLS: the secret holding the client certificate's private key (PEM).
    pub tls_client_key: Option<String>,
    /// The secret holding extra trusted root certificates (PEM), if any.
    pub tls_ca: Option<String>,
    /// Built-in backoff parameters.
    pub backoff: Backoff,
    /// Limits every retry policy is held to.
    pub retry_limits: RetryLimits,
    /// Default plugin limits of this application.
    pub plugin_limits: PluginLimitsConfig,
    /// Event source mapping settings.
    pub lambda: AppLambdaConfig,
    /// Secret references by key name, newest first.
    pub secrets: BTreeMap<String, Vec<SecretRef>>,
    /// Plugins per hook.
    pub plugins: AppPlugins,
    /// Registered endpoints (`[apps.ID.endpoints.EID]`, or the registry item's), which an
    /// envelope may name by `endpoint_id`.
    pub endpoints: crate::endpoints::EndpointTable,
    /// Breaker, pause and pacing per endpoint origin.
    pub endpoint_health: EndpointHealthConfig,
    /// OAuth2 client credentials to the endpoints (`[apps.ID.oauth2]`); `None`: off.
    pub oauth2: Option<crate::oauth2::OAuth2Config>,
}

/// `[app_defaults.endpoint_health]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointHealthConfig {
    /// Off: every event is attempted on its own schedule.
    pub enabled: bool,
    /// The thresholds.
    pub settings: crate::health::HealthSettings,
    /// How often each process reads the shared states (DynamoDB registry), seconds.
    pub shared_ttl_secs: u32,
}

impl AppConfig {
    /// The built-in backoff policy's parameters.
    pub fn backoff(&self) -> Backoff {
        self.backoff.clone()
    }

    /// The retry limits (max attempts, horizon).
    pub fn retry_limits(&self) -> RetryLimits {
        self.retry_limits
    }

    /// The longest one message can be in the engine's hands before it is acted on: the wait for
    /// an endpoint slot, the HTTP timeout (four of them with OAuth2: the token request, the
    /// request, the refresh after a 401 and the second request) and the time limit of each
    /// hook configured as a plugin.
    pub fn longest_attempt(&self) -> Duration {
        let plugins: u64 = self
            .plugins
            .by_hook()
            .iter()
            .filter_map(|(_, p)| p.map(|p| p.limits.timeout_ms))
            .sum();
        // With OAuth2 an attempt may also fetch a token, and on a 401 fetch another and send
        // again, each bounded by timeout_ms.
        let oauth2 = if self.oauth2.is_some() {
            3 * self.timeout_ms
        } else {
            0
        };
        Duration::from_millis(
            u64::from(self.endpoint_wait_secs) * 1000 + self.timeout_ms + oauth2 + plugins,
        )
    }

    /// Limits for decoding this application's envelopes.
    pub fn envelope_limits(&self) -> envelope::Limits {
        envelope::Limits {
            max_body_bytes: self.max_body_bytes,
        }
    }

    /// Names of the environment variables this application's secrets come from.
    pub fn secret_env_vars(&self) -> impl Iterator<Item = &str> {
        self.secrets.values().flatten().filter_map(|r| match r {
            SecretRef::Env(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Names of the SSM parameters this application's secrets come from.
    pub fn secret_ssm_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.values().flatten().filter_map(|r| match r {
            SecretRef::Ssm(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Read this application's secrets through `lookup` (the environment in production); an
    /// `ssm:` reference is reported missing (see [`AppConfig::resolve_secrets_from`]).
    pub fn resolve_secrets(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secrets, ConfigError> {
        self.resolve_secrets_from(lookup, &|_| None)
    }

    /// Read this application's secrets: `env:` references through `env`, `ssm:` references
    /// through `ssm` (parameter values the caller fetched). Reports every missing or unusable
    /// secret, naming key paths, variables and parameters, never values.
    pub fn resolve_secrets_from(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        ssm: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secrets, ConfigError> {
        let mut secrets = Secrets::new();
        let mut problems = Vec::new();
        for (name, refs) in &self.secrets {
            let mut keys = Vec::with_capacity(refs.len());
            for (i, r) in refs.iter().enumerate() {
                let key = format!("apps.{}.secrets.{name}[{i}]", self.id);
                let (value, source_name) = match r {
                    SecretRef::Env(var) => match env(var) {
                        Some(v) => (v, format!("env:{var}")),
                        None => {
                            problems.push(ConfigError::SecretEnvMissing {
                                key,
                                var: var.clone(),
                            });
                            continue;
                        }
                    },
                    SecretRef::Ssm(param) => match ssm(param) {
                        Some(v) => (v, format!("ssm:{param}")),
                        None => {
                            problems.push(ConfigError::SecretSsmMissing {
                                key,
                                name: param.clone(),
                            });
                            continue;
                        }
                    },
                    SecretRef::Literal(v) => (v.clone(), "literal".to_string()),
                };
                // An OAuth2 client secret is text sent to the token endpoint, never a key.
                let format = match &self.oauth2 {
                    Some(o) if o.client_secret == *name => SecretFormat::Raw,
                    _ => self.secret_format,
                };
                match SecretKey::parse_as(&value, format) {
                    Ok(k) => keys.push(k),
                    Err(reason) => problems.push(ConfigError::SecretInvalid {
                        key,
                        source_name,
                        reason,
                    }),
                }
            }
            secrets.insert(name.clone(), keys);
        }
        into_result(problems).map(|()| secrets)
    }
}

fn into_result(mut problems: Vec<ConfigError>) -> Result<(), ConfigError> {
    match problems.len() {
        0 => Ok(()),
        1 => Err(problems.remove(0)),
        _ => Err(ConfigError::Multiple(problems)),
    }
}

impl Config {
    /// Load the defaults, then `text` (the file at `path`, already read), then `env` (the
    /// `SQUALL__` variables; others are ignored). Relative paths resolve against `base_dir`, the
    /// file's directory. The engine's `squall::config::load` reads the file and the process
    /// environment and calls this.
    pub fn from_file(
        path: &Path,
        text: &str,
        base_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = load_inner(Some(text), base_dir, &path.display().to_string(), env)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Load from TOML text (demos, tests); relative paths resolve against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        load_inner(Some(text), base_dir, "inline config", env)
    }

    /// An application whose settings arrive after start-up (a registry item's TOML text, the
    /// body of an `[apps.ID]` table), laid over this configuration's `[app_defaults]` and
    /// validated as the file's applications are; errors name `origin` and `apps.ID.key`.
    pub fn app_from_toml(
        &self,
        id: &str,
        text: &str,
        origin: &str,
    ) -> Result<AppConfig, ConfigError> {
        validate::app_from_toml(self, id, text, &BTreeMap::new(), origin)
    }

    /// [`Config::app_from_toml`] with a registry item's endpoints (id and TOML body of each),
    /// validated as `[apps.ID.endpoints.EID]` tables.
    pub fn app_from_toml_with_endpoints(
        &self,
        id: &str,
        text: &str,
        endpoints: &BTreeMap<String, String>,
        origin: &str,
    ) -> Result<AppConfig, ConfigError> {
        validate::app_from_toml(self, id, text, endpoints, origin)
    }

    /// The application with this id.
    pub fn app(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id == id)
    }

    /// Check what `squall run` and the Lambda function need beyond a valid file: at least one
    /// application, each with a queue URL, and a dead-letter queue.
    pub fn require_queues(&self) -> Result<(), ConfigError> {
        let origin = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".to_string());
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            origin: origin.clone(),
            key,
            message: message.to_string(),
        };
        let mut problems = Vec::new();
        if self.registry.backend == RegistryBackend::Dynamodb {
            // The applications live in the registry; a table in the file would be silently
            // ignored, so it is refused (`squall apps import` moves them).
            for app in &self.apps {
                problems.push(invalid(
                    format!("apps.{}", app.id),
                    "registry.backend is \"dynamodb\": applications live in the registry, not in \
                     the file (move them with `squall apps import`)",
                ));
            }
        } else if self.apps.is_empty() {
            return Err(invalid(
                "apps".into(),
                "no application configured: add an [apps.NAME] table with queue_url",
            ));
        }
        for app in &self.apps {
            if app.queue_url.is_none() {
                problems.push(invalid(
                    format!("apps.{}.queue_url", app.id),
                    "required: the URL of the application's SQS queue",
                ));
            }
        }
        if self.sqs.dead_letter_queue_url.is_none() {
            problems.push(invalid(
                "sqs.dead_letter_queue_url".into(),
                "required: events that cannot be delivered go there",
            ));
        }
        // Each queue has one job. An application queue that is also the DLQ would deliver its
        // dead letters again; one that is the metrics queue would take records for envelopes;
        // two applications on one queue would dead-letter each other's events (an envelope's
        // app_id must match its queue's application). A trailing slash is not another queue.
        let mut seen: Vec<(&str, String)> = Vec::new();
        for q in self.queues() {
            let url = q.url.trim_end_matches('/');
            match seen.iter().find(|(u, _)| *u == url) {
                Some((_, first)) => problems.push(invalid(
                    q.key,
                    &format!(
                        "{url:?} is also {first}: every application needs a queue of its own, \
                         apart from the dead-letter and metrics queues"
                    ),
                )),
                None => seen.push((url, q.key)),
            }
        }
        into_result(problems)
    }

    /// Every queue URL the config names, with its key path: the dead-letter queue, the metrics
    /// queue, then each application's queue (those configured).
    pub fn queues(&self) -> Vec<ConfiguredQueue<'_>> {
        let shared = [
            ("sqs.dead_letter_queue_url", &self.sqs.dead_letter_queue_url),
            ("sqs.metrics_queue_url", &self.sqs.metrics_queue_url),
            ("sqs.shared_queue_url", &self.sqs.shared_queue_url),
        ]
        .map(|(key, url)| (key.to_string(), url, None));
        let apps = self
            .apps
            .iter()
            .map(|a| (format!("apps.{}.queue_url", a.id), &a.queue_url, Some(a)));
        shared
            .into_iter()
            .chain(apps)
            .filter_map(|(key, url, app)| {
                Some(ConfiguredQueue {
                    key,
                    url: url.as_deref()?,
                    app,
                })
            })
            .collect()
    }

    /// Check that every configured plugin file exists, through `is_file` (the engine passes
    /// the file system's answer); every missing file is named with its key path.
    pub fn check_plugin_files(&self, is_file: &dyn Fn(&Path) -> bool) -> Result<(), ConfigError> {
        let origin = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "inline config".to_string());
        let base = |p: &Path| {
            p.parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        };
        let problems = self
            .apps
            .iter()
            .flat_map(|a| a.plugins.by_hook().into_iter().filter_map(|(_, p)| p))
            .filter(|p| !is_file(&p.path))
            .map(|p| ConfigError::Invalid {
                origin: origin.clone(),
                key: format!("{}.path", p.key),
                message: format!(
                    "plugin file not found: {} (a relative path is resolved against the config file's directory{})",
                    p.path.display(),
                    self.path.as_deref().map(|c| format!(" {}", base(c))).unwrap_or_default()
                ),
            })
            .collect();
        into_result(problems)
    }

    /// Every application's secrets through `lookup`; all problems are reported together.
    pub fn resolve_secrets_with(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Arc<Secrets>>, ConfigError> {
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for app in &self.apps {
            match app.resolve_secrets(lookup) {
                Ok(s) => {
                    out.insert(app.id.clone(), Arc::new(s));
                }
                Err(ConfigError::Multiple(p)) => problems.extend(p),
                Err(e) => problems.push(e),
            }
        }
        into_result(problems).map(|()| out)
    }
}

/// A queue the config names ([`Config::queues`]).
#[derive(Debug, Clone)]
pub struct ConfiguredQueue<'a> {
    /// Its key path, e.g. `apps.shop.queue_url`.
    pub key: String,
    /// Its URL.
    pub url: &'a str,
    /// The application it feeds; `None` for the dead-letter and metrics queues.
    pub app: Option<&'a AppConfig>,
}

#[cfg(test)]
mod tests {
    use toml::{Table, Value};

    use super::layering::parse_env_value;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("."), env(vars))
    }

    const ONE_APP: &str = r#"
        [sqs]
        dead_letter_queue_url = "http://127.0.0.1:5000/123/dlq"
        [apps.billing]
        queue_url = "http://127.0.0.1:5000/123/billing"
        secrets = { default = ["env:BILLING_SECRET", "env:BILLING_SECRET_OLD"] }
    "#;

    const OAUTH_APP: &str = r#"
        [sqs]
        dead_letter_queue_url = "http://127.0.0.1:5000/123/dlq"
        [apps.billing]
        queue_url = "http://127.0.0.1:5000/123/billing"
        secrets = { default = "env:BILLING_SECRET", oauth = "env:BILLING_OAUTH" }
        [apps.billing.oauth2]
        token_url = "https://auth.example/token"
        client_id = "billing"
        client_secret = "oauth"
    "#;

    #[test]
    fn oauth2_settings_are_validated_and_the_client_secret_is_text() {
        let c = Config::from_toml_str(
            &format!("{OAUTH_APP}\norigins = [\"https://Hooks.example\", \"http://127.0.0.1:8080/\"]\nscope = \"a b\""),
            Path::new("."),
            Vec::new(),
        )
        .unwrap();
        let app = c.app("billing").unwrap();
        let o = app.oauth2.as_ref().unwrap();
        assert_eq!(
            o.origins,
            ["https://hooks.example:443", "http://127.0.0.1:8080"]
        );
        assert_eq!((o.scope.as_str(), o.refresh_before_secs), ("a b", 60));
        assert_eq!(o.auth_method, crate::oauth2::AuthMethod::Basic);
        // A whsec_-looking client secret is used as text, the signing key as a key.
        let s = app
            .resolve_secrets(&|v| {
                Some(match v {
                    "BILLING_OAUTH" => "whsec_AAAA".to_string(),
                    _ => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
                })
            })
            .unwrap();
        assert_eq!(s.get("oauth").unwrap()[0].material(), b"whsec_AAAA");
        assert_eq!(s.get("default").unwrap()[0].material().len(), 24);
        let (rest, taken) = s.split_off("oauth");
        assert!(rest.get("oauth").is_none() && rest.get("default").is_some());
        assert_eq!(taken.unwrap().len(), 1);
        // The longest attempt counts the token request, the refresh and the second send.
        assert_eq!(
            app.longest_attempt(),
            Duration::from_millis(5_000 + 4 * 15_000)
        );
        // Off by default.
        let c = Config::from_toml_str(ONE_APP, Path::new("."), Vec::new()).unwrap();
        assert!(c.app("billing").unwrap().oauth2.is_none());
    }

    fn err(text: &str, vars: &[(&str, &str)]) -> String {
        load(text, vars).expect_err(text).to_string()
    }

    #[test]
    fn the_emf_namespace_is_a_key_that_the_environment_overlays() {
        assert_eq!(
            load("", &[]).unwrap().lambda.emf_namespace.as_deref(),
            Some("Squall")
        );
        let ns = |v: &str| load("", &[("SQUALL__LAMBDA__EMF_NAMESPACE", v)]);
        assert_eq!(
            ns("Webhooks").unwrap().lambda.emf_namespace.as_deref(),
            Some("Webhooks")
        );
        assert_eq!(ns("off").unwrap().lambda.emf_namespace, None);
        let e = ns("").unwrap_err().to_string();
        for part in [
            "SQUALL__LAMBDA__EMF_NAMESPACE",
            "lambda.emf_namespace",
            "\"off\"",
        ] {
            assert!(e.contains(part), "{e}");
        }
    }

    #[test]
    fn egress_is_default_unless_fixed_ips_is_asked_for() {
        assert_eq!(load("", &[]).unwrap().lambda.egress, Egress::Default);
        // egress_azs alone changes nothing.
        assert_eq!(
            load("[lambda]\negress_azs = 3", &[]).unwrap().lambda.egress,
            Egress::Default
        );
        assert_eq!(
            load("[lambda]\negress = \"fixed-ips\"", &[])
                .unwrap()
                .lambda
                .egress,
            Egress::FixedIps { azs: 2 }
        );
        let c = load(
            "",
            &[
                ("SQUALL__LAMBDA__EGRESS", "fixed-ips"),
                ("SQUALL__LAMBDA__EGRESS_AZS", "1"),
            ],
        )
        .unwrap();
        assert_eq!(c.lambda.egress, Egress::FixedIps { azs: 1 });
    }

    #[test]
    fn defaults_alone_load_and_match_the_built_in_types() {
        let c = load("", &[]).unwrap();
        assert!(c.apps.is_empty());
        assert_eq!(c.sqs.wait_time_secs, 20);
        assert_eq!(c.sqs.receive_batch, 10);
        assert_eq!(c.sqs.visibility_backoff_max_secs, 900);
        assert_eq!(c.sqs.endpoint_url, None);
        assert!(!c.allow_literal_secrets);
        assert_eq!(c.lambda.architecture, Architecture::Arm64);
        // The defaults file and the Rust defaults of the retry module agree.
        let app = load(ONE_APP, &[]).unwrap().apps.remove(0);
        assert_eq!(app.backoff(), Backoff::default());
        assert_eq!(app.retry_limits(), RetryLimits::default());
        assert_eq!(app.envelope_limits(), envelope::Limits::default());
        assert_eq!(app.on_plugin_error, OnPluginError::Retry);
        assert_eq!(app.plugin_limits.isolation, Isolation::Reuse);
        assert_eq!(app.max_per_endpoint, 8);
        assert!(app.allowed_networks.is_empty());
        assert_eq!(
            app.secret_env_vars().collect::<Vec<_>>(),
            ["BILLING_SECRET", "BILLING_SECRET_OLD"]
        );
    }

    #[test]
    fn secret_format_raw_keeps_whsec_values_as_text() {
        // A Stripe secret starts with whsec_ but is not base64: Stripe HMACs with its text.
        let stripe = "whsec_Stripe+Looking/Secret!";
        let text = r#"
            [sqs]
            dead_letter_queue_url = "http://127.0.0.1:5000/123/dlq"
            [apps.stripe]
            secret_format = "raw"
            secrets = { default = "env:STRIPE_SECRET" }
            [apps.standard]
            secrets = { default = "env:STANDARD_SECRET" }
        "#;
        let c = load(text, &[]).unwrap();
        let lookup = |v: &str| match v {
            "STRIPE_SECRET" => Some(stripe.to_string()),
            "STANDARD_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            _ => None,
        };
        let resolved = c.resolve_secrets_with(&lookup).unwrap();
        let key = &resolved["stripe"].get("default").unwrap()[0];
        assert_eq!(
            key.hmac_sha256(b"t.body"),
            SecretKey::from_bytes(stripe.as_bytes().to_vec()).hmac_sha256(b"t.body")
        );
        let standard = &resolved["standard"].get("default").unwrap()[0];
        let decoded = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .unwrap();
        assert_eq!(
            standard.hmac_sha256(b"t.body"),
            SecretKey::from_bytes(decoded).hmac_sha256(b"t.body")
        );
        // The same Stripe value under the default format is refused, naming the key path.
        let text = text.replace("secret_format = \"raw\"", "");
        let e = load(&text, &[])
            .unwrap()
            .resolve_secrets_with(&lookup)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apps.stripe.secrets.default[0]") && e.contains("base64"),
            "{e}"
        );
        assert!(!e.contains("Stripe+Looking"), "no secret in errors: {e}");
        let e = err(&format!("{ONE_APP}\nsecret_format = \"hex\""), &[]);
        assert!(e.contains("apps.billing.secret_format"), "{e}");
    }

    #[test]
    fn file_then_env_overlay_with_per_app_overrides() {
        let text = format!(
            "{ONE_APP}\n[app_defaults]\ntimeout_ms = 9000\n[app_defaults.retry]\nmax_attempts = 7\n\
             [apps.billing.retry]\nhorizon_secs = 3600\n\
             [apps.billing-eu]\nsecrets = {{ default = \"env:EU\" }}\nmax_concurrency = 2\nmax_per_endpoint = 1\n"
        );
        let c = load(
            &text,
            &[
                ("SQUALL__SQS__ENDPOINT_URL", "http://127.0.0.1:4566"),
                ("SQUALL__SQS__WAIT_TIME_SECS", "1"),
                (
                    "SQUALL__APPS__BILLING_EU__QUEUE_URL",
                    "http://127.0.0.1:4566/q/eu",
                ),
                (
                    "SQUALL__APPS__BILLING__ALLOWED_NETWORKS",
                    "[\"127.0.0.0/8\", \"::1\"]",
                ),
                ("SQUALL__APPS__BILLING__RETRY__MULTIPLIER", "2"),
                ("SQUALL_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(c.sqs.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(c.sqs.wait_time_secs, 1);
        let ids: Vec<&str> = c.apps.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["billing", "billing-eu"]);
        let b = c.app("billing").unwrap();
        assert_eq!(b.timeout_ms, 9000);
        assert_eq!(b.retry_limits().max_attempts, 7);
        assert_eq!(b.retry_limits().horizon_secs, 3600);
        assert_eq!(b.backoff().multiplier, 2.0);
        assert!(b.allowed_networks.allows("127.0.0.1".parse().unwrap()));
        assert!(b.allowed_networks.allows("::1".parse().unwrap()));
        let eu = c.app("billing-eu").unwrap();
        assert_eq!(eu.queue_url.as_deref(), Some("http://127.0.0.1:4566/q/eu"));
        assert_eq!(eu.timeout_ms, 9000);
        assert_eq!(eu.retry_limits().horizon_secs, 259_200);
        assert_eq!(eu.max_concurrency, 2);
        assert_eq!(eu.secrets["default"], vec![SecretRef::Env("EU".into())]);
        c.require_queues().unwrap();
    }

    /// Each mistake is refused with the key path and where it came from.
    #[test]
    fn error_table_names_key_and_origin() {
        type Case = (
            String,
            Vec<(&'static str, &'static str)>,
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            ("[sqs]\nwait_time_secs = \"x\"".into(), vec![], &["inline config", "sqs.wait_time_secs", "invalid type: string \"x\""]),
            ("[sqs]\nwait_time_secs = 21".into(), vec![], &["sqs.wait_time_secs", "must be 0-20"]),
            ("[sqs]\nvisibility_backoff_max_secs = 901".into(), vec![], &["sqs.visibility_backoff_max_secs", "must be 0-900"]),
            ("[sqs]\nwait_tme_secs = 1".into(), vec![], &["sqs.wait_tme_secs", "unknown field"]),
            ("[sqs]\nendpoint_url = \"localhost:4566\"".into(), vec![], &["sqs.endpoint_url", "http or https"]),
            ("[sqs]\ndead_letter_queue_url = \"not a url\"".into(), vec![], &["sqs.dead_letter_queue_url", "not an absolute URL"]),
            ("[sqs]\ndead_letter_queue_url = \"https://sqs.eu-west-1.amazonaws.com/123/dlq.fifo\"".into(), vec![], &["sqs.dead_letter_queue_url", "dlq.fifo", "is a FIFO queue", "use a standard queue"]),
            ("[sqs]\nmetrics_queue_url = \"https://sqs.eu-west-1.amazonaws.com/123/metrics.fifo/\"".into(), vec![], &["sqs.metrics_queue_url", "is a FIFO queue"]),
            ("[apps.a]\nqueue_url = \"http://127.0.0.1:4566/000000000000/orders.fifo\"\nsecrets = { default = \"env:X\" }".into(), vec![], &["apps.a.queue_url", "orders.fifo", "is a FIFO queue"]),
            ("[sqs\n".into(), vec![], &["inline config: not valid TOML", "line 1"]),
            ("bogus = 1".into(), vec![], &["bogus", "unknown field"]),
            (format!("{ONE_APP}\n[apps.billing.http]\ntimeout_ms = \"x\""), vec![], &["apps.billing.http", "unknown field"]),
            (format!("{ONE_APP}\ntimeout_ms = \"x\""), vec![], &["apps.billing.timeout_ms", "invalid type: string \"x\", expected u64"]),
            ("[app_defaults]\ntimeout_ms = 0".into(), vec![], &["app_defaults.timeout_ms", "out of range"]),
            ("[app_defaults]\nconnect_timeout_ms = 20000".into(), vec![], &["app_defaults.connect_timeout_ms", "longer than timeout_ms"]),
            ("[app_defaults]\nqueue_url = \"http://x/\"".into(), vec![], &["app_defaults.queue_url", "per application"]),
            ("[app_defaults]\non_plugin_error = \"ignore\"".into(), vec![], &["app_defaults.on_plugin_error", "unknown variant `ignore`", "dead-letter"]),
            ("[app_defaults.retry]\nhorizon_secs = 2000000".into(), vec![], &["app_defaults.retry.horizon_secs", "14 days"]),
            ("[app_defaults.retry]\njitter = 1.5".into(), vec![], &["app_defaults.retry.jitter", "0.0-1.0"]),
            ("[app_defaults.retry]\nmax_delay_secs = 1\ninitial_delay_secs = 5".into(), vec![], &["app_defaults.retry.max_delay_secs"]),
            ("[app_defaults.plugin_limits]\nisolation = \"shared\"".into(), vec![], &["app_defaults.plugin_limits.isolation", "`reuse`"]),
            ("[lambda]\negress = \"nat\"".into(), vec![], &["lambda.egress", "unknown variant `nat`", "`fixed-ips`"]),
            ("[lambda]\negress = \"fixed-ips\"\negress_azs = 4".into(), vec![], &["lambda.egress_azs", "4 is out of range: must be 1-3"]),
            ("[lambda]\negress_azs = 0".into(), vec![], &["lambda.egress_azs", "must be 1-3"]),
            ("[app_defaults]\nallowed_networks = [\"10.0.0.0/8\", \"10.0.0.1/8\"]".into(), vec![], &["app_defaults.allowed_networks[1]", "did you mean 10.0.0.0/8"]),
            (format!("{ONE_APP}\nallowed_networks = [\"nope\"]"), vec![], &["apps.billing.allowed_networks[0]", "not an IP address"]),
            (format!("{ONE_APP}\nmax_per_endpoint = 100"), vec![], &["apps.billing.max_per_endpoint", "must be 1-64"]),
            (format!("{ONE_APP}\n[apps.billing.endpoints.E]\nurl = \"ftp://x.example\""), vec![], &["apps.billing.endpoints.E.url", "http or https"]),
            (format!("{ONE_APP}\n[apps.billing.endpoints.E]\nenabled = true"), vec![], &["apps.billing.endpoints.E", "missing field `url`"]),
            (format!("{ONE_APP}\n[apps.billing.endpoints.E]\nurl = \"https://x.example\"\nsigning_key = \"nope\""), vec![], &["apps.billing.endpoints.E.signing_key", "no secret named \"nope\""]),
            (format!("{ONE_APP}\n[apps.billing.endpoints.E]\nurl = \"https://x.example\"\nheaders = {{ webhook-id = \"x\" }}"), vec![], &["apps.billing.endpoints.E.headers", "reserved"]),
            (format!("{ONE_APP}\n[apps.billing.endpoints.E]\nurl = \"https://x.example\"\nurll = 1"), vec![], &["apps.billing.endpoints.E", "unknown field `urll`"]),
            (format!("{ONE_APP}\n[apps.billing.endpoints.\"a b\"]\nurl = \"https://x.example\""), vec![], &["apps.billing.endpoints.a b", "an endpoint id must be 1-64"]),
            ("[app_defaults.endpoints.E]\nurl = \"https://x.example\"".into(), vec![], &["app_defaults.endpoints", "per application"]),
            (format!("{ONE_APP}\n[apps.billing.oauth2]\ntoken_url = \"auth.example/token\""), vec![], &["apps.billing.oauth2.token_url", "not an absolute URL"]),
            (format!("{ONE_APP}\n[apps.billing.oauth2]\ntoken_url = \"https://u:p@auth.example/token\""), vec![], &["apps.billing.oauth2.token_url", "user:password@"]),
            (format!("{ONE_APP}\n[apps.billing.oauth2]\ntoken_url = \"https://auth.example/token\""), vec![], &["apps.billing.oauth2.client_id", "is required with token_url"]),
            (format!("{ONE_APP}\n[apps.billing.oauth2]\ntoken_url = \"https://auth.example/token\"\nclient_id = \"c\"\nclient_secret = \"oauth\""), vec![], &["apps.billing.oauth2.client_secret", "\"oauth\" is not the name of one of apps.billing.secrets"]),
            (format!("{ONE_APP}\n[apps.billing.oauth2]\ntoken_url = \"https://auth.example/token\"\nclient_id = \"c\"\nclient_secret = \"default\""), vec![], &["apps.billing.oauth2.client_secret", "also the signing_key"]),
            (format!("{OAUTH_APP}\norigins = []"), vec![], &["apps.billing.oauth2.origins", "is empty"]),
            (format!("{OAUTH_APP}\norigins = [\"https://hooks.example/path\"]"), vec![], &["apps.billing.oauth2.origins[0]", "not an origin"]),
            (format!("{OAUTH_APP}\norigins = [\"https://hooks.example\"]\nauth_method = \"jwt\""), vec![], &["apps.billing.oauth2.auth_method", "unknown variant `jwt`"]),
            (format!("{OAUTH_APP}\norigins = [\"https://hooks.example\"]\nrefresh_before_secs = 90000"), vec![], &["apps.billing.oauth2.refresh_before_secs", "out of range"]),
            ("[apps.\"bad id\"]\nsecrets = { default = \"env:X\" }".into(), vec![], &["apps.bad id", "application id"]),
            ("[apps.a]\nqueue_url = \"http://q/\"".into(), vec![], &["apps.a.secrets", "no secret named \"default\""]),
            ("[apps.a]\nsecrets = { default = \"BILLING\" }".into(), vec![], &["apps.a.secrets.default[0]", "must start with env:"]),
            ("[apps.a]\nsecrets = { default = [\"env:OK\", \"literal:abc\"] }".into(), vec![], &["apps.a.secrets.default[1]", "allow_literal_secrets = true"]),
            ("[apps.a]\nsecrets = { default = \"arn:aws:secretsmanager:us-east-1:1:secret:x\" }".into(), vec![], &["apps.a.secrets.default[0]", "SSM SecureString"]),
            ("[apps.a]\nsecrets = { default = \"env:1BAD\" }".into(), vec![], &["apps.a.secrets.default[0]", "environment variable"]),
            ("[apps.a]\nsecrets = { default = [] }".into(), vec![], &["apps.a.secrets.default", "at least one"]),
            ("[apps.a]\nsecrets = { default = 5 }".into(), vec![], &["apps.a.secrets.default", "secret reference"]),
            ("allow_literal_secrets = true\n[apps.a]\nsecrets = { default = \"literal:whsec_!!\" }".into(), vec![], &["apps.a.secrets.default[0]", "base64"]),
            ("[apps.a]\nsecrets = { default = \"env:X\" }\n[apps.a.plugins.transfrom]\npath = \"x.wasm\"".into(), vec![], &["apps.a.plugins.transfrom", "unknown field"]),
            ("[apps.a]\nsecrets = { default = \"env:X\" }\n[apps.A]\nsecrets = { default = \"env:X\" }".into(), vec![], &["same environment variable form"]),
            ("".into(), vec![("SQUALL__SQS__WAIT_TIME_SECS", "abc")], &["environment variable SQUALL__SQS__WAIT_TIME_SECS", "sqs.wait_time_secs", "invalid type: string \"abc\""]),
            ("".into(), vec![("SQUALL__APP_DEFAULTS__RETRY__MAX_ATTEMPTS", "0")], &["environment variable SQUALL__APP_DEFAULTS__RETRY__MAX_ATTEMPTS", "app_defaults.retry.max_attempts", "out of range"]),
            ("".into(), vec![("SQUALL__SQS__NOPE", "1")], &["environment variable SQUALL__SQS__NOPE", "sqs.nope", "unknown field"]),
            ("".into(), vec![("SQUALL__SQS____X", "1")], &["SQUALL__SQS____X", "empty key segment"]),
            ("".into(), vec![("SQUALL__SQS__WAIT_TIME_SECS__X", "1")], &["sqs.wait_time_secs is a value"]),
        ];
        for (text, vars, needles) in cases {
            let msg = err(&text, &vars);
            for n in needles {
                assert!(
                    msg.contains(n),
                    "{text:?} {vars:?}\n  error: {msg}\n  lacks: {n:?}"
                );
            }
        }
    }

    #[test]
    fn a_plugin_sha256_pin_is_64_hex_digits_and_a_bad_one_names_its_key() {
        let with = |extra: &str| {
            load(
                &format!("{ONE_APP}\n[apps.billing.plugins.signer]\npath = \"p.wasm\"\n{extra}"),
                &[],
            )
        };
        let digest = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let pinned = with(&format!("sha256 = \"{digest}\"")).unwrap();
        let pin = pinned.apps[0].plugins.signer.as_ref().unwrap().sha256;
        let pin = pin.expect("pinned");
        assert_eq!((pin[0], pin[1], pin[31]), (0xe3, 0xb0, 0x55));
        let unpinned = with("").unwrap();
        assert_eq!(
            unpinned.apps[0].plugins.signer.as_ref().unwrap().sha256,
            None
        );
        let longer = format!("{digest}0");
        let not_hex = digest.replace('E', "g");
        for bad in [&digest[..63], &longer, &not_hex, "sha256:e3b0"] {
            let msg = with(&format!("sha256 = \"{bad}\""))
                .expect_err(bad)
                .to_string();
            assert!(
                msg.contains("apps.billing.plugins.signer.sha256") && msg.contains("64 hex digits"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn env_values_parse_as_toml_scalars_else_strings() {
        assert_eq!(parse_env_value("20"), Value::Integer(20));
        assert_eq!(parse_env_value("true"), Value::Boolean(true));
        assert_eq!(parse_env_value("2.5"), Value::Float(2.5));
        assert_eq!(parse_env_value("\"20\""), Value::String("20".into()));
        assert_eq!(
            parse_env_value("http://h:1/q"),
            Value::String("http://h:1/q".into())
        );
        assert_eq!(parse_env_value("env:X"), Value::String("env:X".into()));
        // A value cannot smuggle in extra keys.
        assert_eq!(
            parse_env_value("1\nbogus = 2"),
            Value::String("1\nbogus = 2".into())
        );
    }

    #[test]
    fn secrets_resolve_from_env_and_never_show_values() {
        let c = load(ONE_APP, &[]).unwrap();
        let lookup = |n: &str| match n {
            "BILLING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            "BILLING_SECRET_OLD" => Some("old-plain-secret".to_string()),
            _ => None,
        };
        let all = c.resolve_secrets_with(&lookup).unwrap();
        assert_eq!(all["billing"].get("default").unwrap().len(), 2);

        let missing = c.resolve_secrets_with(&|_| None).unwrap_err().to_string();
        assert!(
            missing.contains(
                "apps.billing.secrets.default[0]: environment variable BILLING_SECRET is not set"
            ),
            "{missing}"
        );
        assert!(
            missing.contains("default[1]") && missing.contains("BILLING_SECRET_OLD"),
            "{missing}"
        );

        let bad = c
            .resolve_secrets_with(&|n| {
                (n == "BILLING_SECRET")
                    .then(|| "whsec_%%secretvalue".to_string())
                    .or(Some("x".into()))
            })
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("env:BILLING_SECRET") && bad.contains("base64"),
            "{bad}"
        );
        assert!(!bad.contains("secretvalue"), "{bad}");

        let lit = load(
            "allow_literal_secrets = true\n[apps.demo]\nsecrets = { default = \"literal:hunter2-demo\" }",
            &[],
        )
        .unwrap();
        assert!(!format!("{lit:?}").contains("hunter2"));
        let s = lit.resolve_secrets_with(&|_| None).unwrap();
        assert!(s["demo"].get("default").is_some());
    }

    #[test]
    fn require_queues_names_what_is_missing() {
        let none = load("", &[])
            .unwrap()
            .require_queues()
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("apps") && none.contains("no application"),
            "{none}"
        );
        let c = load("[apps.a]\nsecrets = { default = \"env:X\" }", &[]).unwrap();
        let e = c.require_queues().unwrap_err().to_string();
        assert!(
            e.contains("apps.a.queue_url") && e.contains("sqs.dead_letter_queue_url"),
            "{e}"
        );
    }

    #[test]
    fn require_queues_refuses_a_queue_with_two_jobs() {
        let text = |a: &str, b: &str, dlq: &str, metrics: &str| {
            format!(
                "[sqs]\ndead_letter_queue_url = \"{dlq}\"\nmetrics_queue_url = \"{metrics}\"\n\
                 [apps.a]\nqueue_url = \"{a}\"\nsecrets = {{ default = \"env:X\" }}\n\
                 [apps.b]\nqueue_url = \"{b}\"\nsecrets = {{ default = \"env:X\" }}\n"
            )
        };
        let q = |name: &str| format!("http://127.0.0.1:4566/000000000000/{name}");
        let check = |t: String| load(&t, &[]).unwrap().require_queues();
        check(text(&q("a"), &q("b"), &q("dlq"), &q("metrics"))).unwrap();
        for (t, key, first) in [
            (
                text(&q("a"), &q("a"), &q("dlq"), &q("metrics")),
                "apps.b.queue_url",
                "apps.a.queue_url",
            ),
            (
                text(&q("dlq"), &q("b"), &q("dlq"), &q("metrics")),
                "apps.a.queue_url",
                "sqs.dead_letter_queue_url",
            ),
            // A trailing slash does not make it another queue.
            (
                text(&q("a"), &(q("metrics") + "/"), &q("dlq"), &q("metrics")),
                "apps.b.queue_url",
                "sqs.metrics_queue_url",
            ),
            (
                text(&q("a"), &q("b"), &q("dlq"), &q("dlq")),
                "sqs.metrics_queue_url",
                "sqs.dead_letter_queue_url",
            ),
        ] {
            let e = check(t).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{key}: ")) && e.contains(&format!("is also {first}")),
                "{e}"
            );
        }
    }

    /// docs/config.md cannot rot: every key of the defaults file appears in it.
    #[test]
    fn every_default_key_is_documented() {
        let doc = include_str!("../../../docs/config.md");
        fn walk(prefix: &str, t: &Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Table(inner) => walk(&path, inner, out),
                    _ => out.push(path),
                }
            }
        }
        let mut keys = Vec::new();
        walk("", &DEFAULTS_TOML.parse::<Table>().unwrap(), &mut keys);
        assert!(keys.len() > 30, "{keys:?}");
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !doc.contains(&format!("`{k}`")))
            .collect();
        assert!(missing.is_empty(), "docs/config.md lacks {missing:?}");
        for extra in [
            "queue_url",
            "secrets",
            "plugins.transform",
            "path",
            "config",
        ] {
            assert!(doc.contains(extra), "docs/config.md lacks {extra}");
        }
    }
}
