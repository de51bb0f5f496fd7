//! The metrics record: one JSON object per attempt (and per skip) on the shared metrics queue
//! (format version 1, ARCHITECTURE.md "Metrics record"). The engine's sink sends them.
//!
//! Records carry ids, hosts, statuses and plugin identities: never a payload, a header value
//! or a secret.

use serde::Serialize;

pub mod aggregate;
pub mod render;

/// How an attempt ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricOutcome {
    /// 2xx.
    Delivered,
    /// Failed; scheduled for another attempt.
    Retry,
    /// Failed; sent to the dead-letter queue.
    DeadLetter,
    /// Failed; the retry policy chose to drop it.
    Discarded,
    /// The transform skipped it; nothing was sent.
    Skipped,
    /// A plugin (or built-in hook) failed; see `error_kind` and `retry_in_secs`.
    PluginError,
}

impl MetricOutcome {
    /// The name used in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricOutcome::Delivered => "delivered",
            MetricOutcome::Retry => "retry",
            MetricOutcome::DeadLetter => "dead_letter",
            MetricOutcome::Discarded => "discarded",
            MetricOutcome::Skipped => "skipped",
            MetricOutcome::PluginError => "plugin_error",
        }
    }
}

/// One metrics record (format version 1, see ARCHITECTURE.md "Metrics record").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricRecord {
    /// Format version: 1.
    pub v: u8,
    /// Event id.
    pub event_id: String,
    /// Application id.
    pub app_id: String,
    /// Event type.
    pub event_type: String,
    /// Host of the URL the request went (or would have gone) to.
    pub endpoint_host: String,
    /// The registered endpoint the envelope named (`endpoint_id`); absent when it gave a URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// HTTP status, when one came back.
    pub status: Option<u16>,
    /// Transport error kind or hook error kind, when no status came back.
    pub error_kind: Option<String>,
    /// Time spent on this attempt, ms.
    pub latency_ms: u64,
    /// How it ended.
    pub outcome: MetricOutcome,
    /// Wait before the next attempt, when retried.
    pub retry_in_secs: Option<u32>,
    /// Transform identity: `builtin:NAME`, or a plugin's file name and digest prefix
    /// (`envelope-transform.wasm#1a2b3c4d5e6f`).
    pub transform: String,
    /// Signer identity (same form).
    pub signer: String,
    /// Retry policy identity (same form).
    pub retry_policy: String,
    /// Unix ms when processing of this attempt started.
    pub started_at_ms: u64,
    /// Unix ms when it finished.
    pub finished_at_ms: u64,
}

impl MetricRecord {
    /// The JSON text sent to the metrics queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a metric record always serialises")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::MetricRecord;
    use super::aggregate::*;
    use super::render::*;

    fn rec(
        app: &str,
        host: &str,
        outcome: &str,
        status: Option<u16>,
        error: Option<&str>,
        latency: u64,
        t: u64,
    ) -> Record {
        Record {
            v: 1,
            event_id: format!("e{t}"),
            app_id: app.into(),
            endpoint_host: host.into(),
            endpoint_id: None,
            attempt: 1,
            status,
            error_kind: error.map(str::to_string),
            latency_ms: latency,
            outcome: outcome.into(),
            started_at_ms: t,
            finished_at_ms: t + latency,
        }
    }

