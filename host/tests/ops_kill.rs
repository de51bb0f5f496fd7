//! `squall redrive` killed with SIGKILL midway loses nothing: the real binary against an
//! SQS-compatible server (moto, started by `scripts/test`; skipped without
//! `SQUALL_TEST_SQS_ENDPOINT`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use squall::queue::sqs::{SqsQueues, SqsSettings};

const EVENTS: usize = 200;

fn endpoint() -> Option<String> {
    match std::env::var("SQUALL_TEST_SQS_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("SQUALL_REQUIRE_SQS").is_err(),
                "SQUALL_REQUIRE_SQS is set but SQUALL_TEST_SQS_ENDPOINT is not: run scripts/test"
            );
            eprintln!("SKIPPED: no SQS-compatible server (run scripts/test, which starts moto)");
            None
        }
    }
}

async fn create(client: &Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url")
}

/// Event id -> copies, over every message in `queue` (received, then made visible again).
async fn ids(client: &Client, queue: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut handles = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let got = client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .visibility_timeout(120)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            empty += 1;
            continue;
        }
        for m in got {
            handles.push(m.receipt_handle().unwrap().to_string());
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            *out.entry(body["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
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
        client
            .change_message_visibility_batch()
            .queue_url(queue)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("release");
    }
    out
}

fn attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .unwrap()
}

fn squall(config: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_squall"));
    c.args(args)
        .arg("--config")
        .arg(config)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_killed_midway_loses_nothing() {
    let Some(ep) = endpoint() else { return };
    let sqs = SqsQueues::connect(&SqsSettings {
        region: "us-east-1".into(),
        endpoint_url: Some(ep.clone()),
        static_credentials: Some(("test".into(), "test".into())),
    })
    .await;
    let client = sqs.client().clone();
    let prefix = format!("kill{:08x}", fastrand::u32(..));
    let dlq = create(&client, &format!("{prefix}-dlq")).await;
    let app_q = create(&client, &format!("{prefix}-billing")).await;

    // 200 dead letters as the engine writes them.
    let all: BTreeSet<String> = (0..EVENTS).map(|i| format!("evt_{i:04}")).collect();
    let ids_vec: Vec<&String> = all.iter().collect();
    for chunk in ids_vec.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(j, id)| {
                SendMessageBatchRequestEntry::builder()
                    .id(j.to_string())
                    .message_body(format!(
                        r#"{{"version":1,"id":"{id}","app_id":"billing","type":"t","endpoint":"https://h.example/","created_at":"2026-11-28T00:00:00Z","payload":{{}}}}"#
                    ))
                    .message_attributes("squall-app-id", attr("billing"))
                    .message_attributes("squall-event-id", attr(id))
                    .message_attributes("squall-reason", attr("gave up after 25 attempts (max_attempts); last: status 503"))
                    .message_attributes("squall-attempts", attr("25"))
                    .message_attributes("squall-source-queue", attr(&app_q))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = client
            .send_message_batch()
            .queue_url(&dlq)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed.is_empty());
    }

    let dir = std::env::temp_dir().join(format!("{prefix}-cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("squall.toml");
    std::fs::write(
        &config,
        format!(
            "[sqs]\nregion = \"us-east-1\"\nendpoint_url = \"{ep}\"\ndead_letter_queue_url = \"{dlq}\"\n\n\
             [apps.billing]\nqueue_url = \"{app_q}\"\nsecrets = {{ default = \"env:UNUSED_SECRET\" }}\n"
        ),
    )
    .unwrap();

    // 40 messages/s: the whole redrive takes ~5 s. Kill it once it reports 30 moved, that is
    // in the middle of a later batch (receive, send or delete).
    let mut child = squall(&config, &["redrive", "--rate", "40", "--hold", "3s"])
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
    let in_app = ids(&client, &app_q).await;
    let in_dlq = ids(&client, &dlq).await;
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
    let out = squall(&config, &["redrive", "--hold", "30s", "--json"])
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
    let in_app = ids(&client, &app_q).await;
    assert_eq!(in_app.keys().cloned().collect::<BTreeSet<_>>(), all);
    assert_eq!(
        in_app.values().sum::<usize>(),
        EVENTS + both,
        "duplicates = the in-both window"
    );
    assert!(ids(&client, &dlq).await.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}
