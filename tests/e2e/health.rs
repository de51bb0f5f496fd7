//! Endpoint health through the real `squall run` on moto (issue 20, in one process): an
//! endpoint down for 60 s with 200 events queued opens the breaker, sees one probe per open
//! interval instead of every event's retries, and gets every event exactly once after it
//! recovers; a 429 with `Retry-After: 10` holds every event of that endpoint while another
//! endpoint goes on; `max_rate = 5` holds at the receiver. The operational events are on the
//! metrics queue, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::TestQueues;
use squall_tests::{TEST_SECRET, config_toml, sqs_or_skip};

fn envelope(id: &str, url: &str) -> String {
    TestEnvelope::new(id, "shop", url)
        .payload(json!({"id": id}))
        .to_json()
}

/// A receiver whose `/down` answers 503 for `down_for` from now, then 200.
async fn down_receiver(down_for: Duration) -> Receiver {
    let start = Instant::now();
    Receiver::options()
        .route_with(
            "/down",
            Arc::new(move |_| {
                if start.elapsed() < down_for {
                    Reply::Status(503)
                } else {
                    Reply::Status(200)
                }
            }),
        )
        .start()
        .await
        .unwrap()
}

/// The metrics queue's bodies, split into records and operational events.
async fn metrics(q: &TestQueues) -> (Vec<Value>, Vec<Value>) {
    let mut records = Vec::new();
    let mut events = Vec::new();
    for m in q.drain(&q.metrics).await {
        let v: Value = serde_json::from_str(m.body().unwrap()).unwrap();
        if v.get("kind").is_some() {
            events.push(v);
        } else {
            records.push(v);
        }
    }
    events.sort_by_key(|e| e["at_ms"].as_u64());
    (records, events)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_endpoint_opens_the_breaker_and_every_event_is_delivered_once_after() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let down_for = Duration::from_secs(60);
    let rx = down_receiver(down_for).await;
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[(
            "shop",
            "max_concurrency = 10\n[apps.shop.retry]\nmax_attempts = 100\nmax_delay_secs = 5\n\
             horizon_secs = 3600\n[apps.shop.endpoint_health]\nenabled = true\n\
             failure_threshold = 5\nopen_secs = 5\nopen_max_secs = 10",
        )],
    ));
    let url = rx.url("/down");
    for i in 0..200 {
        q.send("shop", &envelope(&format!("evt-{i:03}"), &url))
            .await;
    }
    eventually(Duration::from_secs(240), "200 events delivered", || async {
        let ok: std::collections::HashSet<String> = rx
            .requests_for("/down")
            .iter()
            .filter(|r| r.status == Some(200))
            .map(|r| r.webhook_id().to_string())
            .collect();
        (ok.len() == 200 && q.depth(q.app("shop")).await == (0, 0, 0)).then_some(())
    })
    .await;
    let mut run = run;
    assert!(run.is_running(), "{}", run.log());
    assert!(run.terminate().success());

    let reqs = rx.requests_for("/down");
    let ok: Vec<_> = reqs.iter().filter(|r| r.status == Some(200)).collect();
    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &ok {
        *per_event.entry(r.webhook_id()).or_default() += 1;
        verify_recorded(TEST_SECRET, r).unwrap();
    }
    assert_eq!(per_event.len(), 200);
    assert!(per_event.values().all(|&n| n == 1), "each delivered once");
    // While down: the failures that opened it (up to max_concurrency in flight at once), then
    // one probe per open interval (5 s, then 10 s): not 200 events retried every 1-5 s.
    let failed: Vec<_> = reqs.iter().filter(|r| r.status == Some(503)).collect();
    eprintln!(
        "{} requests while down for {down_for:?}, {} in all for 200 events",
        failed.len(),
        reqs.len()
    );
    assert!(
        failed.len() <= 10 + 60 / 5 + 2,
        "{} requests while down",
        failed.len()
    );
    // No deferral counted as an attempt: no event needed more than a few.
    let (records, events) = metrics(&q).await;
    let max_attempt = records
        .iter()
        .filter(|r| r["outcome"] == "delivered")
        .map(|r| r["attempt"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(max_attempt <= 4, "an event reached attempt {max_attempt}");
    // The operational events, in order: opened (perhaps again after failed probes), closed.
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    eprintln!("operational events: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"endpoint.opened"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"endpoint.closed"), "{kinds:?}");
    assert!(
        kinds[..kinds.len() - 1]
            .iter()
            .all(|k| *k == "endpoint.opened")
    );
    assert_eq!(events[0]["app_id"], "shop");
    assert_eq!(
        events[0]["endpoint"],
        format!("http://127.0.0.1:{}", rx.addr().port())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_holds_every_event_of_its_endpoint_and_no_other() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let paused = Receiver::start(Reply::Status(200)).await;
    paused.script(
        "/first",
        vec![Reply::StatusWith(
            429,
            vec![("retry-after".into(), "10".into())],
        )],
    );
    let other = Receiver::start(Reply::Status(200)).await;
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[(
            "shop",
            "[apps.shop.endpoint_health]\nenabled = true\n[apps.shop.retry]\nmax_attempts = 10",
        )],
    ));
    q.send("shop", &envelope("evt-first", &paused.url("/first")))
        .await;
    eventually(Duration::from_secs(30), "the 429", || async {
        (!paused.requests_for("/first").is_empty()).then_some(())
    })
    .await;
    let answered_at = paused.requests_for("/first")[0].at;
    for i in 0..5 {
        q.send(
            "shop",
            &envelope(&format!("evt-same-{i}"), &paused.url("/same")),
        )
        .await;
        q.send(
            "shop",
            &envelope(&format!("evt-other-{i}"), &other.url("/other")),
        )
        .await;
    }
    eventually(Duration::from_secs(60), "every event delivered", || async {
        (paused.requests_for("/same").len() == 5
            && other.requests_for("/other").len() == 5
            && paused.requests_for("/first").len() == 2)
            .then_some(())
    })
    .await;
    assert!(run.terminate().success());
    // The same endpoint: nothing before the 10 s were over (receiver timestamps).
    for r in paused
        .requests_for("/same")
        .iter()
        .chain(&paused.requests_for("/first")[1..])
    {
        let after = r.at.duration_since(answered_at);
        assert!(
            after >= Duration::from_secs(10),
            "{} after {after:?}",
            r.webhook_id()
        );
    }
    // The other endpoint went on at once.
    for r in other.requests_for("/other") {
        let after = r.at.saturating_duration_since(answered_at);
        assert!(
            after < Duration::from_secs(8),
            "{} after {after:?}",
            r.webhook_id()
        );
    }
    let (_, events) = metrics(&q).await;
    let paced: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "endpoint.paced")
        .collect();
    assert_eq!(paced.len(), 1, "{events:?}");
    assert!(paced[0]["until_ms"].as_u64().unwrap() >= paced[0]["at_ms"].as_u64().unwrap() + 10_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rate_holds_at_the_receiver_over_thirty_seconds() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[(
            "shop",
            "max_concurrency = 20\n[apps.shop.endpoint_health]\nenabled = true\nmax_rate = 5.0",
        )],
    ));
    for i in 0..200 {
        q.send("shop", &envelope(&format!("evt-{i:03}"), &rx.url("/paced")))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(36)).await;
    assert!(run.terminate().success());
    let mut at: Vec<Instant> = rx.requests().iter().map(|r| r.at).collect();
    at.sort();
    assert!(at.len() >= 100, "{} requests", at.len());
    // Over the first 30 s of traffic, counted per second as a subscriber's limiter counts:
    // at most 5 in each. (A sliding window can catch 6 when network jitter brings the sixth
    // of a run spaced exactly 200 ms apart in under a second: reported, not asserted.)
    let first = at[0];
    let window: Vec<Instant> = at
        .into_iter()
        .filter(|t| t.duration_since(first) < Duration::from_secs(30))
        .collect();
    let mut per_second = [0usize; 30];
    for t in &window {
        per_second[t.duration_since(first).as_secs() as usize] += 1;
    }
    let mut sliding = 0;
    for (i, &t) in window.iter().enumerate() {
        let n = window[i..]
            .iter()
            .take_while(|&&u| u.duration_since(t) < Duration::from_secs(1))
            .count();
        sliding = sliding.max(n);
    }
    eprintln!(
        "{} requests in 30 s at max_rate = 5; per second: {per_second:?}; busiest sliding second: {sliding}",
        window.len()
    );
    assert!(window.len() <= 151, "{}", window.len());
    // Requests leave 200 ms apart; on a loaded machine one can reach the receiver a few tens of
    // ms late, across a second's boundary (seen in CI: [.., 3, 6, ..]). A 6 is accepted only as
    // that: next to a second short of what it gained, the pair holding at most 10.
    for (i, &n) in per_second.iter().enumerate() {
        let pair = |j: usize| per_second.get(j).is_some_and(|&m| n + m <= 10);
        assert!(
            n <= 5 || (n == 6 && ((i > 0 && pair(i - 1)) || pair(i + 1))),
            "second {i}: {per_second:?}"
        );
    }
}

