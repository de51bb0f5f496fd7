//! Aggregating metrics records per application and endpoint host (what `squall metrics` and the
//! Lambda function's EMF lines report).
//!
//! [`Aggregator`] is a pure function over records (no queue, no clock): feed it the records of
//! one window with [`Aggregator::ingest`], read a [`Snapshot`], then [`Aggregator::end_window`].
//! Per (application, endpoint host) it keeps (per (application, endpoint host, endpoint id) with
//! [`Aggregator::by_endpoint_id`], so events addressed to a registered endpoint are counted per
//! id, and an id whose URL moved shows one row per host it went to):
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
//! `render::emf_lines` renders the same figures as CloudWatch Embedded Metric Format log lines (for
//! the Lambda function); `render::prometheus_text` as Prometheus text exposition format 0.0.4.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::MetricRecord;

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
    /// The registered endpoint the envelope named, if any.
    #[serde(default)]
    pub endpoint_id: Option<String>,
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
            endpoint_id: r.endpoint_id.clone(),
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
    /// The registered endpoint (grouping by endpoint id only; `None` for events sent to a URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
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
    /// Operational events since start: (app, endpoint origin, kind) -> count.
    pub endpoint_events: BTreeMap<String, u64>,
}

/// The aggregation state.
#[derive(Debug, Default, Clone)]
pub struct Aggregator {
    thresholds: Thresholds,
    by_endpoint_id: bool,
    /// `app\u{1f}endpoint\u{1f}kind` -> count.
    events: BTreeMap<String, u64>,
    entries: BTreeMap<(String, String, Option<String>), Entry>,
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

    /// Rows per endpoint id as well as per host (`squall metrics --by endpoint-id`).
    pub fn by_endpoint_id(mut self) -> Aggregator {
        self.by_endpoint_id = true;
        self
    }

    /// Count operational events (endpoint health transitions), since start.
    pub fn ingest_events(&mut self, events: &[crate::health::OperationalEvent]) {
        for e in events {
            let key = format!("{}\u{1f}{}\u{1f}{}", e.app_id, e.endpoint, e.kind);
            *self.events.entry(key).or_default() += 1;
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
                .entry((
                    r.app_id.clone(),
                    r.endpoint_host.clone(),
                    r.endpoint_id.clone().filter(|_| self.by_endpoint_id),
                ))
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
        for ((app, host, id), e) in &self.entries {
            let mut lat = e.latencies.clone();
            lat.sort_unstable();
            let failing = e.streak.failing(&self.thresholds);
            let mut r = row(app, host, &e.window, &lat, &e.total, e.streak, failing);
            r.endpoint_id = id.clone();
            endpoints.push(r);
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
            endpoint_events: self.events.clone(),
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
        endpoint_id: None,
        success_rate: (window.attempts > 0)
            .then(|| window.delivered as f64 / window.attempts as f64),
        latency: percentiles(sorted_latencies),
        window: window.clone(),
        total: total.clone(),
        streak,
        failing,
    }
}
