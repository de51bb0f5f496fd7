//! The shared tier on moto: 200 shared applications on the stack's one shared queue
//! (`MessageGroupId = app_id`) beside 5 dedicated ones, served by `squall run` and by the real
//! `bootstrap` under the Runtime API emulator. Every event is delivered and verified with its
//! own application's secret; a shared event whose `app_id` is unknown or a dedicated
//! application's is dead-lettered with a reason naming the queue and the id; a retried shared
//! event's re-sent copy keeps its group id; a shared application's dead letters are redriven to
//! the shared queue in their group. An application moved from dedicated to shared and back,
//! with events waiting in the old place each time, loses none.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use squall::config::Config;
use squall::registry::{AppRecord, QueueKey};
use squall_testkit::receiver::{Receiver, Reply};
use squall_tests::sqs::{TestQueues, msg_attr};

use crate::lambda::{
    bootstrap_binary, cargo_lambda, invoke, sqs_event, start_emulator, start_function, temp_dir,
};
use crate::registry::{
    Registry, TTL_SECS, config_text, envelope, failures, new_secret, settings_text,
};

const SHARED_APPS: usize = 200;
const DEDICATED: [&str; 5] = ["d0", "d1", "d2", "d3", "d4"];

/// A shared application's settings: no queue_url.
fn shared_settings(secret_param: &str, max_attempts: u32) -> String {
    format!(
        "allowed_networks = [\"127.0.0.0/8\"]\nsecrets = {{ default = \"ssm:{secret_param}\" }}\n\
         [retry]\nmax_attempts = {max_attempts}\ninitial_delay_secs = 1\njitter = 0.0\n"
    )
}

fn shared_id(i: usize) -> String {
    format!("s{i:03}")
}

/// A deployment with a shared queue: the queues, the registry with 200 shared and 5 dedicated
/// applications (each its own SSM secret; `s001` gives up after 2 attempts), the config text
/// (every retry by re-send: `visibility_backoff_max_secs = 0`).
struct Deployment {
    endpoint: String,
    q: TestQueues,
    reg: Registry,
    text: String,
    dir: PathBuf,
    shared: String,
    secrets: HashMap<String, String>,
}

impl Deployment {
    async fn create(endpoint: String, name: &str, n_shared: usize) -> Deployment {
        let mut queues: Vec<&str> = DEDICATED.to_vec();
        queues.push("shared");
        let q = TestQueues::create(&endpoint, &queues).await;
        let prefix = QueueKey::from_url(&q.dlq)
            .unwrap()
            .name
            .trim_end_matches("-dlq")
            .to_string();
        let dir = temp_dir(name);
        let (table, path) = (format!("{prefix}-registry"), format!("/{prefix}/"));
        let shared = q.app("shared").to_string();
        let text = config_text(&endpoint, &q, &table, &path).replace(
            "[sqs]",
            &format!(
                "[sqs]\nshared_queue_url = \"{shared}\"\nvisibility_backoff_max_secs = 0\nwait_time_secs = 1"
            ),
        );
        let config = Config::from_toml_str(&text, &dir, Vec::<(String, String)>::new()).unwrap();
        let reg = Registry::create(&endpoint, &prefix, config).await;
        let mut secrets = HashMap::new();
        let mut records = Vec::new();
        for i in 0..n_shared {
            let id = shared_id(i);
            let secret = new_secret();
            reg.put_secret(&id, &secret).await;
            let attempts = if i == 1 { 2 } else { 5 };
            records.push(
                AppRecord::shared(
                    &reg.config,
                    &id,
                    &shared_settings(&reg.param(&id), attempts),
                )
                .unwrap(),
            );
            secrets.insert(id, secret);
        }
        for d in DEDICATED {
            let secret = new_secret();
            reg.put_secret(d, &secret).await;
            records.push(
                AppRecord::new(&reg.config, d, &settings_text(q.app(d), &reg.param(d), 5)).unwrap(),
            );
            secrets.insert(d.to_string(), secret);
        }
        reg.register_records(&records).await;
        Deployment {
            endpoint,
            q,
            reg,
            text,
            dir,
            shared,
            secrets,
        }
    }

