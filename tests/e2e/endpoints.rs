//! Endpoints as data, end to end on moto's DynamoDB, SSM and SQS: events name a registered
//! endpoint (`endpoint_id`); the subscriber moves its URL with `squall endpoints update`, and
//! every queued event, already failing against the old URL, is delivered to the new one within
//! the registry TTL plus one backoff step, without re-enqueueing anything; a signing-key change
//! applies to the next attempt; a disabled endpoint's events are dead-lettered with
//! `endpoint-disabled` and delivered once it is enabled and they are redriven; an endpoint moved
//! from an allowed address to a forbidden one while events are queued has them refused by the
//! SSRF guard. Once through `squall run`, once through the real `bootstrap` under the Runtime
//! API emulator.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use squall::config::Config;
use squall::registry::QueueKey;
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, squall_bin};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::sqs_or_skip;

use crate::lambda::{
    bootstrap_binary, cargo_lambda, mapping_step, start_emulator, start_function, temp_dir,
};
use crate::registry::{Registry, TTL_SECS, config_text, new_secret, write_config};

/// Events queued for the endpoint whose URL moves.
const EVENTS: usize = 100;
/// The longest backoff step in these tests (`retry.max_delay_secs`).
const MAX_STEP_SECS: u64 = 2;

struct Setup {
    q: TestQueues,
    _reg: Registry,
    config_file: PathBuf,
    config_text: String,
    _dir: PathBuf,
    /// Key name -> secret.
    secrets: BTreeMap<&'static str, String>,
    rx: Receiver,
}

impl Setup {
    async fn new(endpoint: &str, tag: &str) -> Setup {
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
        let mut secrets = BTreeMap::new();
        for key in ["default", "k2"] {
            let secret = new_secret();
            reg.put_param(&format!("{path}shop/{key}"), &secret).await;
            secrets.insert(key, secret);
        }
        let settings = format!(
            "queue_url = \"{queue}\"\nallowed_networks = [\"127.0.0.0/8\"]\n\
             secrets = {{ default = \"ssm:{path}shop/default\", k2 = \"ssm:{path}shop/k2\" }}\n\
             [retry]\nmax_attempts = 60\ninitial_delay_secs = 1\nmax_delay_secs = {MAX_STEP_SECS}\n\
             jitter = 0.0\n",
            queue = q.app("shop"),
        );
        reg.put("shop", &settings).await;
        let rx = Receiver::options()
            .route("/old", Reply::Status(503))
            .route("/f", Reply::Status(503))
            .start()
            .await
            .unwrap();
        Setup {
            config_file: write_config(&dir, endpoint, &q, &table, &path),
            config_text: text,
            q,
            _reg: reg,
            _dir: dir,
            secrets,
            rx,
        }
    }

    /// `squall endpoints --app shop ARGS...`; its stdout, asserting success.
    fn endpoints(&self, args: &[&str]) -> String {
        squall_ok(
            &self.config_file,
            &[&["endpoints", "--app", "shop"], args].concat(),
        )
    }

    async fn send(&self, id: &str, endpoint_id: &str) {
        let body = TestEnvelope::for_endpoint_id(id, "shop", endpoint_id)
            .payload(serde_json::json!({"event": id}))
            .to_json();
        self.q.send("shop", &body).await;
    }

    /// Distinct event ids that reached `path`, each with how many times.
    fn ids_at(&self, path: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.rx.requests_for(path) {
            *out.entry(r.webhook_id().to_string()).or_default() += 1;
        }
        out
    }

    /// Every request to `path` verifies with the secret of `key` (and not with the other).
    fn verify_all(&self, path: &str, key: &str) {
        let other = if key == "default" { "k2" } else { "default" };
        for r in self.rx.requests_for(path) {
            verify_recorded(&self.secrets[key], &r)
                .unwrap_or_else(|e| panic!("{path} {}: {e}", r.webhook_id()));
            assert!(verify_recorded(&self.secrets[other], &r).is_err());
        }
    }
}

/// Run the `squall` binary with test credentials; stdout, asserting success.
pub(crate) fn squall_ok(config: &Path, args: &[&str]) -> String {
    let out = Command::new(squall_bin())
        .args(args)
        .env("SQUALL_CONFIG", config)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()
        .expect("run squall");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("$ squall {}\n{stdout}{stderr}", args.join(" "));
    assert!(out.status.success(), "squall {args:?} failed: {stderr}");
    stdout
}

