//! Endpoint health shared between processes through the DynamoDB registry (issue 20), with two
//! real `squall run` processes on moto: a breaker opened by one holds the other, which never
//! saw a failure, within `endpoint_health.shared_ttl_secs`; an endpoint failing past
//! `disable_after_secs` is disabled in every process (its events dead-lettered at once,
//! `endpoint-disabled`, no request), enabled again with `squall endpoints enable ORIGIN`, and
//! its dead letters redriven and delivered once each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use squall::config::Config;
use squall::health::{SharedKind, SharedState};
use squall::registry::QueueKey;
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::sqs_or_skip;

use crate::endpoints::{peek_with, squall_ok};
use crate::lambda::temp_dir;
use crate::registry::{Registry, config_text, new_secret, write_config};

struct Setup {
    q: TestQueues,
    reg: Registry,
    config_file: PathBuf,
    config_text: String,
    _dir: PathBuf,
    secret: String,
    rx: Receiver,
    /// The endpoint answers 200 when set, 503 otherwise.
    up: Arc<AtomicBool>,
}

impl Setup {
    /// Application `shop` in a fresh registry, endpoint health on with `health` (TOML lines
    /// of `[endpoint_health]`), shared states read at most 1 s apart.
    async fn new(endpoint: &str, tag: &str, health: &str) -> Setup {
        let q = TestQueues::create(endpoint, &["shop"]).await;
        let prefix = QueueKey::from_url(&q.dlq)
            .unwrap()
            .name
            .trim_end_matches("-dlq")
            .to_string();
        let dir = temp_dir(tag);
        let (table, path) = (format!("{prefix}-registry"), format!("/{prefix}/"));
        let text = config_text(endpoint, &q, &table, &path);
        let config = Config::from_toml_str(&text, &dir, Vec::<(String, String)>::new()).unwrap();
        let reg = Registry::create(endpoint, &prefix, config).await;
        let secret = new_secret();
        reg.put_param(&format!("{path}shop/default"), &secret).await;
        let settings = format!(
            "queue_url = \"{queue}\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
             secrets = {{ default = \"ssm:{path}shop/default\" }}\n\
             [retry]\nmax_attempts = 100\ninitial_delay_secs = 1\nmax_delay_secs = 2\n\
             jitter = 0.0\nhorizon_secs = 3600\n\
             [endpoint_health]\nenabled = true\nshared_ttl_secs = 1\n{health}\n",
            queue = q.app("shop"),
        );
        reg.put("shop", &settings).await;
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let rx = Receiver::options()
            .route_with(
                "/ep",
                Arc::new(move |_| {
                    if flag.load(Ordering::SeqCst) {
                        Reply::Status(200)
                    } else {
                        Reply::Status(503)
                    }
                }),
            )
            .start()
            .await
            .unwrap();
        Setup {
            config_file: write_config(&dir, endpoint, &q, &table, &path),
            config_text: text,
            q,
            reg,
            _dir: dir,
            secret,
            rx,
            up,
        }
    }

    async fn send(&self, id: &str) {
        let body = TestEnvelope::new(id, "shop", &self.rx.url("/ep"))
            .payload(json!({"event": id}))
            .to_json();
        self.q.send("shop", &body).await;
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.rx.addr().port())
    }

    /// Process A (`squall run`) started, and `n` events `evt-a-I` queued for the endpoint.
    async fn start_a(&self, n: usize) -> SquallRun {
        let a = SquallRun::start(&self.config_text);
        for i in 0..n {
            self.send(&format!("evt-a-{i}")).await;
        }
        a
    }

    /// Wait until the item shows the breaker opened (by A); the state.
    async fn opened(&self) -> SharedState {
        eventually(Duration::from_secs(60), "the breaker opened", || async {
            self.shared()
                .await
                .filter(|st| st.state == SharedKind::Opened)
        })
        .await
    }

    /// The endpoint's shared state in the application's item, if any.
    async fn shared(&self) -> Option<SharedState> {
        let origin = self.origin();
        self.reg
            .store
            .read_health("shop")
            .await
            .unwrap()
            .into_iter()
            .find(|(o, _)| *o == origin)
            .and_then(|(_, t)| SharedState::parse(&t))
    }

    /// Event ids answered 200, each with how many times; every request verified.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.rx.requests_for("/ep") {
            verify_recorded(&self.secret, &r).unwrap();
            if r.status == Some(200) {
                *out.entry(r.webhook_id().to_string()).or_default() += 1;
            }
        }
        out
    }

    /// The operational events on the metrics queue, by time.
    async fn events(&self) -> Vec<Value> {
        let mut events: Vec<Value> = self
            .q
            .drain(&self.q.metrics)
            .await
            .iter()
            .map(|m| serde_json::from_str::<Value>(m.body().unwrap()).unwrap())
            .filter(|v| v.get("kind").is_some())
            .collect();
        events.sort_by_key(|e| e["at_ms"].as_u64());
        events
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn now_ms() -> u64 {
    ms(SystemTime::now())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breaker_opened_by_one_process_holds_the_other() {
    let endpoint = sqs_or_skip!();
    let s = Setup::new(
        &endpoint,
        "health-shared-breaker",
        "failure_threshold = 3\nopen_secs = 20\nopen_max_secs = 20",
    )
    .await;
    let a = s.start_a(5).await;
    let opened = s.opened().await;
    let until_ms = opened.until_ms.unwrap();
    eprintln!(
        "opened at {} until {until_ms} ({}): {}",
        opened.at_ms,
        until_ms - opened.at_ms,
        opened.reason
    );
    // B starts now: it has seen no failure of this endpoint; 30 more events come.
    let b = SquallRun::start(&s.config_text);
    for i in 0..30 {
        s.send(&format!("evt-b-{i:02}")).await;
    }
    assert!(
        until_ms > now_ms() + 5_000,
        "the test needs most of the open interval left"
    );
    // Until 1 s before the probe is due: no request at all, from A or B.
    tokio::time::sleep(Duration::from_millis(until_ms - 1_000 - now_ms())).await;
    let during: Vec<_> =
        s.rx.requests_for("/ep")
            .into_iter()
            .filter(|r| ms(r.received_at) > opened.at_ms + 500)
            .collect();
    assert!(
        during.is_empty(),
        "{} requests while the breaker was open: {:?}",
        during.len(),
        during.iter().map(|r| r.webhook_id()).collect::<Vec<_>>()
    );
    let b_log = b.log();
    assert!(
        b_log.contains("shared state applied") && b_log.contains("endpoint held"),
        "B applied A's breaker and held its events:\n{b_log}"
    );
    // The endpoint recovers; the probe (A's or B's) closes it; everything delivered once.
    s.up.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(120), "35 events delivered", || async {
        let d = s.delivered();
        (d.len() == 35 && s.q.depth(s.q.app("shop")).await == (0, 0, 0)).then_some(())
    })
    .await;
    let d = s.delivered();
    assert!(d.values().all(|&n| n == 1), "each delivered once: {d:?}");
    assert_eq!(s.q.depth(&s.q.dlq).await.0, 0);
    let closed = s.shared().await.unwrap();
    assert_eq!(closed.state, SharedKind::Closed, "{closed:?}");
    let kinds: Vec<String> = s
        .events()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    eprintln!("operational events: {kinds:?}");
    assert_eq!(kinds.first().map(String::as_str), Some("endpoint.opened"));
    assert!(kinds.iter().any(|k| k == "endpoint.closed"), "{kinds:?}");
    for mut run in [a, b] {
        assert!(run.is_running(), "{}", run.log());
        assert!(run.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_is_disabled_everywhere_then_enabled_and_redriven() {
    let endpoint = sqs_or_skip!();
    let s = Setup::new(
        &endpoint,
        "health-shared-disable",
        "failure_threshold = 3\nopen_secs = 1\nopen_max_secs = 2\ndisable_after_secs = 6",
    )
    .await;
    let a = s.start_a(10).await;
    eventually(
        Duration::from_secs(90),
        "A's 10 events dead-lettered",
        || async { (s.q.depth(&s.q.dlq).await.0 >= 10).then_some(()) },
    )
    .await;
    let disabled = s.shared().await.unwrap();
    assert_eq!(disabled.state, SharedKind::Disabled, "{disabled:?}");
    let health = squall_ok(
        &s.config_file,
        &["endpoints", "--app", "shop", "health", "--json"],
    );
    assert!(
        health.contains(&s.origin()) && health.contains("\"disabled\""),
        "{health}"
    );
    // B never saw a failure: its events are refused at once, no request from either process.
    let before = s.rx.requests_for("/ep").len();
    let b = SquallRun::start(&s.config_text);
    for i in 0..5 {
        s.send(&format!("evt-b-{i}")).await;
    }
    eventually(
        Duration::from_secs(60),
        "B's 5 events dead-lettered",
        || async { (s.q.depth(&s.q.dlq).await.0 >= 15).then_some(()) },
    )
    .await;
    assert_eq!(
        s.rx.requests_for("/ep").len(),
        before,
        "no request once disabled"
    );
    // Each received once and back after 3 s (moto gives the same first ten to receives with
    // no visibility timeout), in time for the redrive.
    let dead = peek_with(&s.q, &s.q.dlq, 15, 3).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    for m in dead {
        assert_eq!(
            msg_attr(&m, "squall-last-error").as_deref(),
            Some("endpoint-disabled")
        );
        let reason = msg_attr(&m, "squall-reason").unwrap_or_default();
        assert!(
            reason.contains(&s.origin()) && reason.contains("was disabled"),
            "{reason}"
        );
    }
    // The subscriber is back: an operator enables the origin and redrives.
    s.up.store(true, Ordering::SeqCst);
    let out = squall_ok(
        &s.config_file,
        &["endpoints", "--app", "shop", "enable", &s.origin()],
    );
    assert!(out.contains("enabled (was: disabled)"), "{out}");
    squall_ok(
        &s.config_file,
        &["redrive", "--app", "shop", "--reason", "endpoint-disabled"],
    );
    eventually(Duration::from_secs(90), "15 events delivered", || async {
        let d = s.delivered();
        (d.len() == 15 && s.q.depth(s.q.app("shop")).await == (0, 0, 0)).then_some(())
    })
    .await;
    let d = s.delivered();
    assert!(d.values().all(|&n| n == 1), "each delivered once: {d:?}");
    assert_eq!(s.q.depth(&s.q.dlq).await, (0, 0, 0));
    let kinds: Vec<String> = s
        .events()
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    eprintln!("operational events: {kinds:?}");
    let at = |k: &str| kinds.iter().position(|x| x == k);
    assert!(
        at("endpoint.disabled").is_some() && at("endpoint.disabled") < at("endpoint.enabled"),
        "{kinds:?}"
    );
    for mut run in [a, b] {
        assert!(run.is_running(), "{}", run.log());
        assert!(run.terminate().success());
    }
}

/// The same sharing with the Lambda function on the other side: a breaker opened by a `squall
/// run` process (stopped then) holds the real bootstrap, driven as an event source mapping
/// drives it, which never saw a failure; the function's own probe closes it, and the close it
/// writes is in the item.
#[tokio::test(flavor = "multi_thread")]
async fn a_breaker_opened_by_squall_run_holds_the_lambda_function() {
    use crate::lambda::{
        bootstrap_binary, cargo_lambda, mapping_step, start_emulator, start_function,
    };
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let s = Setup::new(
        &endpoint,
        "health-shared-lambda",
        "failure_threshold = 3\nopen_secs = 15\nopen_max_secs = 15",
    )
    .await;
    let a = s.start_a(3).await;
    let opened = s.opened().await;
    let mut a = a;
    assert!(a.is_running(), "{}", a.log());
    assert!(a.terminate().success());
    let until_ms = opened.until_ms.unwrap();
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = s._dir.join("bootstrap.log");
    let _function = start_function(&bin, port, &s.config_file, &log);
    for i in 0..10 {
        s.send(&format!("evt-l-{i}")).await;
    }
    let q_url = s.q.app("shop").to_string();
    while now_ms() + 1_000 < until_ms {
        mapping_step(&s.q, &q_url, port).await;
    }
    let during =
        s.rx.requests_for("/ep")
            .into_iter()
            .filter(|r| ms(r.received_at) > opened.at_ms + 500)
            .count();
    assert_eq!(during, 0, "requests while the shared breaker was open");
    let function_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        function_log.contains("shared state applied"),
        "the function applied the shared breaker:\n{function_log}"
    );
    s.up.store(true, Ordering::SeqCst);
    let limit = std::time::Instant::now() + Duration::from_secs(120);
    while s.delivered().len() < 13 || s.q.depth(s.q.app("shop")).await != (0, 0, 0) {
        assert!(
            std::time::Instant::now() < limit,
            "{} delivered",
            s.delivered().len()
        );
        mapping_step(&s.q, &q_url, port).await;
    }
    assert!(
        s.delivered().values().all(|&n| n == 1),
        "each delivered once"
    );
    let closed = s.shared().await.unwrap();
    assert_eq!(
        closed.state,
        SharedKind::Closed,
        "written by the function: {closed:?}"
    );
}
