//! The application registry at run time: where an application's settings and secrets are read
//! from, and the cache the Lambda function and `squall run` find applications through.
//!
//! - [`Store`]: the records (`squall_core::registry::AppRecord`), in a DynamoDB table
//!   ([`dynamo`]); the configuration file's applications need no store (they are built at
//!   start-up as before).
//! - [`SecretStore`]: `ssm:` references read from SSM Parameter Store ([`ssm`]), `env:` ones from
//!   the environment.
//! - [`Directory`]: application by queue, read on first use and kept for `registry.ttl_secs`,
//!   the least recently used dropped beyond `registry.max_cached_apps` ([`directory`]).

pub mod directory;
pub mod dynamo;
pub mod ssm;

use std::sync::atomic::{AtomicU64, Ordering};

pub use directory::{Directory, Found, SharedFound};
pub use dynamo::{DynamoStore, PutOutcome};
pub use squall_core::registry::{AppRecord, QueueKey, Tier, app_tables};
pub use ssm::SecretStore;

use crate::config::{Config, ConfigError};
use crate::queue::sqs::{SqsSettings, sdk_config};

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A call to the store failed (network, throttling, permissions): the caller leaves the
    /// events queued and asks again.
    #[error("registry {operation} on {target}: {message}")]
    Store {
        /// The API call (`Query`, `GetParameters`...).
        operation: &'static str,
        /// Table or parameter path.
        target: String,
        /// The SDK's message.
        message: String,
    },
    /// An item in the store is not a valid application (its events stay queued; the message
    /// names the item and the key).
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// An item in the store lacks an attribute or has one of the wrong type.
    #[error("registry item {id}: {message}")]
    Malformed {
        /// The item's `app_id` (or `?`).
        id: String,
        /// What is wrong.
        message: String,
    },
    /// Two records name the same queue.
    #[error("registry: applications {first} and {second} both name queue {queue}")]
    SharedQueue {
        /// One application.
        first: String,
        /// The other.
        second: String,
        /// The queue.
        queue: String,
    },
    /// A write lost a race with another writer (the version moved): read again and retry.
    #[error("registry item {id}: changed by someone else (expected version {expected})")]
    Conflict {
        /// The application.
        id: String,
        /// The version the write expected.
        expected: u64,
    },
    /// An endpoint write found the endpoint changed (or created, or deleted) by someone else, or
    /// the application gone: read again and retry.
    #[error(
        "endpoint {endpoint} of application {app}: changed by someone else since it was read (or the application is gone); read it again"
    )]
    EndpointConflict {
        /// The application.
        app: String,
        /// The endpoint.
        endpoint: String,
    },
    /// The application could not be built from its settings (plugin, HTTP client).
    #[error("{0}")]
    Build(#[from] crate::apps::BuildError),
}

/// Reads made against the registry's stores since start: what the registry costs per event
/// (the benches count them).
#[derive(Debug, Default)]
pub struct ReadCounts {
    registry: AtomicU64,
    secrets: AtomicU64,
}

impl ReadCounts {
    /// Registry item reads (GetItem, Query; a Scan page counts one).
    pub fn registry_reads(&self) -> u64 {
        self.registry.load(Ordering::Relaxed)
    }

    /// Secret store reads (GetParameters calls).
    pub fn secret_reads(&self) -> u64 {
        self.secrets.load(Ordering::Relaxed)
    }

    pub(crate) fn registry_read(&self) {
        self.registry.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn secret_read(&self) {
        self.secrets.fetch_add(1, Ordering::Relaxed);
    }
}

/// The SDK settings of the registry's clients: `[sqs] region`, `registry.endpoint_url` (already
/// defaulted to `sqs.endpoint_url`).
pub fn aws_settings(config: &Config) -> SqsSettings {
    SqsSettings {
        region: config.sqs.region.clone().unwrap_or_default(),
        endpoint_url: config.registry.endpoint_url.clone(),
        static_credentials: None,
    }
}

/// The registry's table and secret store for `config` (`registry.backend = "dynamodb"`),
/// sharing one SDK configuration.
pub async fn connect(
    config: &Config,
    settings: &SqsSettings,
) -> Result<(DynamoStore, SecretStore), ConfigError> {
    clients(config, &sdk_config(settings).await)
}

/// The table and secret store over an SDK configuration already loaded.
fn clients(
    config: &Config,
    sdk: &aws_config::SdkConfig,
) -> Result<(DynamoStore, SecretStore), ConfigError> {
    let Some(table) = config.registry.table.clone() else {
        return Err(ConfigError::Invalid {
            origin: "config".into(),
            key: "registry.table".into(),
            message: "is empty: the DynamoDB registry needs its table's name".into(),
        });
    };
    Ok((
        DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), table),
        SecretStore::new(aws_sdk_ssm::Client::new(sdk)),
    ))
}

/// The start-up sequence on a registry, for `squall run` and the Lambda init: check the
/// configuration (a dead-letter queue; no `[apps.*]` in the file), make the process-wide parts
/// (`plugins` says how the plugin runtime is made, when an application first needs it), connect
/// to the table and the secret store. Nothing per application: each is read and built on first
/// use through the returned directory. The SQS client comes back too: it shares the one SDK
/// configuration (loaded once) when the registry and SQS have the same endpoint, as in AWS.
pub async fn start(
    config: &Config,
    plugins: crate::apps::PluginSetup,
    clock: std::sync::Arc<dyn crate::pipeline::Clock>,
) -> Result<(Directory, crate::queue::sqs::SqsQueues), crate::apps::StartupError> {
    config.require_queues()?;
    let builder = crate::apps::AppBuilder::new(config, plugins)
        .map_err(crate::apps::StartupError::Runtime)?;
    let sqs_settings = SqsSettings::from_config(config);
    let registry_settings = aws_settings(config);
    let sqs_sdk = sdk_config(&sqs_settings).await;
    let (store, secrets) = if registry_settings == sqs_settings {
        clients(config, &sqs_sdk)?
    } else {
        clients(config, &sdk_config(&registry_settings).await)?
    };
    let sqs = crate::queue::sqs::SqsQueues::with_sdk_config(&sqs_sdk);
    tracing::info!(
        table = store.table(),
        ttl_secs = config.registry.ttl.as_secs(),
        "applications from the registry"
    );
    Ok((
        Directory::new(config.clone(), store, secrets, builder, clock),
        sqs,
    ))
}

/// `config` with the registry's applications in `apps`, as if the file held them (the
/// operations verbs, `squall ops status` and the like, then work unchanged on registry
/// applications). A file-backend config is returned as it is. An invalid item is skipped with
/// a warning naming it and its key.
pub async fn with_registered_apps(mut config: Config) -> Result<Config, RegistryError> {
    if config.registry.backend != crate::config::RegistryBackend::Dynamodb {
        return Ok(config);
    }
    let (store, _) = connect(&config, &aws_settings(&config)).await?;
    let mut apps = Vec::new();
    for record in store.list(&ReadCounts::default()).await? {
        match record.app_config(&config) {
            Ok(app) => apps.push(app),
            Err(e) => tracing::warn!(app_id = %record.id, error = %e, "registry item skipped"),
        }
    }
    config.apps = apps;
    Ok(config)
}