/// The same breaker through the real `bootstrap` under the Runtime API emulator, batches
/// handed to it as an event source mapping does (what did not fail is deleted): 50 events at
/// an endpoint down 30 s; the instance's breaker holds them with delayed copies, and each is
/// delivered once after.
#[tokio::test(flavor = "multi_thread")]
async fn a_down_endpoint_opens_the_breaker_in_the_lambda_function() {
    use crate::lambda::{
        bootstrap_binary, cargo_lambda, mapping_step, start_emulator, start_function, temp_dir,
    };
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let down_for = Duration::from_secs(30);
    let rx = down_receiver(down_for).await;
    let dir = temp_dir("health-lambda");
    let config = dir.join("squall.toml");
    std::fs::write(
        &config,
        config_toml(
            &endpoint,
            &q,
            &[(
                "shop",
                "[apps.shop.retry]\nmax_attempts = 100\nmax_delay_secs = 5\nhorizon_secs = 3600\n\
                 [apps.shop.endpoint_health]\nenabled = true\nfailure_threshold = 5\n\
                 open_secs = 5\nopen_max_secs = 10",
            )],
        ),
    )
    .unwrap();
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let _function = start_function(&bin, port, &config, &dir.join("bootstrap.log"));
    let url = rx.url("/down");
    for i in 0..50 {
        q.send("shop", &envelope(&format!("evt-{i:02}"), &url))
            .await;
    }
    let delivered = || {
        rx.requests_for("/down")
            .iter()
            .filter(|r| r.status == Some(200))
            .map(|r| r.webhook_id().to_string())
            .collect::<std::collections::HashSet<String>>()
    };
    let limit = Instant::now() + Duration::from_secs(180);
    while delivered().len() < 50 {
        assert!(Instant::now() < limit, "{} delivered", delivered().len());
        mapping_step(&q, q.app("shop"), port).await;
    }
    let reqs = rx.requests_for("/down");
    let failed = reqs.iter().filter(|r| r.status == Some(503)).count();
    eprintln!(
        "{failed} requests while down for {down_for:?}, {} in all for 50 events",
        reqs.len()
    );
    // The opening failures (one batch of 10 can be in flight at once) and one probe per open
    // interval: not 50 events retried every 1-5 s.
    assert!(failed <= 10 + 30 / 5 + 2, "{failed} requests while down");
    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.status == Some(200)) {
        *per_event.entry(r.webhook_id()).or_default() += 1;
        verify_recorded(TEST_SECRET, r).unwrap();
    }
    assert!(per_event.values().all(|&n| n == 1), "each delivered once");
    let (_, events) = metrics(&q).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    eprintln!("operational events: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"endpoint.opened"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"endpoint.closed"), "{kinds:?}");
}
