//! `squall status`: per application, the queue's counts and the age of its oldest message;
//! for the dead-letter queue, counts by application and reason.
//!
//! SQS has no "age of the oldest message" queue attribute (CloudWatch's
//! `ApproximateAgeOfOldestMessage` is a metric, not an API attribute), so the age is estimated by
//! peeking a sample of visible messages and taking the oldest `SentTimestamp`. It is a lower
//! bound: in-flight and delayed messages are not seen, nor visible ones beyond the sample. A
//! re-sent retry carries a new `SentTimestamp`, so the age is that of the copy (the time since
//! the *event* was first attempted is `squall-first-attempt-ms`, shown by `peek`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::scan::{self, MessageView, ScanLimits};
use super::{Depth, Inspect, OpsError};

/// The reason class of a dead-lettered message, from its `squall-reason` text (the texts carry
/// numbers and last outcomes, so they are grouped by what caused them).
pub fn reason_class(reason: Option<&str>) -> &'static str {
    let Some(r) = reason else {
        // Moved by the queue's redrive policy (maxReceiveCount): the host crashed or timed
        // out on it repeatedly and never decided anything.
        return "redrive-policy (no squall-reason)";
    };
    let r = r.to_ascii_lowercase();
    if r.contains("max_attempts") {
        "max-attempts"
    } else if r.contains("horizon") {
        "retry-horizon"
    } else if r.contains("not retryable") {
        "permanent-status"
    } else if r.starts_with("endpoint-disabled") {
        "endpoint-disabled"
    } else if r.starts_with("refused by policy") {
        "refused-by-policy"
    } else if r.starts_with("malformed envelope") {
        "malformed-envelope"
    } else if r.starts_with("malformed message") {
        "malformed-attributes"
    } else if r.contains("on_plugin_error") {
        "plugin-error"
    } else {
        "other"
    }
}

/// One application's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppStatus {
    /// Application id.
    pub app: String,
    /// Queue URL.
    pub queue_url: String,
    /// Counts (approximate, as SQS reports them).
    pub depth: Depth,
    /// Age of the oldest visible message among the sample, seconds (`None`: none seen).
    pub oldest_age_secs: Option<u64>,
    /// How many visible messages the age estimate looked at.
    pub sampled: usize,
}

/// The dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterStatus {
    /// Queue URL.
    pub queue_url: String,
    /// Counts.
    pub depth: Depth,
    /// Messages scanned for the breakdown.
    pub scanned: usize,
    /// app id (or `?`) -> reason class -> count.
    pub by_app_reason: BTreeMap<String, BTreeMap<String, u64>>,
    /// app id (or `?`) -> endpoint (`id:EID` for a registered endpoint, else the URL's host,
    /// `?` when unreadable) -> count.
    pub by_app_endpoint: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The shared queue: its counts (all applications together; SQS counts per queue, not per
/// group) and, per application, what a scan of up to `scan` visible messages saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedStatus {
    /// Queue URL.
    pub queue_url: String,
    /// Counts of the whole queue.
    pub depth: Depth,
    /// Visible messages scanned.
    pub scanned: usize,
    /// app id (the envelope's, or `?`) -> (visible messages seen, oldest age seen, seconds).
    pub by_app: BTreeMap<String, (u64, Option<u64>)>,
}

/// Everything `squall status` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// When it was taken, Unix ms.
    pub at_ms: u64,
    /// Per application.
    pub apps: Vec<AppStatus>,
    /// The dead-letter queue, if configured.
    pub dead_letter: Option<DeadLetterStatus>,
    /// The shared queue, if configured.
    pub shared: Option<SharedStatus>,
}

/// The oldest age among views, seconds, at `now_ms`.
pub fn oldest_age_secs(views: &[MessageView], now_ms: u64) -> Option<u64> {
    views
        .iter()
        .map(|v| v.sent_timestamp_ms)
        .filter(|&t| t > 0)
        .min()
        .map(|t| now_ms.saturating_sub(t) / 1000)
}

