//! `squall metrics`: aggregate the metrics queue's records per application and endpoint host.
//!
//! [`Aggregator`] is a pure function over records (no queue, no clock): feed it the records of
//! one window with [`Aggregator::ingest`], read a [`Snapshot`], then [`Aggregator::end_window`].
//! Per (application, endpoint host) it keeps:
//! - per window: attempts, delivered, retries, dead letters, discarded, skipped, plugin errors,
//!   a histogram of statuses (`"503"`, or `"error:<kind>"` when no status came back) and every
//!   latency, so p50/p90/p99 are **exact** over the window (nearest-rank: the smallest latency
//!   with at least p% of the window's attempts at or below it);
//! - since start: the same counters (for Prometheus counters) and the latency sum;
//! - the current failure streak, across windows.
//!
//! An **attempt** is a record whose outcome is `delivered`, `retry`, `dead_letter` or
//! `discarded` (a request was made or tried); `skipped` and `plugin_error` records are counted
//! apart. Success rate = delivered / attempts.
//!
//! **Failing endpoint**: a (app, host) whose last attempts all failed (any outcome but
//! `delivered`), with either at least `consecutive_failures` of them (default 10) or the first
//! of them started at least `failing_for` (default 5 min) before the last one finished. One
//! delivered attempt clears it. Records are applied in `finished_at_ms` order within a window.
//!
//! [`emf_lines`] renders the same figures as CloudWatch Embedded Metric Format log lines (for
//! the Lambda function); [`prometheus_text`] as Prometheus text exposition format 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::MetricRecord;

/// One metrics record as read from the queue (format version 1, ARCHITECTURE.md "Metrics
/// record"). Unknown fields are ignored, so newer writers stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Record {
    /// Format version.
    pub v: u8,
    /// Event id.
    pub event_id: String,
    /// Application id.
    pub app_id: String,
    /// Endpoint host.
    pub endpoint_host: String,
    /// Attempt number.
    pub attempt: u32,
    /// HTTP status, if any.
    pub status: Option<u16>,
    /// Error kind when no status.
    pub error_kind: Option<String>,
    /// Latency, ms.
    pub latency_ms: u64,
    /// `delivered`, `retry`, `dead_letter`, `discarded`, `skipped` or `plugin_error`.
    pub outcome: String,
    /// Start, Unix ms.
    pub started_at_ms: u64,
    /// End, Unix ms.
    pub finished_at_ms: u64,
}

impl From<&MetricRecord> for Record {
    fn from(r: &MetricRecord) -> Record {
        Record {
            v: r.v,
            event_id: r.event_id.clone(),
            app_id: r.app_id.clone(),
            endpoint_host: r.endpoint_host.clone(),
            attempt: r.attempt,
            status: r.status,
            error_kind: r.error_kind.clone(),
            latency_ms: r.latency_ms,
            outcome: r.outcome.as_str().to_string(),
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
        }
    }
}

/// Parse one message body; the error names what is wrong.
pub fn parse_record(body: &str) -> Result<Record, String> {
    let r: Record = serde_json::from_str(body).map_err(|e| format!("not a metrics record: {e}"))?;
    if r.v != 1 {
        return Err(format!(
            "metrics record version {} is not supported (1 is)",
            r.v
        ));
    }
    Ok(r)
}

/// When an endpoint counts as failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// This many failed attempts in a row.
    pub consecutive_failures: u32,
    /// Or failing (no success) for at least this long, ms.
    pub failing_for_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            consecutive_failures: 10,
            failing_for_ms: 5 * 60 * 1000,
        }
    }
}

/// Counters of one (app, host), per window or since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Attempts (delivered + retry + dead_letter + discarded).
    pub attempts: u64,
    /// Delivered (2xx).
    pub delivered: u64,
    /// Failed, to be retried.
    pub retries: u64,
    /// Failed, dead-lettered.
    pub dead_letters: u64,
    /// Failed, dropped by the retry policy.
    pub discarded: u64,
    /// Skipped by the transform (no request).
    pub skipped: u64,
    /// A plugin failed (no request).
    pub plugin_errors: u64,
    /// Status (or `error:<kind>`) -> attempts.
    pub statuses: BTreeMap<String, u64>,
    /// Sum of attempt latencies, ms.
    pub latency_sum_ms: u64,
}

impl Counts {
    fn add(&mut self, r: &Record) {
        match r.outcome.as_str() {
            "skipped" => {
                self.skipped += 1;
                return;
            }
            "plugin_error" => {
                self.plugin_errors += 1;
                return;
            }
            "delivered" => self.delivered += 1,
            "retry" => self.retries += 1,
            "dead_letter" => self.dead_letters += 1,
            _ => self.discarded += 1,
        }
        self.attempts += 1;
        self.latency_sum_ms += r.latency_ms;
        let key = match (r.status, &r.error_kind) {
            (Some(s), _) => s.to_string(),
            (None, Some(k)) => format!("error:{k}"),
            (None, None) => "error:unknown".to_string(),
        };
        *self.statuses.entry(key).or_default() += 1;
    }

