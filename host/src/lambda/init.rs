//! Init, once per cold start: the config file, each application's hooks, the HTTP
//! deliverers, the SQS client. Every failure is an [`InitError`] naming the file, key,
//! application or plugin, which the bootstrap reports to the Runtime API as the init error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Function, FunctionError};
use crate::config::{self, AppConfig, Config};
use crate::http::Deliverers;
use crate::pipeline::SystemClock;
use crate::plugin::{PluginError, PluginRuntime, RuntimeOptions};
use crate::queue::sqs::{SqsQueues, SqsSettings};
use crate::runner::{BuildError, app_hooks, build_app, uses_plugins};

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

/// Build the function from the config file at `path` (overlaid by `SQUALL__...` variables).
pub async fn from_config_file(path: &Path) -> Result<Function<SqsQueues>, InitError> {
    let config = config::load(Some(path))?;
    from_config(&config).await
}

/// Build the function from a loaded config.
pub async fn from_config(config: &Config) -> Result<Function<SqsQueues>, InitError> {
    config.require_queues()?;
    let secrets = config::resolve_secrets(config)?;
    let deliverers = Deliverers::new();
    // No disk cache: /var/task is read-only and every cold start is a fresh sandbox. Bundled
    // `.cwasm` artifacts are what makes plugin loading cheap (see `hooks`).
    let runtime = if uses_plugins(config) {
        Some(
            PluginRuntime::new(RuntimeOptions {
                cache_dir: None,
                // /var/task is read-only: the bundled artifacts cannot change under a mapping.
                map_artifacts: true,
                ..RuntimeOptions::default()
            })
            .map_err(InitError::Runtime)?,
        )
    } else {
        None
    };
    let app_configs = prefer_artifacts(&config.apps, runtime.as_ref());
    let mut apps = Vec::with_capacity(config.apps.len());
    for app in &app_configs {
        let s = secrets
            .get(&app.id)
            .cloned()
            .ok_or_else(|| BuildError::MissingSecrets(app.id.clone()))?;
        let hooks = app_hooks(app, s, runtime.as_ref())?;
        apps.push(build_app(config, app, hooks, &deliverers)?);
    }
    let sqs = SqsQueues::connect(&SqsSettings {
        region: config.sqs.region.clone().unwrap_or_default(),
        endpoint_url: config.sqs.endpoint_url.clone(),
        static_credentials: None,
    })
    .await;
    let function = Function::new(
        Arc::new(sqs),
        apps,
        config.sqs.dead_letter_queue_url.clone().unwrap_or_default(),
        config.sqs.metrics_queue_url.clone(),
        Arc::new(SystemClock),
    )?;
    // CloudWatch Embedded Metric Format on stdout, unless SQUALL_EMF_NAMESPACE=off.
    Ok(match std::env::var("SQUALL_EMF_NAMESPACE").as_deref() {
        Ok("off") => function,
        Ok(ns) if !ns.is_empty() => function.with_emf(ns, Arc::new(|l: &str| println!("{l}"))),
        _ => function.with_emf("Squall", Arc::new(|l: &str| println!("{l}"))),
    })
}

/// `x.wasm` -> `x.cwasm`: where `squall deploy bundle --precompile` puts the artifact.
pub fn artifact_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("cwasm")
}

/// The apps' configs with each plugin path replaced by its bundled `.cwasm` when that
/// artifact exists and this engine accepts it; otherwise the `.wasm` stays (compiled at
/// init) and a warning says why the artifact was not used. The artifacts are loaded side
/// by side (`inspect_all`), so the hooks built next find them loaded.
fn prefer_artifacts(apps: &[AppConfig], runtime: Option<&PluginRuntime>) -> Vec<AppConfig> {
    let mut apps = apps.to_vec();
    let Some(runtime) = runtime else { return apps };
    // (app index, hook position in `by_hook`, artifact path, pinned digest)
    let mut candidates = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        for (j, (_, cfg)) in app.plugins.by_hook().into_iter().enumerate() {
            let Some(cfg) = cfg else { continue };
            let artifact = artifact_path(&cfg.path);
            if artifact != cfg.path && artifact.exists() {
                candidates.push((i, j, artifact, cfg.sha256));
            }
        }
    }
    // A pinned artifact must carry the pinned source digest; one that does not is not used
    // (the warning names both digests) and the `.wasm` is then held to the pin in its place.
    let paths: Vec<(&Path, Option<[u8; 32]>)> = candidates
        .iter()
        .map(|(_, _, a, pin)| (a.as_path(), *pin))
        .collect();
    let loaded = runtime.inspect_all(&paths);
    for ((i, j, artifact, _), result) in candidates.into_iter().zip(loaded) {
        let app = &mut apps[i];
        let (hook, cfg) = app
            .plugins
            .by_hook_mut()
            .into_iter()
            .nth(j)
            .expect("3 hooks");
        let cfg = cfg.expect("a candidate has a plugin");
        match result {
            Ok(_) => cfg.path = artifact,
            Err(e) => {
                tracing::warn!(app = %app.id, hook, artifact = %artifact.display(), error = %e,
                "bundled precompiled plugin not usable by this engine; compiling the .wasm at init")
            }
        }
    }
    apps
}