/// Group dead-letter views by app and reason class.
pub fn dead_letter_breakdown(views: &[MessageView]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for v in views {
        let app = v.app_id.clone().unwrap_or_else(|| "?".to_string());
        *out.entry(app)
            .or_default()
            .entry(reason_class(v.reason.as_deref()).to_string())
            .or_default() += 1;
    }
    out
}

/// Group dead-letter views by app and endpoint: a registered endpoint's id (`id:EID`), else the
/// host of the envelope's URL.
pub fn dead_letter_endpoints(views: &[MessageView]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for v in views {
        let app = v.app_id.clone().unwrap_or_else(|| "?".to_string());
        let endpoint = match v.endpoint.as_deref() {
            Some(e) if e.starts_with("id:") => e.to_string(),
            Some(url) => match squall_core::pipeline::url_host(url) {
                h if h.is_empty() => "?".to_string(),
                h => h,
            },
            None => "?".to_string(),
        };
        *out.entry(app).or_default().entry(endpoint).or_default() += 1;
    }
    out
}

/// One application's status: counts, then a peek of up to `age_sample` messages (0: no peek).
pub async fn app_status<Q: Inspect>(
    q: &Q,
    app: &str,
    queue_url: &str,
    age_sample: usize,
    limits: ScanLimits,
    now_ms: u64,
) -> Result<AppStatus, OpsError> {
    let depth = q.depth(queue_url).await?;
    let views = if age_sample == 0 || depth.visible == 0 {
        Vec::new()
    } else {
        scan::peek(q, queue_url, &scan::Filter::default(), limits, age_sample).await?
    };
    Ok(AppStatus {
        app: app.to_string(),
        queue_url: queue_url.to_string(),
        depth,
        oldest_age_secs: oldest_age_secs(&views, now_ms),
        sampled: views.len(),
    })
}

/// Per application id, the views seen and the oldest age among them at `now_ms`.
pub fn shared_breakdown(
    views: &[MessageView],
    now_ms: u64,
) -> BTreeMap<String, (u64, Option<u64>)> {
    let mut by: BTreeMap<String, Vec<MessageView>> = BTreeMap::new();
    for v in views {
        let app = v.app_id.clone().unwrap_or_else(|| "?".to_string());
        by.entry(app).or_default().push(v.clone());
    }
    by.into_iter()
        .map(|(app, vs)| (app, (vs.len() as u64, oldest_age_secs(&vs, now_ms))))
        .collect()
}

/// The shared queue's status: its counts, and per application (its `MessageGroupId`, the
/// envelope's `app_id`) what a scan of up to `max_scan` visible messages saw.
pub async fn shared_status<Q: Inspect>(
    q: &Q,
    queue_url: &str,
    max_scan: usize,
    limits: ScanLimits,
    now_ms: u64,
) -> Result<SharedStatus, OpsError> {
    let depth = q.depth(queue_url).await?;
    let views = if max_scan == 0 || depth.visible == 0 {
        Vec::new()
    } else {
        scan::peek(q, queue_url, &scan::Filter::default(), limits, max_scan).await?
    };
    Ok(SharedStatus {
        queue_url: queue_url.to_string(),
        depth,
        scanned: views.len(),
        by_app: shared_breakdown(&views, now_ms),
    })
}

/// The dead-letter queue's status: counts and a breakdown over up to `max_scan` messages.
pub async fn dead_letter_status<Q: Inspect>(
    q: &Q,
    queue_url: &str,
    max_scan: usize,
    limits: ScanLimits,
) -> Result<DeadLetterStatus, OpsError> {
    let depth = q.depth(queue_url).await?;
    let views = if max_scan == 0 || depth.visible == 0 {
        Vec::new()
    } else {
        scan::peek(q, queue_url, &scan::Filter::default(), limits, max_scan).await?
    };
    Ok(DeadLetterStatus {
        queue_url: queue_url.to_string(),
        depth,
        scanned: views.len(),
        by_app_reason: dead_letter_breakdown(&views),
        by_app_endpoint: dead_letter_endpoints(&views),
    })
}