    fn merge(&mut self, o: &Counts) {
        self.attempts += o.attempts;
        self.delivered += o.delivered;
        self.retries += o.retries;
        self.dead_letters += o.dead_letters;
        self.discarded += o.discarded;
        self.skipped += o.skipped;
        self.plugin_errors += o.plugin_errors;
        self.latency_sum_ms += o.latency_sum_ms;
        for (k, v) in &o.statuses {
            *self.statuses.entry(k.clone()).or_default() += v;
        }
    }
}

/// Failure streak of one (app, host).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Streak {
    /// Failed attempts in a row.
    pub consecutive_failures: u32,
    /// Start of the first failed attempt of the streak, Unix ms.
    pub since_ms: Option<u64>,
    /// End of the last failed attempt, Unix ms.
    pub last_ms: Option<u64>,
}

impl Streak {
    /// Whether this streak crosses the thresholds.
    pub fn failing(&self, t: &Thresholds) -> bool {
        if self.consecutive_failures == 0 {
            return false;
        }
        let duration = match (self.since_ms, self.last_ms) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        self.consecutive_failures >= t.consecutive_failures || duration >= t.failing_for_ms
    }
}

#[derive(Debug, Default, Clone)]
struct Entry {
    window: Counts,
    latencies: Vec<u64>,
    total: Counts,
    streak: Streak,
}

/// Latency percentiles of a window, ms (nearest-rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
}

/// Nearest-rank percentiles of a sorted slice (`None` when empty).
pub fn percentiles(sorted: &[u64]) -> Option<Percentiles> {
    if sorted.is_empty() {
        return None;
    }
    let rank = |p: u64| {
        let n = sorted.len() as u64;
        let r = (p * n).div_ceil(100).max(1);
        sorted[(r - 1) as usize]
    };
    Some(Percentiles {
        p50: rank(50),
        p90: rank(90),
        p99: rank(99),
    })
}

/// Figures of one (app, host) — or of one app (`endpoint_host` = `"*"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Application id.
    pub app_id: String,
    /// Endpoint host, or `*` for the whole application.
    pub endpoint_host: String,
    /// This window.
    pub window: Counts,
    /// delivered / attempts over the window (`None` without attempts).
    pub success_rate: Option<f64>,
    /// Latency percentiles over the window.
    pub latency: Option<Percentiles>,
    /// Since start.
    pub total: Counts,
    /// Current failure streak (for an app row: the longest among its hosts).
    pub streak: Streak,
    /// Whether the streak crosses the thresholds (for an app row: any host failing).
    pub failing: bool,
}

/// The aggregate at the end of a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Per (app, host), sorted.
    pub endpoints: Vec<Row>,
    /// Per app, sorted.
    pub apps: Vec<Row>,
    /// Records refused (not JSON, wrong version), since start.
    pub malformed_total: u64,
    /// Records read, since start.
    pub records_total: u64,
}

/// The aggregation state.
#[derive(Debug, Default, Clone)]
pub struct Aggregator {
    thresholds: Thresholds,
    entries: BTreeMap<(String, String), Entry>,
    malformed_total: u64,
    records_total: u64,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(thresholds: Thresholds) -> Aggregator {
        Aggregator {
            thresholds,
            ..Aggregator::default()
        }
    }

    /// Count records that could not be parsed.
    pub fn malformed(&mut self, n: u64) {
        self.malformed_total += n;
    }

    /// Add records to the current window (any order; streaks follow `finished_at_ms`).
    pub fn ingest(&mut self, records: &[Record]) {
        let mut sorted: Vec<&Record> = records.iter().collect();
        sorted.sort_by_key(|r| (r.finished_at_ms, r.started_at_ms));
        for r in sorted {
            self.records_total += 1;
            let e = self
                .entries
                .entry((r.app_id.clone(), r.endpoint_host.clone()))
                .or_default();
            e.window.add(r);
            e.total.add(r);
            match r.outcome.as_str() {
                "skipped" | "plugin_error" => {}
                "delivered" => e.streak = Streak::default(),
                _ => {
                    e.latencies.push(r.latency_ms);
                    let s = &mut e.streak;
                    s.consecutive_failures += 1;
                    s.since_ms.get_or_insert(r.started_at_ms);
                    s.last_ms = Some(r.finished_at_ms);
                    continue;
                }
            }
            if r.outcome == "delivered" {
                e.latencies.push(r.latency_ms);
            }
        }
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        let mut endpoints = Vec::new();
        let mut per_app: BTreeMap<&str, (Counts, Vec<u64>, Counts, Streak, bool)> = BTreeMap::new();
        for ((app, host), e) in &self.entries {
            let mut lat = e.latencies.clone();
            lat.sort_unstable();
            let failing = e.streak.failing(&self.thresholds);
            endpoints.push(row(app, host, &e.window, &lat, &e.total, e.streak, failing));
            let a = per_app.entry(app).or_default();
            a.0.merge(&e.window);
            a.1.extend_from_slice(&e.latencies);
            a.2.merge(&e.total);
            if e.streak.consecutive_failures > a.3.consecutive_failures {
                a.3 = e.streak;
            }
            a.4 |= failing;
        }
        let apps = per_app
            .into_iter()
            .map(|(app, (w, mut lat, t, s, f))| {
                lat.sort_unstable();
                row(app, "*", &w, &lat, &t, s, f)
            })
            .collect();
        Snapshot {
            endpoints,
            apps,
            malformed_total: self.malformed_total,
            records_total: self.records_total,
        }
    }