    /// Send `(app, body)` pairs to the shared queue, each in its application's group.
    async fn send_shared(&self, events: &[(String, String)]) {
        for chunk in events.chunks(10) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .map(|(i, (app, body))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_group_id(app)
                        .build()
                        .unwrap()
                })
                .collect();
            let out = self
                .q
                .client
                .send_message_batch()
                .queue_url(&self.shared)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            assert!(out.failed.is_empty(), "{:?}", out.failed);
        }
    }

    /// One event per application (shared ones on the shared queue, dedicated ones on theirs),
    /// each to the receiver path `/<app>`.
    async fn send_one_each(&self, rx: &Receiver) {
        let shared: Vec<(String, String)> = (0..SHARED_APPS)
            .map(shared_id)
            .map(|id| {
                let body = envelope(&format!("evt-{id}"), &id, &rx.url(&format!("/{id}")));
                (id, body)
            })
            .collect();
        self.send_shared(&shared).await;
        for d in DEDICATED {
            self.q
                .send(
                    d,
                    &envelope(&format!("evt-{d}"), d, &rx.url(&format!("/{d}"))),
                )
                .await;
        }
    }

    /// Every application got its one event, signed with its own secret.
    fn check_one_each(&self, rx: &Receiver) {
        for id in (0..SHARED_APPS)
            .map(shared_id)
            .chain(DEDICATED.map(String::from))
        {
            let reqs = rx.requests_for(&format!("/{id}"));
            assert_eq!(reqs.len(), 1, "{id}");
            assert_eq!(reqs[0].webhook_id(), format!("evt-{id}"));
            squall_testkit::verify::verify_recorded(&self.secrets[&id], &reqs[0])
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        // Routed by app_id, not by chance: another application's secret does not verify.
        let req = &rx.requests_for("/s007")[0];
        assert!(squall_testkit::verify::verify_recorded(&self.secrets["s008"], req).is_err());
    }

    /// The dead letters now in the DLQ (each read once, hidden 3 s).
    async fn dead_letters(&self, n: usize) -> Vec<aws_sdk_sqs::types::Message> {
        let mut got: HashMap<String, aws_sdk_sqs::types::Message> = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while got.len() < n && std::time::Instant::now() < deadline {
            let r = self
                .q
                .client
                .receive_message()
                .queue_url(&self.q.dlq)
                .max_number_of_messages(10)
                .visibility_timeout(3)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap();
            for m in r.messages.unwrap_or_default() {
                got.insert(m.message_id.clone().unwrap(), m);
            }
        }
        assert_eq!(got.len(), n, "{got:?}");
        got.into_values().collect()
    }

    /// Check the three dead letters of the scenario: ghost, d0 on the shared queue, s001's
    /// event after its re-sent copy failed too.
    fn check_dead_letters(&self, dead: &[aws_sdk_sqs::types::Message]) {
        let by_app = |app: &str| {
            dead.iter()
                .find(|m| msg_attr(m, "squall-app-id").as_deref() == Some(app))
                .unwrap_or_else(|| panic!("no dead letter of {app}: {dead:?}"))
        };
        let group = |m: &aws_sdk_sqs::types::Message| {
            m.attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
        };
        let ghost = by_app("ghost");
        let reason = msg_attr(ghost, "squall-reason").unwrap();
        assert_eq!(
            reason,
            format!(
                "shared queue {}: app_id \"ghost\" is not a registered application",
                self.shared
            )
        );
        assert_eq!(group(ghost).as_deref(), Some("ghost"));
        let d0 = by_app("d0");
        let reason = msg_attr(d0, "squall-reason").unwrap();
        assert!(
            reason.contains(&self.shared)
                && reason.contains("app_id \"d0\" is a dedicated application"),
            "{reason}"
        );
        let s001 = by_app("s001");
        assert_eq!(
            msg_attr(s001, "squall-event-id").as_deref(),
            Some("evt-flaky")
        );
        // Two attempts: the first on the original, the second on the re-sent copy, which kept
        // the group (the dead letter takes the group of the copy it was made from).
        assert_eq!(msg_attr(s001, "squall-attempts").as_deref(), Some("2"));
        assert_eq!(group(s001).as_deref(), Some("s001"));
        assert_eq!(
            msg_attr(s001, "squall-source-queue").as_deref(),
            Some(self.shared.as_str())
        );
        assert_eq!(msg_attr(s001, "squall-last-status").as_deref(), Some("503"));
    }

    fn squall(&self, args: &[&str]) -> std::process::Output {
        let file = self.dir.join("squall.toml");
        std::fs::write(&file, &self.text).unwrap();
        std::process::Command::new(squall_tests::process::squall_bin())
            .args(args)
            .arg("--config")
            .arg(&file)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }
}

