//! The plugin runtime against the real sample components in `plugins/dist` (build them
//! with `scripts/build-plugins`): real outputs, limits, load errors, the artifact cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use squall::hooks::{
    AttemptContext, Event, HookError, Outcome, Request, RetryDecision, RetryPolicy, Signer,
    Transform, TransformResult, TransportErrorKind,
};
use squall::plugin::{Isolation, PluginError, PluginRuntime, PluginSpec, RuntimeOptions};
use squall::secrets::{SecretKey, Secrets};
use squall::signing::standard_webhooks_headers;

fn dist(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "squall-plugin-test-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(temp_dir("cache")),
        ..RuntimeOptions::default()
    })
    .unwrap()
}

fn spec(name: &str, config: &[(&str, &str)]) -> PluginSpec {
    let mut s = PluginSpec::new(dist(name));
    s.config = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s
}

fn secrets(pairs: &[(&str, &[&str])]) -> Arc<Secrets> {
    let mut s = Secrets::new();
    for (name, values) in pairs {
        s.insert(
            *name,
            values
                .iter()
                .map(|v| SecretKey::parse(v).unwrap())
                .collect(),
        );
    }
    Arc::new(s)
}

fn ctx(event_id: &str, event_type: &str, attempt: u32) -> AttemptContext {
    AttemptContext {
        event_id: event_id.into(),
        app_id: "billing".into(),
        event_type: event_type.into(),
        attempt,
        first_attempt_at_ms: 1_700_000_000_000,
        now_ms: 1_700_000_000_000,
    }
}

fn request(body: &[u8]) -> Request {
    Request {
        method: "POST".into(),
        url: "https://example.com/hook".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
    }
}

/// A finished process's stdout followed by its stderr.
fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn event(event_type: &str, body: &[u8]) -> Event {
    Event {
        id: "evt_1".into(),
        app_id: "billing".into(),
        event_type: event_type.into(),
        endpoint_url: "https://example.com/hook".into(),
        headers: vec![("x-tenant".into(), "42".into())],
        content_type: "application/json".into(),
        body: body.to_vec(),
        attempt: 1,
        created_at_ms: 1_700_000_000_123,
        first_attempt_at_ms: 1_700_000_000_500,
    }
}

