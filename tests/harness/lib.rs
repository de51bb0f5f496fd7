//! The end-to-end test harness: real local parts only. An SQS-compatible server (moto,
//! started by `scripts/test`), HTTP receivers with scripted faults, the real `squall`
//! binary, and an independent signature verifier. Each test in `tests/e2e` reads as a
//! scenario built from these.

pub mod process;
pub mod receiver;
pub mod sqs;
pub mod verify;

/// The Standard Webhooks secret the scenarios sign with (test-only).
pub const TEST_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A `squall run` config for the test queues: loopback allowed, short timeouts and a
/// schedule of seconds so retries happen within a test. `apps` gives each application's
/// extra TOML lines (written under `[apps.NAME]`).
pub fn config_toml(endpoint: &str, queues: &sqs::TestQueues, apps: &[(&str, &str)]) -> String {
    let mut s = config_head(endpoint, queues, true);
    s.push_str(
        r#"[app_defaults]
connect_timeout_ms = 1000
timeout_ms = 1500
allowed_networks = ["127.0.0.0/8"]
[app_defaults.retry]
initial_delay_secs = 1
multiplier = 1.0
jitter = 0.0
max_attempts = 5
"#,
    );
    for (app, extra) in apps {
        s.push_str(&app_toml(queues, app, extra));
    }
    s
}

/// What every test config starts with: literal secrets allowed (the test secret), the SQS
/// endpoint, the dead-letter queue and, when `metrics`, the metrics queue; receives that wait
/// one second and a shutdown grace of 20 s. Application defaults and applications follow.
pub fn config_head(endpoint: &str, queues: &sqs::TestQueues, metrics: bool) -> String {
    let metrics = if metrics {
        format!("metrics_queue_url = \"{}\"\n", queues.metrics)
    } else {
        String::new()
    };
    format!(
        r#"allow_literal_secrets = true
[sqs]
region = "us-east-1"
endpoint_url = "{endpoint}"
dead_letter_queue_url = "{dlq}"
{metrics}wait_time_secs = 1
[runner]
shutdown_grace_secs = 20
"#,
        dlq = queues.dlq,
    )
}

/// One application's table: its test queue and [`TEST_SECRET`] as its default key, then
/// `extra` TOML lines.
pub fn app_toml(queues: &sqs::TestQueues, app: &str, extra: &str) -> String {
    format!(
        "\n[apps.{app}]\nqueue_url = \"{}\"\nsecrets = {{ default = \"literal:{TEST_SECRET}\" }}\n{extra}\n",
        queues.app(app)
    )
}

/// Unix time now, milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
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