/// The status as a text table.
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:>9} {:>10} {:>8} {:>12} {:>7}\n",
        "APP", "VISIBLE", "IN-FLIGHT", "DELAYED", "OLDEST-AGE*", "SAMPLE"
    ));
    for a in &s.apps {
        let age = match a.oldest_age_secs {
            Some(secs) => human_secs(secs),
            None => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<16} {:>9} {:>10} {:>8} {:>12} {:>7}\n",
            a.app, a.depth.visible, a.depth.in_flight, a.depth.delayed, age, a.sampled
        ));
    }
    out.push_str(
        "* oldest SentTimestamp among the SAMPLE visible messages peeked: a lower bound\n",
    );
    if let Some(sh) = &s.shared {
        out.push_str(&format!(
            "\nshared queue: {} visible, {} in flight, {} delayed ({} scanned)\n",
            sh.depth.visible, sh.depth.in_flight, sh.depth.delayed, sh.scanned
        ));
        if !sh.by_app.is_empty() {
            out.push_str(&format!(
                "{:<16} {:>9} {:>12}\n",
                "APP", "SCANNED", "OLDEST-AGE*"
            ));
            for (app, (n, age)) in &sh.by_app {
                let age = age.map_or("-".to_string(), human_secs);
                out.push_str(&format!("{app:<16} {n:>9} {age:>12}\n"));
            }
        }
    }
    if let Some(d) = &s.dead_letter {
        out.push_str(&format!(
            "\ndead-letter queue: {} visible, {} in flight, {} delayed ({} scanned)\n",
            d.depth.visible, d.depth.in_flight, d.depth.delayed, d.scanned
        ));
        if !d.by_app_reason.is_empty() {
            out.push_str(&format!("{:<16} {:<36} {:>7}\n", "APP", "REASON", "COUNT"));
            for (app, reasons) in &d.by_app_reason {
                for (reason, n) in reasons {
                    out.push_str(&format!("{app:<16} {reason:<36} {n:>7}\n"));
                }
            }
        }
        if !d.by_app_endpoint.is_empty() {
            out.push_str(&format!(
                "{:<16} {:<36} {:>7}\n",
                "APP", "ENDPOINT", "COUNT"
            ));
            for (app, endpoints) in &d.by_app_endpoint {
                for (endpoint, n) in endpoints {
                    out.push_str(&format!("{app:<16} {endpoint:<36} {n:>7}\n"));
                }
            }
        }
    }
    out
}

