//! Counters of a run: updated by the pollers and batches as they go, readable while the runner
//! runs ([`RunStats::snapshot`]) and in its final report.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::{Action, DeleteReason};

/// Counters of a run, readable while it runs.
#[derive(Debug, Default)]
pub struct RunStats {
    received: AtomicU64,
    delivered: AtomicU64,
    retried_by_visibility: AtomicU64,
    resent: AtomicU64,
    hops: AtomicU64,
    dead_lettered: AtomicU64,
    skipped: AtomicU64,
    discarded: AtomicU64,
    act_failed: AtomicU64,
    receive_errors: AtomicU64,
    over_limit: AtomicU64,
}

/// A snapshot of [`RunStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Messages received.
    pub received: u64,
    /// Deleted after a 2xx.
    pub delivered: u64,
    /// Retries scheduled by ChangeMessageVisibility.
    pub retried_by_visibility: u64,
    /// Retries scheduled by re-sending a delayed copy.
    pub resent: u64,
    /// Early copies re-sent without an attempt.
    pub hops: u64,
    /// Sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// Skipped by the transform.
    pub skipped: u64,
    /// Discarded by the retry policy.
    pub discarded: u64,
    /// Actions that failed (the message was left to reappear).
    pub act_failed: u64,
    /// Failed receives (any error).
    pub receive_errors: u64,
    /// Of those, OverLimit.
    pub over_limit: u64,
}

impl RunStats {
    /// Read all counters.
    pub fn snapshot(&self) -> RunCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RunCounts {
            received: g(&self.received),
            delivered: g(&self.delivered),
            retried_by_visibility: g(&self.retried_by_visibility),
            resent: g(&self.resent),
            hops: g(&self.hops),
            dead_lettered: g(&self.dead_lettered),
            skipped: g(&self.skipped),
            discarded: g(&self.discarded),
            act_failed: g(&self.act_failed),
            receive_errors: g(&self.receive_errors),
            over_limit: g(&self.over_limit),
        }
    }

    /// `n` messages received.
    pub(super) fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A receive failed (`over_limit`: with OverLimit).
    pub(super) fn receive_failed(&self, over_limit: bool) {
        self.receive_errors.fetch_add(1, Ordering::Relaxed);
        if over_limit {
            self.over_limit.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An action failed; its message was left to reappear.
    pub(super) fn act_failed(&self) {
        self.act_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// An action was carried out.
    pub(super) fn acted(&self, action: &Action) {
        let c = match action {
            Action::Delete {
                why: DeleteReason::Delivered,
            } => &self.delivered,
            Action::Delete {
                why: DeleteReason::Skipped(_),
            } => &self.skipped,
            Action::Delete {
                why: DeleteReason::Discarded(_),
            } => &self.discarded,
            Action::RetryByVisibility { .. } => &self.retried_by_visibility,
            Action::Resend { hop: true, .. } => &self.hops,
            Action::Resend { hop: false, .. } => &self.resent,
            Action::DeadLetter { .. } => &self.dead_lettered,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
