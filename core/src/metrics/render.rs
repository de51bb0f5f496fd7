//! The aggregated figures as text: a terminal table, Prometheus text exposition format 0.0.4,
//! and CloudWatch Embedded Metric Format log lines.

use std::fmt::Write as _;

use super::MetricRecord;
use super::aggregate::*;

/// The snapshot as a text table (window figures).
pub fn render_table(s: &Snapshot) -> String {
    let mut out = format!(
        "{:<12} {:<28} {:>8} {:>8} {:>7} {:>5} {:>6} {:>6} {:>6}  {}\n",
        "APP",
        "ENDPOINT",
        "ATTEMPTS",
        "SUCCESS",
        "RETRIES",
        "DEAD",
        "P50ms",
        "P90ms",
        "P99ms",
        "STATUSES"
    );
    for r in s.endpoints.iter().chain(&s.apps) {
        let pct = r
            .success_rate
            .map(|x| format!("{:.1}%", x * 100.0))
            .unwrap_or_else(|| "-".into());
        let (p50, p90, p99) = r
            .latency
            .map(|p| (p.p50.to_string(), p.p90.to_string(), p.p99.to_string()))
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        let statuses: Vec<String> = r
            .window
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        let flag = if r.failing {
            format!("  FAILING ({} in a row)", r.streak.consecutive_failures)
        } else {
            String::new()
        };
        let endpoint = match &r.endpoint_id {
            Some(id) => format!("{id} ({})", r.endpoint_host),
            None => r.endpoint_host.clone(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<28} {:>8} {:>8} {:>7} {:>5} {:>6} {:>6} {:>6}  {}{flag}",
            r.app_id,
            endpoint,
            r.window.attempts,
            pct,
            r.window.retries,
            r.window.dead_letters,
            p50,
            p90,
            p99,
            statuses.join(" ")
        );
    }
    if s.malformed_total > 0 {
        let _ = writeln!(out, "malformed records since start: {}", s.malformed_total);
    }
    out
}

/// A Prometheus counter: name, help, how to read it.
type Counter = (&'static str, &'static str, fn(&Counts) -> u64);

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A row's Prometheus labels: `app`, `endpoint_host`, and `endpoint_id` when the row has one.
fn labels(r: &Row) -> String {
    let mut l = format!(
        "app=\"{}\",endpoint_host=\"{}\"",
        esc(&r.app_id),
        esc(&r.endpoint_host)
    );
    if let Some(id) = &r.endpoint_id {
        l.push_str(&format!(",endpoint_id=\"{}\"", esc(id)));
    }
    l
}

/// Prometheus text exposition (format 0.0.4): counters since start, latency quantiles over the
/// last window (a summary), the failing flag.
pub fn prometheus_text(s: &Snapshot) -> String {
    let mut out = String::new();
    let counters: [Counter; 7] = [
        (
            "squall_attempts_total",
            "Delivery attempts (requests made or tried).",
            |c| c.attempts,
        ),
        (
            "squall_delivered_total",
            "Attempts answered with 2xx.",
            |c| c.delivered,
        ),
        (
            "squall_retries_total",
            "Failed attempts scheduled for a retry.",
            |c| c.retries,
        ),
        (
            "squall_dead_letters_total",
            "Failed attempts after which the event was dead-lettered.",
            |c| c.dead_letters,
        ),
        (
            "squall_discarded_total",
            "Failed attempts after which the retry policy dropped the event.",
            |c| c.discarded,
        ),
        (
            "squall_skipped_total",
            "Events the transform skipped (no request).",
            |c| c.skipped,
        ),
        (
            "squall_plugin_errors_total",
            "Plugin failures (no request).",
            |c| c.plugin_errors,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for r in &s.endpoints {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), get(&r.total));
        }
    }
    let name = "squall_responses_total";
    let _ = writeln!(
        out,
        "# HELP {name} Attempts by HTTP status, or error:<kind> when none came back.\n# TYPE {name} counter"
    );
    for r in &s.endpoints {
        for (status, n) in &r.total.statuses {
            let _ = writeln!(
                out,
                "{name}{{{},status=\"{}\"}} {n}",
                labels(r),
                esc(status)
            );
        }
    }
    let name = "squall_latency_ms";
    let _ = writeln!(
        out,
        "# HELP {name} Attempt latency; quantiles exact over the last window, sum and count since start.\n# TYPE {name} summary"
    );
    for r in &s.endpoints {
        let labels = labels(r);
        if let Some(p) = r.latency {
            for (q, v) in [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)] {
                let _ = writeln!(out, "{name}{{{labels},quantile=\"{q}\"}} {v}");
            }
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", r.total.latency_sum_ms);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", r.total.attempts);
    }
    for (name, help, get) in [
        (
            "squall_endpoint_failing",
            "1 when the endpoint's recent attempts all failed past the thresholds.",
            (|r: &Row| u64::from(r.failing)) as fn(&Row) -> u64,
        ),
        (
            "squall_endpoint_consecutive_failures",
            "Failed attempts in a row.",
            |r: &Row| u64::from(r.streak.consecutive_failures),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in &s.endpoints {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r), get(r));
        }
    }
    let name = "squall_endpoint_events_total";
    let _ = writeln!(
        out,
        "# HELP {name} Endpoint health transitions (endpoint.opened, endpoint.closed, endpoint.paced, endpoint.disabled).\n# TYPE {name} counter"
    );
    for (key, n) in &s.endpoint_events {
        let mut parts = key.split('\u{1f}');
        let (app, endpoint, kind) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "{name}{{app=\"{}\",endpoint=\"{}\",kind=\"{}\"}} {n}",
            esc(app),
            esc(endpoint),
            esc(kind)
        );
    }
    let name = "squall_metrics_records_malformed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Metrics queue messages that were not valid records.\n# TYPE {name} counter\n{name} {}",
        s.malformed_total
    );
    out
}

