//! The end-to-end test harness: real local parts only. An SQS-compatible server (moto,
//! started by `scripts/test`), the real `squall` binary, and, from the test kit
//! (`squall-testkit`), the receiver with scripted faults, the independent signature verifier and
//! the builders of envelopes and configs. Each test in `tests/e2e` reads as a scenario built
//! from these.

pub mod process;
pub mod sqs;

use squall_testkit::config;
pub use squall_testkit::{TEST_SECRET, now_ms};

/// A `squall run` config for the test queues: loopback allowed, short timeouts and a
/// schedule of seconds so retries happen within a test. `apps` gives each application's
/// extra TOML lines (written under `[apps.NAME]`).
pub fn config_toml(endpoint: &str, queues: &sqs::TestQueues, apps: &[(&str, &str)]) -> String {
    let mut s = config_head(endpoint, queues, true);
    s.push_str(config::FAST_RETRY_DEFAULTS);
    for (app, extra) in apps {
        s.push_str(&app_toml(queues, app, extra));
    }
    s
}

/// The test kit's config head ([`config::head`]) for the test queues: the SQS endpoint, the
/// dead-letter queue and, when `metrics`, the metrics queue.
pub fn config_head(endpoint: &str, queues: &sqs::TestQueues, metrics: bool) -> String {
    config::head(
        Some(endpoint),
        &queues.dlq,
        metrics.then_some(queues.metrics.as_str()),
    )
}

/// One application's table on its test queue ([`config::app`]).
pub fn app_toml(queues: &sqs::TestQueues, app: &str, extra: &str) -> String {
    config::app(app, queues.app(app), extra)
}

/// Absolute path of a sample plugin built by `scripts/build-plugins` into `plugins/dist`.
pub fn plugin_path(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins (scripts/test does)",
        p.display()
    );
    p.canonicalize().unwrap().display().to_string()
}
