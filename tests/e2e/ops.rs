//! Operations against a real SQS-compatible server: peek, status, redrive, delete and the
//! metrics drain move (or leave) exactly the messages they should.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;

use squall::metrics::{MetricOutcome, MetricRecord, MetricsSink};
use squall::ops::metrics::{Aggregator, Percentiles, Thresholds, drain};
use squall::ops::redrive::{self, RedriveOptions};
use squall::ops::scan::{self, Filter, ScanLimits};
use squall::ops::status;
use squall::pipeline::{DeadLetterFacts, LastFailure, dead_letter_attributes};
use squall::queue::sqs::SqsQueues;
use squall::queue::{Outgoing, Queue};
use squall_tests::process::{Scratch, squall_bin};
use squall_tests::sqs::{TestQueues, msg_attr, settings};
use squall_tests::sqs_or_skip;

fn envelope(id: &str, app: &str, ty: &str) -> String {
    format!(
        r#"{{"version":1,"id":"{id}","app_id":"{app}","type":"{ty}","endpoint":"https://hooks.example.com/in","created_at":"2026-11-28T00:00:00Z","payload":{{"n": 1}}}}"#
    )
}

fn dead_letter(id: &str, app: &str, source: &str, reason: &str) -> Outgoing {
    Outgoing {
        body: envelope(id, app, "invoice.paid"),
        delay_secs: 0,
        attributes: dead_letter_attributes(&DeadLetterFacts {
            app_id: app,
            event_id: Some(id),
            endpoint_id: None,
            reason,
            last: LastFailure::Status(503),
            attempts: 25,
            first_attempt_ms: 1_000,
            source_queue: source,
            now_ms: 2_000,
        }),
        group_id: None,
    }
}

const MAX_ATTEMPTS: &str = "gave up after 25 attempts (max_attempts); last: status 503";
const GONE: &str = "status 410 is not retryable (4xx other than 408, 409, 425, 429)";

fn limits() -> ScanLimits {
    ScanLimits {
        hold: Duration::from_secs(30),
        ..ScanLimits::default()
    }
}

#[tokio::test]
async fn peek_and_status_count_exactly_and_leave_every_message() {
    let ep = sqs_or_skip!();
    let t = TestQueues::create(&ep, &["billing"]).await;
    let q = SqsQueues::connect(&settings(&ep)).await;
    for i in 0..3 {
        t.send(
            "billing",
            &envelope(&format!("evt_{i}"), "billing", "invoice.paid"),
        )
        .await;
    }
    let mut dead: Vec<Outgoing> = (0..4)
        .map(|i| dead_letter(&format!("d{i}"), "billing", t.app("billing"), MAX_ATTEMPTS))
        .collect();
    dead.push(dead_letter("d9", "billing", t.app("billing"), GONE));
    assert!(q.send_batch(&t.dlq, &dead).await.iter().all(Result::is_ok));

    let filter = Filter {
        reason: Some("not retryable".into()),
        ..Filter::default()
    };
    let views = scan::peek(&q, &t.dlq, &filter, limits(), 50).await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].event_id.as_deref(), Some("d9"));
    assert_eq!(views[0].last.as_deref(), Some("status 503"));
    assert_eq!(t.depth(&t.dlq).await, (5, 0, 0), "all visible again");

    let app = status::app_status(
        &q,
        "billing",
        t.app("billing"),
        20,
        limits(),
        squall::ops::now_ms(),
    )
    .await
    .unwrap();
    assert_eq!((app.depth.visible, app.depth.in_flight), (3, 0));
    assert_eq!(app.sampled, 3);
    assert!(app.oldest_age_secs.unwrap() < 600);
    let dl = status::dead_letter_status(&q, &t.dlq, 1000, limits())
        .await
        .unwrap();
    assert_eq!(dl.scanned, 5);
    assert_eq!(dl.by_app_reason["billing"]["max-attempts"], 4);
    assert_eq!(dl.by_app_reason["billing"]["permanent-status"], 1);
    assert_eq!(t.depth(t.app("billing")).await, (3, 0, 0));
    // Each peek was a receive: the app messages now show receive count 2.
    let msgs = t.drain(t.app("billing")).await;
    assert!(msgs.iter().all(|m| {
        m.attributes.as_ref().unwrap()
            [&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount]
            == "2"
    }));
}

