//! The AWS Lambda function (custom runtime `provided.al2023`): SQS batches in, partial batch
//! failures out. See `squall::lambda` for what happens to each message.
//!
//! Init (once per cold start): the config file (`SQUALL_CONFIG`, default
//! `/var/task/squall.toml`, overlaid by `SQUALL__...` variables the template sets), the plugin
//! runtime with the bundled plugins (precompiled `.cwasm` when they match this engine), the
//! HTTP clients and the SQS client. An init failure is reported to the Runtime API's
//! `/runtime/init/error` with the message naming what was wrong (lambda_runtime only reports
//! errors of its own SnapStart hooks there), then the process exits non-zero.
//!
//! Outside Lambda (tests, the cold-start benchmark) it runs against any Runtime API, such as
//! `cargo lambda watch --only-lambda-apis`, given `AWS_LAMBDA_RUNTIME_API`,
//! `AWS_LAMBDA_FUNCTION_NAME`, `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `AWS_LAMBDA_FUNCTION_VERSION`,
//! `AWS_LAMBDA_LOG_STREAM_NAME` and `AWS_LAMBDA_LOG_GROUP_NAME`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc: the engine allocates per event (envelope, request, metrics record) from many
/// threads; glibc malloc was about a fifth of its CPU profile (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{LambdaEvent, service_fn};

/// Where the deployment zip puts the config file.
const DEFAULT_CONFIG: &str = "/var/task/squall.toml";

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SQUALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time() // CloudWatch stamps every line
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let config_path = std::env::var_os("SQUALL_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let function = match squall::lambda::init::from_config_file(&config_path).await {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(error = %message, "init failed");
                report_init_error(e.kind(), &message).await;
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            init_ms = started.elapsed().as_secs_f64() * 1e3,
            config = %config_path.display(),
            "function ready"
        );
        let handler = service_fn(move |event: LambdaEvent<SqsEvent>| {
            let function = function.clone();
            async move {
                let response: Result<SqsBatchResponse, lambda_runtime::Error> = function
                    .handle(event.payload)
                    .await
                    .map_err(lambda_runtime::Error::from);
                response
            }
        });
        match lambda_runtime::run(handler).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "runtime loop ended");
                ExitCode::FAILURE
            }
        }
    })
}

/// POST the init failure to `/runtime/init/error`, so Lambda shows it as the reason of the
/// failed init (the alternative, exiting silently, gives only "Runtime exited").
async fn report_init_error(kind: &str, message: &str) {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        eprintln!("init failed (no AWS_LAMBDA_RUNTIME_API to report it to): {message}");
        return;
    };
    // Lambda gives `host:port`; cargo-lambda's emulator gives `http://host:port/.rt`.
    let base = if api.starts_with("http://") || api.starts_with("https://") {
        api.trim_end_matches('/').to_string()
    } else {
        format!("http://{api}")
    };
    let body = serde_json::json!({
        "errorType": format!("Squall.{kind}"),
        "errorMessage": message,
        "stackTrace": [],
    });
    let client = reqwest::Client::new();
    let sent = client
        .post(format!("{base}/2018-06-01/runtime/init/error"))
        .header(
            "Lambda-Runtime-Function-Error-Type",
            format!("Squall.{kind}"),
        )
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => eprintln!(
            "the Runtime API answered {} to the init error report",
            r.status()
        ),
        Err(e) => eprintln!("could not report the init error to the Runtime API: {e}"),
    }
}
