//! OAuth2 client credentials through the real `squall run` on moto (issue 21, item 1): a local
//! token server (checks the client's id and secret by HTTP Basic, RFC 6749 2.3.1, and counts its
//! requests) and endpoints that accept only a bearer token it issued.
//!
//! - 50 concurrent events share one token: one token request;
//! - the endpoint revokes that token (401 to it): exactly one more token request, every event
//!   delivered at attempt 1 (the refresh and the second send are the same attempt);
//! - 2-s tokens are replaced before they expire (an endpoint refusing expired tokens sees none);
//! - a token endpoint that is down, or refuses the client, fails the attempts with error kind
//!   `token`: retried, then dead-lettered with `squall-last-error = token: ...`; the endpoint
//!   sees nothing; a token URL the SSRF guard forbids is refused like an endpoint;
//! - no token and no client secret in the runner's log, the dead letters or the metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Recorded, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{TEST_SECRET, config_head, sqs_or_skip};

const CLIENT_SECRET: &str = "s3cr:t/+x-oauth";

fn envelope(app: &str, id: &str, url: &str) -> String {
    TestEnvelope::new(id, app, url)
        .payload(json!({"id": id}))
        .to_json()
}

/// Tokens issued, by value: when, and whether the endpoint has revoked it.
#[derive(Default)]
struct Issued {
    tokens: HashMap<String, (Instant, bool)>,
}

/// A token server and the endpoints that trust it, on one receiver.
struct Auth {
    rx: Receiver,
    issued: Arc<Mutex<Issued>>,
    requests: Arc<AtomicU64>,
}

