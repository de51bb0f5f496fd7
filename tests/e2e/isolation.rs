//! Isolation through the real `squall run`, with a purpose-built plugin
//! (`plugins/rust/fixture-prober`) that tries what a malicious plugin would try and sends
//! what it saw as the request body: no environment, no files, no sockets, no secret (only
//! HMAC outputs), no state shared between applications; and response data reaching the
//! engine (what it records, what a retry policy is given) is capped.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{TEST_SECRET, config_toml, now_ms, plugin_path, sqs_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTLE: Duration = Duration::from_secs(60);

fn envelope(id: &str, app: &str, kind: &str, endpoint: &str) -> String {
    TestEnvelope::new(id, app, endpoint)
        .event_type(kind)
        .payload(json!({"id": id}))
        .to_json()
}

fn prober(app: &str, config: &str, extra: &str) -> String {
    format!(
        "{extra}\n[apps.{app}.plugins.transform]\npath = \"{}\"\nconfig = {{ {config} }}\n",
        plugin_path("fixture-prober")
    )
}

/// Send one event and wait until the receiver has its report; returns the report.
async fn probe(q: &TestQueues, rx: &Receiver, app: &str, id: &str, kind: &str) -> Value {
    let path = format!("/{app}/{id}");
    q.send(app, &envelope(id, app, kind, &rx.url(&path))).await;
    let req = eventually(SETTLE, &format!("the report of {id}"), || async {
        rx.requests_for(&path).into_iter().next()
    })
    .await;
    assert_eq!(
        verify_recorded(TEST_SECRET, &req).unwrap(),
        id,
        "the report is delivered like any event (signed)"
    );
    let body: Value = serde_json::from_slice(&req.body).expect("the report is JSON");
    assert_eq!(body["probe"], kind);
    assert_eq!(body["app_id"], app);
    eprintln!("{app} {kind}: {}", body["report"]);
    body["report"].clone()
}

