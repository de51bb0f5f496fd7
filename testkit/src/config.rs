//! Test configurations of `squall run` (TOML text), built from the same few pieces everywhere:
//! the head (literal secrets allowed, the queues), application defaults that retry within a
//! test, and one table per application signing with [`TEST_SECRET`](crate::TEST_SECRET).

use crate::TEST_SECRET;

/// What every test config starts with: literal secrets allowed (the test secret); `[sqs]` with
/// the endpoint (and region `us-east-1`) when given, the dead-letter queue and, when given, the
/// metrics queue; receives that wait one second; a shutdown grace of 20 s. Application defaults
/// and applications follow.
pub fn head(
    sqs_endpoint: Option<&str>,
    dead_letter_queue_url: &str,
    metrics: Option<&str>,
) -> String {
    let endpoint = sqs_endpoint
        .map(|e| format!("region = \"us-east-1\"\nendpoint_url = \"{e}\"\n"))
        .unwrap_or_default();
    let metrics = metrics
        .map(|m| format!("metrics_queue_url = \"{m}\"\n"))
        .unwrap_or_default();
    format!(
        r#"allow_literal_secrets = true
[sqs]
{endpoint}dead_letter_queue_url = "{dead_letter_queue_url}"
{metrics}wait_time_secs = 1
[runner]
shutdown_grace_secs = 20
"#
    )
}

/// Application defaults for tests: loopback allowed, short timeouts, and a schedule of seconds
/// (1 s each, no jitter, five attempts) so that retries happen within a test.
pub const FAST_RETRY_DEFAULTS: &str = r#"[app_defaults]
connect_timeout_ms = 1000
timeout_ms = 1500
allowed_networks = ["127.0.0.0/8"]
[app_defaults.retry]
initial_delay_secs = 1
multiplier = 1.0
jitter = 0.0
max_attempts = 5
"#;

/// One application's table: its queue and [`TEST_SECRET`] as its default key, then `extra`
/// TOML lines (keys of `[apps.APP]`, then any sub-tables).
pub fn app(app: &str, queue_url: &str, extra: &str) -> String {
    format!(
        "\n[apps.{app}]\nqueue_url = \"{queue_url}\"\nsecrets = {{ default = \"literal:{TEST_SECRET}\" }}\n{extra}\n"
    )
}