    /// billing/a.example: 20 attempts with latencies 1..=20 ms (15 delivered, 3 retried 503,
    /// 1 dead-lettered 410, 1 retried timeout), plus 2 skipped and 1 plugin error.
    /// billing/b.example: 12 failures in a row (500), 100 ms each, one per second.
    /// shop/c.example: 3 failures spread over 6 minutes. shop/d.example: 2 failures in 1 minute.
    fn stream() -> Vec<Record> {
        let mut v = Vec::new();
        for i in 1..=20u64 {
            let (outcome, status, err) = match i {
                4 | 9 | 14 => ("retry", Some(503), None),
                17 => ("dead_letter", Some(410), None),
                20 => ("retry", None, Some("timeout")),
                _ => ("delivered", Some(200), None),
            };
            v.push(rec(
                "billing",
                "a.example",
                outcome,
                status,
                err,
                i,
                1_000 * i,
            ));
        }
        v.push(rec("billing", "a.example", "skipped", None, None, 0, 50));
        v.push(rec("billing", "a.example", "skipped", None, None, 0, 60));
        v.push(rec(
            "billing",
            "a.example",
            "plugin_error",
            None,
            Some("trap"),
            0,
            70,
        ));
        for i in 0..12u64 {
            v.push(rec(
                "billing",
                "b.example",
                "retry",
                Some(500),
                None,
                100,
                1_000 * i,
            ));
        }
        for i in 0..3u64 {
            v.push(rec(
                "shop",
                "c.example",
                "retry",
                None,
                Some("connect"),
                10,
                180_000 * i,
            ));
        }
        for i in 0..2u64 {
            v.push(rec(
                "shop",
                "d.example",
                "retry",
                Some(502),
                None,
                10,
                60_000 * i,
            ));
        }
        // Arrival order from SQS is not time order.
        v.reverse();
        v
    }