fn is_err(v: &Value) -> bool {
    v.get("err").is_some_and(Value::is_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_sees_no_environment_files_sockets_or_secrets() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["probe"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let dist = std::path::Path::new(&plugin_path("fixture-prober"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let config = format!(
        "env_names = \"AWS_SECRET_ACCESS_KEY,AWS_ACCESS_KEY_ID,HOME,PATH,SQUALL_LOG\", paths = \"{dist},{},{home},/proc/self/cmdline\", connect_to = \"{}\"",
        plugin_path("fixture-prober"),
        rx.addr()
    );
    let app = prober(
        "probe",
        &config,
        "[apps.probe.plugin_limits]\ntimeout_ms = 5000",
    );
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("probe", &app)]));

    // Environment: the runner has AWS credentials, PATH, HOME, SQUALL_LOG; the plugin none.
    let env = probe(&q, &rx, "probe", "evt_env", "probe.env").await;
    assert_eq!(env["vars"], json!([]), "no environment variables: {env}");
    assert_eq!(env["args"], json!([]), "no arguments: {env}");
    // wasi-libc answers its own virtual "/" (there is no preopened directory behind it).
    assert_eq!(env["cwd"], json!({"ok": "\"/\""}), "{env}");
    let named = env["named"].as_array().unwrap();
    assert_eq!(named.len(), 5);
    for n in named {
        assert!(is_err(&n["value"]), "{n}");
    }

    // Files: nothing to read, list, stat or write, not even the plugin's own file.
    let fs = probe(&q, &rx, "probe", "evt_fs", "probe.fs").await;
    let paths = fs["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 9, "{fs}");
    for p in paths {
        for op in ["read", "list", "metadata"] {
            assert!(is_err(&p[op]), "{} {op}: {p}", p["path"]);
        }
    }
    assert!(is_err(&fs["write"]) && is_err(&fs["create"]), "{fs}");

    // Sockets: no TCP connection (the receiver sees no /leak), no UDP, no DNS, no listener.
    let net = probe(&q, &rx, "probe", "evt_net", "probe.net").await;
    assert!(
        net["tcp"]["connect"].get("err").is_some(),
        "TCP connect must fail: {net}"
    );
    assert!(
        net["udp"]["bind"].get("err").is_some() || is_err(&net["udp"]["send"]),
        "UDP must fail: {net}"
    );
    assert!(is_err(&net["dns"]), "DNS must fail: {net}");
    assert!(is_err(&net["listen"]), "listening must fail: {net}");

    // Clock and randomness are available (and harmless): the wall clock is the real time.
    let clock = probe(&q, &rx, "probe", "evt_clock", "probe.clock").await;
    let wall: u64 = clock["wall_ms"]["ok"]
        .as_str()
        .expect("the wall clock is readable")
        .parse()
        .unwrap();
    assert!(wall.abs_diff(now_ms()) < 120_000, "{clock}");
    assert!(clock["host_now_ms"].as_u64().unwrap().abs_diff(wall) < 5_000);
    let random = clock["random"].as_array().unwrap();
    assert_ne!(random[0], random[1], "randomness is real: {clock}");

    // Secrets: HMAC outputs only, equal to an independent computation with the key.
    let secret = probe(&q, &rx, "probe", "evt_secret", "probe.secret").await;
    let key = base64::engine::general_purpose::STANDARD
        .decode(TEST_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(b"probe");
    let expected = hex(&mac.finalize().into_bytes());
    assert_eq!(secret["hmac_default"], json!(expected));
    assert_eq!(secret["hmac_all"], json!([expected]));
    assert_eq!(
        secret["sha256"],
        json!(hex(&<Sha256 as sha2::Digest>::digest(b"probe")))
    );
    assert!(
        secret["hmac_missing"]["err"]
            .as_str()
            .unwrap()
            .contains("has no secret named \"no-such-key\""),
        "{secret}"
    );
    for c in secret["config"].as_array().unwrap() {
        assert_eq!(c["value"], Value::Null, "{c}");
    }

    let mut run = run;
    assert!(run.is_running());
    assert!(run.terminate().success());

    // Nothing the plugin sent anywhere contains the secret in any encoding.
    let b64 = TEST_SECRET.strip_prefix("whsec_").unwrap();
    let all: Vec<_> = rx.requests();
    assert_eq!(all.len(), 5, "five reports and no /leak request");
    for r in &all {
        let text = String::from_utf8_lossy(&r.body);
        for needle in [TEST_SECRET, b64, hex(&key).as_str()] {
            assert!(!text.contains(needle), "{} leaks the secret", r.path);
        }
        assert!(!r.body.windows(key.len()).any(|w| w == key.as_slice()));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn memory(report: &Value) -> Vec<String> {
    report["memory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn state_in_one_applications_plugin_is_invisible_to_another() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["alpha", "beta", "gamma"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let run = SquallRun::start(&config_toml(
        &endpoint,
        &q,
        &[
            ("alpha", &prober("alpha", "", "")),
            ("beta", &prober("beta", "", "")),
            (
                "gamma",
                &prober(
                    "gamma",
                    "",
                    "[apps.gamma.plugin_limits]\nisolation = \"fresh\"",
                ),
            ),
        ],
    ));

    // alpha remembers (instances are reused within an application: the state is real).
    let mut alpha_seen = Vec::new();
    for i in 1..=3 {
        let id = format!("a{i}");
        let m = memory(&probe(&q, &rx, "alpha", &id, "state.add").await);
        assert!(m.contains(&id), "{m:?}");
        alpha_seen.push(m);
    }
    assert!(
        alpha_seen.iter().any(|m| m.len() > 1),
        "alpha's instance kept its state between events: {alpha_seen:?}"
    );
    // beta, the same component, sees none of it, and its own state stays its own.
    assert_eq!(
        memory(&probe(&q, &rx, "beta", "b1", "state.read").await),
        Vec::<String>::new()
    );
    assert_eq!(
        memory(&probe(&q, &rx, "beta", "b2", "state.add").await),
        vec!["b2".to_string()]
    );
    let a4 = memory(&probe(&q, &rx, "alpha", "a4", "state.read").await);
    assert!(
        a4.iter().all(|id| id.starts_with('a')) && !a4.is_empty(),
        "alpha sees only alpha: {a4:?}"
    );
    // gamma, with a fresh instance per call, keeps nothing from one event to the next.
    for id in ["g1", "g2", "g3"] {
        assert_eq!(
            memory(&probe(&q, &rx, "gamma", id, "state.add").await),
            vec![id.to_string()]
        );
    }
    assert!(run.terminate().success());
}

/// A raw HTTP/1.1 server on loopback answering every request with 503, `extra_headers`
/// small headers, one 2000-byte header, one 1024-byte header, and an endless chunked body
/// of `BODY` bytes. Returns its address; counts the body bytes it managed to write.
async fn flood_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                // Read the head and the (small) body.
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(i) = seen.windows(4).position(|x| x == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..i]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if seen.len() >= i + 4 + len {
                            break;
                        }
                    }
                }
                let mut head = String::from("HTTP/1.1 503 Flood\r\ntransfer-encoding: chunked\r\n");
                head.push_str(&format!("x-big: {}\r\n", "b".repeat(2000)));
                head.push_str(&format!("x-max: {}\r\n", "m".repeat(1024)));
                for i in 0..80 {
                    head.push_str(&format!("x-h-{i:02}: v{i}\r\n"));
                }
                head.push_str("\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "BODY".repeat(0x10000 / 4));
                loop {
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    w.fetch_add(0x10000, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    (addr, written)
}

#[tokio::test(flavor = "multi_thread")]
async fn response_data_beyond_the_caps_is_dropped_before_a_policy_sees_it() {
    use squall::hooks::{Outcome, Request};
    use squall::http::{
        ClientOptions, Deliverer, MAX_RESPONSE_HEADER_VALUE, MAX_RESPONSE_HEADERS,
        POOL_MAX_IDLE_PER_HOST, SendOptions,
    };
    let (addr, _) = flood_server().await;

    // The deliverer: 64 KiB of body (the default cap), 64 headers, values up to 1024 bytes.
    assert_eq!(
        (MAX_RESPONSE_HEADERS, MAX_RESPONSE_HEADER_VALUE),
        (64, 1024)
    );
    let opts = SendOptions::default();
    assert_eq!(opts.max_response_bytes, 65536, "the default body cap");
    let d = Deliverer::new(&ClientOptions {
        allowlist: squall::ssrf::Allowlist::parse(&["127.0.0.0/8"]).unwrap(),
        connect_timeout: Duration::from_secs(2),
        pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
        tls: None,
    })
    .unwrap();
    let req = Request {
        method: "POST".into(),
        url: format!("http://{addr}/direct"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: b"{}".to_vec(),
    };
    let a = d.send(&req, &opts).await;
    let Outcome::Response { status, headers } = &a.outcome else {
        panic!("{:?}", a.outcome)
    };
    assert_eq!(*status, 503);
    assert_eq!(headers.len(), MAX_RESPONSE_HEADERS, "header count capped");
    assert!(
        headers
            .iter()
            .all(|(_, v)| v.len() <= MAX_RESPONSE_HEADER_VALUE)
    );
    assert!(
        headers.iter().any(|(n, v)| n == "x-max" && v.len() == 1024),
        "a value of exactly the cap is kept"
    );
    assert!(
        !headers.iter().any(|(n, _)| n == "x-big"),
        "a longer one is dropped"
    );
    assert_eq!(a.body_prefix.len(), 65536, "body read up to the cap");
    assert!(a.truncated);
    assert!(
        a.latency < Duration::from_secs(5),
        "the endless body is not read to its end: {:?}",
        a.latency
    );

    // Through the engine: the retry policy (the prober, reporting what it was given in its
    // dead-letter reason) sees the capped headers; nothing of the body is recorded.
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["capped"]).await;
    let app = format!(
        "[apps.capped.plugins.retry_policy]\npath = \"{}\"\n",
        plugin_path("fixture-prober")
    );
    let run = SquallRun::start(&config_toml(&endpoint, &q, &[("capped", &app)]));
    q.send(
        "capped",
        &envelope(
            "evt_flood",
            "capped",
            "flood",
            &format!("http://{addr}/engine"),
        ),
    )
    .await;
    eventually(SETTLE, "the flood event in the DLQ", || async {
        (q.depth(&q.dlq).await.0 == 1 && q.depth(q.app("capped")).await == (0, 0, 0)).then_some(())
    })
    .await;
    assert!(run.terminate().success());
    let dead = q.drain(&q.dlq).await;
    let reason = msg_attr(&dead[0], "squall-reason").unwrap();
    let prefix = "prober saw status=503 headers=64 longest_value=1024 header_bytes=";
    assert!(reason.starts_with(prefix), "{reason}");
    let attrs = format!("{:?}", dead[0].message_attributes);
    assert!(!attrs.contains("BODY"), "no body bytes in the DLQ message");
    let records: Vec<Value> = q
        .drain(&q.metrics)
        .await
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["status"], 503);
    assert_eq!(r["outcome"], "dead_letter");
    assert!(!r.to_string().contains("BODY"), "no body bytes in metrics");
    assert!(
        r["latency_ms"].as_u64().unwrap() < 1500,
        "stopped reading at the cap, before the 1500 ms timeout: {r}"
    );
}
