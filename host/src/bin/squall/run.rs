//! `squall run`: long-poll every configured application queue and deliver.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use squall::apps::{self, PluginSetup, StartupError};
use squall::config::{Config, RegistryBackend};
use squall::pipeline::SystemClock;
use squall::queue::QueueError;
use squall::queue::sqs::{SqsQueues, SqsSettings};
use squall::registry;
use squall::runner::{Runner, RunnerSettings, SharedApps};

/// Arguments of `squall run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file (TOML; see docs/config.md).
    #[arg(long, short, env = "SQUALL_CONFIG")]
    config: PathBuf,
    /// Log format: one JSON object per line (CloudWatch, log shippers) or human text.
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Logs to stderr, filtered by `SQUALL_LOG` (tracing env-filter syntax), else `default`.
pub fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, "info");
    let config = squall::config::load(Some(&args.config))?;
    let settings = RunnerSettings::from_config(&config);
    let sqs_settings = SqsSettings::from_config(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = match config.registry.backend {
        RegistryBackend::File => {
            // The plugin runtime (once per process, only if some application configures a
            // plugin) stays alive for the whole run.
            let apps::Apps {
                builder: _builder,
                built: apps,
            } = apps::from_config(&config, PluginSetup::from_config(&config))
                .map_err(startup_error)?;
            rt.block_on(async move {
                let sqs = Arc::new(SqsQueues::connect(&sqs_settings).await);
                check_queues(&sqs, &config).await?;
                tracing::info!(
                    apps = apps.len(),
                    endpoint = sqs_settings.endpoint_url.as_deref().unwrap_or("aws"),
                    "squall run starting"
                );
                anyhow::Ok(
                    Runner::new(sqs, apps, settings)
                        .run(shutdown_signal())
                        .await,
                )
            })?
        }
        RegistryBackend::Dynamodb => rt.block_on(async move {
            let (directory, sqs) = registry::start(
                &config,
                PluginSetup::from_config(&config),
                Arc::new(SystemClock),
            )
            .await
            .map_err(startup_error)?;
            let sqs = Arc::new(sqs);
            check_queues(&sqs, &config).await?;
            tracing::info!(
                endpoint = sqs_settings.endpoint_url.as_deref().unwrap_or("aws"),
                "squall run starting on the registry"
            );
            let directory = Arc::new(directory);
            let mut runner = Runner::with_registry(sqs, directory.clone(), settings);
            if let Some(url) = &config.sqs.shared_queue_url {
                runner = runner.with_shared_queue(url.clone(), SharedApps::Registry(directory));
            }
            anyhow::Ok(runner.run(shutdown_signal()).await)
        })?,
    };
    if !report.drained {
        tracing::warn!("some in-flight messages were not finished; they reappear on their queue");
    }
    Ok(())
}

fn startup_error(e: StartupError) -> anyhow::Error {
    match e {
        StartupError::Runtime(e) => anyhow::Error::new(e).context("creating the plugin runtime"),
        StartupError::Config(e) => e.into(),
        StartupError::Build(e) => e.into(),
    }
}

/// Ask for every configured queue once before the first receive. A queue that does not exist
/// (a typo, another region or account) stops start-up with its key named, instead of a receive
/// or dead-letter error every few seconds for as long as the process runs. An application queue
/// whose visibility timeout is shorter than one of its messages can take here gets a warning:
/// the message would reappear while still being delivered, and be delivered twice. Any other
/// answer (no GetQueueAttributes permission, the service unreachable for a moment) is logged and
/// start-up goes on: the runner's own errors say more if it lasts.
async fn check_queues(sqs: &Arc<SqsQueues>, config: &Config) -> anyhow::Result<()> {
    let queues = config.queues();
    let mut checks = tokio::task::JoinSet::new();
    for (i, q) in queues.iter().enumerate() {
        let (sqs, url) = (sqs.clone(), q.url.to_string());
        checks.spawn(async move { (i, sqs.visibility_timeout(&url).await) });
    }
    let mut missing = Vec::new();
    while let Some(joined) = checks.join_next().await {
        let (i, answer) = joined.context("checking the queues")?;
        let q = &queues[i];
        match answer {
            Ok(visibility) => {
                // The margin covers the batch's own queue calls after its slowest message.
                let needed = q.app.map(|app| app.longest_attempt() + VISIBILITY_MARGIN);
                if let (Some(visibility), Some(needed)) = (visibility, needed)
                    && visibility < needed
                {
                    tracing::warn!(
                        key = %q.key,
                        visibility_timeout_secs = visibility.as_secs(),
                        needed_secs = needed.as_secs_f64().ceil() as u64,
                        "the queue's visibility timeout is shorter than one message can take \
                         here (endpoint_wait_secs + timeout_ms + plugin time limits + 5 s): \
                         a slow delivery's message can reappear and be delivered twice; \
                         raise the queue's VisibilityTimeout"
                    );
                }
            }
            Err(QueueError::QueueDoesNotExist { .. }) => {
                missing.push((i, format!("{}: queue {} does not exist", q.key, q.url)))
            }
            Err(e) => {
                tracing::warn!(key = %q.key, error = %e, "could not check the queue at start-up; going on")
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    let origin = config
        .path
        .as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default();
    let text: Vec<String> = missing.into_iter().map(|(_, m)| m).collect();
    anyhow::bail!("{origin}{}", text.join("; "))
}

/// What a queue's visibility timeout should leave beyond an application's longest attempt.
const VISIBILITY_MARGIN: Duration = Duration::from_secs(5);

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