fn status(s: u16, headers: &[(&str, &str)]) -> Outcome {
    Outcome::Response {
        status: s,
        headers: headers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn standard_webhooks_plugin_matches_spec_vector_and_builtin() {
    let rt = runtime();
    let signer = rt
        .signer(
            "billing",
            &spec("standard-webhooks-signer", &[]),
            secrets(&[("main", &[SPEC_SECRET])]),
        )
        .unwrap();
    let body = br#"{"test": 2432232314}"#;
    let headers = signer
        .sign(
            &ctx("msg_p5jXN8AQM9LWM0D4loKWxJek", "t", 1),
            &request(body),
            "main",
            1614265330,
        )
        .unwrap();
    assert_eq!(
        headers,
        vec![
            (
                "webhook-id".to_string(),
                "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string()
            ),
            ("webhook-timestamp".to_string(), "1614265330".to_string()),
            (
                "webhook-signature".to_string(),
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
            ),
        ]
    );

    // During a rotation: byte-identical to the built-in, one signature per secret.
    let keys = [SPEC_SECRET, "an-older-plain-secret", "whsec_c2hvcnQ="];
    let signer = rt
        .signer(
            "billing",
            &spec("standard-webhooks-signer", &[]),
            secrets(&[("main", &keys)]),
        )
        .unwrap();
    let parsed: Vec<SecretKey> = keys.iter().map(|k| SecretKey::parse(k).unwrap()).collect();
    for len in [0usize, 1, 2, 3, 1024, 5000] {
        let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let got = signer
            .sign(
                &ctx("evt_rot", "t", 3),
                &request(&body),
                "main",
                1_700_000_123,
            )
            .unwrap();
        assert_eq!(
            got,
            standard_webhooks_headers(&parsed, "evt_rot", 1_700_000_123, &body),
            "body length {len}"
        );
        assert_eq!(got[2].1.split(' ').count(), 3);
    }
}

#[test]
fn unknown_key_is_a_plugin_error_naming_the_key_not_a_value() {
    let rt = runtime();
    let signer = rt
        .signer(
            "billing",
            &spec("standard-webhooks-signer", &[]),
            secrets(&[("main", &[SPEC_SECRET])]),
        )
        .unwrap();
    let err = signer
        .sign(&ctx("e", "t", 1), &request(b"{}"), "nope", 1)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HookError::Plugin { .. }), "{err:?}");
    assert!(
        text.contains("\"nope\"") && text.contains("billing"),
        "{text}"
    );
    assert!(!text.contains("MfKQ"), "{text}");
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

#[test]
fn github_and_stripe_signers_match_an_independent_hmac() {
    let rt = runtime();
    let s = secrets(&[("gh", &["It's a Secret to Everybody"])]);
    let github = rt.signer("app", &spec("github-signer", &[]), s).unwrap();
    // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
    let headers = github
        .sign(&ctx("e", "t", 1), &request(b"Hello, World!"), "gh", 0)
        .unwrap();
    assert_eq!(
        headers,
        vec![(
            "X-Hub-Signature-256".to_string(),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string()
        )]
    );
    let body = br#"{"id":"evt_9","amount":1200}"#;
    let headers = github
        .sign(&ctx("e", "t", 1), &request(body), "gh", 0)
        .unwrap();
    assert_eq!(
        headers[0].1,
        format!("sha256={}", hmac_hex(b"It's a Secret to Everybody", body))
    );

    let stripe = rt
        .signer(
            "app",
            &spec("stripe-signer", &[]),
            secrets(&[("st", &["sk_plain_secret"])]),
        )
        .unwrap();
    let headers = stripe
        .sign(&ctx("e", "t", 1), &request(body), "st", 42)
        .unwrap();
    assert_eq!(
        headers[0].1,
        format!(
            "t=42,v1={}",
            hmac_hex(b"sk_plain_secret", &[b"42.".as_slice(), body].concat())
        )
    );
}

/// The signer's answers as a map, for the probe below.
fn by_name(headers: &[(String, String)]) -> std::collections::HashMap<&str, &str> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

#[test]
fn a_wit_0_2_0_signer_is_answered_about_the_request_it_signs_and_only_during_the_call() {
    let rt = runtime();
    let path = dist("fixture-signing-probe");
    let info = rt.inspect(&path).unwrap();
    assert_eq!(
        info.hook_version(squall::plugin::Hook::Signer),
        Some("0.2.0")
    );
    let keys = ["first-plain-secret", "second-plain-secret"];
    // This test checks answers, not speed: a 100 KB body crossing an unoptimised (debug) wasmtime
    // several times takes tens of ms, and more on a loaded machine, than the default 100-ms limit.
    let mut spec = PluginSpec::new(&path);
    spec.limits.timeout_ms = 5_000;
    let signer = rt
        .load_signer("billing", &spec, secrets(&[("main", &keys)]))
        .unwrap();
    // A long body, then a short one on the same (reused) instance: no stale bytes carried over.
    for len in [100_000usize, 3000, 0, 17] {
        let body: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
        let mut req = request(&body);
        req.method = "PUT".into();
        req.url = format!("https://example.com/hooks/{len}?q=1");
        req.headers.push(("x-tenant".into(), len.to_string()));
        let got = signer
            .sign(&ctx("evt_v2", "t", 2), &req, "main", 1_700_000_555)
            .unwrap();
        let h = by_name(&got);
        let signed = [b"pre.".as_slice(), &body, b".post"].concat();
        assert_eq!(h["x-method"], "PUT");
        assert_eq!(h["x-url"], req.url);
        assert_eq!(
            h["x-headers"],
            format!("content-type=application/json;x-tenant={len}")
        );
        assert_eq!(h["x-body"], hex::encode(&body), "body length {len}");
        assert_eq!(h["x-body-hmac"], hmac_hex(keys[0].as_bytes(), &signed));
        assert_eq!(
            h["x-body-sha256"],
            hex::encode(<Sha256 as sha2::Digest>::digest(&signed))
        );
        assert_eq!(
            h["x-body-hmac-all"],
            format!(
                "{} {}",
                hmac_hex(keys[0].as_bytes(), &signed),
                hmac_hex(keys[1].as_bytes(), &signed)
            )
        );
        assert!(
            h["x-unknown-key"].contains("\"no-such-key\"") && !h["x-unknown-key"].contains("plain"),
            "{}",
            h["x-unknown-key"]
        );
        assert_eq!(
            (h["x-event-id"], h["x-key-name"], h["x-timestamp"]),
            ("evt_v2", "main", "1700000555")
        );
    }
    assert_eq!(signer.stats().instances_created, 1);

    // Outside a sign call (here in the same plugin's transform) the host refuses to answer.
    let transform = rt
        .transform(
            "billing",
            &PluginSpec::new(&path),
            secrets(&[("default", &keys)]),
        )
        .unwrap();
    match transform.transform(&event("t", b"{}")).unwrap() {
        TransformResult::Skip(reason) => assert_eq!(
            reason,
            "signing-body is answered only during a signer.sign call (WIT 0.2.0) | \
             hmac-sha256-body is answered only during a signer.sign call (WIT 0.2.0) | \
             sha256-body is answered only during a signer.sign call (WIT 0.2.0)"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn envelope_transform_wraps_and_skips() {
    let rt = runtime();
    let t = rt
        .transform(
            "app",
            &spec(
                "envelope-transform",
                &[("skip_types", "ping, internal.audit")],
            ),
            secrets(&[]),
        )
        .unwrap();
    let TransformResult::Send(req) = t
        .transform(&event("invoice.paid", br#"{"amount": 12, "s": "\u00e9"}"#))
        .unwrap()
    else {
        panic!("expected send")
    };
    assert_eq!(req.method, "POST");
    assert_eq!(req.url, "https://example.com/hook");
    assert_eq!(
        req.headers,
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-tenant".to_string(), "42".to_string())
        ]
    );
    let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type": "invoice.paid", "id": "evt_1", "timestamp": "2023-11-14T22:13:20.123Z", "data": {"amount": 12, "s": "é"}})
    );

    // Timestamps keep their zero padding (the digits are written one by one).
    for (ms, iso) in [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400_005, "2000-02-29T00:00:00.005Z"),
        (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
    ] {
        let mut e = event("t", b"1");
        e.created_at_ms = ms;
        let TransformResult::Send(req) = t.transform(&e).unwrap() else {
            panic!("expected send")
        };
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(v["timestamp"], iso, "{ms}");
    }

    // Text that is not JSON (so not declared application/json: the envelope decoder refuses
    // that) travels as a JSON string; quotes are escaped.
    let mut text = event("note \"x\"", b"plain text");
    text.content_type = "text/plain".into();
    let TransformResult::Send(req) = t.transform(&text).unwrap() else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(v["data"], "plain text");
    assert_eq!(v["type"], "note \"x\"");

    assert_eq!(
        t.transform(&event("ping", b"{}")).unwrap(),
        TransformResult::Skip("event type ping is listed in skip_types".into())
    );
    assert!(matches!(
        t.transform(&event("internal.audit", b"{}")).unwrap(),
        TransformResult::Skip(_)
    ));
    let err = t.transform(&event("bin", &[0xff, 0xfe, 0])).unwrap_err();
    assert!(
        matches!(&err, HookError::Plugin { message, .. } if message.contains("neither JSON")),
        "{err:?}"
    );
}

#[test]
fn two_apps_share_the_compiled_component_but_not_config() {
    let rt = runtime();
    let a = rt
        .transform(
            "a",
            &spec("envelope-transform", &[("skip_types", "ping")]),
            secrets(&[]),
        )
        .unwrap();
    let b = rt
        .transform("b", &spec("envelope-transform", &[]), secrets(&[]))
        .unwrap();
    assert!(matches!(
        a.transform(&event("ping", b"{}")).unwrap(),
        TransformResult::Skip(_)
    ));
    assert!(matches!(
        b.transform(&event("ping", b"{}")).unwrap(),
        TransformResult::Send(_)
    ));
    assert_eq!(rt.components_loaded(), 1);
}

#[test]
fn schedule_retry_decision_table() {
    let rt = runtime();
    let p = rt
        .retry_policy("app", &spec("schedule-retry", &[]), secrets(&[]))
        .unwrap();
    let transport = |kind| Outcome::Transport {
        kind,
        message: "x".into(),
    };
    let cases: Vec<(Outcome, u32, RetryDecision)> = vec![
        (status(500, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
        (status(503, &[]), 2, RetryDecision::RetryAfterSeconds(300)),
        (status(502, &[]), 3, RetryDecision::RetryAfterSeconds(1800)),
        (status(500, &[]), 4, RetryDecision::RetryAfterSeconds(7200)),
        (status(500, &[]), 5, RetryDecision::RetryAfterSeconds(18000)),
        (status(500, &[]), 6, RetryDecision::RetryAfterSeconds(36000)),
        (status(500, &[]), 7, RetryDecision::RetryAfterSeconds(36000)),
        (status(408, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
        (status(409, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
        (status(425, &[]), 1, RetryDecision::RetryAfterSeconds(5)),
        (
            status(429, &[("retry-after", "120")]),
            1,
            RetryDecision::RetryAfterSeconds(120),
        ),
        (
            status(503, &[("Retry-After", "9999999")]),
            2,
            RetryDecision::RetryAfterSeconds(86400),
        ),
        (
            status(429, &[("retry-after", "0")]),
            1,
            RetryDecision::RetryAfterSeconds(1),
        ),
        (
            status(429, &[("retry-after", "soon")]),
            2,
            RetryDecision::RetryAfterSeconds(300),
        ),
        (
            transport(TransportErrorKind::Timeout),
            1,
            RetryDecision::RetryAfterSeconds(5),
        ),
        (
            transport(TransportErrorKind::Dns),
            2,
            RetryDecision::RetryAfterSeconds(300),
        ),
        (
            status(500, &[]),
            8,
            RetryDecision::DeadLetter(
                "retry schedule exhausted after 8 attempts; last: status 500".into(),
            ),
        ),
        (
            transport(TransportErrorKind::Reset),
            8,
            RetryDecision::DeadLetter(
                "retry schedule exhausted after 8 attempts; last: reset: x".into(),
            ),
        ),
    ];
    for (outcome, attempt, want) in cases {
        assert_eq!(
            p.decide(&ctx("e", "t", attempt), &outcome).unwrap(),
            want,
            "{outcome:?} attempt {attempt}"
        );
    }
    for s in [400, 401, 403, 404, 410, 422] {
        let d = p.decide(&ctx("e", "t", 1), &status(s, &[])).unwrap();
        assert!(
            matches!(&d, RetryDecision::DeadLetter(r) if r.contains(&s.to_string())),
            "{s}: {d:?}"
        );
    }
    let d = p
        .decide(
            &ctx("e", "t", 1),
            &transport(TransportErrorKind::RefusedByPolicy),
        )
        .unwrap();
    assert!(matches!(d, RetryDecision::DeadLetter(_)));

    let custom = rt
        .retry_policy(
            "app",
            &spec(
                "schedule-retry",
                &[("schedule", "1s, 2m,1d"), ("retry_after_max", "60")],
            ),
            secrets(&[]),
        )
        .unwrap();
    assert_eq!(
        custom.decide(&ctx("e", "t", 2), &status(500, &[])).unwrap(),
        RetryDecision::RetryAfterSeconds(120)
    );
    assert_eq!(
        custom.decide(&ctx("e", "t", 3), &status(500, &[])).unwrap(),
        RetryDecision::RetryAfterSeconds(86400)
    );
    assert!(matches!(
        custom.decide(&ctx("e", "t", 4), &status(500, &[])).unwrap(),
        RetryDecision::DeadLetter(_)
    ));
    assert_eq!(
        custom
            .decide(&ctx("e", "t", 1), &status(429, &[("retry-after", "3600")]))
            .unwrap(),
        RetryDecision::RetryAfterSeconds(60)
    );
    let broken = rt
        .retry_policy(
            "app",
            &spec("schedule-retry", &[("schedule", "5s,10x")]),
            secrets(&[]),
        )
        .unwrap();
    let err = broken
        .decide(&ctx("e", "t", 1), &status(500, &[]))
        .unwrap_err();
    assert!(
        err.to_string().contains("config key schedule") && err.to_string().contains("10x"),
        "{err}"
    );
}

fn misbehave(
    rt: &PluginRuntime,
    mode: &str,
    timeout_ms: u64,
) -> (
    Arc<squall::plugin::PluginTransform>,
    Arc<squall::plugin::PluginSigner>,
    Arc<squall::plugin::PluginRetryPolicy>,
) {
    let mut s = spec("misbehave", &[("mode", mode), ("only_types", "bad")]);
    s.limits.timeout_ms = timeout_ms;
    (
        rt.load_transform("app", &s, secrets(&[])).unwrap(),
        rt.load_signer("app", &s, secrets(&[])).unwrap(),
        rt.load_retry_policy("app", &s, secrets(&[])).unwrap(),
    )
}

#[test]
fn traps_are_typed_and_the_instance_is_not_reused() {
    let rt = runtime();
    let (t, s, p) = misbehave(&rt, "trap", 100);
    assert_eq!(t.stats().instances_created, 1, "prewarmed at load");
    let err = t.transform(&event("bad", b"{}")).unwrap_err();
    assert!(
        matches!(&err, HookError::Trap { plugin, .. } if plugin.contains("misbehave.wasm")),
        "{err:?}"
    );
    assert_eq!(t.stats().instances_discarded, 1);
    assert_eq!(t.stats().idle, 0);
    // The next call (a good event type) runs on a new instance.
    assert!(matches!(
        t.transform(&event("good", b"{}")).unwrap(),
        TransformResult::Send(_)
    ));
    assert_eq!(t.stats().instances_created, 2);
    assert!(t.transform(&event("good", b"{}")).is_ok());
    assert_eq!(
        t.stats().instances_created,
        2,
        "a healthy instance is reused"
    );
    assert!(matches!(
        s.sign(&ctx("e", "bad", 1), &request(b""), "k", 1),
        Err(HookError::Trap { .. })
    ));
    assert!(matches!(
        p.decide(&ctx("e", "bad", 1), &status(500, &[])),
        Err(HookError::Trap { .. })
    ));
    assert_eq!(
        p.decide(&ctx("e", "good", 1), &status(500, &[])).unwrap(),
        RetryDecision::RetryAfterSeconds(10)
    );
}

/// A panicking guest writes its message to WASI stderr; wasmtime-wasi's synchronous shims
/// block on the ambient tokio runtime to do that. Called from inside a runtime (as `squall run`
/// and the Lambda do), this must still come back as a typed trap, on both runtime flavours.
#[test]
fn traps_inside_a_tokio_runtime_are_typed_not_panics() {
    let rt = runtime();
    let (t, _, _) = misbehave(&rt, "trap", 100);
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (flavour, runtime) in [("multi-thread", &multi), ("current-thread", &current)] {
        let t = t.clone();
        let (bad, good) = runtime.block_on(async move {
            tokio::spawn(async move {
                let bad = t.transform(&event("bad", b"{}"));
                let good = t.transform(&event("good", b"{}"));
                (bad, good)
            })
            .await
            .expect("the task must not panic")
        });
        assert!(
            matches!(bad, Err(HookError::Trap { .. })),
            "{flavour}: {bad:?}"
        );
        assert!(
            matches!(good, Ok(TransformResult::Send(_))),
            "{flavour}: {good:?}"
        );
    }
    // Four calls, the first of them run twice (here, then off the reactor): counted once.
    assert_eq!(t.stats().calls, 4);
}

#[test]
fn infinite_loops_time_out_within_the_limit() {
    let rt = runtime();
    let (t, s, p) = misbehave(&rt, "loop", 100);
    for (name, call) in [
        (
            "transform",
            Box::new(|| t.transform(&event("bad", b"{}")).map(drop))
                as Box<dyn Fn() -> Result<(), HookError>>,
        ),
        (
            "sign",
            Box::new(|| s.sign(&ctx("e", "bad", 1), &request(b""), "k", 1).map(drop)),
        ),
        (
            "decide",
            Box::new(|| p.decide(&ctx("e", "bad", 1), &status(500, &[])).map(drop)),
        ),
    ] {
        let started = Instant::now();
        let err = call().unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            err,
            HookError::Timeout {
                plugin: t.identity().to_string(),
                limit_ms: 100
            },
            "{name}"
        );
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(400),
            "{name} took {took:?}"
        );
    }
    assert!(t.transform(&event("good", b"{}")).is_ok());
}

#[test]
fn memory_hogs_hit_the_memory_limit() {
    let rt = runtime();
    let mut s = spec("misbehave", &[("mode", "hog")]);
    s.limits.memory_bytes = 16 << 20;
    let t = rt.load_transform("app", &s, secrets(&[])).unwrap();
    let err = t.transform(&event("x", b"{}")).unwrap_err();
    assert!(
        matches!(err, HookError::Memory { limit_bytes, .. } if limit_bytes == 16 << 20),
        "{err:?}"
    );
    assert!(t.stats().peak_memory_bytes <= 16 << 20);
    assert_eq!(t.stats().instances_discarded, 1);
}

#[test]
fn invalid_outputs_are_refused() {
    // A generous time limit: copying 2 MiB out of the guest is slow in an unoptimised
    // test build on a busy machine, and time is not what this test is about.
    let rt = runtime();
    let cases = [
        ("bad-url", "scheme \"file\""),
        ("crlf-header", "containing CR"),
        ("huge-body", "exceeds the limit of 1048576 bytes"),
    ];
    for (mode, want) in cases {
        let (t, s, _) = misbehave(&rt, mode, 5_000);
        let err = t.transform(&event("bad", b"{}")).unwrap_err();
        assert!(
            matches!(&err, HookError::InvalidOutput { reason, .. } if reason.contains(want)),
            "{mode}: {err:?}"
        );
        if mode != "bad-url" {
            let err = s
                .sign(&ctx("e", "bad", 1), &request(b""), "k", 1)
                .unwrap_err();
            assert!(
                matches!(&err, HookError::InvalidOutput { .. }),
                "{mode}: {err:?}"
            );
        }
        // Invalid output is not a trap: the instance stays in service.
        assert_eq!(t.stats().instances_discarded, 0);
    }
    let (_, _, p) = misbehave(&rt, "huge-body", 5_000);
    assert!(matches!(
        p.decide(&ctx("e", "bad", 1), &status(500, &[])),
        Err(HookError::InvalidOutput { .. })
    ));
    let (t, _, _) = misbehave(&rt, "error", 100);
    assert!(
        matches!(t.transform(&event("bad", b"{}")), Err(HookError::Plugin { message, .. }) if message.contains("on purpose"))
    );
}

#[test]
fn fresh_per_call_isolation_makes_an_instance_per_call() {
    let rt = runtime();
    let mut s = spec("envelope-transform", &[]);
    s.isolation = Isolation::FreshPerCall;
    let t = rt.load_transform("app", &s, secrets(&[])).unwrap();
    for _ in 0..5 {
        t.transform(&event("x", b"{}")).unwrap();
    }
    assert_eq!(t.stats().instances_created, 6);
    assert_eq!(t.stats().idle, 0);
}

#[test]
fn reused_instances_of_the_sample_plugins_keep_their_memory_flat() {
    // The sample plugins allocate through size-class-alloc (plugins/rust/size-class-alloc),
    // which never hands small blocks back: a freed block must be reused by the next call, or
    // an instance would grow call after call until it hit its memory limit. Bodies of several
    // sizes, one over the allocator's 32 KiB small-block limit (the system allocator's path).
    let rt = runtime();
    let signer = rt
        .load_signer(
            "app",
            &spec("standard-webhooks-signer", &[]),
            secrets(&[("main", &[SPEC_SECRET, "whsec_c2hvcnQ="])]),
        )
        .unwrap();
    let transform = rt
        .load_transform("app", &spec("envelope-transform", &[]), secrets(&[]))
        .unwrap();
    let bodies: Vec<Vec<u8>> = [0usize, 17, 1024, 5000, 40_000, 300]
        .iter()
        .map(|n| format!("{{\"d\":\"{}\"}}", "x".repeat(*n)).into_bytes())
        .collect();
    let round = || {
        for (i, body) in bodies.iter().enumerate() {
            let headers = signer
                .sign(
                    &ctx(&format!("evt_{i}"), "t", 1),
                    &request(body),
                    "main",
                    1_700_000_000,
                )
                .unwrap();
            assert_eq!(headers[2].1.split(' ').count(), 2);
            let TransformResult::Send(req) = transform.transform(&event("t", body)).unwrap() else {
                panic!("expected send")
            };
            assert!(req.body.len() > body.len());
        }
    };
    for _ in 0..3 {
        round();
    }
    let warm = (
        signer.stats().peak_memory_bytes,
        transform.stats().peak_memory_bytes,
    );
    for _ in 0..300 {
        round();
    }
    assert_eq!(
        (
            signer.stats().peak_memory_bytes,
            transform.stats().peak_memory_bytes
        ),
        warm,
        "linear memory grew over 1,800 reused calls each"
    );
    assert_eq!(signer.stats().instances_created, 1);
    assert_eq!(transform.stats().instances_created, 1);
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// 10,000 trapping calls: the process survives and its resident memory grows by less
/// than 32 MiB after warm-up (instances are dropped and their slots recycled).
///
/// Measured in a process of its own (this test binary, run again on this test alone): the
/// other tests of this binary load plugins on other threads meanwhile, and their memory
/// would count in this process's RSS.
#[test]
fn ten_thousand_traps_do_not_grow_memory() {
    if std::env::var_os("SQUALL_RSS_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                // Its name in the `engine` test binary.
                "plugins::ten_thousand_traps_do_not_grow_memory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SQUALL_RSS_CHILD", "1")
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the measuring process failed:\n{text}"
        );
        eprintln!("{text}");
        return;
    }
    let rt = runtime();
    let t = rt
        .load_transform("app", &spec("misbehave", &[("mode", "trap")]), secrets(&[]))
        .unwrap();
    for _ in 0..200 {
        assert!(matches!(
            t.transform(&event("x", b"{}")),
            Err(HookError::Trap { .. })
        ));
    }
    let before = rss_bytes();
    for _ in 0..10_000 {
        assert!(matches!(
            t.transform(&event("x", b"{}")),
            Err(HookError::Trap { .. })
        ));
    }
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    eprintln!("RSS before {before} after {after} growth {growth} bytes");
    assert!(
        growth < 32 << 20,
        "RSS grew by {growth} bytes over 10,000 traps"
    );
    assert_eq!(t.stats().instances_discarded, 10_200);
}

#[test]
fn load_errors_name_the_path_and_the_missing_thing() {
    let rt = runtime();
    let path = dist("github-signer");
    let err = rt
        .transform("app", &PluginSpec::new(&path), secrets(&[]))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(matches!(err, PluginError::MissingExport { .. }), "{err:?}");
    assert!(
        text.contains(&path.display().to_string())
            && text.contains("squall:plugin/transform@0.1.0"),
        "{text}"
    );
    assert!(
        text.contains("squall:plugin/signer@0.1.0"),
        "lists what it does export: {text}"
    );

    let dir = temp_dir("bad");
    let corrupt = dir.join("corrupt.wasm");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = rt
        .signer("app", &PluginSpec::new(&corrupt), secrets(&[]))
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Compile { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.wasm"), "{err}");

    let text_file = dir.join("notes.wasm");
    std::fs::write(&text_file, "hello").unwrap();
    let err = rt
        .signer("app", &PluginSpec::new(&text_file), secrets(&[]))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("notes.wasm") && err.to_string().contains("magic"),
        "{err}"
    );

    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = rt
        .signer("app", &PluginSpec::new(&core), secrets(&[]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");

    let missing = dir.join("missing.wasm");
    let err = rt
        .signer("app", &PluginSpec::new(&missing), secrets(&[]))
        .err()
        .unwrap();
    assert!(
        matches!(err, PluginError::Io { .. }) && err.to_string().contains("missing.wasm"),
        "{err}"
    );

    let future = dist("fixture-future-wit");
    let err = rt
        .signer("app", &PluginSpec::new(&future), secrets(&[]))
        .err()
        .unwrap();
    assert!(
        matches!(err, PluginError::UnsupportedVersion { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("fixture-future-wit.wasm")
            && text.contains("squall:plugin/signer@9.0.0")
            && text.contains("0.1.0"),
        "{text}"
    );

    let unknown = dist("fixture-unknown-import");
    let err = rt
        .signer("app", &PluginSpec::new(&unknown), secrets(&[]))
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::UnknownImport { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("fixture-unknown-import.wasm") && text.contains("acme:net/socket@1.0.0"),
        "{text}"
    );

    let mut s = PluginSpec::new(&path);
    s.limits.memory_bytes = 1 << 40;
    let err = rt.signer("app", &s, secrets(&[])).err().unwrap();
    assert!(err.to_string().contains("memory_bytes"), "{err}");
}

#[test]
fn precompiled_artifacts_load_and_bad_ones_are_refused() {
    let rt = runtime();
    let dir = temp_dir("precompile");
    let out = dir.join("sw.cwasm");
    rt.precompile(&dist("standard-webhooks-signer"), &out)
        .unwrap();

    // A fresh runtime with no disk cache loads the artifact without compiling.
    let rt2 = PluginRuntime::new(RuntimeOptions {
        cache_dir: None,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let started = Instant::now();
    let signer = rt2
        .signer(
            "app",
            &PluginSpec::new(&out),
            secrets(&[("main", &[SPEC_SECRET])]),
        )
        .unwrap();
    eprintln!("precompiled load took {:?}", started.elapsed());
    let headers = signer
        .sign(
            &ctx("msg_p5jXN8AQM9LWM0D4loKWxJek", "t", 1),
            &request(br#"{"test": 2432232314}"#),
            "main",
            1614265330,
        )
        .unwrap();
    assert_eq!(
        headers[2].1,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    let info = rt2.inspect(&out).unwrap();
    assert_eq!(info.hooks, vec![squall::plugin::Hook::Signer]);

    // One flipped byte in the payload (the artifact ends with a 116-byte trailer).
    let mut bytes = std::fs::read(&out).unwrap();
    let last = bytes.len() - 116 - 100;
    bytes[last] ^= 0x55;
    let flipped = dir.join("flipped.cwasm");
    std::fs::write(&flipped, &bytes).unwrap();
    let err = rt2
        .signer("app", &PluginSpec::new(&flipped), secrets(&[]))
        .err()
        .unwrap();
    assert!(
        matches!(err, PluginError::CorruptArtifact { .. })
            && err.to_string().contains("flipped.cwasm"),
        "{err}"
    );

    // Truncated.
    let truncated = dir.join("truncated.cwasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = rt2
        .signer("app", &PluginSpec::new(&truncated), secrets(&[]))
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::CorruptArtifact { .. }), "{err}");
}

/// Deployment artifacts for a Lambda architecture, made on any machine: for this machine's
/// architecture they load (pooled, mapped, as in Lambda) and sign byte for byte as the `.wasm`
/// does, though this engine detected its own CPU features; for the other architecture they
/// are that architecture's code and are refused here naming both.
#[test]
fn artifacts_precompiled_for_an_architecture_load_on_any_cpu_of_it() {
    use squall::plugin::{Architecture, Precompiler, arch_name, host_architecture};
    let Some(host) = host_architecture() else {
        eprintln!("SKIPPED: not a Lambda architecture");
        return;
    };
    let dir = temp_dir("cross");
    let here = dir.join("sw-here.cwasm");
    Precompiler::new(&RuntimeOptions::default(), host)
        .unwrap()
        .precompile(&dist("standard-webhooks-signer"), &here)
        .unwrap();
    let rt = PluginRuntime::new(RuntimeOptions {
        cache_dir: None,
        map_artifacts: true,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let signer = rt
        .signer(
            "app",
            &PluginSpec::new(&here),
            secrets(&[("main", &[SPEC_SECRET])]),
        )
        .unwrap();
    let headers = signer
        .sign(
            &ctx("msg_p5jXN8AQM9LWM0D4loKWxJek", "t", 1),
            &request(br#"{"test": 2432232314}"#),
            "main",
            1614265330,
        )
        .unwrap();
    assert_eq!(
        headers[2].1,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );

    let other = match host {
        Architecture::Arm64 => Architecture::X86_64,
        Architecture::X86_64 => Architecture::Arm64,
    };
    let there = dir.join("sw-there.cwasm");
    Precompiler::new(&RuntimeOptions::default(), other)
        .unwrap()
        .precompile(&dist("standard-webhooks-signer"), &there)
        .unwrap();
    let bytes = std::fs::read(&there).unwrap();
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    assert_eq!(
        machine,
        match other {
            Architecture::Arm64 => 183,
            Architecture::X86_64 => 62,
        },
        "ELF e_machine of the {} artifact",
        arch_name(other)
    );
    let err = rt
        .signer("app", &PluginSpec::new(&there), secrets(&[]))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        matches!(err, PluginError::ForeignArtifact { .. })
            && text.contains("sw-there.cwasm")
            && text.contains(&format!(
                "compiled for {o} (any {o} CPU), and this host is {h}",
                o = arch_name(other),
                h = arch_name(host)
            )),
        "{text}"
    );
}

/// Loading the same artifact twice (as a Lambda init does: `inspect_all`, then the hook) maps
/// it once; a file replaced at the same path is checked again, and an artifact of the old
/// format (header in front) is refused with what to do. (The other artifact tests read
/// artifacts, the default outside Lambda.)
#[test]
fn artifacts_are_loaded_once_per_file_and_checked_again_when_changed() {
    let rt = runtime();
    let dir = temp_dir("reload");
    let a = dir.join("sw.cwasm");
    let b = dir.join("gh.cwasm");
    rt.precompile(&dist("standard-webhooks-signer"), &a)
        .unwrap();
    rt.precompile(&dist("github-signer"), &b).unwrap();

    // Mapped, as the Lambda function loads them.
    let rt2 = PluginRuntime::new(RuntimeOptions {
        cache_dir: None,
        map_artifacts: true,
        ..RuntimeOptions::default()
    })
    .unwrap();
    let infos = rt2.inspect_all(&[(a.as_path(), None), (b.as_path(), None)]);
    assert!(infos.iter().all(Result::is_ok), "{infos:?}");
    assert_eq!(rt2.components_loaded(), 2);
    rt2.signer("app", &PluginSpec::new(&a), secrets(&[]))
        .unwrap();
    assert_eq!(
        rt2.components_loaded(),
        2,
        "the second load reused the first"
    );

    // The same path replaced by a copy with one payload byte flipped (written beside it and
    // renamed over it, as deployments and `squall plugin precompile` do: the mapped file is
    // never rewritten in place): checked again, refused.
    let mut bytes = std::fs::read(&a).unwrap();
    let at = bytes.len() - 116 - 100;
    bytes[at] ^= 0x55;
    let tmp = dir.join("sw.cwasm.tmp");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &a).unwrap();
    let err = rt2
        .signer("app", &PluginSpec::new(&a), secrets(&[]))
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::CorruptArtifact { .. }), "{err}");

    // Format 1 put a header in front of the payload.
    let old = dir.join("old.cwasm");
    let mut v1 = b"SQUALLCW".to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&[0u8; 200]);
    std::fs::write(&old, &v1).unwrap();
    let err = rt2
        .signer("app", &PluginSpec::new(&old), secrets(&[]))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        matches!(err, PluginError::ForeignArtifact { .. })
            && text.contains("format version 1")
            && text.contains("precompile it again"),
        "{text}"
    );
}

/// A plugin pinned by its SHA-256 (`sha256` in the config) loads while the file is the pinned
/// one; another file at the same path is refused with both digests, before it is compiled. A
/// `.cwasm` is held to the digest of the source it was compiled from.
#[test]
fn a_pinned_plugin_is_refused_when_its_file_is_not_the_pinned_one() {
    use squall::plugin::file_digest;
    let rt = runtime();
    let dir = temp_dir("pin");
    let file = dir.join("signer.wasm");
    std::fs::copy(dist("standard-webhooks-signer"), &file).unwrap();
    let pinned: [u8; 32] = <Sha256 as sha2::Digest>::digest(std::fs::read(&file).unwrap()).into();
    assert_eq!(file_digest(&file).unwrap(), pinned);
    let mut spec = PluginSpec::new(&file);
    spec.sha256 = Some(pinned);
    rt.signer("app", &spec, secrets(&[])).unwrap();

    // Another build at the same path (replaced, as a deployment would).
    let tmp = dir.join("signer.wasm.tmp");
    std::fs::copy(dist("github-signer"), &tmp).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let actual = file_digest(&file).unwrap();
    let loaded = rt.components_loaded();
    let err = rt.signer("app", &spec, secrets(&[])).err().unwrap();
    match &err {
        PluginError::DigestMismatch {
            path,
            expected,
            actual: found,
        } => assert_eq!((path, expected, found), (&file, &pinned, &actual)),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    for needle in [
        file.display().to_string(),
        hex::encode(pinned),
        hex::encode(actual),
        "sha256".to_string(),
    ] {
        assert!(text.contains(&needle), "{text} lacks {needle}");
    }
    assert_eq!(rt.components_loaded(), loaded, "refused before compiling");
    assert!(matches!(
        rt.inspect_pinned(&file, Some(&pinned)),
        Err(PluginError::DigestMismatch { .. })
    ));
    // Unpinned, the same file loads (the pin is what refuses it).
    rt.signer("app", &PluginSpec::new(&file), secrets(&[]))
        .unwrap();

    // Precompiled: the artifact names its source's digest, and the pin is held to it, read
    // or mapped.
    let artifact = dir.join("signer.cwasm");
    rt.precompile(&dist("standard-webhooks-signer"), &artifact)
        .unwrap();
    assert_eq!(file_digest(&artifact).unwrap(), pinned);
    let mapped = PluginRuntime::new(RuntimeOptions {
        cache_dir: None,
        map_artifacts: true,
        ..RuntimeOptions::default()
    })
    .unwrap();
    for rt in [&rt, &mapped] {
        let mut spec = PluginSpec::new(&artifact);
        spec.sha256 = Some(pinned);
        rt.signer("app", &spec, secrets(&[])).unwrap();
        spec.sha256 = Some(actual);
        let err = rt.signer("app", &spec, secrets(&[])).err().unwrap();
        assert!(
            matches!(&err, PluginError::DigestMismatch { expected, actual, .. }
                if *expected == spec.sha256.unwrap() && *actual == pinned),
            "{err:?}"
        );
    }
    let results = mapped.inspect_all(&[(artifact.as_path(), Some(actual))]);
    assert!(matches!(
        results[0],
        Err(PluginError::DigestMismatch { .. })
    ));
}

#[test]
fn the_disk_cache_is_reused_across_runtimes() {
    let cache = temp_dir("shared-cache");
    let opts = RuntimeOptions {
        cache_dir: Some(cache.clone()),
        ..RuntimeOptions::default()
    };
    let rt = PluginRuntime::new(opts.clone()).unwrap();
    rt.signer("app", &spec("github-signer", &[]), secrets(&[]))
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().unwrap() == "cwasm");
    let rt2 = PluginRuntime::new(opts).unwrap();
    let started = Instant::now();
    let s = rt2
        .signer(
            "app",
            &spec("github-signer", &[]),
            secrets(&[("gh", &["k"])]),
        )
        .unwrap();
    eprintln!("cached load took {:?}", started.elapsed());
    assert!(s.sign(&ctx("e", "t", 1), &request(b"x"), "gh", 0).is_ok());

    // A damaged cache entry is recompiled over, not trusted and not fatal.
    std::fs::write(&files[0], b"SQUALLCW garbage").unwrap();
    let rt3 = PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(cache.clone()),
        ..RuntimeOptions::default()
    })
    .unwrap();
    assert!(
        rt3.signer("app", &spec("github-signer", &[]), secrets(&[]))
            .is_ok()
    );
    assert!(std::fs::read(&files[0]).unwrap().len() > 1000, "rewritten");
}

#[test]
fn spec_vector_base64_is_standard() {
    // Guard for the test data itself: the spec secret decodes to 24 bytes.
    let raw = base64::engine::general_purpose::STANDARD
        .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap();
    assert_eq!(raw.len(), 24);
}

/// The commands of docs/plugins.md, run as written.
#[test]
fn cli_check_and_test_work_as_documented() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cache = temp_dir("cli-cache");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(squall_tests::process::squall_bin())
            .args(args)
            .current_dir(&root)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };
    dist("github-signer");

    let (ok, text) = run(&["plugin", "check", "plugins/dist/github-signer.wasm"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("hooks:    signer (@0.1.0)") && text.contains("squall:plugin/host@0.1.0"),
        "{text}"
    );

    let (ok, text) = run(&[
        "plugin",
        "test",
        "plugins/dist/standard-webhooks-signer.wasm",
        "--hook",
        "sign",
        "--event",
        "examples/envelope.json",
        "--secret",
        "default=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "--timestamp",
        "1614265330",
    ]);
    assert!(ok, "{text}");
    let envelope = squall::envelope::decode(
        &std::fs::read(root.join("examples/envelope.json")).unwrap(),
        &squall::envelope::Limits::default(),
    )
    .unwrap();
    let event = envelope.into_event(1, 0);
    let want = standard_webhooks_headers(
        &[SecretKey::parse(SPEC_SECRET).unwrap()],
        &event.id,
        1614265330,
        &event.body,
    );
    assert!(
        text.contains(&format!("webhook-signature: {}", want[2].1)),
        "{text}"
    );
    assert!(text.contains("call:") && text.contains("memory:"), "{text}");

    let (ok, text) = run(&[
        "plugin",
        "test",
        "plugins/dist/envelope-transform.wasm",
        "--hook",
        "transform",
        "--event",
        "examples/envelope.json",
        "--config",
        "skip_types=ping",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("send: POST https://hooks.example.com/squall"),
        "{text}"
    );
    assert!(
        text.contains(r#"{"type":"invoice.paid","id":"evt_2Q7x9KpLmN4vR8sT","#),
        "{text}"
    );

    let (ok, text) = run(&[
        "plugin",
        "test",
        "plugins/dist/schedule-retry.wasm",
        "--hook",
        "retry",
        "--event",
        "examples/envelope.json",
        "--outcome",
        "429;retry-after=30",
        "--attempt",
        "2",
    ]);
    assert!(ok && text.contains("RetryAfterSeconds(30)"), "{text}");

    // A plugin failure exits non-zero and names the kind.
    let (ok, text) = run(&[
        "plugin",
        "test",
        "plugins/dist/misbehave.wasm",
        "--hook",
        "transform",
        "--event",
        "examples/envelope.json",
        "--config",
        "mode=trap",
    ]);
    assert!(!ok && text.contains("plugin-trap"), "{text}");
    // A signer asked to transform fails at load, naming the export.
    let (ok, text) = run(&[
        "plugin",
        "test",
        "plugins/dist/github-signer.wasm",
        "--hook",
        "transform",
        "--event",
        "examples/envelope.json",
    ]);
    assert!(
        !ok && text.contains("squall:plugin/transform@0.1.0"),
        "{text}"
    );

    let out = cache.join("gh.cwasm");
    let (ok, text) = run(&[
        "plugin",
        "precompile",
        "plugins/dist/github-signer.wasm",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["plugin", "check", out.to_str().unwrap()]);
    assert!(ok && text.contains("hooks:    signer"), "{text}");
}

#[test]
fn concurrent_calls_each_get_an_instance_and_on_demand_allocation_works() {
    for allocator in [
        squall::plugin::AllocatorChoice::Auto,
        squall::plugin::AllocatorChoice::OnDemand,
    ] {
        let rt = PluginRuntime::new(RuntimeOptions {
            cache_dir: None,
            allocator,
            ..RuntimeOptions::default()
        })
        .unwrap();
        if allocator == squall::plugin::AllocatorChoice::OnDemand {
            assert_eq!(rt.allocator(), squall::plugin::Allocator::OnDemand);
        }
        let signer = rt
            .load_signer(
                "billing",
                &spec("standard-webhooks-signer", &[]),
                secrets(&[("main", &[SPEC_SECRET])]),
            )
            .unwrap();
        let key = [SecretKey::parse(SPEC_SECRET).unwrap()];
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (signer, key) = (&signer, &key);
                scope.spawn(move || {
                    for i in 0..200 {
                        let id = format!("evt_{t}_{i}");
                        let body = format!("{{\"n\":{i}}}");
                        let got = signer
                            .sign(
                                &ctx(&id, "t", 1),
                                &request(body.as_bytes()),
                                "main",
                                1_700_000_000,
                            )
                            .unwrap();
                        assert_eq!(
                            got,
                            standard_webhooks_headers(key, &id, 1_700_000_000, body.as_bytes())
                        );
                    }
                });
            }
        });
        let stats = signer.stats();
        assert_eq!(stats.calls, 800);
        assert!(stats.instances_created <= 5, "{stats:?}");
        assert_eq!(stats.instances_discarded, 0);
    }
}

/// What an author sees when a plugin has a bug (issue 22): the guest's own report reaches the
/// error, a deliberate failure stays `plugin-error`, and an out-of-range number is refused.
mod authors {
    use super::*;

    fn js_transform(mode: &str) -> Result<TransformResult, HookError> {
        runtime()
            .transform(
                "billing",
                &spec("js-fixture-bugs", &[("mode", mode)]),
                secrets(&[]),
            )
            .unwrap()
            .transform(&event("order.paid", b"{}"))
    }

    fn trap_detail(r: Result<TransformResult, HookError>) -> String {
        match r {
            Err(HookError::Trap { detail, .. }) => detail,
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    #[test]
    fn a_python_exception_traps_with_its_traceback() {
        let t = runtime()
            .transform("billing", &spec("python-fixture-bugs", &[]), secrets(&[]))
            .unwrap();
        let detail = trap_detail(t.transform(&event("order.paid", br#"{"id":1}"#)));
        assert!(detail.contains("guest output (last lines):"), "{detail}");
        assert!(detail.contains("KeyError: 'amount'"), "{detail}");
        assert!(
            detail.contains(", line 23, in amount_of"),
            "the traceback's last frame: {detail}"
        );
        assert!(
            detail.contains("fixture-bugs: transforming evt_1"),
            "what the call printed before: {detail}"
        );
    }

    #[test]
    fn a_python_deliberate_failure_is_a_plugin_error() {
        let t = runtime()
            .transform(
                "billing",
                &spec("python-fixture-bugs", &[("mode", "fail")]),
                secrets(&[]),
            )
            .unwrap();
        let err = t.transform(&event("order.paid", b"{}")).unwrap_err();
        assert!(
            matches!(&err, HookError::Plugin { message, .. } if message == "refused on purpose"),
            "{err:?}"
        );
    }

    #[test]
    fn a_thrown_javascript_error_traps_with_type_message_and_stack() {
        let detail = trap_detail(js_transform("type-error"));
        assert!(detail.contains("TypeError: amount is missing"), "{detail}");
        assert!(
            detail.contains("plugins/js/fixture-bugs/app.js:"),
            "{detail}"
        );
        // Without the guide's `reportBug`, the engine still prints the message and the stack.
        let detail = trap_detail(js_transform("type-error-raw"));
        assert!(
            detail.contains(
                "amount is missing\nStack:\n  misbehave@plugins/js/fixture-bugs/app.js:33:13"
            ),
            "{detail}"
        );
        let detail = trap_detail(js_transform("string"));
        assert!(detail.contains("\"just a string\""), "{detail}");
    }

    #[test]
    fn only_a_returned_fail_is_a_plugin_error_in_javascript() {
        let err = js_transform("fail").unwrap_err();
        assert!(
            matches!(&err, HookError::Plugin { message, .. } if message == "refused on purpose"),
            "{err:?}"
        );
        assert_eq!(err.kind(), "plugin-error");
    }

    #[test]
    fn a_javascript_retry_of_minus_five_seconds_is_refused() {
        let p = runtime()
            .retry_policy(
                "billing",
                &spec("js-fixture-bugs", &[("mode", "negative")]),
                secrets(&[]),
            )
            .unwrap();
        let err = p
            .decide(&ctx("evt_1", "order.paid", 1), &status(503, &[]))
            .unwrap_err();
        assert_eq!(err.kind(), "plugin-invalid-output");
        assert!(
            err.to_string().contains(
                "retry-after-seconds -5 is negative: a retry policy must return 0 to 4294967295 seconds"
            ),
            "{err}"
        );
        let ok = runtime()
            .retry_policy("billing", &spec("js-fixture-bugs", &[]), secrets(&[]))
            .unwrap()
            .decide(&ctx("evt_1", "order.paid", 1), &status(503, &[]))
            .unwrap();
        assert_eq!(ok, RetryDecision::RetryAfterSeconds(30));
    }

    #[test]
    fn a_successful_calls_output_is_kept_for_the_author_and_never_leaks_into_the_next_call() {
        let rt = runtime();
        let t = rt
            .load_transform(
                "billing",
                &spec("js-fixture-bugs", &[("mode", "log")]),
                secrets(&[]),
            )
            .unwrap();
        t.transform(&event("order.paid", b"{}")).unwrap();
        let out = t.take_last_output().expect("output captured");
        assert_eq!(
            out.text,
            "fixture-bugs: to stdout\nfixture-bugs: to stderr\n"
        );
        assert_eq!(t.take_last_output(), None, "taken once");
        // Another application's instance of the same plugin has its own buffer.
        let quiet = rt
            .load_transform("other", &spec("js-fixture-bugs", &[]), secrets(&[]))
            .unwrap();
        quiet.transform(&event("order.paid", b"{}")).unwrap();
        assert_eq!(quiet.take_last_output(), None);
    }

    /// `squall plugin test` prints the guest's output and the trap with its last lines.
    #[test]
    fn plugin_test_prints_the_guests_report() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cache = temp_dir("cli-authors");
        let run = |args: &[&str]| {
            let out = std::process::Command::new(squall_tests::process::squall_bin())
                .args(args)
                .current_dir(&root)
                .env("XDG_CACHE_HOME", &cache)
                .env("RUST_BACKTRACE", "0")
                .output()
                .unwrap();
            (out.status.success(), output_text(&out))
        };
        dist("python-fixture-bugs");
        let (ok, text) = run(&[
            "plugin",
            "test",
            "plugins/dist/python-fixture-bugs.wasm",
            "--hook",
            "transform",
            "--event",
            "examples/envelope.json",
        ]);
        assert!(!ok, "{text}");
        assert!(
            text.contains("output:   (stdout and stderr of the call)\nfixture-bugs: transforming evt_2Q7x9KpLmN4vR8sT\nTraceback (most recent call last):"),
            "{text}"
        );
        assert!(
            text.contains("line 23, in amount_of\nKeyError: 'amount'"),
            "{text}"
        );
        assert!(text.contains("(plugin-trap)"), "{text}");

        let (ok, text) = run(&[
            "plugin",
            "test",
            "plugins/dist/js-fixture-bugs.wasm",
            "--hook",
            "retry",
            "--event",
            "examples/envelope.json",
            "--config",
            "mode=type-error",
        ]);
        assert!(!ok, "{text}");
        assert!(
            text.contains("TypeError: amount is missing") && text.contains("(plugin-trap)"),
            "{text}"
        );
    }
}

/// `squall plugin test` shows the request as it is sent: a transform that sets no content type
/// gets the event's, with a warning saying so.
#[test]
fn plugin_test_warns_when_a_transform_sets_no_content_type() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    dist("misbehave");
    let out = std::process::Command::new(squall_tests::process::squall_bin())
        .args([
            "plugin",
            "test",
            "plugins/dist/misbehave.wasm",
            "--hook",
            "transform",
            "--event",
            "examples/envelope.json",
            "--config",
            "mode=no-content-type",
        ])
        .current_dir(&root)
        .env("XDG_CACHE_HOME", temp_dir("cli-ct"))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning:  the request sets no content-type header: Squall sends the event's, `content-type: application/json`"),
        "{text}"
    );
    assert!(
        text.contains(
            "send: POST https://hooks.example.com/squall\ncontent-type: application/json\n"
        ),
        "{text}"
    );
}

/// `squall plugin test --body-out FILE` writes the transform's body byte for byte: the same
/// bytes the runtime returns (a body with invalid UTF-8 would print lossily).
#[test]
fn plugin_test_body_out_writes_the_exact_bytes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = temp_dir("body-out");
    let file = dir.join("body.bin");
    let out = std::process::Command::new(squall_tests::process::squall_bin())
        .args([
            "plugin",
            "test",
            dist("reshape-transform").to_str().unwrap(),
            "--hook",
            "transform",
            "--event",
            "examples/envelope.json",
            "--body-out",
            file.to_str().unwrap(),
        ])
        .current_dir(&root)
        .env("XDG_CACHE_HOME", &dir)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let written = std::fs::read(&file).unwrap();
    assert!(
        text.contains(&format!("body:     {} bytes written to", written.len())),
        "{text}"
    );
    let event = squall::envelope::decode(
        &std::fs::read(root.join("examples/envelope.json")).unwrap(),
        &squall::envelope::Limits::default(),
    )
    .unwrap()
    .into_event(1, 0);
    let t = runtime()
        .transform("billing", &spec("reshape-transform", &[]), secrets(&[]))
        .unwrap();
    let TransformResult::Send(request) = t.transform(&event).unwrap() else {
        panic!("reshape skipped the example")
    };
    assert_eq!(written, request.body);
}