#[tokio::test]
async fn redrive_returns_the_exact_body_with_the_attempt_count_reset() {
    let ep = sqs_or_skip!();
    let t = TestQueues::create(&ep, &["billing", "shop"]).await;
    let q = SqsQueues::connect(&settings(&ep)).await;
    let mut dead: Vec<Outgoing> = (0..12)
        .map(|i| dead_letter(&format!("b{i}"), "billing", t.app("billing"), MAX_ATTEMPTS))
        .collect();
    dead.push(dead_letter("s1", "shop", t.app("shop"), MAX_ATTEMPTS));
    dead.push(dead_letter("b99", "billing", t.app("billing"), GONE));
    assert!(q.send_batch(&t.dlq, &dead).await.iter().all(Result::is_ok));

    let filter = Filter {
        app: Some("billing".into()),
        reason: Some("max_attempts".into()),
        ..Filter::default()
    };
    let none = |_: &str| None;
    let opts = RedriveOptions {
        dry_run: false,
        rate_per_sec: 0,
        limits: limits(),
    };
    let r = redrive::redrive(&q, &t.dlq, &filter, &none, opts, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (r.scanned, r.matched, r.sent, r.deleted, r.in_both, r.left),
        (14, 12, 12, 12, 0, 0)
    );

    let back = t.drain(t.app("billing")).await;
    assert_eq!(back.len(), 12);
    for m in &back {
        let id = m.body().unwrap().split('"').nth(5).unwrap().to_string();
        assert_eq!(m.body().unwrap(), envelope(&id, "billing", "invoice.paid"));
        assert_eq!(msg_attr(m, "squall-attempts"), None);
        assert_eq!(msg_attr(m, "squall-reason"), None);
        assert!(m.message_attributes.as_ref().is_none_or(|a| a.is_empty()));
    }
    let left = t.drain(&t.dlq).await;
    let mut ids: Vec<String> = left
        .iter()
        .filter_map(|m| msg_attr(m, "squall-event-id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["b99", "s1"]);
    assert!(t.drain(t.app("shop")).await.is_empty());
}

#[tokio::test]
async fn delete_by_type_removes_only_those() {
    let ep = sqs_or_skip!();
    let t = TestQueues::create(&ep, &["billing"]).await;
    let q = SqsQueues::connect(&settings(&ep)).await;
    for i in 0..6 {
        let ty = if i % 3 == 0 {
            "test.ping"
        } else {
            "invoice.paid"
        };
        t.send("billing", &envelope(&format!("e{i}"), "billing", ty))
            .await;
    }
    let filter = Filter {
        app: Some("billing".into()),
        event_type: Some("test.ping".into()),
        ..Filter::default()
    };
    let held = redrive::select(&q, t.app("billing"), &filter, limits())
        .await
        .unwrap();
    assert_eq!(held.matched.len(), 2);
    assert_eq!(
        redrive::delete_held(&q, t.app("billing"), &held).await,
        (2, 0)
    );
    assert_eq!(t.depth(t.app("billing")).await, (4, 0, 0));
}

#[tokio::test]
async fn metrics_drain_aggregates_what_the_engine_sink_wrote() {
    let ep = sqs_or_skip!();
    let t = TestQueues::create(&ep, &[]).await;
    let q = Arc::new(SqsQueues::connect(&settings(&ep)).await);
    let sink = MetricsSink::new(q.clone(), Some(t.metrics.clone()));
    let records: Vec<MetricRecord> = (1..=25u64)
        .map(|i| MetricRecord {
            v: 1,
            event_id: format!("e{i}"),
            app_id: "billing".into(),
            event_type: "invoice.paid".into(),
            endpoint_host: "hooks.example.com".into(),
            endpoint_id: None,
            attempt: 1,
            status: Some(if i % 5 == 0 { 503 } else { 200 }),
            error_kind: None,
            latency_ms: i,
            outcome: if i % 5 == 0 {
                MetricOutcome::Retry
            } else {
                MetricOutcome::Delivered
            },
            retry_in_secs: None,
            transform: "t".into(),
            signer: "s".into(),
            retry_policy: "r".into(),
            started_at_ms: i * 1000,
            finished_at_ms: i * 1000 + i,
        })
        .collect();
    sink.flush(&records).await;
    assert_eq!(sink.totals().sent, 25);
    t.client
        .send_message()
        .queue_url(&t.metrics)
        .message_body("not a record")
        .send()
        .await
        .unwrap();

    let drained = drain(q.as_ref(), &t.metrics, 1000).await.unwrap();
    assert_eq!((drained.records.len(), drained.malformed), (25, 1));
    assert_eq!(
        t.depth(&t.metrics).await,
        (0, 0, 0),
        "drained means deleted"
    );
    let mut agg = Aggregator::new(Thresholds::default());
    agg.ingest(&drained.records);
    let s = agg.snapshot();
    let r = &s.endpoints[0];
    assert_eq!(
        (r.window.attempts, r.window.delivered, r.window.retries),
        (25, 20, 5)
    );
    assert_eq!(r.window.statuses["503"], 5);
    assert_eq!(
        r.latency,
        Some(Percentiles {
            p50: 13,
            p90: 23,
            p99: 25
        })
    );
}

/// An empty zip archive whose comment makes its bytes (and SHA-256) distinct.
pub(crate) fn zip(comment: &str) -> Vec<u8> {
    let mut z = b"PK\x05\x06".to_vec();
    z.extend_from_slice(&[0; 16]);
    z.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    z.extend_from_slice(comment.as_bytes());
    z
}

/// moto's CreateFunction wants a role that exists in its IAM: create it with the IAM query API
/// (moto routes by the credential scope of the Authorization header; it checks no signature).
pub(crate) async fn create_role(endpoint: &str, name: &str) -> String {
    let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let r = reqwest::Client::new()
        .post(endpoint)
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261128/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        )
        .form(&[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", name),
            ("AssumeRolePolicyDocument", doc),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    format!("arn:aws:iam::123456789012:role/{name}")
}

#[tokio::test]
async fn rollout_updates_code_publishes_and_moves_the_alias() {
    use squall::ops::rollout::{self, Selector, sdk};
    let ep = sqs_or_skip!();
    let client = rollout::connect(&settings(&ep)).await;
    let tag = format!("r{:08x}", fastrand::u32(..));
    let role = create_role(&ep, &format!("{tag}-role")).await;
    for name in [
        format!("{tag}-squall-a"),
        format!("{tag}-squall-b"),
        format!("{tag}-other"),
    ] {
        client
            .create_function()
            .function_name(&name)
            .runtime(sdk::types::Runtime::Providedal2023)
            .handler("bootstrap")
            .role(&role)
            .code(
                sdk::types::FunctionCode::builder()
                    .zip_file(sdk::primitives::Blob::new(zip("v0")))
                    .build(),
            )
            .tags("squall-rollout", &tag)
            .send()
            .await
            .unwrap();
    }
    let listed = rollout::list(&client, true).await.unwrap();
    let prefix = Selector::Prefix(format!("{tag}-squall"));
    let names = rollout::select(&listed, &prefix);
    assert_eq!(
        names,
        [format!("{tag}-squall-a"), format!("{tag}-squall-b")]
    );
    assert_eq!(
        rollout::select(
            &listed,
            &Selector::Tag("squall-rollout".into(), tag.clone())
        )
        .len(),
        3
    );

    let wait = Duration::from_secs(30);
    let mut shas = Vec::new();
    for (round, code) in ["v1", "v2"].iter().enumerate() {
        for name in &names {
            let r = rollout::roll_one(&client, name, &zip(code), "live", wait)
                .await
                .unwrap();
            let expected_prev = (round > 0).then(|| r.version.clone().unwrap().replace('2', "1"));
            assert_eq!(r.previous, expected_prev, "{name}");
            assert_eq!(
                rollout::alias_version(&client, name, "live").await.unwrap(),
                r.version,
                "{name}: alias follows the new version"
            );
            shas.push(r.code_sha256.clone().unwrap());
        }
    }
    // Round 1 published version 1 with alias created; round 2 version 2 with alias updated.
    assert_eq!(
        rollout::alias_version(&client, &names[0], "live")
            .await
            .unwrap()
            .as_deref(),
        Some("2")
    );
    assert_ne!(shas[0], shas[2], "new code, new hash");
    // The function outside the selection is untouched: no alias, no version.
    assert_eq!(
        rollout::alias_version(&client, &format!("{tag}-other"), "live")
            .await
            .unwrap(),
        None
    );
}

/// Event id -> copies, over every message in `queue` (received, then made visible again).
async fn ids_in(t: &TestQueues, queue: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut handles = Vec::new();
    for m in t.drain(queue).await {
        handles.push(m.receipt_handle().unwrap().to_string());
        let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
        *out.entry(body["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for chunk in handles.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(0)
                    .build()
                    .unwrap()
            })
            .collect();
        t.client
            .change_message_visibility_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("release");
    }
    out
}

/// `squall redrive` killed with SIGKILL midway loses nothing: the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_killed_midway_loses_nothing() {
    const EVENTS: usize = 200;
    let ep = sqs_or_skip!();
    let t = TestQueues::create(&ep, &["billing"]).await;
    let q = SqsQueues::connect(&settings(&ep)).await;
    let app_q = t.app("billing").to_string();

    // 200 dead letters as the engine writes them.
    let all: BTreeSet<String> = (0..EVENTS).map(|i| format!("evt_{i:04}")).collect();
    let dead: Vec<Outgoing> = all
        .iter()
        .map(|id| dead_letter(id, "billing", &app_q, MAX_ATTEMPTS))
        .collect();
    assert!(q.send_batch(&t.dlq, &dead).await.iter().all(Result::is_ok));

    let scratch = Scratch::new("redrive-kill");
    let config = scratch.path().join("squall.toml");
    std::fs::write(
        &config,
        format!(
            "[sqs]\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\"\ndead_letter_queue_url = \"{}\"\n\n\
             [apps.billing]\nqueue_url = \"{app_q}\"\nsecrets = {{ default = \"env:UNUSED_SECRET\" }}\n",
            t.dlq
        ),
    )
    .unwrap();
    let squall = |args: &[&str]| {
        let mut c = Command::new(squall_bin());
        c.args(args)
            .arg("--config")
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null());
        c
    };

    // 40 messages/s: the whole redrive takes ~5 s. Kill it once it reports 30 moved, that is
    // in the middle of a later batch (receive, send or delete).
    let mut child = squall(&["redrive", "--rate", "40", "--hold", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run squall");
    let stderr = child.stderr.take().unwrap();
    let progressed = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            // "progress: scanned S matched M sent N deleted D"
            let deleted: usize = line
                .rsplit_once("deleted ")
                .and_then(|(_, n)| n.trim().parse().ok())
                .unwrap_or(0);
            if deleted >= 30 {
                return deleted;
            }
        }
        0
    })
    .await
    .unwrap();
    assert!(progressed >= 30, "redrive ended before it could be killed");
    // Anywhere in the next ~250 ms: during the pacing sleep, a receive, a send or a delete.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..250))).await;
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");

    // Held messages come back after the 3 s hold.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let in_app = ids_in(&t, &app_q).await;
    let in_dlq = ids_in(&t, &t.dlq).await;
    let union: BTreeSet<String> = in_app.keys().chain(in_dlq.keys()).cloned().collect();
    assert_eq!(union, all, "every event is in the app queue or the DLQ");
    let moved = in_app.len();
    let both = in_app.keys().filter(|k| in_dlq.contains_key(*k)).count();
    eprintln!(
        "after SIGKILL: {moved} in the app queue, {} in the DLQ, {both} in both",
        in_dlq.len()
    );
    assert!(moved > 0 && moved < EVENTS, "killed midway: {moved} moved");
    // The window: at most one batch of 10 sent but not yet deleted.
    assert!(both <= 10, "{both} in both places");

    // Finish the job: everything ends in the app queue.
    let out = squall(&["redrive", "--hold", "30s", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sent"], EVENTS - moved + both);
    assert_eq!(report["in_both"], 0);
    let in_app = ids_in(&t, &app_q).await;
    assert_eq!(in_app.keys().cloned().collect::<BTreeSet<_>>(), all);
    assert_eq!(
        in_app.values().sum::<usize>(),
        EVENTS + both,
        "duplicates = the in-both window"
    );
    assert!(ids_in(&t, &t.dlq).await.is_empty());
}
