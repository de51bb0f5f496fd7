//! `squall run`: long-poll every configured application queue and deliver.

use std::path::PathBuf;

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
    let _ = args.config;
    anyhow::bail!("squall run is not wired to the configuration yet")
}
