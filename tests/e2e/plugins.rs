//! Plugin scenarios through `squall run`: a transform that skips, a transform that wraps,
//! and a plugin that traps, sent to the DLQ or retried per `on_plugin_error`, without
//! crashing the runner or disturbing another application.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{TEST_SECRET, config_toml, plugin_path, sqs_or_skip};

const SETTLE: Duration = Duration::from_secs(60);

fn envelope(id: &str, app: &str, kind: &str, endpoint: &str) -> String {
    TestEnvelope::new(id, app, endpoint)
        .event_type(kind)
        .payload(json!({"order": id}))
        .to_json()
}

async fn settled(q: &TestQueues, apps: &[&str], dlq: u64) {
    eventually(SETTLE, "queues to settle", || async {
        for app in apps {
            if q.depth(q.app(app)).await != (0, 0, 0) {
                return None;
            }
        }
        (q.depth(&q.dlq).await.0 == dlq).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transform_plugin_wraps_payloads_and_skips_by_type() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let shop = format!(
        "[apps.shop.plugins.transform]\npath = \"{}\"\nconfig = {{ skip_types = \"ping\" }}\n",
        plugin_path("envelope-transform")
    );
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("shop", &shop)]));

    q.send(
        "shop",
        &envelope("evt_ping", "shop", "ping", &rx.url("/shop")),
    )
    .await;
    q.send(
        "shop",
        &envelope("evt_order", "shop", "order.created", &rx.url("/shop")),
    )
    .await;
    eventually(SETTLE, "the order delivery", || async {
        (!rx.requests_for("/shop").is_empty()).then_some(())
    })
    .await;
    settled(&q, &["shop"], 0).await;
    assert!(run.terminate().success());

    let reqs = rx.requests_for("/shop");
    assert_eq!(reqs.len(), 1, "the ping was skipped, not delivered");
    assert_eq!(verify_recorded(TEST_SECRET, &reqs[0]).unwrap(), "evt_order");
    let body: Value = serde_json::from_slice(&reqs[0].body).expect("wrapped body is JSON");
    assert_eq!(body["type"], "order.created");
    assert_eq!(body["id"], "evt_order");
    assert_eq!(body["data"], json!({"order": "evt_order"}));

    let records: Vec<Value> = q
        .drain(&q.metrics)
        .await
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    let ping = records
        .iter()
        .find(|m| m["event_id"] == "evt_ping")
        .expect("a record for the skip");
    assert_eq!(ping["outcome"], "skipped");
    // The plugin is named by its file name and the start of its SHA-256, not by its path.
    let file = std::fs::read(plugin_path("envelope-transform")).expect("plugin file");
    let prefix: String = sha2::Sha256::digest(&file)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        ping["transform"],
        format!("envelope-transform.wasm#{prefix}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trapping_plugin_goes_to_dlq_or_retry_per_config_and_the_runner_survives() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["strict", "patient", "healthy"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let trap = |policy: &str, app: &str| {
        format!(
            "on_plugin_error = \"{policy}\"\n[apps.{app}.retry]\nmax_attempts = 2\n[apps.{app}.plugins.transform]\npath = \"{}\"\nconfig = {{ mode = \"trap\" }}\n",
            plugin_path("misbehave")
        )
    };
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[
            ("strict", &trap("dead-letter", "strict")),
            ("patient", &trap("retry", "patient")),
            ("healthy", ""),
        ],
    ));

    q.send(
        "strict",
        &envelope("evt_strict", "strict", "order.created", &rx.url("/strict")),
    )
    .await;
    q.send(
        "patient",
        &envelope(
            "evt_patient",
            "patient",
            "order.created",
            &rx.url("/patient"),
        ),
    )
    .await;
    q.send(
        "healthy",
        &envelope(
            "evt_healthy",
            "healthy",
            "order.created",
            &rx.url("/healthy"),
        ),
    )
    .await;
    settled(&q, &["strict", "patient", "healthy"], 2).await;
    let mut run = run;
    assert!(
        run.is_running(),
        "a trapping plugin never takes the runner down"
    );
    assert!(run.terminate().success());

    assert!(rx.requests_for("/strict").is_empty() && rx.requests_for("/patient").is_empty());
    assert_eq!(
        rx.requests_for("/healthy").len(),
        1,
        "another application is unaffected"
    );
    let dead = q.drain(&q.dlq).await;
    let find = |id: &str| {
        dead.iter()
            .find(|m| msg_attr(m, "squall-event-id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} in DLQ"))
    };
    let strict = find("evt_strict");
    assert!(
        msg_attr(strict, "squall-reason").unwrap().contains("trap"),
        "{:?}",
        msg_attr(strict, "squall-reason")
    );
    assert_eq!(
        msg_attr(strict, "squall-attempts").as_deref(),
        Some("1"),
        "dead-letter policy: no retry"
    );
    let patient = find("evt_patient");
    assert_eq!(
        msg_attr(patient, "squall-attempts").as_deref(),
        Some("2"),
        "retry policy: retried up to max_attempts"
    );
}

