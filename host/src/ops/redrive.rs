//! `squall redrive` and `squall delete`: move dead letters back to their application queue,
//! or remove messages for good.
//!
//! Redrive order per batch of at most 10: receive from the DLQ (held), send copies to the
//! source queues, then delete from the DLQ only the ones whose send succeeded. A SIGKILL at any
//! point loses nothing:
//! - before the send: the held messages reappear in the DLQ when the hold expires;
//! - between the send and the delete (one SendMessageBatch + one DeleteMessageBatch round trip,
//!   per batch of 10): the message is in both places; the copy in the DLQ reappears and a
//!   second redrive sends it again, so the event may be delivered twice (same event id: the
//!   receiver deduplicates). Counted as `in_both` when the delete itself fails.
//!
//! The copy carries the original body byte for byte and none of the `squall-*` attributes: the
//! attempt count and the first-attempt time start again (a redriven event gets a full retry
//! schedule and horizon), and the DLQ's reason attributes do not travel. Other message
//! attributes (a producer's own) are kept.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::scan::{self, Filter, Held, MessageView, ScanLimits};
use super::{Inspect, OpsError};
use crate::pipeline::ATTR_SOURCE_QUEUE;
use crate::queue::{Outgoing, Received};

/// Where a dead letter goes back to: `squall-source-queue`, else the queue configured for its
/// application (`squall-app-id`, else the envelope's `app_id`).
pub fn destination(
    m: &Received,
    app_queue: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if let Some(q) = m
        .attributes
        .get(ATTR_SOURCE_QUEUE)
        .filter(|q| !q.is_empty())
    {
        return Ok(q.clone());
    }
    let v = MessageView::of(m);
    match v.app_id {
        None => Err("no squall-source-queue attribute and no application id".into()),
        Some(app) => app_queue(&app).ok_or_else(|| {
            format!("no squall-source-queue attribute and application {app:?} has no queue_url in the config")
        }),
    }
}