/// CloudWatch Embedded Metric Format: one JSON log line per (app, host) with dimensions
/// `app_id, endpoint_host`, and one per app with dimension `app_id`, carrying the window's
/// figures. Print them to stdout in a Lambda function and CloudWatch turns them into metrics.
pub fn emf_lines(s: &Snapshot, namespace: &str, timestamp_ms: u64) -> Vec<String> {
    let metric_defs = serde_json::json!([
        {"Name": "Attempts", "Unit": "Count"},
        {"Name": "Delivered", "Unit": "Count"},
        {"Name": "Retries", "Unit": "Count"},
        {"Name": "DeadLetters", "Unit": "Count"},
        {"Name": "SuccessRate", "Unit": "Percent"},
        {"Name": "LatencyP50", "Unit": "Milliseconds"},
        {"Name": "LatencyP90", "Unit": "Milliseconds"},
        {"Name": "LatencyP99", "Unit": "Milliseconds"},
        {"Name": "EndpointFailing", "Unit": "Count"}
    ]);
    let line = |r: &Row, dims: serde_json::Value| {
        let mut o = serde_json::json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [dims],
                    "Metrics": metric_defs.clone(),
                }]
            },
            "app_id": r.app_id,
            "Attempts": r.window.attempts,
            "Delivered": r.window.delivered,
            "Retries": r.window.retries,
            "DeadLetters": r.window.dead_letters,
            "EndpointFailing": u64::from(r.failing),
        });
        if r.endpoint_host != "*" {
            o["endpoint_host"] = r.endpoint_host.clone().into();
        }
        // A metric with no value this window is left out of the line (EMF allows it).
        if let Some(rate) = r.success_rate {
            o["SuccessRate"] = (rate * 100.0).into();
        }
        if let Some(p) = r.latency {
            o["LatencyP50"] = p.p50.into();
            o["LatencyP90"] = p.p90.into();
            o["LatencyP99"] = p.p99.into();
        }
        o.to_string()
    };
    let mut out = Vec::new();
    for r in s.endpoints.iter().filter(|r| r.window != Counts::default()) {
        out.push(line(r, serde_json::json!(["app_id", "endpoint_host"])));
    }
    for r in s.apps.iter().filter(|r| r.window != Counts::default()) {
        out.push(line(r, serde_json::json!(["app_id"])));
    }
    out
}

/// The EMF lines for the records of one Lambda batch (a one-window aggregate).
pub fn emf_lines_for(records: &[MetricRecord], namespace: &str, timestamp_ms: u64) -> Vec<String> {
    let recs: Vec<Record> = records.iter().map(Record::from).collect();
    let mut agg = Aggregator::new(Thresholds::default());
    agg.ingest(&recs);
    emf_lines(&agg.snapshot(), namespace, timestamp_ms)
}
