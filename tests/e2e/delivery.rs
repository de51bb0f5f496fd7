//! Delivery scenarios through the real `squall run` binary, moto queues and real HTTP
//! receivers: signatures on the wire, retries after each transient failure, dead-letters
//! with reasons, malformed envelopes, SSRF refusals, and one metric per attempt.

use std::time::Duration;

use serde_json::{Value, json};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{TEST_SECRET, config_toml, now_ms, sqs_or_skip};

const SETTLE: Duration = Duration::from_secs(60);

fn envelope(id: &str, app: &str, endpoint: &str, payload: Value) -> String {
    TestEnvelope::new(id, app, endpoint)
        .payload(payload)
        .to_json()
}

async fn metrics_records(q: &TestQueues) -> Vec<Value> {
    q.drain(&q.metrics)
        .await
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).expect("metric record is JSON"))
        .collect()
}

async fn wait_requests(rx: &Receiver, path: &str, n: usize) {
    eventually(SETTLE, &format!("{n} requests on {path}"), || async {
        (rx.requests_for(path).len() >= n).then_some(())
    })
    .await;
}

async fn wait_settled(q: &TestQueues, app: &str, dlq_expected: u64) {
    eventually(SETTLE, "queues to settle", || async {
        let app_depth = q.depth(q.app(app)).await;
        let dlq = q.depth(&q.dlq).await;
        (app_depth == (0, 0, 0) && dlq.0 == dlq_expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_signed_bytes_and_one_metric_per_attempt() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("billing", "")]));

    let payloads = [
        json!({"invoice": "in_1", "amount": 4200}),
        json!({"n": [1, 2, 3]}),
        json!("text"),
    ];
    for (i, p) in payloads.iter().enumerate() {
        q.send(
            "billing",
            &envelope(&format!("evt_{i}"), "billing", &rx.url("/hook"), p.clone()),
        )
        .await;
    }
    wait_requests(&rx, "/hook", 3).await;
    wait_settled(&q, "billing", 0).await;

    let mut seen = Vec::new();
    for r in rx.requests_for("/hook") {
        assert_eq!(r.method, "POST");
        let id = verify_recorded(TEST_SECRET, &r).expect("valid Standard Webhooks signature");
        let i: usize = id.strip_prefix("evt_").unwrap().parse().unwrap();
        assert_eq!(
            r.body,
            serde_json::to_vec(&payloads[i]).unwrap(),
            "body bytes of {id}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("user-agent").unwrap_or("").starts_with("Squall/"));
        let ts: u64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(ts.abs_diff(now_ms() / 1000) < 120, "timestamp {ts} is now");
        seen.push(id);
    }
    seen.sort();
    assert_eq!(seen, ["evt_0", "evt_1", "evt_2"]);
    assert!(run.terminate().success());

    let records = metrics_records(&q).await;
    assert_eq!(records.len(), 3, "one record per attempt: {records:?}");
    for m in &records {
        assert_eq!(m["v"], 1);
        assert_eq!(m["app_id"], "billing");
        assert_eq!(m["event_type"], "invoice.paid");
        assert_eq!(m["endpoint_host"], "127.0.0.1");
        assert_eq!(m["attempt"], 1);
        assert_eq!(m["status"], 200);
        assert_eq!(m["outcome"], "delivered");
        assert_eq!(m["signer"], "builtin:standard-webhooks");
        assert!(m["finished_at_ms"].as_u64() >= m["started_at_ms"].as_u64());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fails_twice_then_succeeds_exactly_once_with_a_stable_id() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    rx.script("/flaky", vec![Reply::Status(500), Reply::Status(500)]);
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("billing", "")]));

    q.send(
        "billing",
        &envelope("evt_flaky", "billing", &rx.url("/flaky"), json!({"k": 1})),
    )
    .await;
    wait_requests(&rx, "/flaky", 3).await;
    wait_settled(&q, "billing", 0).await;
    // No fourth attempt comes later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(run.terminate().success());

    let reqs = rx.requests_for("/flaky");
    assert_eq!(reqs.len(), 3, "exactly three attempts");
    let ids: Vec<String> = reqs
        .iter()
        .map(|r| verify_recorded(TEST_SECRET, r).unwrap())
        .collect();
    assert_eq!(
        ids,
        ["evt_flaky", "evt_flaky", "evt_flaky"],
        "webhook-id stable across retries"
    );
    let oks = reqs.iter().filter(|r| r.reply == "Status(200)").count();
    assert_eq!(oks, 1, "delivered exactly once");

    let mut records = metrics_records(&q).await;
    records.sort_by_key(|m| m["attempt"].as_u64());
    let summary: Vec<(u64, String)> = records
        .iter()
        .map(|m| {
            (
                m["attempt"].as_u64().unwrap(),
                m["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "retry".to_string()),
            (2, "retry".to_string()),
            (3, "delivered".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_after_5xx_timeout_reset_and_429_honouring_retry_after() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(204)).await;
    rx.script("/5xx", vec![Reply::Status(503)]);
    rx.script("/timeout", vec![Reply::Hang(Duration::from_secs(4))]);
    rx.script("/reset", vec![Reply::Reset]);
    rx.script(
        "/429",
        vec![Reply::StatusWith(
            429,
            vec![("retry-after".into(), "4".into())],
        )],
    );
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("billing", "")]));

    for path in ["/5xx", "/timeout", "/reset", "/429"] {
        q.send(
            "billing",
            &envelope(
                &format!("evt{}", path.replace('/', "_")),
                "billing",
                &rx.url(path),
                json!({}),
            ),
        )
        .await;
    }
    for path in ["/5xx", "/timeout", "/reset", "/429"] {
        wait_requests(&rx, path, 2).await;
    }
    wait_settled(&q, "billing", 0).await;
    assert!(run.terminate().success());

    for path in ["/5xx", "/timeout", "/reset", "/429"] {
        assert_eq!(
            rx.requests_for(path).len(),
            2,
            "{path}: one failure, one success"
        );
    }
    let r429 = rx.requests_for("/429");
    let gap = r429[1].at - r429[0].at;
    assert!(
        gap >= Duration::from_millis(3900),
        "Retry-After: 4 honoured, gap was {gap:?}"
    );

    let records = metrics_records(&q).await;
    let kind = |id: &str| {
        records
            .iter()
            .find(|m| m["event_id"] == id && m["attempt"] == 1)
            .map(|m| {
                (
                    m["status"].clone(),
                    m["error_kind"].clone(),
                    m["outcome"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("no first-attempt record for {id}: {records:?}"))
    };
    assert_eq!(kind("evt_5xx"), (json!(503), Value::Null, json!("retry")));
    assert_eq!(
        kind("evt_timeout"),
        (Value::Null, json!("timeout"), json!("retry"))
    );
    assert_eq!(kind("evt_reset").2, json!("retry"));
    assert!(
        matches!(
            kind("evt_reset").1.as_str(),
            Some("reset") | Some("connect")
        ),
        "reset classified: {:?}",
        kind("evt_reset")
    );
    assert_eq!(kind("evt_429"), (json!(429), Value::Null, json!("retry")));
    assert_eq!(records.len(), 8, "one record per attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_410_and_400_with_reason_attributes() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    rx.script("/gone", vec![Reply::Status(410)]);
    rx.script("/bad", vec![Reply::Status(400)]);
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("billing", "")]));

    let gone = envelope("evt_gone", "billing", &rx.url("/gone"), json!({"a": 1}));
    q.send("billing", &gone).await;
    q.send(
        "billing",
        &envelope("evt_bad", "billing", &rx.url("/bad"), json!({"b": 2})),
    )
    .await;
    wait_settled(&q, "billing", 2).await;
    assert!(run.terminate().success());

    assert_eq!(
        rx.requests_for("/gone").len(),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(rx.requests_for("/bad").len(), 1);
    let dead = q.drain(&q.dlq).await;
    assert_eq!(dead.len(), 2);
    for m in &dead {
        let id = msg_attr(m, "squall-event-id").expect("event id attribute");
        let status = if id == "evt_gone" { "410" } else { "400" };
        assert_eq!(msg_attr(m, "squall-app-id").as_deref(), Some("billing"));
        assert_eq!(msg_attr(m, "squall-last-status").as_deref(), Some(status));
        assert_eq!(msg_attr(m, "squall-attempts").as_deref(), Some("1"));
        assert!(
            msg_attr(m, "squall-reason").unwrap().contains(status),
            "reason names the status"
        );
        assert_eq!(
            msg_attr(m, "squall-source-queue").as_deref(),
            Some(q.app("billing"))
        );
        if id == "evt_gone" {
            assert_eq!(
                m.body(),
                Some(gone.as_str()),
                "DLQ keeps the original body byte for byte"
            );
        }
    }
    let records = metrics_records(&q).await;
    assert_eq!(
        records
            .iter()
            .filter(|m| m["outcome"] == "dead_letter")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_envelopes_are_dead_lettered_with_reasons() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("billing", "")]));

    let good = envelope("evt_ok", "billing", &rx.url("/ok"), json!({}));
    let mut no_endpoint: Value = serde_json::from_str(&good).unwrap();
    no_endpoint.as_object_mut().unwrap().remove("endpoint");
    let mut bad_version: Value = serde_json::from_str(&good).unwrap();
    bad_version["version"] = json!(99);
    let mut bad_url: Value = serde_json::from_str(&good).unwrap();
    bad_url["endpoint"] = json!("ftp://example.com/x");
    let cases = [
        ("this is not json".to_string(), "json"),
        (no_endpoint.to_string(), "endpoint"),
        (bad_version.to_string(), "version"),
        (bad_url.to_string(), "endpoint"),
    ];
    for (body, _) in &cases {
        q.send("billing", body).await;
    }
    q.send("billing", &good).await;
    wait_requests(&rx, "/ok", 1).await;
    wait_settled(&q, "billing", cases.len() as u64).await;
    assert!(run.terminate().success());

    let dead = q.drain(&q.dlq).await;
    assert_eq!(dead.len(), cases.len());
    for (body, word) in &cases {
        let m = dead
            .iter()
            .find(|m| m.body() == Some(body.as_str()))
            .expect("original body kept");
        let reason = msg_attr(m, "squall-reason").expect("reason").to_lowercase();
        assert!(
            reason.contains("envelope") && reason.contains(word),
            "reason {reason:?} names {word}"
        );
        assert_eq!(msg_attr(m, "squall-app-id").as_deref(), Some("billing"));
    }
    assert_eq!(
        rx.requests_for("/ok").len(),
        1,
        "the valid event in the same batch is delivered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ssrf_forbidden_targets_are_refused_before_connecting() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let port = rx.addr().port();
    // No allow-list for this application: loopback in every spelling must be refused.
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[("billing", "allowed_networks = []")],
    ));
    let targets = [
        format!("http://127.0.0.1:{port}/a"),
        format!("http://2130706433:{port}/b"),
        format!("http://0x7f.0.0.1:{port}/c"),
        format!("http://0177.0.0.1:{port}/d"),
        format!("http://127.1:{port}/e"),
        format!("http://[::1]:{port}/f"),
        format!("http://[::ffff:127.0.0.1]:{port}/g"),
        format!("http://localhost:{port}/h"),
        format!("http://0.0.0.0:{port}/i"),
    ];
    for (i, t) in targets.iter().enumerate() {
        q.send(
            "billing",
            &envelope(&format!("evt_ssrf_{i}"), "billing", t, json!({})),
        )
        .await;
    }
    wait_settled(&q, "billing", targets.len() as u64).await;
    assert!(run.terminate().success());
    assert!(
        rx.requests().is_empty(),
        "no request reached the loopback receiver"
    );
    let dead = q.drain(&q.dlq).await;
    assert_eq!(dead.len(), targets.len());
    for m in &dead {
        let reason = msg_attr(m, "squall-reason").unwrap();
        assert!(reason.contains("refused"), "SSRF reason: {reason}");
        assert!(
            msg_attr(m, "squall-last-error")
                .unwrap_or_default()
                .starts_with("refused-by-policy"),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_endpoint_defers_its_events_and_the_others_go_ahead() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    // Two endpoint hosts on one receiver: `localhost` answers after 2.5 s, `127.0.0.1` at once.
    rx.script(
        "/slow",
        vec![Reply::Slow(Duration::from_millis(2500), 200); 4],
    );
    let slow = format!("http://localhost:{}/slow", rx.addr().port());
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[(
            "billing",
            "max_concurrency = 3\nmax_per_endpoint = 1\nendpoint_wait_secs = 0\n\
             timeout_ms = 5000\nallowed_networks = [\"127.0.0.0/8\", \"::1/128\"]",
        )],
    ));

    for i in 0..4 {
        q.send(
            "billing",
            &envelope(&format!("evt_slow_{i}"), "billing", &slow, json!({})),
        )
        .await;
    }
    for i in 0..2 {
        let url = rx.url("/fast");
        q.send(
            "billing",
            &envelope(&format!("evt_fast_{i}"), "billing", &url, json!({})),
        )
        .await;
    }
    // Each slow event may be deferred (10-30 s) more than once before its turn: longer than
    // SETTLE allows in the worst case.
    eventually(Duration::from_secs(180), "4 requests on /slow", || async {
        (rx.requests_for("/slow").len() >= 4).then_some(())
    })
    .await;
    wait_requests(&rx, "/fast", 2).await;
    wait_settled(&q, "billing", 0).await;
    assert!(run.terminate().success());

    // The other endpoint did not wait behind the slow one's backlog: both its events arrived
    // before two of the slow endpoint's 2.5-s requests could have been served one after the
    // other (waiting on the slow host, they would come after at least two of them; deferred,
    // the slow events come back after 10-30 s). Measured from the first slow request, so a
    // loaded machine's slow start does not count against it.
    let mut slow_at: Vec<_> = rx.requests_for("/slow").iter().map(|r| r.at).collect();
    slow_at.sort();
    let fast_at = rx.requests_for("/fast").iter().map(|r| r.at).max().unwrap();
    assert!(
        fast_at < slow_at[0] + Duration::from_millis(2 * 2500),
        "the fast endpoint waited for the slow one: {:?} after the first slow request",
        fast_at.saturating_duration_since(slow_at[0])
    );
    // Every event reached its endpoint exactly once, and a deferral is not an attempt.
    assert_eq!(rx.requests_for("/slow").len(), 4);
    assert_eq!(rx.requests_for("/fast").len(), 2);
    let records = metrics_records(&q).await;
    assert_eq!(records.len(), 6, "one record per attempt: {records:?}");
    assert!(
        records
            .iter()
            .all(|m| m["attempt"] == 1 && m["outcome"] == "delivered"),
        "{records:?}"
    );
}

