//! Init, once per cold start: the config file, the applications (built by [`crate::apps`] with
//! the Lambda's plugin setup), the SQS client, the EMF lines. Every failure is an [`InitError`]
//! naming the file, key, application or plugin, which the bootstrap reports to the Runtime API as
//! the init error.

use std::path::Path;
use std::sync::Arc;

use super::{Function, FunctionError};
use crate::apps::{self, BuildError, PluginSetup, StartupError};
use crate::config::{self, Config, RegistryBackend};
use crate::pipeline::SystemClock;
use crate::plugin::PluginError;
use crate::queue::sqs::{SqsQueues, SqsSettings};
use crate::registry;

/// Why the function could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The config file (or the environment overlay) is invalid.
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// An application could not be built (hooks, plugins, HTTP client).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The plugin runtime could not start.
    #[error("plugin runtime: {0}")]
    Runtime(PluginError),
    /// The applications and queues do not make a function.
    #[error("{0}")]
    Function(#[from] FunctionError),
}

impl InitError {
    /// Short error type for the Runtime API (`Squall.<kind>`).
    pub fn kind(&self) -> &'static str {
        match self {
            InitError::Config(_) | InitError::Function(_) => "ConfigError",
            InitError::Build(BuildError::Plugin { .. }) | InitError::Runtime(_) => "PluginError",
            InitError::Build(_) => "BuildError",
        }
    }
}

impl From<StartupError> for InitError {
    fn from(e: StartupError) -> InitError {
        match e {
            StartupError::Config(e) => InitError::Config(e),
            StartupError::Runtime(e) => InitError::Runtime(e),
            StartupError::Build(e) => InitError::Build(e),
        }
    }
}

/// Build the function from the config file at `path` (overlaid by `SQUALL__...` variables).
pub async fn from_config_file(path: &Path) -> Result<Function<SqsQueues>, InitError> {
    let config = config::load(Some(path))?;
    from_config(&config).await
}

/// Build the function from a loaded config.
pub async fn from_config(config: &Config) -> Result<Function<SqsQueues>, InitError> {
    let function = match config.registry.backend {
        RegistryBackend::File => {
            let apps = apps::from_config(config, PluginSetup::lambda(config))?;
            let sqs = SqsQueues::connect(&SqsSettings::from_config(config)).await;
            Function::new(
                Arc::new(sqs),
                apps.built,
                config.sqs.dead_letter_queue_url.clone().unwrap_or_default(),
                config.sqs.metrics_queue_url.clone(),
                Arc::new(SystemClock),
            )?
        }
        // Nothing per application at init: each is read, with its secrets, and built on the
        // first event from its queue.
        RegistryBackend::Dynamodb => {
            let clock: Arc<SystemClock> = Arc::new(SystemClock);
            let (directory, sqs) =
                registry::start(config, PluginSetup::lambda(config), clock.clone()).await?;
            Function::with_registry(
                Arc::new(sqs),
                directory,
                config.sqs.dead_letter_queue_url.clone().unwrap_or_default(),
                config.sqs.metrics_queue_url.clone(),
                clock,
            )?
        }
    };
    let function = match &config.sqs.shared_queue_url {
        Some(url) => function.with_shared_queue(url)?,
        None => function,
    };
    // CloudWatch Embedded Metric Format on stdout, unless `lambda.emf_namespace` is "off".
    Ok(match &config.lambda.emf_namespace {
        Some(namespace) => function.with_emf(namespace, Arc::new(|l: &str| println!("{l}"))),
        None => function,
    })
}