    /// Start a new window: window counters and latencies reset; totals and streaks stay.
    pub fn end_window(&mut self) {
        for e in self.entries.values_mut() {
            e.window = Counts::default();
            e.latencies.clear();
        }
    }
}

fn row(
    app: &str,
    host: &str,
    window: &Counts,
    sorted_latencies: &[u64],
    total: &Counts,
    streak: Streak,
    failing: bool,
) -> Row {
    Row {
        app_id: app.to_string(),
        endpoint_host: host.to_string(),
        success_rate: (window.attempts > 0)
            .then(|| window.delivered as f64 / window.attempts as f64),
        latency: percentiles(sorted_latencies),
        window: window.clone(),
        total: total.clone(),
        streak,
        failing,
    }
}

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
        let _ = writeln!(
            out,
            "{:<12} {:<28} {:>8} {:>8} {:>7} {:>5} {:>6} {:>6} {:>6}  {}{flag}",
            r.app_id,
            r.endpoint_host,
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
            let _ = writeln!(
                out,
                "{name}{{app=\"{}\",endpoint_host=\"{}\"}} {}",
                esc(&r.app_id),
                esc(&r.endpoint_host),
                get(&r.total)
            );
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
                "{name}{{app=\"{}\",endpoint_host=\"{}\",status=\"{}\"}} {n}",
                esc(&r.app_id),
                esc(&r.endpoint_host),
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
        let labels = format!(
            "app=\"{}\",endpoint_host=\"{}\"",
            esc(&r.app_id),
            esc(&r.endpoint_host)
        );
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
            let _ = writeln!(
                out,
                "{name}{{app=\"{}\",endpoint_host=\"{}\"}} {}",
                esc(&r.app_id),
                esc(&r.endpoint_host),
                get(r)
            );
        }
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

/// What one drain of the metrics queue read.
#[derive(Debug, Default)]
pub struct Drained {
    /// Parsed records.
    pub records: Vec<Record>,
    /// Messages that were not records (deleted too, counted).
    pub malformed: u64,
}

/// Receive everything currently in the metrics queue (up to `max` messages), parse it and
/// delete it. Records are consumed: run one `squall metrics` per metrics queue. A message is
/// deleted only after it was read into memory; a crash after the delete loses those records
/// (metrics only, never an event).
pub async fn drain<Q: crate::queue::Queue>(
    q: &Q,
    queue: &str,
    max: usize,
) -> Result<Drained, crate::queue::QueueError> {
    let mut out = Drained::default();
    let mut read = 0;
    while read < max {
        let got = q
            .receive(queue, 10, std::time::Duration::from_secs(1))
            .await?;
        if got.is_empty() {
            break;
        }
        read += got.len();
        for m in &got {
            match parse_record(&m.body) {
                Ok(r) => out.records.push(r),
                Err(e) => {
                    tracing::warn!(message_id = %m.message_id, error = %e, "metrics queue message ignored");
                    out.malformed += 1;
                }
            }
        }
        let handles: Vec<String> = got.iter().map(|m| m.receipt_handle.clone()).collect();
        for r in q.delete_batch(queue, &handles).await {
            if let Err(e) = r {
                // It comes back after the visibility timeout and is counted twice: say so.
                tracing::warn!(error = %e, "metrics record not deleted; it will be read again");
            }
        }
    }
    Ok(out)
}

/// The EMF lines for the records of one Lambda batch (a one-window aggregate).
pub fn emf_lines_for(records: &[MetricRecord], namespace: &str, timestamp_ms: u64) -> Vec<String> {
    let recs: Vec<Record> = records.iter().map(Record::from).collect();
    let mut agg = Aggregator::new(Thresholds::default());
    agg.ingest(&recs);
    emf_lines(&agg.snapshot(), namespace, timestamp_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

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
