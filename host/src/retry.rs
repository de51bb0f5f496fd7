//! Retry decisions: the core's (`squall_core::retry`, re-exported here: backoff arithmetic,
//! `Retry-After`, the limits every policy is held to), plus the built-in policy as a hook, which
//! draws the jitter: the core never draws a random number itself.

use crate::hooks::{AttemptContext, HookError, Outcome, RetryDecision, RetryPolicy};

pub use squall_core::retry::*;

/// The built-in retry policy as a hook: [`Backoff::decide`] with a fresh uniform draw for the
/// jitter.
#[derive(Debug, Clone, Default)]
pub struct BackoffPolicy {
    /// Its parameters.
    pub backoff: Backoff,
}

impl RetryPolicy for BackoffPolicy {
    fn identity(&self) -> &str {
        "builtin:exponential-backoff"
    }

    fn decide(&self, ctx: &AttemptContext, outcome: &Outcome) -> Result<RetryDecision, HookError> {
        Ok(self.backoff.decide(ctx, outcome, fastrand::f64()))
    }
}
