//! The real `bootstrap` binary under cargo-lambda's Lambda Runtime API emulator
//! (`cargo lambda watch --only-lambda-apis`, from `.tools/cargo-lambda`), fed with SQS events
//! built from messages received from the moto server, as the event source mapping would.
//! Checks the partial batch response and where each message ended on the queues.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::sqs_or_skip;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `.tools/cargo-lambda/bin/cargo-lambda`, or `None` (the test is skipped with a notice)
/// unless `SQUALL_REQUIRE_LAMBDA=1`.
pub(crate) fn cargo_lambda() -> Option<PathBuf> {
    let p = repo_root().join(".tools/cargo-lambda/bin/cargo-lambda");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("SQUALL_REQUIRE_LAMBDA").is_err(),
        "SQUALL_REQUIRE_LAMBDA is set but {} is missing: run scripts/test",
        p.display()
    );
    eprintln!("SKIPPED: no cargo-lambda in .tools (scripts/test installs it)");
    None
}

/// The bootstrap binary: `SQUALL_BOOTSTRAP_BIN` if set (scripts that built it already),
/// else built now (if needed) in this profile.
pub(crate) fn bootstrap_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SQUALL_BOOTSTRAP_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "squall", "--bin", "bootstrap"])
        .current_dir(repo_root())
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building bootstrap failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("bootstrap");
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    bin
}

/// A child process killed (by its own pid) when the test ends, pass or fail.
pub(crate) struct Proc(pub(crate) Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Runtime API emulator on a free loopback port.
pub(crate) fn start_emulator(cargo_lambda: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(cargo_lambda)
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "-A",
            "127.0.0.1",
            "-P",
        ])
        .arg(port.to_string())
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cargo lambda watch");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Runtime API emulator did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, port)
}

/// The function, pointed at the emulator, with a config file and the test server's
/// credentials in its environment, as Lambda would start it.
pub(crate) fn start_function(bin: &Path, port: u16, config: &Path, stderr: &Path) -> Proc {
    start_function_with(Command::new(bin), port, config, stderr)
}