/// The unknown, the dedicated and the failing events of the scenario, on the shared queue.
fn strangers_and_flaky(rx: &Receiver) -> Vec<(String, String)> {
    vec![
        (
            "ghost".into(),
            envelope("evt-ghost", "ghost", &rx.url("/ghost")),
        ),
        ("d0".into(), envelope("evt-d0-shared", "d0", &rx.url("/d0"))),
        (
            "s001".into(),
            envelope("evt-flaky", "s001", &rx.url("/flaky")),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_shared_and_five_dedicated_applications_under_squall_run() {
    let Some(endpoint) = squall_tests::sqs::endpoint() else {
        eprintln!("skipped: no SQS endpoint");
        return;
    };
    let dep = Deployment::create(endpoint, "shared-run", SHARED_APPS).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    rx.script("/flaky", vec![Reply::Status(503), Reply::Status(503)]);
    let run = squall_tests::process::SquallRun::start(&dep.text);
    dep.send_one_each(&rx).await;
    dep.send_shared(&strangers_and_flaky(&rx)).await;
    let total = SHARED_APPS + DEDICATED.len();
    squall_tests::process::eventually(Duration::from_secs(120), "every event delivered", || {
        let n = rx.requests().len();
        async move { (n >= total + 2).then_some(()) }
    })
    .await;
    dep.check_one_each(&rx);
    assert!(rx.requests_for("/ghost").is_empty());
    assert_eq!(rx.requests_for("/flaky").len(), 2);
    let dead = dep.dead_letters(3).await;
    dep.check_dead_letters(&dead);

    // Redrive s001's dead letter: back to the shared queue in its group, then delivered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = dep.squall(&["redrive", "--app", "s001"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    squall_tests::process::eventually(Duration::from_secs(30), "redriven event delivered", || {
        let n = rx.requests_for("/flaky").len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let third = &rx.requests_for("/flaky")[2];
    assert_eq!(third.status, Some(200));
    assert_eq!(third.webhook_id(), "evt-flaky");
    squall_testkit::verify::verify_recorded(&dep.secrets["s001"], third).unwrap();
    // The other two dead letters stay.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (visible, in_flight, _) = dep.q.depth(&dep.q.dlq).await;
    assert_eq!(visible + in_flight, 2);
    // `squall status` shows the shared queue, and the dead letters by application.
    let out = dep.squall(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("shared queue: 0 visible"), "{text}");
    assert!(text.contains("ghost") && text.contains("d0"), "{text}");
    let log = run.log();
    assert!(log.contains("polling the shared queue"), "{log}");
    for secret in dep.secrets.values() {
        assert!(!log.contains(secret.as_str()), "no secret in the log");
    }
    let _ = std::fs::remove_dir_all(&dep.dir);
    let _ = dep.endpoint;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_shared_and_five_dedicated_applications_through_the_bootstrap() {
    let Some(endpoint) = squall_tests::sqs::endpoint() else {
        eprintln!("skipped: no SQS endpoint");
        return;
    };
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let dep = Deployment::create(endpoint, "shared-lambda", SHARED_APPS).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    rx.script("/flaky", vec![Reply::Status(503), Reply::Status(503)]);
    let config_file = dep.dir.join("squall.toml");
    std::fs::write(&config_file, &dep.text).unwrap();
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = dep.dir.join("bootstrap.log");
    let _function = start_function(&bin, port, &config_file, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // What the event source mapping does: receive a batch, invoke, delete what did not fail.
    let invoke_batch = |queue: String, n: usize| {
        let q = &dep.q;
        async move {
            let (event, received) = sqs_event(q, &queue, n).await;
            let (status, response) = invoke(port, &event).await;
            assert_eq!(status, 200, "{response}");
            let failed = failures(&response);
            for m in &received {
                if !failed.contains(m.message_id.as_ref().unwrap()) {
                    q.client
                        .delete_message()
                        .queue_url(&queue)
                        .receipt_handle(m.receipt_handle.clone().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
            }
            (received, failed)
        }
    };

    dep.send_one_each(&rx).await;
    let mut left = SHARED_APPS;
    while left > 0 {
        let (received, failed) = invoke_batch(dep.shared.clone(), left.min(10)).await;
        assert!(failed.is_empty(), "{failed:?}\n{}", log_text());
        left -= received.len();
    }
    for d in DEDICATED {
        let (_, failed) = invoke_batch(dep.q.app(d).to_string(), 1).await;
        assert!(failed.is_empty(), "{d}: {failed:?}");
    }
    dep.check_one_each(&rx);

    // The strangers are dead-lettered; s001's failing event is re-sent into its group.
    dep.send_shared(&strangers_and_flaky(&rx)).await;
    let (_, failed) = invoke_batch(dep.shared.clone(), 3).await;
    assert!(failed.is_empty(), "{failed:?}");
    let (copy, failed) = invoke_batch(dep.shared.clone(), 1).await;
    assert!(failed.is_empty(), "{failed:?}");
    let group = copy[0]
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned();
    assert_eq!(
        group.as_deref(),
        Some("s001"),
        "the re-sent copy keeps its group"
    );
    assert_eq!(msg_attr(&copy[0], "squall-attempts").as_deref(), Some("1"));
    assert_eq!(rx.requests_for("/flaky").len(), 2);
    let dead = dep.dead_letters(3).await;
    dep.check_dead_letters(&dead);
    let text = log_text();
    for secret in dep.secrets.values() {
        assert!(!text.contains(secret.as_str()), "no secret in the log");
    }
    let _ = TTL_SECS;
    let _ = std::fs::remove_dir_all(&dep.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_moved_to_the_shared_tier_and_back_loses_no_event() {
    let Some(endpoint) = squall_tests::sqs::endpoint() else {
        eprintln!("skipped: no SQS endpoint");
        return;
    };
    let dep = Deployment::create(endpoint, "shared-move", 0).await;
    let secret = new_secret();
    dep.reg.put_secret("mover", &secret).await;
    let settings = shared_settings(&dep.reg.param("mover"), 5);
    let settings_file = dep.dir.join("mover.toml");
    std::fs::write(&settings_file, &settings).unwrap();
    let settings_file = settings_file.to_str().unwrap().to_string();
    // `squall apps VERB mover --settings FILE [ARGS]`, which must succeed; its stdout.
    let apps = |verb: &str, extra: &[&str]| {
        let mut args = vec!["apps", verb, "mover", "--settings", settings_file.as_str()];
        args.extend(extra);
        let out = dep.squall(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "squall {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let show = || async {
        dep.reg
            .store
            .get("mover", &squall::registry::ReadCounts::default())
            .await
            .unwrap()
            .unwrap()
    };
    let rx = Receiver::start(Reply::Status(200)).await;
    let run = squall_tests::process::SquallRun::start(&dep.text);
    let mut sent = 0;
    let mut event = |rx: &Receiver| {
        sent += 1;
        let id = format!("evt-move-{sent:02}");
        (id.clone(), envelope(&id, "mover", &rx.url("/mover")))
    };
    let delivered = |n: usize| {
        let rx = &rx;
        squall_tests::process::eventually(Duration::from_secs(60), "mover's events", move || {
            let got = rx.requests_for("/mover").len();
            async move { (got >= n).then_some(()) }
        })
    };
    // Dedicated: its own queue.
    let out = apps("create", &[]);
    assert!(out.contains("queue"), "{out}");
    let record = show().await;
    assert_eq!(record.tier, squall::registry::Tier::Dedicated);
    let old_queue = dep
        .q
        .client
        .get_queue_url()
        .queue_name(&record.queue.clone().unwrap().name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let send_to = |queue: String, body: String, delay: i32, group: Option<&'static str>| {
        let client = dep.q.client.clone();
        async move {
            client
                .send_message()
                .queue_url(queue)
                .message_body(body)
                .delay_seconds(delay)
                .set_message_group_id(group.map(str::to_string))
                .send()
                .await
                .unwrap();
        }
    };
    send_to(old_queue.clone(), event(&rx).1, 0, None).await;
    delivered(1).await;
    // Three wait in the old queue (delayed) while it moves to the shared tier.
    for _ in 0..3 {
        send_to(old_queue.clone(), event(&rx).1, 4, None).await;
    }
    let out = apps("update", &["--tier", "shared"]);
    assert!(out.contains("kept while it drains"), "{out}");
    let record = show().await;
    assert_eq!(record.tier, squall::registry::Tier::Shared);
    assert!(
        record.queue.is_some(),
        "the old queue is kept while it drains"
    );
    // New events go to the shared queue in its group.
    for _ in 0..3 {
        send_to(dep.shared.clone(), event(&rx).1, 0, Some("mover")).await;
    }
    delivered(7).await;
    // Drained: a second update removes the old queue.
    squall_tests::process::eventually(Duration::from_secs(30), "old queue drained", || {
        let q = &dep.q;
        let url = old_queue.clone();
        async move {
            let (v, f, d) = q.try_depth(&url).await?;
            (v + f + d == 0).then_some(())
        }
    })
    .await;
    let out = apps("update", &[]);
    let old_name = old_queue.rsplit('/').next().unwrap();
    assert!(
        out.contains(&format!("queue    {old_name} deleted")),
        "{out}"
    );
    assert_eq!(show().await.queue, None);

    // And back: three wait on the shared queue (delayed) while it moves to the dedicated tier.
    for _ in 0..3 {
        send_to(dep.shared.clone(), event(&rx).1, 4, Some("mover")).await;
    }
    apps("update", &["--tier", "dedicated"]);
    let record = show().await;
    assert_eq!(record.tier, squall::registry::Tier::Dedicated);
    assert!(record.left_shared_ms.is_some());
    let new_queue = dep
        .q
        .client
        .get_queue_url()
        .queue_name(&record.queue.clone().unwrap().name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    for _ in 0..3 {
        send_to(new_queue.clone(), event(&rx).1, 0, None).await;
    }
    delivered(13).await;
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    let reqs = rx.requests_for("/mover");
    let mut ids: Vec<&str> = reqs.iter().map(|r| r.webhook_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 13, "every event once: {ids:?}");
    for r in &reqs {
        squall_testkit::verify::verify_recorded(&secret, r).unwrap();
    }
    let (visible, in_flight, delayed) = dep.q.depth(&dep.q.dlq).await;
    assert_eq!(visible + in_flight + delayed, 0, "nothing dead-lettered");
    let log = run.log();
    assert!(!log.contains(&secret), "no secret in the log");
    let _ = std::fs::remove_dir_all(&dep.dir);
}
