//! Applications as data: the real `bootstrap` under the Runtime API emulator, configured with
//! the DynamoDB registry (moto) and SSM secrets, and no application in its config file.
//! 1,000 applications registered; events for 50 of them delivered and verified with each one's
//! own secret by the independent verifier; an application registered while the function is
//! warm; a changed setting and a rotated secret within the TTL; an application deleted with
//! events in flight loses none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_ssm::types::ParameterType;
use base64::Engine as _;
use serde_json::json;
use squall::config::Config;
use squall::registry::{AppRecord, DynamoStore, QueueKey, ReadCounts};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_tests::sqs::{TestQueues, msg_attr, settings};
use squall_tests::sqs_or_skip;

use crate::lambda::{
    bootstrap_binary, cargo_lambda, invoke, sqs_event, start_emulator, start_function, temp_dir,
};

/// The registry's TTL in this test, seconds.
pub(crate) const TTL_SECS: u64 = 2;

/// A fresh Standard Webhooks secret.
pub(crate) fn new_secret() -> String {
    let bytes: Vec<u8> = (0..24).map(|_| fastrand::u8(..)).collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The settings text (the body of an `[apps.ID]` table) of a registered application.
pub(crate) fn settings_text(queue_url: &str, secret_param: &str, max_attempts: u32) -> String {
    format!(
        "queue_url = \"{queue_url}\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
         secrets = {{ default = \"ssm:{secret_param}\" }}\n\
         [retry]\nmax_attempts = {max_attempts}\ninitial_delay_secs = 1\njitter = 0.0\n"
    )
}

pub(crate) struct Registry {
    pub(crate) config: Config,
    pub(crate) store: DynamoStore,
    dynamo: aws_sdk_dynamodb::Client,
    ssm: aws_sdk_ssm::Client,
    table: String,
    /// The SSM path of this test's secrets, `/.../`.
    path: String,
}

impl Registry {
    pub(crate) async fn create(endpoint: &str, prefix: &str, config: Config) -> Registry {
        let sdk = squall::queue::sqs::sdk_config(&settings(endpoint)).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
        let table = format!("{prefix}-registry");
        let store = DynamoStore::new(dynamo.clone(), table.clone());
        assert!(store.create_table().await.unwrap(), "a new table");
        assert!(!store.create_table().await.unwrap(), "created once");
        Registry {
            config,
            store,
            dynamo,
            ssm: aws_sdk_ssm::Client::new(&sdk),
            table,
            path: format!("/{prefix}/"),
        }
    }

    pub(crate) fn param(&self, app: &str) -> String {
        format!("{}{app}/signing", self.path)
    }

    pub(crate) async fn put_secret(&self, app: &str, secret: &str) {
        self.put_param(&self.param(app), secret).await;
    }

    /// An SSM SecureString parameter `name` holding `secret`.
    pub(crate) async fn put_param(&self, name: &str, secret: &str) {
        self.ssm
            .put_parameter()
            .name(name)
            .value(secret)
            .r#type(ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }

    /// Register many applications at once (BatchWriteItem, 25 items per call), each checked
    /// by the core as `squall apps` would.
    async fn register_many(&self, apps: &[(String, String)]) {
        let records: Vec<AppRecord> = apps
            .iter()
            .map(|(id, settings)| AppRecord::new(&self.config, id, settings).unwrap())
            .collect();
        self.register_records(&records).await;
    }

    /// Write records as they are (BatchWriteItem, 25 items per call).
    pub(crate) async fn register_records(&self, records: &[AppRecord]) {
        for chunk in records.chunks(25) {
            let writes: Vec<WriteRequest> = chunk
                .iter()
                .map(|r| {
                    let mut item = HashMap::from([
                        ("app_id".to_string(), AttributeValue::S(r.id.clone())),
                        ("version".to_string(), AttributeValue::N("1".into())),
                        (
                            "tier".to_string(),
                            AttributeValue::S(r.tier.as_str().into()),
                        ),
                        (
                            "settings".to_string(),
                            AttributeValue::S(r.settings.clone()),
                        ),
                    ]);
                    if let Some(q) = &r.queue {
                        item.insert("queue_key".into(), AttributeValue::S(q.to_string()));
                    }
                    WriteRequest::builder()
                        .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                        .build()
                })
                .collect();
            let out = self
                .dynamo
                .batch_write_item()
                .request_items(&self.table, writes)
                .send()
                .await
                .unwrap();
            assert!(
                out.unprocessed_items.unwrap_or_default().is_empty(),
                "moto processes every batch"
            );
        }
    }

    /// Write one application through the engine's store (created, or updated with its version
    /// incremented).
    pub(crate) async fn put(&self, id: &str, settings: &str) -> AppRecord {
        let r = AppRecord::new(&self.config, id, settings).unwrap();
        self.store
            .put(&r, 0, &ReadCounts::default())
            .await
            .unwrap()
            .1
    }
}

pub(crate) fn write_config(
    dir: &Path,
    endpoint: &str,
    q: &TestQueues,
    table: &str,
    path: &str,
) -> PathBuf {
    let file = dir.join("squall.toml");
    std::fs::write(&file, config_text(endpoint, q, table, path)).unwrap();
    file
}

pub(crate) fn config_text(endpoint: &str, q: &TestQueues, table: &str, path: &str) -> String {
    format!(
        r#"
[sqs]
region = "us-east-1"
endpoint_url = "{endpoint}"
dead_letter_queue_url = "{dlq}"
metrics_queue_url = "{metrics}"
[registry]
backend = "dynamodb"
table = "{table}"
ttl_secs = {TTL_SECS}
secret_path = "{path}"
"#,
        dlq = q.dlq,
        metrics = q.metrics,
    )
}

pub(crate) fn envelope(id: &str, app: &str, endpoint: &str) -> String {
    TestEnvelope::new(id, app, endpoint)
        .payload(json!({"event": id}))
        .to_json()
}

/// The ids of the batch item failures in a response.
pub(crate) fn failures(response: &serde_json::Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_registered_applications_served_by_one_function_without_redeploy() {
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();

    // 52 real queues: 50 served, one created while warm, one deleted with events in flight.
    let served: Vec<String> = (0..50).map(|i| format!("app{i:04}")).collect();
    let (late, doomed) = ("late-app", "doomed-app");
    let mut with_queues: Vec<&str> = served.iter().map(String::as_str).collect();
    with_queues.extend([late, doomed]);
    let q = TestQueues::create(&endpoint, &with_queues).await;
    let prefix = QueueKey::from_url(&q.dlq)
        .unwrap()
        .name
        .trim_end_matches("-dlq")
        .to_string();

    let dir = temp_dir("registry");
    let table = format!("{prefix}-registry");
    let path = format!("/{prefix}/");
    let config = Config::from_toml_str(
        &config_text(&endpoint, &q, &table, &path),
        &dir,
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    let reg = Registry::create(&endpoint, &prefix, config).await;

    // 1,000 registered: the 50 served plus 948 idle ones and the doomed one; the late one
    // comes later.
    let mut secrets: HashMap<String, String> = HashMap::new();
    let mut apps: Vec<(String, String)> = Vec::new();
    for id in served.iter().map(String::as_str).chain([doomed]) {
        let secret = new_secret();
        reg.put_secret(id, &secret).await;
        secrets.insert(id.to_string(), secret);
        apps.push((id.to_string(), settings_text(q.app(id), &reg.param(id), 5)));
    }
    for i in 0..949 {
        let id = format!("idle{i:04}");
        let url = format!("{endpoint}/123456789012/{prefix}-idle-{i:04}");
        apps.push((id.clone(), settings_text(&url, &reg.param(&id), 5)));
    }
    assert_eq!(apps.len(), 1000);
    reg.register_many(&apps).await;

    let rx = Receiver::start(Reply::Status(200)).await;
    let config_file = write_config(&dir, &endpoint, &q, &table, &path);
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = dir.join("bootstrap.log");
    let _function = start_function(&bin, port, &config_file, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // One event per served application, each delivered and signed with its own secret.
    let deliver = |app: &str, event_id: &str, path: &str| {
        let (q, rx, app) = (&q, &rx, app.to_string());
        let body = envelope(event_id, &app, &rx.url(path));
        async move {
            q.send(&app, &body).await;
            let (event, _) = sqs_event(q, q.app(&app), 1).await;
            invoke(port, &event).await
        }
    };
    for app in &served {
        let (status, response) = deliver(app, &format!("evt-{app}"), &format!("/{app}")).await;
        assert_eq!(status, 200, "{response}\n{}", log_text());
        assert!(failures(&response).is_empty(), "{app}: {response}");
    }
    for app in &served {
        let reqs = rx.requests_for(&format!("/{app}"));
        assert_eq!(reqs.len(), 1, "{app}");
        squall_testkit::verify::verify_recorded(&secrets[app], &reqs[0])
            .unwrap_or_else(|e| panic!("{app}: {e}"));
        // Another application's secret does not verify it.
        let other = if app == &served[0] {
            &served[1]
        } else {
            &served[0]
        };
        assert!(squall_testkit::verify::verify_recorded(&secrets[other], &reqs[0]).is_err());
    }

    // An application registered while the function is warm: its first event is delivered.
    let late_secret = new_secret();
    reg.put_secret(late, &late_secret).await;
    reg.put(late, &settings_text(q.app(late), &reg.param(late), 5))
        .await;
    let (_, response) = deliver(late, "evt-late", "/late").await;
    assert!(failures(&response).is_empty(), "{response}\n{}", log_text());
    squall_testkit::verify::verify_recorded(&late_secret, &rx.requests_for("/late")[0]).unwrap();

    // A changed setting takes effect within the TTL: with max_attempts = 5 a 503 is retried
    // (a batch item failure, back after 1 s); after the update to 1, the same message's next
    // 503 dead-letters it.
    let app = served[7].as_str();
    rx.script("/flaky", vec![Reply::Status(503); 4]);
    let (_, response) = deliver(app, "evt-flaky", "/flaky").await;
    assert_eq!(failures(&response).len(), 1, "retried: {response}");
    let updated = reg
        .put(app, &settings_text(q.app(app), &reg.param(app), 1))
        .await;
    assert_eq!(updated.version, 2);
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    let (event, _) = sqs_event(&q, q.app(app), 1).await;
    let (_, response) = invoke(port, &event).await;
    assert!(failures(&response).is_empty(), "dead-lettered: {response}");
    assert_eq!(rx.requests_for("/flaky").len(), 2);
    let dead = q.drain(&q.dlq).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        msg_attr(&dead[0], "squall-event-id").as_deref(),
        Some("evt-flaky")
    );
    assert_eq!(msg_attr(&dead[0], "squall-app-id").as_deref(), Some(app));
    assert!(msg_attr(&dead[0], "squall-reason").is_some());

    // A rotated secret takes effect within the TTL.
    let app = served[3].as_str();
    let rotated = new_secret();
    reg.put_secret(app, &rotated).await;
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    let (_, response) = deliver(app, "evt-rotated", "/rotated").await;
    assert!(failures(&response).is_empty(), "{response}");
    let req = &rx.requests_for("/rotated")[0];
    squall_testkit::verify::verify_recorded(&rotated, req).unwrap();
    assert!(
        squall_testkit::verify::verify_recorded(&secrets[app], req).is_err(),
        "the old secret no longer signs"
    );

    // An application deleted with events in flight loses none: delivered before the deletion
    // is seen, or left queued (a batch item failure) after it.
    for i in 0..3 {
        q.send(
            doomed,
            &envelope(&format!("evt-doomed-{i}"), doomed, &rx.url("/doomed")),
        )
        .await;
    }
    let (event, received) = sqs_event(&q, q.app(doomed), 3).await;
    let (_, response) = invoke(port, &event).await;
    assert!(failures(&response).is_empty(), "{response}");
    assert_eq!(rx.requests_for("/doomed").len(), 3);
    // The mapping deletes what the function did not report failed.
    for m in &received {
        q.client
            .delete_message()
            .queue_url(q.app(doomed))
            .receipt_handle(m.receipt_handle.clone().unwrap())
            .send()
            .await
            .unwrap();
    }
    for i in 3..6 {
        q.send(
            doomed,
            &envelope(&format!("evt-doomed-{i}"), doomed, &rx.url("/doomed")),
        )
        .await;
    }
    let (event, received) = sqs_event(&q, q.app(doomed), 3).await;
    assert!(reg.store.delete(doomed).await.unwrap());
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    let (status, response) = invoke(port, &event).await;
    assert_eq!(status, 200, "{response}");
    let mut failed = failures(&response);
    failed.sort();
    let mut ids: Vec<String> = received
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    ids.sort();
    assert_eq!(
        failed, ids,
        "every record of the deleted application is left queued"
    );
    assert_eq!(
        rx.requests_for("/doomed").len(),
        3,
        "none delivered after deletion"
    );
    let (visible, in_flight, _) = q.depth(q.app(doomed)).await;
    assert_eq!(visible + in_flight, 3, "the three are still on their queue");
    let text = log_text();
    assert_eq!(
        text.matches("no registered application reads this queue")
            .count(),
        1,
        "logged once per queue:\n{text}"
    );
    assert!(
        !text.contains(&secrets[served[0].as_str()]),
        "no secret in the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn squall_run_follows_the_registry_without_a_restart() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["alpha", "beta", "gamma"]).await;
    let prefix = QueueKey::from_url(&q.dlq)
        .unwrap()
        .name
        .trim_end_matches("-dlq")
        .to_string();
    let dir = temp_dir("registry-run");
    let (table, path) = (format!("{prefix}-registry"), format!("/{prefix}/"));
    let text = config_text(&endpoint, &q, &table, &path);
    let config = Config::from_toml_str(&text, &dir, Vec::<(String, String)>::new()).unwrap();
    let reg = Registry::create(&endpoint, &prefix, config).await;
    let mut secrets = HashMap::new();
    for app in ["alpha", "beta", "gamma"] {
        let secret = new_secret();
        reg.put_secret(app, &secret).await;
        secrets.insert(app, secret);
    }
    for app in ["alpha", "beta"] {
        reg.put(app, &settings_text(q.app(app), &reg.param(app), 5))
            .await;
    }
    let rx = Receiver::start(Reply::Status(200)).await;
    let run = squall_tests::process::SquallRun::start(
        &text.replace("[sqs]", "[sqs]\nwait_time_secs = 1"),
    );
    let delivered = |path: &'static str, n: usize| {
        let rx = &rx;
        squall_tests::process::eventually(Duration::from_secs(30), path, move || async move {
            (rx.requests_for(path).len() >= n).then_some(())
        })
    };
    for app in ["alpha", "beta"] {
        q.send(
            app,
            &envelope(&format!("evt-{app}"), app, &rx.url(&format!("/{app}"))),
        )
        .await;
    }
    delivered("/alpha", 1).await;
    delivered("/beta", 1).await;
    squall_testkit::verify::verify_recorded(&secrets["alpha"], &rx.requests_for("/alpha")[0])
        .unwrap();

    // Registered while running: polled within the TTL, no restart.
    reg.put(
        "gamma",
        &settings_text(q.app("gamma"), &reg.param("gamma"), 5),
    )
    .await;
    q.send("gamma", &envelope("evt-gamma", "gamma", &rx.url("/gamma")))
        .await;
    delivered("/gamma", 1).await;
    squall_testkit::verify::verify_recorded(&secrets["gamma"], &rx.requests_for("/gamma")[0])
        .unwrap();

    // The operations verbs see registry applications.
    let out = std::process::Command::new(squall_tests::process::squall_bin())
        .args(["status", "--config"])
        .arg(write_config(&dir, &endpoint, &q, &table, &path))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .current_dir(&dir)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && ["alpha", "beta", "gamma"]
                .iter()
                .all(|a| status.contains(a)),
        "{status}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleted: its poller stops within the TTL; events sent after stay queued.
    assert!(reg.store.delete("beta").await.unwrap());
    squall_tests::process::eventually(Duration::from_secs(30), "beta's poller stopping", || {
        let log = run.log();
        async move {
            log.contains("application no longer registered")
                .then_some(())
        }
    })
    .await;
    q.send("beta", &envelope("evt-beta-late", "beta", &rx.url("/beta")))
        .await;
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 2)).await;
    assert_eq!(
        rx.requests_for("/beta").len(),
        1,
        "not delivered after deletion"
    );
    let (visible, _, _) = q.depth(q.app("beta")).await;
    assert_eq!(visible, 1, "still queued");
    let (status, log) = run.stop_with_log("TERM");
    assert!(status.success(), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same `squall apps` run over a file's applications: `squall apps import` of
/// examples/squall.toml (pointed at the test server and a loopback receiver), then the same
/// events delivered by `squall run` from the registry as from the file: the same bytes, the same
/// headers, signatures that verify with the same secrets.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_config_imported_delivers_as_from_the_file() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing", "shop"]).await;
    let prefix = QueueKey::from_url(&q.dlq)
        .unwrap()
        .name
        .trim_end_matches("-dlq")
        .to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dist = root.join("plugins/dist").canonicalize().unwrap();
    let (billing_secret, billing_old, shop_secret) = (new_secret(), new_secret(), new_secret());
    let example = std::fs::read_to_string(root.join("examples/squall.toml")).unwrap();
    let mut file = format!("allow_literal_secrets = true\n{example}");
    for (from, to) in [
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/squall-".to_string(),
            format!("{endpoint}/123456789012/{prefix}-"),
        ),
        (
            "region = \"eu-west-1\"".into(),
            format!("region = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\nwait_time_secs = 1"),
        ),
        (
            "[\"env:BILLING_WEBHOOK_SECRET\", \"env:BILLING_WEBHOOK_SECRET_OLD\"]".into(),
            format!("[\"literal:{billing_secret}\", \"literal:{billing_old}\"]"),
        ),
        (
            "\"env:SHOP_STRIPE_SECRET\"".into(),
            format!("\"literal:{shop_secret}\""),
        ),
        (
            "allowed_networks = [\"10.20.0.0/16\"]".into(),
            "allowed_networks = [\"127.0.0.0/8\"]".into(),
        ),
        (
            "[apps.billing]\n".into(),
            "[apps.billing]\nallowed_networks = [\"127.0.0.0/8\"]\n".into(),
        ),
        ("../plugins/dist/".into(), format!("{}/", dist.display())),
    ] {
        assert!(
            file.contains(&from),
            "examples/squall.toml no longer has {from:?}"
        );
        file = file.replace(&from, &to);
    }
    let dir = temp_dir("registry-import");
    let file_path = dir.join("file.toml");
    std::fs::write(&file_path, &file).unwrap();
    // The deployment's config: the same head, no applications, the registry.
    let table = format!("{prefix}-registry");
    let head = &file[..file.find("\n[apps.").expect("the example has applications")];
    let deployment = format!(
        "{head}\n[registry]\nbackend = \"dynamodb\"\ntable = \"{table}\"\nttl_secs = {TTL_SECS}\n"
    );

    let rx = Receiver::start(Reply::Status(200)).await;
    let send_both = |round: usize| {
        let (q, rx) = (&q, &rx);
        async move {
            q.send(
                "billing",
                &TestEnvelope::new(
                    &format!("evt-billing-{round}"),
                    "billing",
                    &rx.url("/billing"),
                )
                .event_type("invoice.paid")
                .created_at_ms(1_795_860_000_000)
                .payload(json!({"invoice": "inv_1", "amount": 4200}))
                .to_json(),
            )
            .await;
            q.send(
                "shop",
                &TestEnvelope::new(&format!("evt-shop-{round}"), "shop", &rx.url("/shop"))
                    .event_type("order.created")
                    .created_at_ms(1_795_860_000_000)
                    .payload(json!({"order": "ord_1", "total": 990}))
                    .to_json(),
            )
            .await;
            for path in ["/billing", "/shop"] {
                squall_tests::process::eventually(Duration::from_secs(30), path, || async move {
                    (rx.requests_for(path).len() > round).then_some(())
                })
                .await;
            }
        }
    };

    // From the file.
    let run = squall_tests::process::SquallRun::start(&file);
    send_both(0).await;
    let (status, log) = run.stop_with_log("TERM");
    assert!(status.success(), "{log}");
    // The stopped process's last long poll (1 s) may still be open at the server: a message
    // sent into it would be handed to no one and come back only after its visibility timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Imported, then from the registry.
    let apps = |args: &[&str]| {
        let out = std::process::Command::new(squall_tests::process::squall_bin())
            .arg("apps")
            .args(args)
            .arg("--config")
            .arg(&file_path)
            .env("SQUALL__REGISTRY__BACKEND", "dynamodb")
            .env("SQUALL__REGISTRY__TABLE", &table)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "squall apps {args:?}: {text}");
        text
    };
    apps(&["init"]);
    let imported = apps(&["import"]);
    assert!(imported.contains("imported 2 application(s)"), "{imported}");
    let run = squall_tests::process::SquallRun::start(&deployment);
    send_both(1).await;
    let (status, log) = run.stop_with_log("TERM");
    assert!(status.success(), "{log}");
    assert!(log.contains("polling (registry)"), "{log}");

    // The same deliveries: bytes, header names, signatures.
    for path in ["/billing", "/shop"] {
        let reqs = rx.requests_for(path);
        assert_eq!(reqs.len(), 2, "{path}");
        let (a, b) = (&reqs[0], &reqs[1]);
        let body = |r: &squall_testkit::receiver::Recorded| {
            String::from_utf8(r.body.clone())
                .unwrap()
                .replace("evt-billing-1", "evt-billing-0")
                .replace("evt-shop-1", "evt-shop-0")
        };
        assert_eq!(body(a), body(b), "{path}: the same payload bytes");
        let names = |r: &squall_testkit::receiver::Recorded| {
            let mut n: Vec<String> = r.headers.iter().map(|(k, _)| k.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(a), names(b), "{path}: the same headers");
    }
    for r in rx.requests_for("/billing") {
        squall_testkit::verify::verify_recorded(&billing_secret, &r).unwrap();
        squall_testkit::verify::verify_recorded(&billing_old, &r).unwrap();
    }
    for r in rx.requests_for("/shop") {
        assert!(r.header("stripe-signature").is_some(), "{:?}", r.headers);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
