//! OpenTelemetry traces through the real `squall run` on moto: a local OTLP/HTTP receiver gets
//! one span per attempt; an envelope's `traceparent` makes the span its child, in its trace;
//! without one, the attempts of an event share one trace; the endpoint receives a
//! `traceparent` naming the attempt's own span, so the subscriber's spans join the trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::TestQueues;
use squall_tests::{config_toml, sqs_or_skip};

const PRODUCER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Every span the collector received.
fn spans(collector: &Receiver) -> Vec<Value> {
    collector
        .requests_for("/v1/traces")
        .iter()
        .flat_map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
                "squall"
            );
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

fn attr(span: &Value, key: &str) -> Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_attempt_is_a_span_in_the_producers_trace_and_the_endpoint_joins_it() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let collector = Receiver::options()
        .route("/v1/traces", Reply::Status(200))
        .start()
        .await
        .unwrap();
    // /flaky answers 503 to the first request of each event, 200 after.
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let rx = Receiver::options()
        .route("/ok", Reply::Status(200))
        .route_with(
            "/flaky",
            Arc::new(move |r| {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(r.webhook_id().to_string()).or_default();
                *n += 1;
                if *n == 1 {
                    Reply::Status(503)
                } else {
                    Reply::Status(200)
                }
            }),
        )
        .start()
        .await
        .unwrap();
    let mut config = config_toml(&endpoint, &q, &[("shop", "")]);
    config.push_str(&format!(
        "\n[traces]\notlp_endpoint = \"{}\"\n",
        collector.url("/v1/traces")
    ));
    let run = SquallRun::start(&config);
    let mut with_parent: Value = serde_json::from_str(
        &TestEnvelope::new("evt-a", "shop", &rx.url("/ok"))
            .payload(json!({"n": 1}))
            .to_json(),
    )
    .unwrap();
    with_parent["traceparent"] = PRODUCER.into();
    q.send("shop", &with_parent.to_string()).await;
    q.send(
        "shop",
        &TestEnvelope::new("evt-b", "shop", &rx.url("/flaky"))
            .payload(json!({"n": 2}))
            .to_json(),
    )
    .await;
    eventually(Duration::from_secs(60), "3 spans exported", || async {
        (spans(&collector).len() >= 3).then_some(())
    })
    .await;
    let mut run = run;
    assert!(run.is_running(), "{}", run.log());
    assert!(run.terminate().success());

    let all = spans(&collector);
    assert_eq!(all.len(), 3, "one span per attempt: {all:#?}");
    let of = |id: &str| -> Vec<&Value> {
        let mut v: Vec<&Value> = all
            .iter()
            .filter(|s| attr(s, "squall.event_id")["stringValue"] == id)
            .collect();
        v.sort_by_key(|s| {
            attr(s, "squall.attempt")["intValue"]
                .as_str()
                .unwrap()
                .to_string()
        });
        v
    };
    // The producer's trace and span are the parent.
    let a = of("evt-a");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(a[0]["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(a[0]["status"]["code"], 1);
    assert_eq!(attr(a[0], "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(a[0], "squall.app_id")["stringValue"], "shop");
    assert_eq!(attr(a[0], "server.address")["stringValue"], "127.0.0.1");
    assert_eq!(attr(a[0], "squall.outcome")["stringValue"], "delivered");
    let sent = rx.requests_for("/ok");
    assert_eq!(
        sent[0].header("traceparent"),
        Some(
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                a[0]["spanId"].as_str().unwrap()
            )
            .as_str()
        ),
        "the endpoint gets the attempt's span as its parent"
    );
    // No traceparent: both attempts of the event in one trace of its own, no parent.
    let b = of("evt-b");
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["traceId"], b[1]["traceId"]);
    assert_ne!(b[0]["traceId"], a[0]["traceId"]);
    assert!(b[0].get("parentSpanId").is_none());
    assert_eq!(attr(b[0], "http.response.status_code")["intValue"], "503");
    assert_eq!(b[0]["status"]["code"], 2);
    assert_eq!(attr(b[0], "squall.outcome")["stringValue"], "retry");
    assert_eq!(attr(b[1], "squall.outcome")["stringValue"], "delivered");
    let flaky = rx.requests_for("/flaky");
    assert_eq!(flaky.len(), 2);
    for (req, span) in flaky.iter().zip(&b) {
        assert_eq!(
            req.header("traceparent"),
            Some(
                format!(
                    "00-{}-{}-01",
                    span["traceId"].as_str().unwrap(),
                    span["spanId"].as_str().unwrap()
                )
                .as_str()
            )
        );
    }
    for s in &all {
        assert!(attr(s, "squall.hook.sign_us")["intValue"].is_string());
        assert!(s["endTimeUnixNano"].as_str().unwrap() >= s["startTimeUnixNano"].as_str().unwrap());
    }
}

/// The Lambda function exports before the invocation returns: right after each invoke of the
/// real bootstrap under the Runtime API emulator (no wait), the collector holds the spans of
/// that batch's attempts.
#[tokio::test(flavor = "multi_thread")]
async fn the_lambda_function_exports_before_the_invocation_returns() {
    use crate::lambda::{
        bootstrap_binary, cargo_lambda, mapping_step, start_emulator, start_function, temp_dir,
    };
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let bin = bootstrap_binary();
    let q = TestQueues::create(&endpoint, &["shop"]).await;
    let collector = Receiver::options()
        .route("/v1/traces", Reply::Status(200))
        .start()
        .await
        .unwrap();
    let rx = Receiver::start(Reply::Status(200)).await;
    let dir = temp_dir("traces-lambda");
    let config = dir.join("squall.toml");
    let mut text = config_toml(&endpoint, &q, &[("shop", "")]);
    text.push_str(&format!(
        "\n[traces]\notlp_endpoint = \"{}\"\n",
        collector.url("/v1/traces")
    ));
    std::fs::write(&config, text).unwrap();
    let (_emulator, port) = start_emulator(&cargo_lambda);
    let _function = start_function(&bin, port, &config, &dir.join("bootstrap.log"));
    for i in 0..3 {
        let mut env: Value = serde_json::from_str(
            &TestEnvelope::new(&format!("evt-{i}"), "shop", &rx.url("/in"))
                .payload(json!({"n": i}))
                .to_json(),
        )
        .unwrap();
        env["traceparent"] = PRODUCER.into();
        q.send("shop", &env.to_string()).await;
    }
    let limit = std::time::Instant::now() + Duration::from_secs(60);
    while rx.requests().len() < 3 {
        assert!(
            std::time::Instant::now() < limit,
            "{} delivered",
            rx.requests().len()
        );
        mapping_step(&q, q.app("shop"), port).await;
        // Checked at once after each invocation returned: its spans are already out.
        assert_eq!(
            spans(&collector).len(),
            rx.requests().len(),
            "spans exported by the time the invocation returned"
        );
    }
    for s in spans(&collector) {
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
    }
}