/// 75 -> "1m15s", 7300 -> "2h1m40s".
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::scan::MessageView;
    use crate::queue::Received;

    fn view(app: Option<&str>, reason: Option<&str>, sent: u64) -> MessageView {
        let mut attributes = crate::queue::Attributes::new();
        if let Some(a) = app {
            attributes.insert("squall-app-id".into(), a.into());
        }
        if let Some(r) = reason {
            attributes.insert("squall-reason".into(), r.into());
        }
        MessageView::of(&Received {
            message_id: "m".into(),
            receipt_handle: "h".into(),
            body: String::new(),
            attributes,
            receive_count: 1,
            sent_timestamp_ms: sent,
            group_id: None,
        })
    }

    #[test]
    fn reasons_written_by_the_engine_fall_into_their_class() {
        let cases = [
            (
                "gave up after 25 attempts (max_attempts); last: status 503",
                "max-attempts",
            ),
            (
                "retry horizon of 259200 s would be exceeded after 9 attempts; last: status 500",
                "retry-horizon",
            ),
            (
                "status 410 is not retryable (4xx other than 408, 409, 425, 429)",
                "permanent-status",
            ),
            (
                "refused by policy: address 10.0.0.1 is private",
                "refused-by-policy",
            ),
            (
                "malformed envelope: field `id`: missing",
                "malformed-envelope",
            ),
            (
                "malformed message: message attribute squall-attempts is not an unsigned integer: \"x\"",
                "malformed-attributes",
            ),
            (
                "transform trapped (on_plugin_error = \"dead-letter\")",
                "plugin-error",
            ),
            (
                "endpoint-disabled: endpoint \"E\" of application \"shop\" is disabled (redrive once it is enabled again)",
                "endpoint-disabled",
            ),
            (
                "malformed envelope: field \"endpoint_id\": application \"shop\" has no endpoint \"E\" (never created, or deleted)",
                "malformed-envelope",
            ),
            ("custom policy said no", "other"),
        ];
        for (text, class) in cases {
            assert_eq!(reason_class(Some(text)), class, "{text}");
        }
        assert_eq!(reason_class(None), "redrive-policy (no squall-reason)");
    }

    #[test]
    fn dead_letters_group_by_endpoint_id_or_url_host() {
        let with_body = |app: &str, dest: &str| {
            let body = format!(
                r#"{{"version":1,"id":"e","app_id":"{app}","type":"t",{dest},"created_at":1,"payload":{{}}}}"#
            );
            MessageView::of(&Received {
                message_id: "m".into(),
                receipt_handle: "h".into(),
                body,
                attributes: Default::default(),
                receive_count: 1,
                sent_timestamp_ms: 1,
                group_id: None,
            })
        };
        let views = vec![
            with_body("shop", r#""endpoint_id":"E""#),
            with_body("shop", r#""endpoint_id":"E""#),
            with_body("shop", r#""endpoint":"https://a.example.com/x""#),
            with_body("crm", r#""endpoint":"https://a.example.com/y""#),
        ];
        let b = dead_letter_endpoints(&views);
        assert_eq!(b["shop"]["id:E"], 2);
        assert_eq!(b["shop"]["a.example.com"], 1);
        assert_eq!(b["crm"]["a.example.com"], 1);
        assert_eq!(b.values().map(|r| r.values().sum::<u64>()).sum::<u64>(), 4);
    }

    #[test]
    fn breakdown_and_age_count_exactly() {
        let views = vec![
            view(
                Some("billing"),
                Some("gave up after 3 attempts (max_attempts)"),
                9_000,
            ),
            view(
                Some("billing"),
                Some("gave up after 4 attempts (max_attempts)"),
                4_000,
            ),
            view(Some("billing"), Some("status 404 is not retryable"), 7_000),
            view(Some("shop"), None, 0),
            view(None, Some("malformed envelope: not JSON"), 8_000),
        ];
        let b = dead_letter_breakdown(&views);
        assert_eq!(b["billing"]["max-attempts"], 2);
        assert_eq!(b["billing"]["permanent-status"], 1);
        assert_eq!(b["shop"]["redrive-policy (no squall-reason)"], 1);
        assert_eq!(b["?"]["malformed-envelope"], 1);
        assert_eq!(b.values().map(|r| r.values().sum::<u64>()).sum::<u64>(), 5);
        // Oldest SentTimestamp is 4 000 ms; a missing one (0) is ignored.
        assert_eq!(oldest_age_secs(&views, 65_000), Some(61));
        assert_eq!(oldest_age_secs(&[], 65_000), None);
        assert_eq!(human_secs(75), "1m15s");
        assert_eq!(human_secs(7300), "2h01m40s");
        assert_eq!(human_secs(9), "9s");
    }

    #[test]
    fn the_shared_queue_is_broken_down_by_application() {
        let views = vec![
            view(Some("tiny"), None, 9_000),
            view(Some("tiny"), None, 4_000),
            view(Some("small"), None, 7_000),
            view(None, None, 8_000),
        ];
        let b = shared_breakdown(&views, 65_000);
        assert_eq!(b["tiny"], (2, Some(61)));
        assert_eq!(b["small"], (1, Some(58)));
        assert_eq!(b["?"], (1, Some(57)));
        let s = Status {
            at_ms: 65_000,
            apps: Vec::new(),
            dead_letter: None,
            shared: Some(SharedStatus {
                queue_url: "q".into(),
                depth: Depth {
                    visible: 4,
                    in_flight: 1,
                    delayed: 0,
                },
                scanned: 4,
                by_app: b,
            }),
        };
        let text = render_table(&s);
        assert!(
            text.contains("shared queue: 4 visible, 1 in flight, 0 delayed (4 scanned)"),
            "{text}"
        );
        assert!(
            text.contains("tiny                     2        1m01s"),
            "{text}"
        );
    }
}