/// A queue URL that names no queue (a typo, another region) stops `squall run` at start-up
/// with the key named, before any receive: not a receive error every few seconds for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_that_does_not_exist_stops_start_up_with_its_key_named() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing"]).await;
    let missing = format!("{}-typo", q.app("billing"));
    let toml = config_toml(&endpoint, &q, &[("billing", "")]).replace(
        &format!("queue_url = \"{}\"", q.app("billing")),
        &format!("queue_url = \"{missing}\""),
    );
    assert!(toml.contains(&missing), "{toml}");
    let (status, log) = SquallRun::start(&toml).wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(
        log.contains(&format!(
            "apps.billing.queue_url: queue {missing} does not exist"
        )),
        "{log}"
    );
    // The other queues exist and are not named; nothing was polled.
    assert!(!log.contains("sqs.dead_letter_queue_url"), "{log}");
    assert!(!log.contains("\"polling\""), "{log}");
}

/// An application queue whose visibility timeout is shorter than one of its messages can take
/// in `squall run` (endpoint wait + HTTP timeout + plugin limits) is named in a start-up
/// warning: its slow deliveries would reappear mid-flight and go out twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_visibility_timeout_shorter_than_an_attempt_is_warned_at_start_up() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["billing", "shop"]).await;
    q.client
        .set_queue_attributes()
        .queue_url(q.app("billing"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "5",
        )
        .send()
        .await
        .expect("set visibility");
    // billing: 5 s wait + 1.5 s timeout + 5 s margin = 12 s needed, 5 s set; shop keeps 30 s.
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[("billing", ""), ("shop", "")],
    ));
    let warning = eventually(Duration::from_secs(20), "the start-up warning", || {
        let log = run.log();
        async move {
            log.lines()
                .find(|l| l.contains("visibility timeout is shorter"))
                .map(str::to_string)
        }
    })
    .await;
    let w: Value = serde_json::from_str(&warning).expect("a JSON log line");
    assert_eq!(w["key"], "apps.billing.queue_url", "{warning}");
    assert_eq!(w["visibility_timeout_secs"], 5, "{warning}");
    assert_eq!(w["needed_secs"], 12, "{warning}");
    eventually(Duration::from_secs(20), "polling", || {
        let polling = run.log().contains("\"polling\"");
        async move { polling.then_some(()) }
    })
    .await;
    let (_, log) = run.stop_with_log("TERM");
    assert_eq!(
        log.matches("visibility timeout is shorter").count(),
        1,
        "only billing is short:\n{log}"
    );
}