impl Auth {
    /// `/token` issues `expires_in` tokens to `client_id` with [`CLIENT_SECRET`] (HTTP Basic);
    /// `/hook` answers 200 to a bearer it issued, not revoked and not older than `max_age`, else
    /// 401.
    async fn start(client_id: &str, expires_in: u64, max_age: Duration) -> Auth {
        let issued = Arc::new(Mutex::new(Issued::default()));
        let requests = Arc::new(AtomicU64::new(0));
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(client_id),
                enc(CLIENT_SECRET)
            ))
        );
        let (iss, n) = (issued.clone(), requests.clone());
        let token = Arc::new(move |r: &Recorded| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            let form_ok = r.body == b"grant_type=client_credentials&scope=hooks%3Awrite"
                && r.header("content-type") == Some("application/x-www-form-urlencoded");
            if r.header("authorization") != Some(basic.as_str()) || !form_ok {
                return json_reply(401, json!({"error": "invalid_client"}));
            }
            let value = format!("tok-{i}-{:016x}", fastrand::u64(..));
            iss.lock()
                .unwrap()
                .tokens
                .insert(value.clone(), (Instant::now(), false));
            Reply::Answer {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body:
                    json!({"access_token": value, "token_type": "Bearer", "expires_in": expires_in})
                        .to_string()
                        .into_bytes(),
                // Slow enough that concurrent deliveries overlap the fetch.
                delay: Duration::from_millis(300),
            }
        });
        let iss = issued.clone();
        let hook = Arc::new(move |r: &Recorded| {
            let ok = r
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|t| iss.lock().unwrap().tokens.get(t).copied())
                .is_some_and(|(at, revoked)| !revoked && at.elapsed() < max_age);
            // Slow enough that deliveries overlap.
            Reply::Answer {
                status: if ok { 200 } else { 401 },
                headers: Vec::new(),
                body: Vec::new(),
                delay: Duration::from_millis(100),
            }
        });
        let rx = Receiver::options()
            .route_with("/token", token)
            .route_with("/hook", hook)
            .start()
            .await
            .unwrap();
        Auth {
            rx,
            issued,
            requests,
        }
    }

    fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn revoke_all(&self) {
        for (_, revoked) in self.issued.lock().unwrap().tokens.values_mut() {
            *revoked = true;
        }
    }

    fn tokens(&self) -> Vec<String> {
        self.issued.lock().unwrap().tokens.keys().cloned().collect()
    }

    /// The bearer tokens of the 200 answers to `/hook`, by event id.
    fn delivered(&self) -> BTreeMap<String, String> {
        self.rx
            .requests_for("/hook")
            .iter()
            .filter(|r| r.status == Some(200))
            .map(|r| {
                verify_recorded(TEST_SECRET, r).unwrap();
                (
                    r.webhook_id().to_string(),
                    r.header("authorization").unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn json_reply(status: u16, body: Value) -> Reply {
    Reply::Answer {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
        delay: Duration::ZERO,
    }
}

/// `[apps.APP]` with OAuth2 to `auth`'s origin, `extra` lines under `[apps.APP]` first.
fn app_table(q: &TestQueues, app: &str, token_url: &str, origin: &str, extra: &str) -> String {
    format!(
        r#"
[apps.{app}]
queue_url = "{queue}"
secrets = {{ default = "literal:{TEST_SECRET}", oauth = "literal:{CLIENT_SECRET}" }}
max_per_endpoint = 64
{extra}
[apps.{app}.oauth2]
token_url = "{token_url}"
client_id = "{app}-client"
client_secret = "oauth"
scope = "hooks:write"
origins = ["{origin}"]
"#,
        queue = q.app(app),
    )
}

fn origin(rx: &Receiver) -> String {
    format!("http://127.0.0.1:{}", rx.addr().port())
}

async fn metrics(q: &TestQueues) -> Vec<Value> {
    q.drain(&q.metrics)
        .await
        .iter()
        .map(|m| serde_json::from_str::<Value>(m.body().unwrap()).unwrap())
        .filter(|v| v.get("kind").is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_token_per_lifetime_one_refresh_per_401_and_short_tokens_replaced_before_expiry() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["shop", "brief"]).await;
    let shop = Auth::start("shop-client", 3600, Duration::from_secs(3600)).await;
    // 2-s tokens at an endpoint refusing any token older than 2 s.
    let brief = Auth::start("brief-client", 2, Duration::from_secs(2)).await;
    let mut config = config_head(&endpoint, &q, true);
    config.push_str(squall_testkit::config::FAST_RETRY_DEFAULTS);
    config.push_str(&app_table(
        &q,
        "shop",
        &shop.rx.url("/token"),
        &origin(&shop.rx),
        "max_concurrency = 64",
    ));
    config.push_str(&app_table(
        &q,
        "brief",
        &brief.rx.url("/token"),
        &origin(&brief.rx),
        "",
    ));
    // 50 events queued before the runner starts, so that its first receives hand it many at
    // once, all needing the token while the first fetch is on its way: one token request.
    let hook = shop.rx.url("/hook");
    for i in 0..50 {
        q.send("shop", &envelope("shop", &format!("a-{i:02}"), &hook))
            .await;
    }
    let run = SquallRun::start(&config);
    eventually(Duration::from_secs(60), "50 events delivered", || async {
        (shop.delivered().len() == 50).then_some(())
    })
    .await;
    let in_flight = shop.rx.max_in_flight();
    eprintln!(
        "50 events: {} token request(s), {} endpoint requests, at most {in_flight} at once",
        shop.token_requests(),
        shop.rx.requests_for("/hook").len()
    );
    assert_eq!(
        shop.token_requests(),
        1,
        "one token for 50 concurrent events"
    );
    assert!(in_flight > 1, "the deliveries overlapped ({in_flight})");
    let first: HashSet<String> = shop.delivered().into_values().collect();
    assert_eq!(first.len(), 1, "every delivery carried the one token");

    // The endpoint revokes it: each delivery gets a 401 once, one refresh in all.
    shop.revoke_all();
    for i in 0..20 {
        q.send("shop", &envelope("shop", &format!("b-{i:02}"), &hook))
            .await;
    }
    eventually(Duration::from_secs(60), "20 more delivered", || async {
        (shop.delivered().len() == 70).then_some(())
    })
    .await;
    let rejected = shop
        .rx
        .requests_for("/hook")
        .iter()
        .filter(|r| r.status == Some(401))
        .count();
    eprintln!(
        "after revocation: {} token requests in all, {rejected} requests answered 401",
        shop.token_requests()
    );
    assert_eq!(shop.token_requests(), 2, "exactly one refresh");
    assert!((1..=20).contains(&rejected), "{rejected}");
    let delivered = shop.delivered();
    let second: HashSet<&String> = delivered
        .iter()
        .filter(|(id, _)| id.starts_with("b-"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(second.len(), 1);
    assert!(!first.contains(*second.iter().next().unwrap()));

    // 2-s tokens: two waves 3 s apart need two tokens; none was used expired.
    let short_hook = brief.rx.url("/hook");
    for wave in 0..2 {
        for i in 0..10 {
            q.send(
                "brief",
                &envelope("brief", &format!("w{wave}-{i}"), &short_hook),
            )
            .await;
        }
        eventually(Duration::from_secs(60), "a wave delivered", || async {
            (brief.delivered().len() == 10 * (wave + 1)).then_some(())
        })
        .await;
        if wave == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let brief_401 = brief
        .rx
        .requests_for("/hook")
        .iter()
        .filter(|r| r.status == Some(401))
        .count();
    let used: HashSet<String> = brief.delivered().into_values().collect();
    eprintln!(
        "2-s tokens: {} token requests, {} distinct tokens used, {brief_401} answered 401",
        brief.token_requests(),
        used.len()
    );
    assert!(used.len() >= 2, "a new token after expiry");
    assert_eq!(brief.token_requests() as usize, used.len());
    assert_eq!(brief_401, 0, "no expired token was sent");

    let mut run = run;
    assert!(run.is_running(), "{}", run.log());
    let (_, log) = run.stop_with_log("TERM");

    // One attempt per event: the 401 and the second send were one attempt.
    let records = metrics(&q).await;
    let shop_records: Vec<&Value> = records.iter().filter(|r| r["app_id"] == "shop").collect();
    assert_eq!(shop_records.len(), 70, "one record per event");
    assert!(
        shop_records
            .iter()
            .all(|r| r["attempt"] == 1 && r["outcome"] == "delivered" && r["status"] == 200)
    );
    // No secret anywhere.
    let everything = format!("{log}\n{records:?}");
    for t in shop.tokens().iter().chain(brief.tokens().iter()) {
        assert!(!everything.contains(t.as_str()), "token {t} leaked");
    }
    assert!(!everything.contains(CLIENT_SECRET));
    assert!(log.contains("oauth2 token fetched"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_token_endpoint_is_a_token_error_retried_then_dead_lettered() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["down", "refused", "guarded"]).await;
    let auth = Auth::start("someone-else", 3600, Duration::from_secs(3600)).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let retry = "[apps.APP.retry]\nmax_attempts = 2";
    let mut config = config_head(&endpoint, &q, true);
    config.push_str(squall_testkit::config::FAST_RETRY_DEFAULTS);
    // The token endpoint is down (nothing listens).
    config.push_str(&app_table(
        &q,
        "down",
        &format!("http://127.0.0.1:{closed}/token"),
        &origin(&auth.rx),
        &retry.replace("APP", "down"),
    ));
    // It refuses this client (wrong id).
    config.push_str(&app_table(
        &q,
        "refused",
        &auth.rx.url("/token"),
        &origin(&auth.rx),
        &retry.replace("APP", "refused"),
    ));
    // Loopback is allowed to nothing of this application: its token URL is refused.
    config.push_str(&app_table(
        &q,
        "guarded",
        &auth.rx.url("/token"),
        &origin(&auth.rx),
        "allowed_networks = []",
    ));
    let run = SquallRun::start(&config);
    let hook = auth.rx.url("/hook");
    for app in ["down", "refused", "guarded"] {
        for i in 0..3 {
            q.send(app, &envelope(app, &format!("{app}-{i}"), &hook))
                .await;
        }
    }
    // Dead letters arrive over several drains: collect until 9.
    let mut letters = Vec::new();
    let started = Instant::now();
    while letters.len() < 9 && started.elapsed() < Duration::from_secs(60) {
        letters.extend(q.drain(&q.dlq).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, log) = run.stop_with_log("TERM");
    assert_eq!(letters.len(), 9, "{log}");
    let mut by_app: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for m in &letters {
        by_app
            .entry(msg_attr(m, "squall-app-id").unwrap())
            .or_default()
            .push((
                msg_attr(m, "squall-last-error").unwrap_or_default(),
                msg_attr(m, "squall-attempts").unwrap_or_default(),
            ));
    }
    eprintln!("{by_app:#?}");
    for (error, attempts) in &by_app["down"] {
        assert!(
            error.starts_with(&format!(
                "token: token endpoint http://127.0.0.1:{closed}/token: connect failed"
            )),
            "{error}"
        );
        assert_eq!(attempts, "2", "retried by policy");
    }
    for (error, attempts) in &by_app["refused"] {
        assert!(
            error.starts_with(&format!(
                "token: token endpoint {} answered status 401 (error \"invalid_client\")",
                auth.rx.url("/token")
            )),
            "{error}"
        );
        assert_eq!(attempts, "2");
    }
    for (error, attempts) in &by_app["guarded"] {
        assert!(
            error.starts_with("refused-by-policy: token endpoint ")
                && error.contains("refused by the SSRF guard"),
            "{error}"
        );
        assert_eq!(attempts, "1", "refused at once, like an endpoint");
    }
    assert!(
        auth.rx.requests_for("/hook").is_empty(),
        "no token, no request"
    );
    // 3 events x 2 attempts of "refused" (waiters may share a failed fetch); none from "guarded".
    let asked = auth.token_requests();
    assert!((1..=6).contains(&asked), "{asked}");
    let records = metrics(&q).await;
    let kinds: HashSet<&str> = records
        .iter()
        .filter(|r| r["app_id"] != "guarded")
        .map(|r| r["error_kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, HashSet::from(["token"]), "{records:?}");
    assert!(!format!("{log}{records:?}").contains(CLIENT_SECRET));
}
