//! Init, once per cold start: the config file, each application's hooks, the HTTP
//! deliverers, the SQS client. Every failure is an [`InitError`] naming the file, key,
//! application or plugin, which the bootstrap reports to the Runtime API as the init error.

use std::path::Path;
use std::sync::Arc;

use super::{Function, FunctionError};
use crate::config::{self, Config};
use crate::http::Deliverers;
use crate::pipeline::SystemClock;
use crate::queue::sqs::{SqsQueues, SqsSettings};
use crate::runner::{BuildError, app_hooks, build_app};

/// Why the function could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The config file (or the environment overlay) is invalid.
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// An application could not be built (hooks, plugins, HTTP client).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The applications and queues do not make a function.
    #[error("{0}")]
    Function(#[from] FunctionError),
}

impl InitError {
    /// Short error type for the Runtime API (`Squall.<kind>`).
    pub fn kind(&self) -> &'static str {
        match self {
            InitError::Config(_) | InitError::Function(_) => "ConfigError",
            InitError::Build(BuildError::Plugin { .. }) => "PluginError",
            InitError::Build(_) => "BuildError",
        }
    }
}

/// Build the function from the config file at `path` (overlaid by `SQUALL__...` variables).
pub async fn from_config_file(path: &Path) -> Result<Function<SqsQueues>, InitError> {
    let config = Config::load(Some(path))?;
    from_config(&config).await
}

/// Build the function from a loaded config.
pub async fn from_config(config: &Config) -> Result<Function<SqsQueues>, InitError> {
    config.require_queues()?;
    let secrets = config.resolve_secrets()?;
    let deliverers = Deliverers::new();
    let mut apps = Vec::with_capacity(config.apps.len());
    for app in &config.apps {
        let s = secrets
            .get(&app.id)
            .cloned()
            .ok_or_else(|| BuildError::MissingSecrets(app.id.clone()))?;
        let hooks = app_hooks(app, s)?;
        apps.push(build_app(config, app, hooks, &deliverers)?);
    }
    let sqs = SqsQueues::connect(&SqsSettings {
        region: config.sqs.region.clone().unwrap_or_default(),
        endpoint_url: config.sqs.endpoint_url.clone(),
        static_credentials: None,
    })
    .await;
    Ok(Function::new(
        Arc::new(sqs),
        apps,
        config.sqs.dead_letter_queue_url.clone().unwrap_or_default(),
        config.sqs.metrics_queue_url.clone(),
        Arc::new(SystemClock),
    )?)
}