/// Issue 22: a Python `KeyError('amount')` and a JavaScript `new TypeError(...)` reach the
/// `squall run` log with their type and message (and Python's last frame), through the trap's
/// detail; the events are dead-lettered, naming a trap.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_exception_reaches_the_run_log_with_its_type_and_message() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["py", "js"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let py = format!(
        "on_plugin_error = \"dead-letter\"\n[apps.py.plugins.transform]\npath = \"{}\"\n",
        plugin_path("python-fixture-bugs")
    );
    let js = format!(
        "on_plugin_error = \"dead-letter\"\n[apps.js.plugins.transform]\npath = \"{}\"\nconfig = {{ mode = \"type-error\" }}\n",
        plugin_path("js-fixture-bugs")
    );
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("py", &py), ("js", &js)]));
    q.send(
        "py",
        &envelope("evt_py", "py", "order.paid", &rx.url("/py")),
    )
    .await;
    q.send(
        "js",
        &envelope("evt_js", "js", "order.paid", &rx.url("/js")),
    )
    .await;
    settled(&q, &["py", "js"], 2).await;
    let (_, log) = run.stop_with_log("TERM");
    assert!(rx.requests().is_empty());
    assert!(log.contains("KeyError: 'amount'"), "{log}");
    assert!(log.contains("in amount_of"), "the last frame: {log}");
    assert!(log.contains("TypeError: amount is missing"), "{log}");
    assert!(
        log.contains("plugin-trap") || log.contains("trapped"),
        "{log}"
    );
}

/// Issue 22, the content-type rule: a transform whose request sets no `content-type` is sent
/// with the event's (here a producer's `text/csv`, so it cannot be a default), in Rust, Python
/// and JavaScript; the body is the transform's, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_transform_that_sets_no_content_type_sends_the_events() {
    let endpoint = sqs_or_skip!();
    let apps = ["rs", "py", "js"];
    let q = TestQueues::create(&endpoint, &apps).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let table = |app: &str, plugin: &str, mode: &str| {
        format!(
            "[apps.{app}.plugins.transform]\npath = \"{}\"\nconfig = {{ mode = \"{mode}\" }}\n",
            plugin_path(plugin)
        )
    };
    let rs = table("rs", "misbehave", "no-content-type");
    let py = table("py", "python-fixture-bugs", "no-content-type");
    let js = table("js", "js-fixture-bugs", "ok");
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[("rs", &rs), ("py", &py), ("js", &js)],
    ));
    for app in apps {
        let envelope = json!({
            "version": 1,
            "id": format!("evt_{app}"),
            "app_id": app,
            "type": "report.ready",
            "endpoint": rx.url(&format!("/{app}")),
            "created_at": "2026-11-28T10:00:00Z",
            "payload_base64": "aWQsYW1vdW50CjEsMTI5MDAK",
            "content_type": "text/csv; charset=utf-8",
        });
        q.send(app, &envelope.to_string()).await;
    }
    settled(&q, &apps, 0).await;
    assert!(run.terminate().success());
    for app in apps {
        let reqs = rx.requests_for(&format!("/{app}"));
        assert_eq!(reqs.len(), 1, "{app}");
        assert_eq!(
            reqs[0].header("content-type"),
            Some("text/csv; charset=utf-8"),
            "{app}: {:?}",
            reqs[0].headers
        );
        assert_eq!(reqs[0].body, b"id,amount\n1,12900\n", "{app}");
        assert_eq!(
            verify_recorded(TEST_SECRET, &reqs[0]).unwrap(),
            format!("evt_{app}")
        );
    }
}