/// [`start_function`] with the command that runs the bootstrap (an emulator, for another
/// architecture's), its own environment added.
pub(crate) fn start_function_with(
    mut command: Command,
    port: u16,
    config: &Path,
    stderr: &Path,
) -> Proc {
    let child = command
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/squall")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("SQUALL_CONFIG", config)
        .env("SQUALL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("start bootstrap");
    Proc(child)
}

pub(crate) async fn invoke(port: u16, event: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/_/invocations"
        ))
        .header("content-type", "application/json")
        .body(event.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("invoke");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn envelope(id: &str, endpoint: &str) -> String {
    TestEnvelope::new(id, "billing", endpoint)
        .created_at_ms(1_795_860_000_000) // 2026-11-28T10:00:00Z
        .payload(json!({"invoice": id}))
        .to_json()
}

/// What the event source mapping builds from received messages.
pub(crate) async fn sqs_event(
    q: &TestQueues,
    queue_url: &str,
    count: usize,
) -> (Value, Vec<aws_sdk_sqs::types::Message>) {
    let mut got = Vec::new();
    while got.len() < count {
        got.extend(receive(q, queue_url, 0).await);
    }
    (event_of(q, queue_url, &got).await, got)
}

/// One receive of up to 10 messages (long poll of `wait_secs`), as the event the mapping
/// would build; `None` when nothing came. Never cancelled half-way by its caller, so no
/// message is left invisible by a receive whose answer was dropped.
pub(crate) async fn sqs_event_once(
    q: &TestQueues,
    queue_url: &str,
    wait_secs: i32,
) -> Option<(Value, Vec<aws_sdk_sqs::types::Message>)> {
    let got = receive(q, queue_url, wait_secs).await;
    if got.is_empty() {
        return None;
    }
    Some((event_of(q, queue_url, &got).await, got))
}

/// One step of an event source mapping: a long-polled receive from `queue_url`; if anything
/// came, the batch is handed to the function on the emulator's `port`, and what it did not
/// report as failed is deleted (the mapping's part in Lambda). Returns the function's response.
pub(crate) async fn mapping_step(q: &TestQueues, queue_url: &str, port: u16) -> Option<Value> {
    let (event, msgs) = sqs_event_once(q, queue_url, 1).await?;
    let (status, response) = invoke(port, &event).await;
    assert_eq!(status, 200, "{response}");
    let failed: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    for m in msgs {
        if !failed.contains(&m.message_id.as_deref().unwrap()) {
            q.client
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    Some(response)
}

async fn receive(
    q: &TestQueues,
    queue_url: &str,
    wait_secs: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    q.client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(30)
        .wait_time_seconds(wait_secs)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

async fn event_of(q: &TestQueues, queue_url: &str, got: &[aws_sdk_sqs::types::Message]) -> Value {
    let arn = q
        .client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let records: Vec<Value> = got
        .iter()
        .map(|m| {
            let attrs: serde_json::Map<String, Value> = m
                .attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), Value::String(v)))
                .collect();
            let mattrs: serde_json::Map<String, Value> = m
                .message_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        json!({"stringValue": v.string_value, "dataType": v.data_type}),
                    )
                })
                .collect();
            json!({
                "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body,
                "attributes": attrs, "messageAttributes": mattrs, "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn write_config(dir: &Path, endpoint: &str, q: &TestQueues) -> PathBuf {
    let path = dir.join("squall.toml");
    std::fs::write(
        &path,
        format!(
            r#"
allow_literal_secrets = true
[sqs]
region = "us-east-1"
endpoint_url = "{endpoint}"
dead_letter_queue_url = "{dlq}"
metrics_queue_url = "{metrics}"
[apps.billing]
queue_url = "{queue}"
allowed_networks = ["127.0.0.0/8"]
secrets = {{ default = ["literal:{SECRET}"] }}
[apps.billing.retry]
initial_delay_secs = 5
jitter = 0.0
"#,
            dlq = q.dlq,
            metrics = q.metrics,
            queue = q.app("billing"),
        ),
    )
    .unwrap();
    path
}

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squall-e2e-{name}-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_mixed_batch_through_the_runtime_api() {
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    rx.script("/retry", vec![Reply::Status(503)]);
    rx.script(
        "/later",
        vec![Reply::StatusWith(
            503,
            vec![("retry-after".into(), "3600".into())],
        )],
    );
    rx.script("/gone", vec![Reply::Status(410)]);
    let bodies = [
        ("ok", envelope("evt_ok", &rx.url("/ok"))),
        ("retry", envelope("evt_retry", &rx.url("/retry"))),
        ("later", envelope("evt_later", &rx.url("/later"))),
        ("gone", envelope("evt_gone", &rx.url("/gone"))),
        (
            "malformed",
            r#"{"version": 1, "id": "evt_bad", "app_id": "billing"}"#.to_string(),
        ),
    ];
    for (_, b) in &bodies {
        q.send("billing", b).await;
    }
    let (event, received) = sqs_event(&q, q.app("billing"), bodies.len()).await;
    let id_of = |name: &str| {
        let body = &bodies.iter().find(|(n, _)| *n == name).unwrap().1;
        received
            .iter()
            .find(|m| m.body.as_deref() == Some(body))
            .unwrap()
            .message_id
            .clone()
            .unwrap()
    };

    let dir = temp_dir("lambda");
    let config = write_config(&dir, &endpoint, &q);
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = dir.join("bootstrap.log");
    let _function = start_function(&bin, port, &config, &log);

    let (status, response) = invoke(port, &event).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status, 200,
        "invocation failed: {response}\nfunction log:\n{log_text}"
    );
    let failures: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(
        failures,
        vec![id_of("retry").as_str()],
        "only the visibility retry is a batch item failure; the rest the mapping deletes"
    );

    // The endpoint saw each deliverable event once, signed.
    for path in ["/ok", "/retry", "/later", "/gone"] {
        let reqs = rx.requests_for(path);
        assert_eq!(reqs.len(), 1, "{path}");
        squall_testkit::verify::verify_recorded(SECRET, &reqs[0]).unwrap();
    }

    // DLQ: the 410 and the malformed body, byte for byte, with reasons.
    let dlq = q.drain(&q.dlq).await;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let find = |name: &str| {
        let body = &bodies.iter().find(|(n, _)| *n == name).unwrap().1;
        dlq.iter()
            .find(|m| m.body.as_deref() == Some(body))
            .unwrap_or_else(|| panic!("{name} not in the DLQ"))
    };
    let gone = find("gone");
    assert_eq!(msg_attr(gone, "squall-last-status").as_deref(), Some("410"));
    assert_eq!(
        msg_attr(gone, "squall-event-id").as_deref(),
        Some("evt_gone")
    );
    assert_eq!(msg_attr(gone, "squall-app-id").as_deref(), Some("billing"));
    let bad = find("malformed");
    let reason = msg_attr(bad, "squall-reason").unwrap();
    assert!(reason.contains("malformed envelope"), "{reason}");

    // The long wait became a delayed copy on the app queue (not in flight).
    let (_, _, delayed) = q.depth(q.app("billing")).await;
    assert_eq!(delayed, 1, "the re-sent copy is delayed");

    // The retried message comes back after its 5 s backoff, not after the 30 s the receive
    // set; the others stay invisible (the mapping would have deleted them).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let back = q.drain(q.app("billing")).await;
    let back_ids: Vec<String> = back.iter().map(|m| m.message_id.clone().unwrap()).collect();
    assert_eq!(back_ids, vec![id_of("retry")]);
    let count = back[0]
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .cloned();
    assert_eq!(count.as_deref(), Some("2"));

    // Metrics: one record per attempt (4 deliveries; none for the malformed body).
    let metrics = q.drain(&q.metrics).await;
    assert_eq!(metrics.len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_init_error_is_reported_with_the_key() {
    let _endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let dir = temp_dir("lambda-init");
    let config = dir.join("squall.toml");
    std::fs::write(&config, "[apps.billing]\nqueue_url = \"http://127.0.0.1:1/123456789012/q\"\ntimeout_ms = \"soon\"\n").unwrap();
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = dir.join("bootstrap.log");
    let mut function = start_function(&bin, port, &config, &log);
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = function.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "bootstrap did not exit on a bad config"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(!status.success());
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("apps.billing.timeout_ms"), "{log_text}");
    assert!(
        !log_text.contains("could not report the init error"),
        "{log_text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
