//! `squall demo`: real webhooks through the real pipeline, no AWS and no other server.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::run::{LogFormat, init_logging};

/// Arguments of `squall demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory of the sample plugin components (built by scripts/build-plugins). Default:
    /// plugins/dist under the current directory, else under the source tree.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Use the built-ins for both applications even if the sample plugins are built.
    #[arg(long)]
    no_plugins: bool,
    /// Log format (logs go to stderr; the default filter shows errors only, set SQUALL_LOG).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn default_plugins_dir() -> PathBuf {
    let here = PathBuf::from("plugins/dist");
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, "error");
    let plugins_dir = if args.no_plugins {
        None
    } else {
        Some(args.plugins_dir.unwrap_or_else(default_plugins_dir))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt
        .block_on(squall::demo::run_demo(&squall::demo::DemoOptions {
            plugins_dir,
        }))
        .context("running the demo")?;
    print!("{}", summary.render());
    if summary.signature_failures > 0 {
        anyhow::bail!(
            "{} deliveries failed signature verification",
            summary.signature_failures
        );
    }
    Ok(())
}