/// The copy sent back: same body, no `squall-*` attributes, no delay, the same
/// MessageGroupId (a shared queue's dead letter returns into its application's group).
pub fn redrive_copy(m: &Received) -> Outgoing {
    Outgoing {
        group_id: m.group_id.clone(),
        body: m.body.clone(),
        delay_secs: 0,
        attributes: m
            .attributes
            .iter()
            .filter(|(k, _)| !k.starts_with("squall-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Options of a redrive.
#[derive(Debug, Clone, Copy)]
pub struct RedriveOptions {
    /// Only report what would be done; every message stays in the DLQ.
    pub dry_run: bool,
    /// At most this many messages per second are moved (0 = no limit): a recovering endpoint
    /// is not flooded.
    pub rate_per_sec: u32,
    /// Scan limits (hold, caps).
    pub limits: ScanLimits,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// DLQ messages looked at.
    pub scanned: usize,
    /// Messages matching the filter.
    pub matched: usize,
    /// Copies accepted by their destination queue.
    pub sent: usize,
    /// Of those, deleted from the DLQ.
    pub deleted: usize,
    /// Sent but not deleted from the DLQ: in both places (a second redrive sends them again).
    pub in_both: usize,
    /// Matching, left in the DLQ because the send failed or no destination is known.
    pub left: usize,
    /// Destination queue -> copies sent there (or, in a dry run, that would be).
    pub by_destination: BTreeMap<String, usize>,
    /// Why messages were left, with counts.
    pub problems: BTreeMap<String, usize>,
}

/// Redrive the DLQ messages matching `filter`. Non-matching messages are held until the end
/// (so they are not read twice) and then made visible again.
pub async fn redrive<Q: Inspect>(
    q: &Q,
    dlq: &str,
    filter: &Filter,
    app_queue: &dyn Fn(&str) -> Option<String>,
    opts: RedriveOptions,
    mut progress: impl FnMut(&RedriveReport),
) -> Result<RedriveReport, OpsError> {
    let mut report = RedriveReport::default();
    let mut keep = Held::default();
    let mut seen = std::collections::HashSet::new();
    let mut idle = 0;
    let started = tokio::time::Instant::now();
    while idle < opts.limits.empty_receives && report.scanned < opts.limits.max_scanned {
        let got = match q
            .receive_held(dlq, 10, opts.limits.hold, opts.limits.wait)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                scan::release_all(q, dlq, &keep).await;
                return Err(e.into());
            }
        };
        let fresh: Vec<Received> = got
            .into_iter()
            .filter(|m| seen.insert(m.message_id.clone()))
            .collect();
        if fresh.is_empty() {
            idle += 1;
            continue;
        }
        idle = 0;
        report.scanned += fresh.len();
        // Group the matching ones by destination.
        let mut batch: BTreeMap<String, Vec<Received>> = BTreeMap::new();
        for m in fresh {
            if !filter.matches(&MessageView::of(&m)) {
                keep.others.push(m);
                continue;
            }
            report.matched += 1;
            match destination(&m, app_queue) {
                Ok(d) => batch.entry(d).or_default().push(m),
                Err(why) => {
                    *report.problems.entry(why).or_default() += 1;
                    report.left += 1;
                    keep.matched.push(m);
                }
            }
        }
        for (dest, msgs) in batch {
            if opts.dry_run {
                *report.by_destination.entry(dest).or_default() += msgs.len();
                keep.matched.extend(msgs);
                continue;
            }
            let copies: Vec<Outgoing> = msgs.iter().map(redrive_copy).collect();
            let sent = q.send_batch(&dest, &copies).await;
            let mut to_delete = Vec::new();
            for (m, r) in msgs.into_iter().zip(sent) {
                match r {
                    Ok(()) => {
                        report.sent += 1;
                        *report.by_destination.entry(dest.clone()).or_default() += 1;
                        to_delete.push(m);
                    }
                    Err(e) => {
                        *report
                            .problems
                            .entry(format!("send failed: {e}"))
                            .or_default() += 1;
                        report.left += 1;
                        keep.matched.push(m);
                    }
                }
            }
            let handles: Vec<String> = to_delete.iter().map(|m| m.receipt_handle.clone()).collect();
            for r in q.delete_batch(dlq, &handles).await {
                match r {
                    Ok(()) => report.deleted += 1,
                    Err(e) => {
                        report.in_both += 1;
                        *report
                            .problems
                            .entry(format!("sent but not deleted from the DLQ: {e}"))
                            .or_default() += 1;
                    }
                }
            }
        }
        progress(&report);
        if opts.rate_per_sec > 0 && !opts.dry_run {
            // Pace by messages moved so far.
            let due = Duration::from_secs_f64(report.sent as f64 / opts.rate_per_sec as f64);
            tokio::time::sleep_until(started + due).await;
        }
    }
    scan::release_all(q, dlq, &keep).await;
    Ok(report)
}

/// The first step of `squall delete`: hold the messages of `queue` matching `filter` (the
/// caller confirms, then calls [`delete_held`] or [`scan::release_all`]).
pub async fn select<Q: Inspect>(
    q: &Q,
    queue: &str,
    filter: &Filter,
    limits: ScanLimits,
) -> Result<Held, OpsError> {
    let held = scan::scan(q, queue, |m| filter.matches(&MessageView::of(m)), limits).await?;
    // The others go back at once; only the matching ones wait for the confirmation.
    scan::release(q, queue, &held.others).await;
    Ok(Held {
        matched: held.matched,
        others: Vec::new(),
    })
}

/// Delete held messages; returns (deleted, failed).
pub async fn delete_held<Q: Inspect>(q: &Q, queue: &str, held: &Held) -> (usize, usize) {
    let handles: Vec<String> = held
        .matched
        .iter()
        .map(|m| m.receipt_handle.clone())
        .collect();
    let results = q.delete_batch(queue, &handles).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    (results.len() - failed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::{MemoryQueues, QueueOptions};
    use crate::queue::{Attributes, Queue};

    fn dead(i: usize, app: &str, reason: &str, source: Option<&str>) -> Outgoing {
        let mut attributes = Attributes::from([
            ("squall-app-id".to_string(), app.to_string()),
            ("squall-event-id".to_string(), format!("evt_{i}")),
            ("squall-reason".to_string(), reason.to_string()),
            ("squall-attempts".to_string(), "25".to_string()),
            ("squall-first-attempt-ms".to_string(), "1000".to_string()),
            ("squall-dead-lettered-at-ms".to_string(), "9000".to_string()),
            ("producer-trace".to_string(), format!("t{i}")),
        ]);
        if let Some(s) = source {
            attributes.insert("squall-source-queue".into(), s.into());
        }
        Outgoing {
            body: format!("{{\"id\":\"evt_{i}\",\"app_id\":\"{app}\"}}"),
            delay_secs: 0,
            attributes,
            group_id: None,
        }
    }

    #[test]
    fn copy_keeps_body_and_foreign_attributes_and_drops_squall_ones() {
        let m = Received {
            message_id: "m".into(),
            receipt_handle: "h".into(),
            body: "{\"exact\":  \"bytes\"}".into(),
            attributes: dead(1, "billing", "x", Some("q")).attributes,
            receive_count: 3,
            sent_timestamp_ms: 5,
            group_id: None,
        };
        let c = redrive_copy(&m);
        assert_eq!(c.body, m.body);
        assert_eq!(c.delay_secs, 0);
        assert_eq!(
            c.attributes,
            Attributes::from([("producer-trace".to_string(), "t1".to_string())])
        );
        // Destination: attribute first, then the app's configured queue.
        let cfg = |app: &str| (app == "billing").then(|| "billing-q".to_string());
        assert_eq!(destination(&m, &cfg), Ok("q".to_string()));
        let mut no_source = m.clone();
        no_source.attributes.remove("squall-source-queue");
        assert_eq!(destination(&no_source, &cfg), Ok("billing-q".to_string()));
        no_source
            .attributes
            .insert("squall-app-id".into(), "gone".into());
        assert!(
            destination(&no_source, &cfg)
                .unwrap_err()
                .contains("\"gone\"")
        );
    }

    #[tokio::test]
    async fn redrive_moves_matching_messages_once_and_leaves_the_rest() {
        let q = MemoryQueues::new();
        for name in ["dlq", "billing", "shop"] {
            q.create_queue(name, QueueOptions::default()).unwrap();
        }
        let mut msgs = Vec::new();
        for i in 0..23 {
            let (app, reason) = if i % 2 == 0 {
                (
                    "billing",
                    "gave up after 25 attempts (max_attempts); last: status 503",
                )
            } else {
                ("shop", "status 410 is not retryable")
            };
            // Half the billing ones name their source queue; the rest rely on the config.
            let source = (i % 4 == 0).then_some(app);
            msgs.push(dead(i, app, reason, source));
        }
        // One dead letter of an unknown app, matching the filter: left, with a problem.
        msgs.push(dead(99, "ghost", "max_attempts", None));
        q.send_batch("dlq", &msgs).await;
        let cfg = |app: &str| ["billing", "shop"].contains(&app).then(|| app.to_string());
        let filter = Filter {
            reason: Some("max_attempts".into()),
            ..Filter::default()
        };
        let opts = RedriveOptions {
            dry_run: true,
            rate_per_sec: 0,
            limits: ScanLimits {
                wait: Duration::ZERO,
                ..ScanLimits::default()
            },
        };
        let dry = redrive(&q, "dlq", &filter, &cfg, opts, |_| {})
            .await
            .unwrap();
        assert_eq!(
            (dry.scanned, dry.matched, dry.sent, dry.left),
            (24, 13, 0, 1)
        );
        assert_eq!(dry.by_destination["billing"], 12);
        assert_eq!(q.counts("dlq").unwrap().total, 24);
        assert_eq!(q.counts("dlq").unwrap().in_flight, 0);
        assert_eq!(q.counts("billing").unwrap().total, 0);

        let report = redrive(
            &q,
            "dlq",
            &filter,
            &cfg,
            RedriveOptions {
                dry_run: false,
                ..opts
            },
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            (
                report.matched,
                report.sent,
                report.deleted,
                report.in_both,
                report.left
            ),
            (13, 12, 12, 0, 1)
        );
        assert_eq!(report.problems.values().sum::<usize>(), 1);
        let billing = q.messages("billing").unwrap();
        assert_eq!(billing.len(), 12);
        assert!(
            billing
                .iter()
                .all(|m| m.attributes.keys().all(|k| !k.starts_with("squall-")))
        );
        let dlq = q.messages("dlq").unwrap();
        assert_eq!(dlq.len(), 12, "11 shop + 1 ghost stay");
        assert_eq!(q.counts("dlq").unwrap().in_flight, 0);
        assert_eq!(q.counts("shop").unwrap().total, 0);
    }

    #[tokio::test]
    async fn delete_selects_by_event_id_and_releases_the_rest() {
        let q = MemoryQueues::new();
        q.create_queue("billing", QueueOptions::default()).unwrap();
        let msgs: Vec<Outgoing> = (0..15).map(|i| dead(i % 5, "billing", "r", None)).collect();
        q.send_batch("billing", &msgs).await;
        let filter = Filter {
            event_id: Some("evt_3".into()),
            ..Filter::default()
        };
        let limits = ScanLimits {
            wait: Duration::ZERO,
            ..ScanLimits::default()
        };
        let held = select(&q, "billing", &filter, limits).await.unwrap();
        assert_eq!(held.matched.len(), 3);
        assert_eq!(q.counts("billing").unwrap().in_flight, 3);
        assert_eq!(delete_held(&q, "billing", &held).await, (3, 0));
        let left = q.messages("billing").unwrap();
        assert_eq!(left.len(), 12);
        assert_eq!(q.counts("billing").unwrap().in_flight, 0);
        assert!(
            left.iter()
                .all(|m| m.attributes["squall-event-id"] != "evt_3")
        );
    }
}