    fn find<'a>(rows: &'a [Row], app: &str, host: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.app_id == app && r.endpoint_host == host)
            .unwrap()
    }

    #[test]
    fn known_stream_gives_exact_counts_percentiles_and_flags() {
        let mut agg = Aggregator::new(Thresholds::default());
        agg.ingest(&stream());
        let s = agg.snapshot();
        assert_eq!(s.records_total, 20 + 3 + 12 + 3 + 2);

        let a = find(&s.endpoints, "billing", "a.example");
        assert_eq!(
            (
                a.window.attempts,
                a.window.delivered,
                a.window.retries,
                a.window.dead_letters
            ),
            (20, 15, 4, 1)
        );
        assert_eq!((a.window.skipped, a.window.plugin_errors), (2, 1));
        assert_eq!(
            a.window.statuses,
            BTreeMap::from([
                ("200".to_string(), 15),
                ("410".to_string(), 1),
                ("503".to_string(), 3),
                ("error:timeout".to_string(), 1),
            ])
        );
        assert_eq!(a.success_rate, Some(0.75));
        assert_eq!(
            a.latency,
            Some(Percentiles {
                p50: 10,
                p90: 18,
                p99: 20
            })
        );
        assert_eq!(a.window.latency_sum_ms, 210);
        // The last attempt (t = 20 s) was a timeout: a streak of 1, not failing.
        assert_eq!(a.streak.consecutive_failures, 1);
        assert!(!a.failing);

        let b = find(&s.endpoints, "billing", "b.example");
        assert_eq!((b.window.attempts, b.window.delivered), (12, 0));
        assert_eq!(b.success_rate, Some(0.0));
        assert_eq!(b.streak.consecutive_failures, 12);
        assert!(b.failing, "12 >= 10 in a row");

        let c = find(&s.endpoints, "shop", "c.example");
        assert_eq!(c.streak.consecutive_failures, 3);
        assert_eq!(c.streak.since_ms, Some(0));
        assert_eq!(c.streak.last_ms, Some(360_010));
        assert!(c.failing, "failing for 6 min >= 5 min");
        assert!(!find(&s.endpoints, "shop", "d.example").failing);

        let billing = find(&s.apps, "billing", "*");
        assert_eq!(
            (billing.window.attempts, billing.window.delivered),
            (32, 15)
        );
        assert_eq!(billing.success_rate, Some(15.0 / 32.0));
        // 1..=20 and twelve 100s: rank 16 of 32 is 16, rank 29 is 100.
        assert_eq!(
            billing.latency,
            Some(Percentiles {
                p50: 16,
                p90: 100,
                p99: 100
            })
        );
        assert!(billing.failing);
        assert_eq!(billing.streak.consecutive_failures, 12);

        // Next window: one delivery on b clears it; totals accumulate, windows reset.
        agg.end_window();
        agg.ingest(&[rec(
            "billing",
            "b.example",
            "delivered",
            Some(204),
            None,
            7,
            100_000,
        )]);
        let s = agg.snapshot();
        let b = find(&s.endpoints, "billing", "b.example");
        assert_eq!((b.window.attempts, b.total.attempts), (1, 13));
        assert_eq!(
            b.latency,
            Some(Percentiles {
                p50: 7,
                p90: 7,
                p99: 7
            })
        );
        assert!(!b.failing);
        assert_eq!(b.streak, Streak::default());
        let a = find(&s.endpoints, "billing", "a.example");
        assert_eq!((a.window.attempts, a.total.attempts), (0, 20));
        assert_eq!((a.success_rate, a.latency), (None, None));
    }

    #[test]
    fn grouping_by_endpoint_id_splits_rows_by_id_and_keeps_totals() {
        let with_id = |id: Option<&str>, host: &str, outcome: &str, t: u64| Record {
            endpoint_id: id.map(str::to_string),
            ..rec("shop", host, outcome, Some(200), None, 5, t)
        };
        let records = vec![
            with_id(Some("E"), "old.example", "retry", 1),
            with_id(Some("E"), "new.example", "delivered", 2),
            with_id(Some("F"), "new.example", "delivered", 3),
            with_id(None, "new.example", "delivered", 4),
        ];
        let mut by_host = Aggregator::new(Thresholds::default());
        by_host.ingest(&records);
        let s = by_host.snapshot();
        assert_eq!(s.endpoints.len(), 2, "one row per host");
        assert!(s.endpoints.iter().all(|r| r.endpoint_id.is_none()));
        let mut by_id = Aggregator::new(Thresholds::default()).by_endpoint_id();
        by_id.ingest(&records);
        let s = by_id.snapshot();
        let rows: Vec<(Option<&str>, &str, u64)> = s
            .endpoints
            .iter()
            .map(|r| {
                (
                    r.endpoint_id.as_deref(),
                    r.endpoint_host.as_str(),
                    r.window.attempts,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (None, "new.example", 1),
                (Some("E"), "new.example", 1),
                (Some("F"), "new.example", 1),
                (None, "old.example", 0),
                (Some("E"), "old.example", 1),
            ]
            .into_iter()
            .filter(|r| r.2 > 0)
            .collect::<Vec<_>>()
        );
        assert_eq!(s.apps[0].window.attempts, 4);
        let text = prometheus_text(&s);
        assert!(
            text.contains(
                r#"squall_attempts_total{app="shop",endpoint_host="new.example",endpoint_id="E"} 1"#
            ),
            "{text}"
        );
        assert!(render_table(&s).contains("E (old.example)"));
    }

    #[test]
    fn operational_events_are_counted_for_prometheus() {
        use crate::health::{OperationalEvent, Transition};
        let opened = Transition::Opened {
            until_ms: 9,
            reason: "5 failures in a row".into(),
        };
        let e = |t: &Transition| OperationalEvent::of("shop", "https://a.example:443", t, 1);
        let mut a = Aggregator::new(Thresholds::default());
        a.ingest_events(&[e(&opened), e(&opened), e(&Transition::Closed)]);
        let text = prometheus_text(&a.snapshot());
        assert!(text.contains(r#"squall_endpoint_events_total{app="shop",endpoint="https://a.example:443",kind="endpoint.opened"} 2"#), "{text}");
        assert!(text.contains(r#"kind="endpoint.closed"} 1"#), "{text}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentiles(&[]), None);
        assert_eq!(
            percentiles(&[5]),
            Some(Percentiles {
                p50: 5,
                p90: 5,
                p99: 5
            })
        );
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(
            percentiles(&hundred),
            Some(Percentiles {
                p50: 50,
                p90: 90,
                p99: 99
            })
        );
        let thousand: Vec<u64> = (1..=1000).collect();
        assert_eq!(
            percentiles(&thousand),
            Some(Percentiles {
                p50: 500,
                p90: 900,
                p99: 990
            })
        );
    }

    #[test]
    fn records_parse_from_the_engine_format_and_refuse_others() {
        let engine = MetricRecord {
            v: 1,
            event_id: "evt_1".into(),
            app_id: "billing".into(),
            event_type: "invoice.paid".into(),
            endpoint_host: "hooks.example.com".into(),
            endpoint_id: None,
            attempt: 2,
            status: Some(503),
            error_kind: None,
            latency_ms: 12,
            outcome: crate::metrics::MetricOutcome::Retry,
            retry_in_secs: Some(15),
            transform: "t".into(),
            signer: "s".into(),
            retry_policy: "r".into(),
            started_at_ms: 10,
            finished_at_ms: 22,
        };
        let parsed = parse_record(&engine.to_json()).unwrap();
        assert_eq!(parsed, Record::from(&engine));
        assert_eq!(parsed.outcome, "retry");
        assert!(
            parse_record("{}")
                .unwrap_err()
                .starts_with("not a metrics record")
        );
        let v2 = engine.to_json().replace("\"v\":1", "\"v\":2");
        assert!(parse_record(&v2).unwrap_err().contains("version 2"));
    }

    #[test]
    fn prometheus_and_emf_carry_the_same_figures() {
        let mut agg = Aggregator::new(Thresholds::default());
        agg.ingest(&stream());
        agg.malformed(2);
        let s = agg.snapshot();
        let text = prometheus_text(&s);
        for line in [
            "# TYPE squall_attempts_total counter",
            r#"squall_attempts_total{app="billing",endpoint_host="a.example"} 20"#,
            r#"squall_delivered_total{app="billing",endpoint_host="a.example"} 15"#,
            r#"squall_responses_total{app="billing",endpoint_host="a.example",status="503"} 3"#,
            r#"squall_responses_total{app="shop",endpoint_host="c.example",status="error:connect"} 3"#,
            r#"squall_latency_ms{app="billing",endpoint_host="a.example",quantile="0.9"} 18"#,
            r#"squall_latency_ms_sum{app="billing",endpoint_host="a.example"} 210"#,
            r#"squall_latency_ms_count{app="billing",endpoint_host="a.example"} 20"#,
            r#"squall_endpoint_failing{app="billing",endpoint_host="b.example"} 1"#,
            r#"squall_endpoint_failing{app="shop",endpoint_host="d.example"} 0"#,
            "squall_metrics_records_malformed_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit_once(' ').unwrap().1;
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }

        let lines = emf_lines(&s, "Squall", 1_795_824_000_000);
        assert_eq!(lines.len(), 4 + 2, "4 endpoints + 2 apps");
        let a: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(a["_aws"]["Timestamp"], 1_795_824_000_000u64);
        let cw = &a["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Squall");
        assert_eq!(
            cw["Dimensions"],
            serde_json::json!([["app_id", "endpoint_host"]])
        );
        assert_eq!(
            (&a["app_id"], &a["endpoint_host"]),
            (
                &serde_json::json!("billing"),
                &serde_json::json!("a.example")
            )
        );
        assert_eq!(a["Attempts"], 20);
        assert_eq!(a["SuccessRate"], 75.0);
        assert_eq!(
            (&a["LatencyP50"], &a["LatencyP99"]),
            (&10.into(), &20.into())
        );
        // Every metric value named in the directive is present in the line (none missing for
        // this endpoint), each a number.
        for m in cw["Metrics"].as_array().unwrap() {
            assert!(a[m["Name"].as_str().unwrap()].is_number(), "{m}");
        }
        let app: serde_json::Value = serde_json::from_str(&lines[4]).unwrap();
        assert_eq!(
            app["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            serde_json::json!([["app_id"]])
        );
        assert_eq!(
            (&app["app_id"], &app["Attempts"]),
            (&"billing".into(), &32.into())
        );
        assert!(app.get("endpoint_host").is_none());
        assert_eq!(app["EndpointFailing"], 1);
    }
}