/// What drives deliveries: a `squall run` process, or invocations of the bootstrap.
enum Engine {
    Run(SquallRun),
    Lambda { port: u16, q_url: String },
}

impl Engine {
    /// Let the engine work until `done` holds (the Lambda side receives and invokes batches
    /// the way an event source mapping does), at most `limit`.
    async fn until(
        &self,
        s: &Setup,
        limit: Duration,
        what: &str,
        done: impl AsyncFn(&Setup) -> bool,
    ) {
        let start = Instant::now();
        loop {
            if done(s).await {
                return;
            }
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            match self {
                Engine::Run(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Engine::Lambda { port, q_url } => {
                    mapping_step(&s.q, q_url, *port).await;
                }
            }
        }
    }
}

async fn scenario(s: &Setup, engine: &Engine) {
    let rx = &s.rx;
    // Registered, idempotently.
    let url_old = rx.url("/old");
    assert!(
        s.endpoints(&["create", "E", "--url", &url_old])
            .contains("endpoint E created")
    );
    assert!(
        s.endpoints(&["create", "E", "--url", &url_old])
            .contains("endpoint E unchanged")
    );
    let listed = s.endpoints(&["list"]);
    assert!(
        listed.contains("E") && listed.contains(&url_old),
        "{listed}"
    );

    // 100 events for E, whose URL answers 503: each attempted there at least once.
    for i in 0..EVENTS {
        s.send(&format!("evt-{i:03}"), "E").await;
    }
    let limit = Duration::from_secs(120);
    engine
        .until(
            s,
            limit,
            "every event tried at the old URL",
            async |s: &Setup| s.ids_at("/old").len() == EVENTS,
        )
        .await;

    // The subscriber moves: every event reaches the new URL, once, from the registry alone.
    let url_new = rx.url("/new");
    let moved_at = Instant::now();
    assert!(
        s.endpoints(&["update", "E", "--url", &url_new])
            .contains("endpoint E updated")
    );
    engine
        .until(
            s,
            limit,
            "every event delivered to the new URL",
            async |s: &Setup| s.ids_at("/new").len() == EVENTS,
        )
        .await;
    let took = moved_at.elapsed();
    eprintln!(
        "all {EVENTS} events at the new URL {:.1} s after the update (TTL {TTL_SECS} s, backoff step <= {MAX_STEP_SECS} s)",
        took.as_secs_f64()
    );
    // TTL plus one backoff step, plus what moto takes to serve 100 messages in batches of 10.
    assert!(
        took < Duration::from_secs(TTL_SECS + MAX_STEP_SECS + 8),
        "took {took:?}"
    );
    let at_new = s.ids_at("/new");
    assert!(at_new.values().all(|&n| n == 1), "each once: {at_new:?}");
    s.verify_all("/new", "default");
    // Nothing was re-enqueued: the queue is empty and nothing was dead-lettered.
    assert_eq!(s.q.depth(s.q.app("shop")).await, (0, 0, 0));
    assert_eq!(s.q.depth(&s.q.dlq).await.0, 0);

    // A signing-key change applies to the next attempt.
    s.endpoints(&["update", "E", "--signing-key", "k2"]);
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    s.send("evt-k2", "E").await;
    engine
        .until(s, limit, "the k2 event delivered", async |s: &Setup| {
            s.ids_at("/new").contains_key("evt-k2")
        })
        .await;
    let k2 =
        s.rx.requests_for("/new")
            .into_iter()
            .find(|r| r.webhook_id() == "evt-k2")
            .unwrap();
    verify_recorded(&s.secrets["k2"], &k2).unwrap();
    assert!(verify_recorded(&s.secrets["default"], &k2).is_err());

    // Disabled: its events are dead-lettered with endpoint-disabled, nothing is sent.
    assert!(
        s.endpoints(&["disable", "E"])
            .contains("endpoint E disabled")
    );
    assert!(s.endpoints(&["show", "E"]).contains("disabled"));
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    for i in 0..10 {
        s.send(&format!("evt-off-{i}"), "E").await;
    }
    engine
        .until(
            s,
            limit,
            "the disabled endpoint's events dead-lettered",
            dlq_holds(10),
        )
        .await;
    let dead = peek(&s.q, &s.q.dlq, 10).await;
    for m in &dead {
        assert_eq!(msg_attr(m, "squall-endpoint-id").as_deref(), Some("E"));
        assert_eq!(
            msg_attr(m, "squall-last-error").as_deref(),
            Some("endpoint-disabled")
        );
        let reason = msg_attr(m, "squall-reason").unwrap();
        assert!(
            reason.starts_with("endpoint-disabled: endpoint \"E\""),
            "{reason}"
        );
    }
    assert!(!s.ids_at("/new").keys().any(|k| k.starts_with("evt-off")));

    // Enabled and redriven: delivered, signed with E's current key.
    s.endpoints(&["enable", "E"]);
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    let out = squall_ok(
        &s.config_file,
        &["redrive", "--app", "shop", "--reason", "endpoint-disabled"],
    );
    assert!(out.contains("10"), "{out}");
    engine
        .until(
            s,
            limit,
            "the redriven events delivered",
            async |s: &Setup| {
                s.ids_at("/new")
                    .keys()
                    .filter(|k| k.starts_with("evt-off"))
                    .count()
                    == 10
            },
        )
        .await;
    for r in
        s.rx.requests_for("/new")
            .iter()
            .filter(|r| r.webhook_id().starts_with("evt-off"))
    {
        verify_recorded(&s.secrets["k2"], r).unwrap();
    }

    // Envelopes naming both, neither, or an unknown endpoint: dead-lettered naming the field.
    let base = TestEnvelope::new("evt-both", "shop", &url_new).to_json();
    let mut both: serde_json::Value = serde_json::from_str(&base).unwrap();
    both["endpoint_id"] = "E".into();
    let mut neither = both.clone();
    neither["id"] = "evt-neither".into();
    neither.as_object_mut().unwrap().remove("endpoint");
    neither.as_object_mut().unwrap().remove("endpoint_id");
    s.q.send("shop", &both.to_string()).await;
    s.q.send("shop", &neither.to_string()).await;
    s.send("evt-unknown", "nope").await;
    engine
        .until(
            s,
            limit,
            "the three malformed envelopes dead-lettered",
            dlq_holds(3),
        )
        .await;
    let dead = s.q.drain(&s.q.dlq).await;
    let reason_of = |id: Option<&str>, text: &str| {
        let m = dead
            .iter()
            .find(|m| {
                id.is_none_or(|id| msg_attr(m, "squall-event-id").as_deref() == Some(id))
                    && msg_attr(m, "squall-reason").is_some_and(|r| r.contains(text))
            })
            .unwrap_or_else(|| panic!("no dead letter with {text:?}: {dead:?}"));
        msg_attr(m, "squall-reason").unwrap()
    };
    reason_of(
        None,
        "fields \"endpoint\" and \"endpoint_id\" are both present",
    );
    reason_of(
        None,
        "missing endpoint: give \"endpoint\" (a URL) or \"endpoint_id\"",
    );
    let unknown = reason_of(Some("evt-unknown"), "field \"endpoint_id\"");
    assert!(unknown.contains("has no endpoint \"nope\""), "{unknown}");

    // An endpoint moved from an allowed address to a forbidden one while its events wait:
    // refused by the SSRF guard at their next attempt, nothing sent there.
    let forbidden = "http://10.0.0.1:9/f";
    let allow = squall::ssrf::Allowlist::parse(&["127.0.0.0/8"]).unwrap();
    assert!(squall::ssrf::check_url(&url::Url::parse(forbidden).unwrap(), &allow).is_err());
    s.endpoints(&["create", "F", "--url", &rx.url("/f")]);
    tokio::time::sleep(Duration::from_secs(TTL_SECS + 1)).await;
    for i in 0..5 {
        s.send(&format!("evt-f-{i}"), "F").await;
    }
    engine
        .until(
            s,
            limit,
            "F's events tried at its allowed URL",
            async |s: &Setup| s.ids_at("/f").len() == 5,
        )
        .await;
    s.endpoints(&["update", "F", "--url", forbidden]);
    engine
        .until(s, limit, "F's events refused", dlq_holds(5))
        .await;
    let dead = s.q.drain(&s.q.dlq).await;
    for m in &dead {
        let reason = msg_attr(m, "squall-reason").unwrap();
        assert!(
            reason.starts_with(
                "refused by policy: 10.0.0.1 is a forbidden address (private network)"
            ),
            "{reason}"
        );
        assert_eq!(msg_attr(m, "squall-endpoint-id").as_deref(), Some("F"));
    }

    // The metrics records name the endpoint id.
    let records = s.q.drain(&s.q.metrics).await;
    let by_e = records
        .iter()
        .filter_map(|m| m.body())
        .filter(|b| b.contains("\"endpoint_id\":\"E\"") && b.contains("\"outcome\":\"delivered\""))
        .count();
    assert!(by_e >= EVENTS + 11, "{by_e} delivered records name E");
    let tried: HashSet<String> = s.ids_at("/f").into_keys().collect();
    assert_eq!(tried.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_endpoint_through_squall_run() {
    let endpoint = sqs_or_skip!();
    let s = Setup::new(&endpoint, "endpoints-run").await;
    let engine = Engine::Run(SquallRun::start(&s.config_text));
    scenario(&s, &engine).await;
    let Engine::Run(mut run) = engine else {
        unreachable!()
    };
    assert!(run.is_running(), "{}", run.log());
    assert!(run.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_endpoint_through_the_bootstrap() {
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let s = Setup::new(&endpoint, "endpoints-lambda").await;
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = s._dir.join("bootstrap.log");
    let _function = start_function(&bin, port, &s.config_file, &log);
    let engine = Engine::Lambda {
        port,
        q_url: s.q.app("shop").to_string(),
    };
    scenario(&s, &engine).await;
}

/// The condition "the dead-letter queue holds `n` messages".
fn dlq_holds(n: u64) -> impl AsyncFn(&Setup) -> bool {
    async move |s: &Setup| s.q.depth(&s.q.dlq).await.0 >= n
}

/// The `n` messages of `queue`, received and left there (visibility 0).
async fn peek(q: &TestQueues, queue: &str, n: usize) -> Vec<aws_sdk_sqs::types::Message> {
    peek_with(q, queue, n, 0).await
}

/// The `n` messages of `queue`, received and back after `visibility` seconds.
pub(crate) async fn peek_with(
    q: &TestQueues,
    queue: &str,
    n: usize,
    visibility: i32,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut got: BTreeMap<String, aws_sdk_sqs::types::Message> = BTreeMap::new();
    for _ in 0..50 {
        let r = q
            .client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in r.messages.unwrap_or_default() {
            got.insert(m.message_id.clone().unwrap_or_default(), m);
        }
        if got.len() >= n {
            break;
        }
    }
    assert_eq!(got.len(), n, "{queue}");
    got.into_values().collect()
}

/// The scale the registry claims: 1,000 endpoints in one application's item (DynamoDB's
/// 400 KB item limit is what bounds them), read back as the engine reads them, the 1,001st
/// refused naming the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_endpoints_in_one_application() {
    use squall::endpoints::{Endpoint, MAX_ENDPOINTS_PER_APP};
    let endpoint = sqs_or_skip!();
    let s = Setup::new(&endpoint, "endpoints-scale").await;
    let store = &s._reg.store;
    store.ensure_endpoints_map("shop").await.unwrap();
    let mut bytes = 0;
    for i in 0..MAX_ENDPOINTS_PER_APP {
        // A typical subscriber: a 60-byte URL, its own key, two short headers.
        let e = Endpoint::new(
            &format!("subscriber-{i:04}"),
            &format!("https://hooks-{i:04}.customer.example.com/webhooks/squall/in"),
            true,
            Some("k2"),
            &[
                ("x-tenant".into(), format!("tenant-{i:04}")),
                ("x-env".into(), "production".into()),
            ],
        )
        .unwrap();
        let body = e.to_toml();
        bytes += e.id.len() + body.len();
        store
            .put_endpoint("shop", &e.id, &body, None, 0)
            .await
            .unwrap();
    }
    eprintln!(
        "{MAX_ENDPOINTS_PER_APP} endpoints: {} KB of the item's 400 KB",
        bytes / 1024
    );
    let config =
        Config::from_toml_str(&s.config_text, &s._dir, Vec::<(String, String)>::new()).unwrap();
    let record = store
        .get("shop", &squall::registry::ReadCounts::default())
        .await
        .unwrap()
        .unwrap();
    let app = record.app_config(&config).unwrap();
    assert_eq!(app.endpoints.len(), MAX_ENDPOINTS_PER_APP);
    assert_eq!(
        app.endpoints
            .get("subscriber-0999")
            .unwrap()
            .signing_key
            .as_deref(),
        Some("k2")
    );
    // The 1,001st: refused before anything is written, naming the limit.
    let out = Command::new(squall_bin())
        .args(["endpoints", "--app", "shop", "create", "one-too-many"])
        .args(["--url", "https://x.example.com/"])
        .env("SQUALL_CONFIG", &s.config_file)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("apps.shop.endpoints") && e.contains("limit of 1000"),
        "{e}"
    );
    let listed = s.endpoints(&["list", "--json"]);
    assert_eq!(listed.lines().count(), MAX_ENDPOINTS_PER_APP);
}
