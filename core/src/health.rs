//! Endpoint health as values: a circuit breaker, `Retry-After` pauses and adaptive pacing per
//! (application, endpoint origin), decided by plain functions over the clock's reading (issue 20;
//! DESIGN.md "Endpoint state"). The engine keeps one [`EndpointHealth`] per key, asks
//! [`EndpointHealth::admit`] before an attempt and feeds [`EndpointHealth::record`] what came
//! back; a deferral uses the delayed re-send (nothing waits in flight, no attempt is counted).
//! The engine (`squall::health`) keeps the states and shares their transitions.
//!
//! - **Key**: the application and the URL's origin (`scheme://host:port`, the port written even
//!   when it is the scheme's default): what one subscriber's server is, whatever the path.
//! - **Breaker**: `failure_threshold` failures in a row (timeouts, connection errors, 5xx
//!   without `Retry-After`) open it for `open_secs`; while open every event is deferred to the
//!   reopening; then exactly one probe goes (half-open): a success closes it, a failure reopens
//!   it for twice as long (at most `open_max_secs`). A probe that never reports (its process
//!   died) is replaced after `probe_timeout_ms`.
//! - **Pause**: a 429, or a 503 with `Retry-After`, pauses the whole endpoint for the
//!   `Retry-After` (at most `retry_after_max_secs`), not just the event that got it.
//! - **Pacing (AIMD)**: a 429 halves the endpoint's request rate (starting from the rate it was
//!   being sent at, measured over the last second), at most once a second (the other 429s of
//!   that second answer requests sent before the cut); each success adds `1 / rate` to it, so the
//!   rate grows by about one request per second for every second of successful traffic; above
//!   `unpaced_above` requests per second the limit is dropped. Why AIMD: it is what TCP does for
//!   the same problem (find the capacity of a path that only signals overload), it converges
//!   to a fair share when several senders pace one endpoint, and it needs no model of the
//!   endpoint. A fixed `max_rate` caps the rate whatever AIMD says.
//! - **Dead**: no success for `disable_after_ms` while failing: [`Transition::Disabled`], once;
//!   from then on every event is refused ([`Admit::Disabled`]: dead-lettered `endpoint-disabled`,
//!   no request) until an operator enables the endpoint again.
//! - **Shared**: each transition but a rate change is also a [`SharedState`], the text other
//!   processes serving the application read (through the registry's store) and apply with
//!   [`EndpointHealth::apply_shared`]: an instance that has not seen the failures itself holds
//!   its events all the same.

/// A 429 lowers an endpoint's rate at most once in this long (ms).
pub const DECREASE_EVERY_MS: u64 = 1_000;

/// One endpoint's health settings (per application, with defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSettings {
    /// Failures in a row that open the breaker.
    pub failure_threshold: u32,
    /// First open interval, seconds.
    pub open_secs: u32,
    /// Longest open interval, seconds.
    pub open_max_secs: u32,
    /// A probe that has not reported after this is replaced, ms.
    pub probe_timeout_ms: u64,
    /// `Retry-After` pauses are clamped to this, seconds.
    pub retry_after_max_secs: u32,
    /// A fixed cap on requests per second (`None`: no cap).
    pub max_rate: Option<f64>,
    /// AIMD never paces below this many requests per second.
    pub min_rate: f64,
    /// AIMD drops its limit once the rate grows above this.
    pub unpaced_above: f64,
    /// Failing without one success for this long disables the endpoint, ms.
    pub disable_after_ms: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            failure_threshold: 5,
            open_secs: 30,
            open_max_secs: 900,
            probe_timeout_ms: 60_000,
            retry_after_max_secs: 3600,
            max_rate: None,
            min_rate: 0.2,
            unpaced_above: 1000.0,
            disable_after_ms: 5 * 24 * 3600 * 1000,
        }
    }
}

/// The origin of a URL: `scheme://host:port`, or `None` when it has no host.
pub fn origin_of(url: &str) -> Option<String> {
    let u = crate::envelope::parse_url(url).ok()?;
    let host = u.host_str()?;
    let port = u.port_or_known_default()?;
    Some(format!("{}://{host}:{port}", u.scheme()))
}

/// What an attempt's outcome says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// 2xx.
    Success,
    /// The server answered, neither success nor overload (3xx, 4xx other than 429): the
    /// endpoint is up; the event is the problem.
    Answered,
    /// Timeout, connection error, or 5xx without `Retry-After`.
    Failure,
    /// 429 (with or without `Retry-After`), or 503 with `Retry-After` (seconds).
    Overloaded {
        /// The `Retry-After`, seconds, if given.
        retry_after_secs: Option<u64>,
    },
}

/// Why an event is deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferWhy {
    /// The breaker is open (or a probe is out).
    Open,
    /// A `Retry-After` pause.
    Paused,
    /// The endpoint's request rate.
    Paced,
}

/// The answer before an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send.
    Go,
    /// Send: this is the half-open breaker's one probe.
    Probe,
    /// Do not send; bring the event back at `until_ms` (no attempt counted).
    Defer {
        /// When the endpoint may be tried again, Unix ms.
        until_ms: u64,
        /// Why.
        why: DeferWhy,
    },
    /// Do not send: the endpoint is disabled (dead-letter the event, `endpoint-disabled`).
    Disabled {
        /// Failing since, Unix ms (when the last success was).
        failing_since_ms: u64,
    },
}

/// A change worth telling the producer (an operational event on the metrics queue).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The breaker opened (or reopened after a failed probe) until `until_ms`.
    Opened {
        /// When a probe is due, Unix ms.
        until_ms: u64,
        /// What opened it.
        reason: String,
    },
    /// A probe succeeded: the breaker closed.
    Closed,
    /// A `Retry-After` paused the endpoint, or its pacing rate changed.
    Paced {
        /// Paused until, Unix ms (0: not paused).
        paused_until_ms: u64,
        /// Requests per second now allowed (`None`: unpaced).
        rate: Option<f64>,
    },
    /// No success for the settings' `disable_after_ms` while failing.
    Disabled {
        /// Failing since, Unix ms.
        failing_since_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until_ms: u64,
        interval_secs: u32,
    },
    HalfOpen {
        probe_at_ms: u64,
        interval_secs: u32,
    },
}

/// One endpoint's health.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointHealth {
    breaker: Breaker,
    paused_until_ms: u64,
    /// AIMD's rate, requests per second (`None`: unpaced).
    rate: Option<f64>,
    /// Token bucket for the effective rate: tokens, and when they were counted.
    tokens: f64,
    tokens_at_ms: u64,
    /// Requests admitted in the current one-second window (for the rate a 429 halves).
    window_start_ms: u64,
    window_count: u32,
    last_window_rate: f64,
    /// When a 429 last lowered the rate.
    decreased_at_ms: Option<u64>,
    /// First failure since the last success.
    failing_since_ms: Option<u64>,
    disabled_reported: bool,
    /// Disabled: every event refused (the failing-since time it was disabled for).
    disabled: Option<u64>,
    /// When the breaker last opened or closed here, or by a shared state applied (Unix ms):
    /// an older shared state does not undo it.
    breaker_changed_ms: u64,
    /// The newest shared state applied (its `at_ms`).
    shared_seen_ms: u64,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            breaker: Breaker::Closed { failures: 0 },
            paused_until_ms: 0,
            rate: None,
            tokens: 1.0,
            tokens_at_ms: 0,
            window_start_ms: 0,
            window_count: 0,
            last_window_rate: 0.0,
            decreased_at_ms: None,
            failing_since_ms: None,
            disabled_reported: false,
            disabled: None,
            breaker_changed_ms: 0,
            shared_seen_ms: 0,
        }
    }
}

impl EndpointHealth {
    /// The rate requests are held to now (AIMD's and `max_rate`, the lower), if any.
    pub fn effective_rate(&self, s: &HealthSettings) -> Option<f64> {
        match (self.rate, s.max_rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the breaker is open or probing.
    pub fn is_open(&self) -> bool {
        !matches!(self.breaker, Breaker::Closed { .. })
    }

    /// Whether the endpoint is disabled.
    pub fn is_disabled(&self) -> bool {
        self.disabled.is_some()
    }

    /// May an event be sent to this endpoint at `now_ms`?
    pub fn admit(&mut self, s: &HealthSettings, now_ms: u64) -> Admit {
        if let Some(failing_since_ms) = self.disabled {
            return Admit::Disabled { failing_since_ms };
        }
        if now_ms < self.paused_until_ms {
            return Admit::Defer {
                until_ms: self.paused_until_ms,
                why: DeferWhy::Paused,
            };
        }
        let mut probe = false;
        match self.breaker {
            Breaker::Closed { .. } => {}
            Breaker::Open {
                until_ms,
                interval_secs,
            } => {
                if now_ms < until_ms {
                    return Admit::Defer {
                        until_ms,
                        why: DeferWhy::Open,
                    };
                }
                self.breaker = Breaker::HalfOpen {
                    probe_at_ms: now_ms,
                    interval_secs,
                };
                probe = true;
            }
            Breaker::HalfOpen {
                probe_at_ms,
                interval_secs,
            } => {
                let replace_at = probe_at_ms + s.probe_timeout_ms;
                if now_ms < replace_at {
                    return Admit::Defer {
                        until_ms: replace_at,
                        why: DeferWhy::Open,
                    };
                }
                // The probe never reported: another one.
                self.breaker = Breaker::HalfOpen {
                    probe_at_ms: now_ms,
                    interval_secs,
                };
                probe = true;
            }
        }
        if let Some(rate) = self.effective_rate(s) {
            let elapsed = now_ms.saturating_sub(self.tokens_at_ms) as f64 / 1000.0;
            // No burst: requests are spaced 1/rate apart, so no one-second window ever holds
            // more than the rate (what a subscriber's own limiter counts).
            self.tokens = (self.tokens + elapsed * rate).min(1.0);
            self.tokens_at_ms = now_ms;
            if self.tokens < 1.0 && !probe {
                let wait_ms = ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64;
                return Admit::Defer {
                    until_ms: now_ms + wait_ms.max(1),
                    why: DeferWhy::Paced,
                };
            }
            self.tokens -= 1.0;
        }
        self.count(now_ms);
        if probe { Admit::Probe } else { Admit::Go }
    }

    fn count(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            let secs = (now_ms - self.window_start_ms) as f64 / 1000.0;
            self.last_window_rate = if secs < 2.0 {
                f64::from(self.window_count) / secs
            } else {
                0.0
            };
            self.window_start_ms = now_ms;
            self.window_count = 0;
        }
        self.window_count += 1;
    }

    /// What an attempt sent at the endpoint found, at `now_ms`; the transitions it caused.
    pub fn record(
        &mut self,
        s: &HealthSettings,
        observed: Observed,
        now_ms: u64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        match observed {
            Observed::Success => {
                self.failing_since_ms = None;
                self.disabled_reported = false;
                if self.is_open() {
                    out.push(Transition::Closed);
                    self.breaker_changed_ms = now_ms;
                }
                self.breaker = Breaker::Closed { failures: 0 };
                if let Some(rate) = self.rate {
                    let next = rate + 1.0 / rate.max(s.min_rate);
                    self.rate = (next <= s.unpaced_above).then_some(next);
                }
            }
            // The server answered: a run of failures is broken, a probe closes the breaker.
            // (Open: an attempt admitted before it opened, reporting late; nothing changes.)
            Observed::Answered => match self.breaker {
                Breaker::Closed { .. } => self.breaker = Breaker::Closed { failures: 0 },
                Breaker::HalfOpen { .. } => {
                    self.breaker = Breaker::Closed { failures: 0 };
                    self.breaker_changed_ms = now_ms;
                    out.push(Transition::Closed);
                }
                Breaker::Open { .. } => {}
            },
            Observed::Failure => {
                let since = *self.failing_since_ms.get_or_insert(now_ms);
                match self.breaker {
                    Breaker::Closed { failures } => {
                        let failures = failures + 1;
                        if failures >= s.failure_threshold {
                            let until_ms = now_ms + u64::from(s.open_secs) * 1000;
                            self.breaker = Breaker::Open {
                                until_ms,
                                interval_secs: s.open_secs,
                            };
                            self.breaker_changed_ms = now_ms;
                            out.push(Transition::Opened {
                                until_ms,
                                reason: format!("{failures} failures in a row"),
                            });
                        } else {
                            self.breaker = Breaker::Closed { failures };
                        }
                    }
                    Breaker::HalfOpen { interval_secs, .. } => {
                        let interval_secs = interval_secs.saturating_mul(2).min(s.open_max_secs);
                        let until_ms = now_ms + u64::from(interval_secs) * 1000;
                        self.breaker = Breaker::Open {
                            until_ms,
                            interval_secs,
                        };
                        self.breaker_changed_ms = now_ms;
                        out.push(Transition::Opened {
                            until_ms,
                            reason: "the probe failed".into(),
                        });
                    }
                    // An attempt admitted before the breaker opened, reporting late.
                    Breaker::Open { .. } => {}
                }
                if !self.disabled_reported && now_ms.saturating_sub(since) >= s.disable_after_ms {
                    self.disabled_reported = true;
                    self.disabled = Some(since);
                    out.push(Transition::Disabled {
                        failing_since_ms: since,
                    });
                }
            }
            Observed::Overloaded { retry_after_secs } => {
                // The server is up: a probe that got this closes nothing but reopens nothing.
                if let Breaker::HalfOpen { interval_secs, .. } = self.breaker {
                    self.breaker = Breaker::Open {
                        until_ms: now_ms,
                        interval_secs,
                    };
                }
                if let Some(secs) = retry_after_secs {
                    let secs = secs.min(u64::from(s.retry_after_max_secs));
                    self.paused_until_ms = self.paused_until_ms.max(now_ms + secs * 1000);
                }
                // One decrease per DECREASE_EVERY_MS: the 429s of requests already in flight when
                // the first came back report the same overload (TCP halves once per round trip
                // for the same reason); eight answered together would cut the rate 256-fold.
                let recent = self
                    .decreased_at_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) < DECREASE_EVERY_MS);
                if !recent {
                    let base = self
                        .rate
                        .unwrap_or_else(|| self.current_rate(now_ms).max(s.min_rate * 2.0));
                    self.rate = Some((base / 2.0).max(s.min_rate));
                    self.decreased_at_ms = Some(now_ms);
                }
                self.tokens = self.tokens.min(1.0);
                out.push(Transition::Paced {
                    paused_until_ms: if self.paused_until_ms > now_ms {
                        self.paused_until_ms
                    } else {
                        0
                    },
                    rate: self.effective_rate(s),
                });
            }
        }
        out
    }

    /// Enable a disabled endpoint (an operator's decision, here or shared): events go again,
    /// and its failing time starts over.
    pub fn enable(&mut self) {
        self.breaker = Breaker::Closed { failures: 0 };
        self.paused_until_ms = 0;
        self.disabled = None;
        self.disabled_reported = false;
        self.failing_since_ms = None;
    }

    /// Apply a state another process shared (or this one, read back); whether anything
    /// changed. A state older than one already applied, or than this process's own last
    /// breaker change, changes nothing: the newer knowledge wins.
    pub fn apply_shared(&mut self, s: &HealthSettings, shared: &SharedState, now_ms: u64) -> bool {
        if shared.at_ms <= self.shared_seen_ms {
            return false;
        }
        self.shared_seen_ms = shared.at_ms;
        let newer = shared.at_ms >= self.breaker_changed_ms;
        match shared.state {
            SharedKind::Opened => {
                let until_ms = shared.until_ms.unwrap_or(0);
                let later = match self.breaker {
                    Breaker::Closed { .. } => true,
                    Breaker::Open { until_ms: u, .. } => u < until_ms,
                    Breaker::HalfOpen { .. } => false,
                };
                if !(newer && later && until_ms > now_ms) {
                    return false;
                }
                let secs = (until_ms.saturating_sub(shared.at_ms) / 1000) as u32;
                self.breaker = Breaker::Open {
                    until_ms,
                    interval_secs: secs.clamp(s.open_secs, s.open_max_secs.max(s.open_secs)),
                };
                self.breaker_changed_ms = shared.at_ms;
                true
            }
            SharedKind::Closed => {
                // The endpoint answered someone: it is alive.
                self.failing_since_ms = None;
                if !(newer && self.is_open()) {
                    return false;
                }
                self.breaker = Breaker::Closed { failures: 0 };
                self.breaker_changed_ms = shared.at_ms;
                true
            }
            SharedKind::Paused => {
                let until_ms = shared.until_ms.unwrap_or(0);
                if until_ms <= self.paused_until_ms {
                    return false;
                }
                self.paused_until_ms = until_ms;
                true
            }
            SharedKind::Disabled => {
                if self.disabled.is_some() {
                    return false;
                }
                self.disabled = Some(shared.failing_since_ms.unwrap_or(shared.at_ms));
                self.disabled_reported = true;
                true
            }
            SharedKind::Enabled => {
                let was = self.disabled.is_some();
                self.enable();
                was
            }
        }
    }

    /// Requests per second sent lately: the last full second's, or the current window's.
    fn current_rate(&self, now_ms: u64) -> f64 {
        let in_window = now_ms.saturating_sub(self.window_start_ms).max(1) as f64 / 1000.0;
        self.last_window_rate
            .max(f64::from(self.window_count) / in_window.max(1.0))
    }
}

/// An operational event on the metrics queue: a [`Transition`] of one endpoint, for the
/// producer's platform to tell its customer (`squall metrics` shows them; Prometheus and EMF
/// count them). Format version 1; `kind` tells it from a metrics record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperationalEvent {
    /// Format version: 1.
    pub v: u8,
    /// `endpoint.opened`, `endpoint.closed`, `endpoint.paced`, `endpoint.disabled` or
    /// `endpoint.enabled`.
    pub kind: String,
    /// Application id.
    pub app_id: String,
    /// The endpoint's origin, `scheme://host:port`.
    pub endpoint: String,
    /// Why, in words.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Opened or paused until, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Paced: requests per second now allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

impl OperationalEvent {
    /// The event for `t` of `app_id`'s endpoint `origin` at `at_ms`.
    pub fn of(app_id: &str, origin: &str, t: &Transition, at_ms: u64) -> OperationalEvent {
        let (kind, reason, until_ms, rate) = match t {
            Transition::Opened { until_ms, reason } => {
                ("endpoint.opened", reason.clone(), Some(*until_ms), None)
            }
            Transition::Closed => (
                "endpoint.closed",
                "a probe succeeded".to_string(),
                None,
                None,
            ),
            Transition::Paced {
                paused_until_ms,
                rate,
            } => (
                "endpoint.paced",
                if *paused_until_ms > 0 {
                    "Retry-After: paused".to_string()
                } else {
                    "429: request rate lowered".to_string()
                },
                (*paused_until_ms > 0).then_some(*paused_until_ms),
                *rate,
            ),
            Transition::Disabled { failing_since_ms } => (
                "endpoint.disabled",
                format!("no success since {failing_since_ms} (Unix ms)"),
                None,
                None,
            ),
        };
        OperationalEvent {
            v: 1,
            kind: kind.into(),
            app_id: app_id.into(),
            endpoint: origin.into(),
            reason,
            at_ms,
            until_ms,
            rate,
        }
    }

    /// An operator's change (`endpoint.enabled`, `endpoint.disabled`) of `origin`.
    pub fn by_operator(
        kind: &str,
        app_id: &str,
        origin: &str,
        reason: &str,
        at_ms: u64,
    ) -> OperationalEvent {
        OperationalEvent {
            v: 1,
            kind: kind.into(),
            app_id: app_id.into(),
            endpoint: origin.into(),
            reason: reason.into(),
            at_ms,
            until_ms: None,
            rate: None,
        }
    }

    /// The JSON text sent to the metrics queue.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an operational event always serialises")
    }
}

/// What a shared endpoint state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedKind {
    /// The breaker is open until `until_ms`.
    Opened,
    /// The breaker closed (a probe succeeded).
    Closed,
    /// A `Retry-After` pause until `until_ms`.
    Paused,
    /// The endpoint is disabled (no success since `failing_since_ms`).
    Disabled,
    /// An operator enabled it again.
    Enabled,
}

/// One endpoint origin's latest transition as the processes serving an application share it
/// (the registry item's `health` map: origin -> this, as JSON text whose first field is
/// `state`, so a store can test for a disabled endpoint by the text's prefix).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedState {
    /// What happened.
    pub state: SharedKind,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Open or paused until, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// Disabled: failing since, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<u64>,
    /// Why, in words.
    #[serde(default)]
    pub reason: String,
}

/// The prefix of a disabled endpoint's [`SharedState`] text.
pub const SHARED_DISABLED_PREFIX: &str = "{\"state\":\"disabled\"";

impl SharedState {
    /// The shared form of `t` at `at_ms` (`None`: a rate change, kept by each process).
    pub fn of(t: &Transition, at_ms: u64) -> Option<SharedState> {
        let (state, until_ms, failing_since_ms, reason) = match t {
            Transition::Opened { until_ms, reason } => {
                (SharedKind::Opened, Some(*until_ms), None, reason.clone())
            }
            Transition::Closed => (SharedKind::Closed, None, None, "a probe succeeded".into()),
            Transition::Paced {
                paused_until_ms, ..
            } if *paused_until_ms > at_ms => (
                SharedKind::Paused,
                Some(*paused_until_ms),
                None,
                "Retry-After".into(),
            ),
            Transition::Paced { .. } => return None,
            Transition::Disabled { failing_since_ms } => (
                SharedKind::Disabled,
                None,
                Some(*failing_since_ms),
                format!("no success since {failing_since_ms} (Unix ms)"),
            ),
        };
        Some(SharedState {
            state,
            at_ms,
            until_ms,
            failing_since_ms,
            reason,
        })
    }

    /// The text stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a shared state always serialises")
    }

    /// Read a stored text; `None` if it is not one (a newer format: ignored).
    pub fn parse(text: &str) -> Option<SharedState> {
        serde_json::from_str(text).ok()
    }
}

/// What an HTTP outcome says about its endpoint (`now` for an HTTP-date `Retry-After`).
pub fn observe(outcome: &crate::hooks::Outcome, now_ms: u64) -> Observed {
    use crate::hooks::Outcome;
    match outcome {
        Outcome::Response { status, headers } => {
            let retry_after = || {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
                    .and_then(|(_, v)| {
                        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms);
                        crate::retry::parse_retry_after(v, now)
                    })
            };
            match *status {
                200..=299 => Observed::Success,
                429 => Observed::Overloaded {
                    retry_after_secs: retry_after(),
                },
                503 => match retry_after() {
                    Some(secs) => Observed::Overloaded {
                        retry_after_secs: Some(secs),
                    },
                    None => Observed::Failure,
                },
                500..=599 => Observed::Failure,
                _ => Observed::Answered,
            }
        }
        Outcome::Transport { .. } => Observed::Failure,
    }
}

/// The delayed re-send of a deferred event: seconds from `now_ms` to `until_ms`, at least 1 and
/// at most SQS's 900.
pub fn defer_secs(until_ms: u64, now_ms: u64) -> u32 {
    let ms = until_ms.saturating_sub(now_ms);
    (ms.div_ceil(1000)).clamp(1, 900) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> HealthSettings {
        HealthSettings {
            failure_threshold: 3,
            open_secs: 10,
            open_max_secs: 40,
            probe_timeout_ms: 5_000,
            ..HealthSettings::default()
        }
    }

    #[test]
    fn origins_name_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://Hooks.Example.com/a?b").as_deref(),
            Some("https://hooks.example.com:443")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/x").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin_of("not a url"), None);
    }

    #[test]
    fn the_breaker_opens_probes_once_and_backs_off() {
        let s = s();
        let mut h = EndpointHealth::default();
        let t = 1_000_000;
        for i in 0..2 {
            assert_eq!(h.admit(&s, t + i), Admit::Go);
            assert!(h.record(&s, Observed::Failure, t + i).is_empty());
        }
        assert_eq!(h.admit(&s, t + 2), Admit::Go);
        let tr = h.record(&s, Observed::Failure, t + 2);
        assert!(
            matches!(&tr[..], [Transition::Opened { until_ms, .. }] if *until_ms == t + 10_002)
        );
        // Open: every event deferred to the reopening.
        assert_eq!(
            h.admit(&s, t + 5_000),
            Admit::Defer {
                until_ms: t + 10_002,
                why: DeferWhy::Open
            }
        );
        // Due: exactly one probe; the others wait for it.
        assert_eq!(h.admit(&s, t + 10_002), Admit::Probe);
        assert_eq!(
            h.admit(&s, t + 10_003),
            Admit::Defer {
                until_ms: t + 15_002,
                why: DeferWhy::Open
            }
        );
        // The probe fails: open twice as long.
        let tr = h.record(&s, Observed::Failure, t + 10_100);
        assert!(
            matches!(&tr[..], [Transition::Opened { until_ms, .. }] if *until_ms == t + 30_100)
        );
        // Next probe; it never reports: replaced after the probe timeout.
        assert_eq!(h.admit(&s, t + 30_100), Admit::Probe);
        assert_eq!(h.admit(&s, t + 35_100), Admit::Probe);
        // It succeeds: closed, everything goes.
        assert_eq!(
            h.record(&s, Observed::Success, t + 35_200),
            vec![Transition::Closed]
        );
        assert_eq!(h.admit(&s, t + 35_201), Admit::Go);
        assert!(!h.is_open());
    }

    #[test]
    fn an_answer_that_is_not_a_success_still_shows_the_server_is_up() {
        let s = s();
        let mut h = EndpointHealth::default();
        for t in 0..2 {
            h.record(&s, Observed::Failure, t);
        }
        // A 404 between failures breaks the run: three more failures are needed.
        h.record(&s, Observed::Answered, 2);
        for t in 3..5 {
            assert!(h.record(&s, Observed::Failure, t).is_empty());
        }
        assert!(!h.record(&s, Observed::Failure, 5).is_empty());
        // A probe answered 404 closes the breaker.
        let Admit::Defer { until_ms, .. } = h.admit(&s, 6) else {
            panic!()
        };
        assert_eq!(h.admit(&s, until_ms), Admit::Probe);
        assert_eq!(
            h.record(&s, Observed::Answered, until_ms),
            vec![Transition::Closed]
        );
        assert_eq!(h.admit(&s, until_ms + 1), Admit::Go);
    }

    #[test]
    fn reopening_intervals_double_up_to_the_maximum() {
        let s = s();
        let mut h = EndpointHealth::default();
        let mut now = 0;
        for _ in 0..3 {
            h.admit(&s, now);
            h.record(&s, Observed::Failure, now);
        }
        let mut intervals = Vec::new();
        for _ in 0..4 {
            let Admit::Defer { until_ms, .. } = h.admit(&s, now) else {
                panic!()
            };
            now = until_ms;
            assert_eq!(h.admit(&s, now), Admit::Probe);
            let tr = h.record(&s, Observed::Failure, now);
            let [Transition::Opened { until_ms, .. }] = &tr[..] else {
                panic!("{tr:?}")
            };
            intervals.push((until_ms - now) / 1000);
        }
        assert_eq!(intervals, [20, 40, 40, 40]);
    }

    #[test]
    fn a_retry_after_pauses_the_whole_endpoint_and_halves_its_rate() {
        let s = s();
        let mut h = EndpointHealth::default();
        let t = 5_000_000;
        // 20 requests in the last second, then a 429 with Retry-After: 10.
        for i in 0..20 {
            assert_eq!(h.admit(&s, t + i * 50), Admit::Go);
        }
        let tr = h.record(
            &s,
            Observed::Overloaded {
                retry_after_secs: Some(10),
            },
            t + 1_000,
        );
        let [
            Transition::Paced {
                paused_until_ms,
                rate: Some(rate),
            },
        ] = &tr[..]
        else {
            panic!("{tr:?}")
        };
        assert_eq!(*paused_until_ms, t + 11_000);
        assert!((*rate - 10.0).abs() < 1.0, "half of ~20/s: {rate}");
        // Other requests in flight answered 429 too: the same overload, no further cut.
        for _ in 0..5 {
            h.record(
                &s,
                Observed::Overloaded {
                    retry_after_secs: Some(10),
                },
                t + 1_000,
            );
        }
        assert_eq!(h.effective_rate(&s), Some(*rate));
        // Every event waits for the pause, not only the one that got the answer.
        assert_eq!(
            h.admit(&s, t + 2_000),
            Admit::Defer {
                until_ms: t + 11_000,
                why: DeferWhy::Paused
            }
        );
        // After it, paced: about `rate` per second.
        let mut sent = 0;
        for ms in (t + 11_000..t + 21_000).step_by(10) {
            if h.admit(&s, ms) == Admit::Go {
                sent += 1;
            }
        }
        assert!((90..=105).contains(&sent), "{sent} in 10 s at ~10/s");
        // Successes raise it again, additively.
        let before = h.effective_rate(&s).unwrap();
        for i in 0..10 {
            h.record(&s, Observed::Success, t + 21_000 + i);
        }
        assert!(h.effective_rate(&s).unwrap() > before + 0.9);
    }

    #[test]
    fn max_rate_holds_over_thirty_seconds() {
        let s = HealthSettings {
            max_rate: Some(5.0),
            ..s()
        };
        let mut h = EndpointHealth::default();
        let mut go = Vec::new();
        for ms in (0..30_000u64).step_by(7) {
            if h.admit(&s, 1_000_000 + ms) == Admit::Go {
                go.push(ms);
            }
        }
        assert!((148..=151).contains(&go.len()), "{}", go.len());
        // No one-second window holds more than 5.
        for (i, &start) in go.iter().enumerate() {
            let n = go[i..].iter().take_while(|&&m| m < start + 1000).count();
            assert!(n <= 5, "{n} within a second from {start}");
        }
    }

    #[test]
    fn a_dead_endpoint_is_reported_once_and_a_success_clears_it() {
        let s = HealthSettings {
            failure_threshold: 1000,
            disable_after_ms: 60_000,
            ..s()
        };
        let mut h = EndpointHealth::default();
        assert!(h.record(&s, Observed::Failure, 0).is_empty());
        assert!(h.record(&s, Observed::Failure, 59_999).is_empty());
        assert_eq!(
            h.record(&s, Observed::Failure, 60_000),
            vec![Transition::Disabled {
                failing_since_ms: 0
            }]
        );
        assert!(h.record(&s, Observed::Failure, 90_000).is_empty());
        h.record(&s, Observed::Success, 100_000);
        assert!(h.record(&s, Observed::Failure, 110_000).is_empty());
    }

    #[test]
    fn a_disabled_endpoint_refuses_every_event_until_enabled() {
        let s = HealthSettings {
            failure_threshold: 1000,
            disable_after_ms: 10_000,
            ..s()
        };
        let mut h = EndpointHealth::default();
        h.record(&s, Observed::Failure, 1_000);
        let t = h.record(&s, Observed::Failure, 11_000);
        assert_eq!(
            t,
            vec![Transition::Disabled {
                failing_since_ms: 1_000
            }]
        );
        assert_eq!(
            h.admit(&s, 12_000),
            Admit::Disabled {
                failing_since_ms: 1_000
            }
        );
        // A late success (an attempt admitted before) does not enable it: an operator does.
        h.record(&s, Observed::Success, 13_000);
        assert!(h.is_disabled());
        h.enable();
        assert_eq!(h.admit(&s, 14_000), Admit::Go);
        // Its failing time starts over.
        h.record(&s, Observed::Failure, 15_000);
        assert!(h.record(&s, Observed::Failure, 24_000).is_empty());
    }

    #[test]
    fn shared_states_hold_a_process_that_saw_no_failure() {
        let s = s();
        let mut a = EndpointHealth::default();
        let mut b = EndpointHealth::default();
        let mut shared = Vec::new();
        for t in 0..3 {
            for tr in a.record(&s, Observed::Failure, 1_000 + t) {
                shared.extend(SharedState::of(&tr, 1_000 + t));
            }
        }
        assert_eq!(shared.len(), 1);
        let text = shared[0].to_json();
        assert!(text.starts_with("{\"state\":\"opened\""), "{text}");
        let read = SharedState::parse(&text).unwrap();
        assert!(b.apply_shared(&s, &read, 2_000));
        assert!(!b.apply_shared(&s, &read, 2_000), "applied once");
        let until = read.until_ms.unwrap();
        assert_eq!(
            b.admit(&s, 2_000),
            Admit::Defer {
                until_ms: until,
                why: DeferWhy::Open
            }
        );
        assert_eq!(b.admit(&s, until), Admit::Probe);
        // A's probe succeeded: B, whose probe is out, closes when it reads that.
        let closed = SharedState {
            state: SharedKind::Closed,
            at_ms: until + 10,
            until_ms: None,
            failing_since_ms: None,
            reason: String::new(),
        };
        assert!(b.apply_shared(&s, &closed, until + 20));
        assert_eq!(b.admit(&s, until + 20), Admit::Go);
        // A stale "opened" read after B's own later close changes nothing.
        let mut stale = read.clone();
        stale.at_ms = until + 5;
        stale.until_ms = Some(until + 100_000);
        assert!(!b.apply_shared(&s, &stale, until + 30));
        // Rate changes stay in each process; pauses, disabling and enabling are shared.
        let paced = Transition::Paced {
            paused_until_ms: 0,
            rate: Some(2.0),
        };
        assert_eq!(SharedState::of(&paced, 5), None);
        let paused = Transition::Paced {
            paused_until_ms: 90_000,
            rate: Some(2.0),
        };
        let p = SharedState::of(&paused, until + 40).unwrap();
        assert!(b.apply_shared(&s, &p, until + 50));
        assert!(matches!(
            b.admit(&s, until + 60),
            Admit::Defer {
                why: DeferWhy::Paused,
                ..
            }
        ));
        let d = SharedState::of(
            &Transition::Disabled {
                failing_since_ms: 7,
            },
            100_000,
        )
        .unwrap();
        assert!(d.to_json().starts_with(SHARED_DISABLED_PREFIX));
        assert!(b.apply_shared(&s, &d, 100_000));
        assert_eq!(
            b.admit(&s, 100_001),
            Admit::Disabled {
                failing_since_ms: 7
            }
        );
        let e = SharedState {
            state: SharedKind::Enabled,
            at_ms: 100_002,
            until_ms: None,
            failing_since_ms: None,
            reason: "by an operator".into(),
        };
        assert!(b.apply_shared(&s, &e, 100_003));
        assert_eq!(b.admit(&s, 100_004), Admit::Go);
        assert_eq!(SharedState::parse("{\"state\":\"melted\"}"), None);
    }

    #[test]
    fn outcomes_are_observed_as_the_module_says() {
        use crate::hooks::{Outcome, TransportErrorKind};
        let r = |status, h: &[(&str, &str)]| Outcome::Response {
            status,
            headers: h
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        assert_eq!(observe(&r(204, &[]), 0), Observed::Success);
        assert_eq!(observe(&r(404, &[]), 0), Observed::Answered);
        assert_eq!(observe(&r(500, &[]), 0), Observed::Failure);
        assert_eq!(observe(&r(503, &[]), 0), Observed::Failure);
        assert_eq!(
            observe(&r(503, &[("Retry-After", "7")]), 0),
            Observed::Overloaded {
                retry_after_secs: Some(7)
            }
        );
        assert_eq!(
            observe(&r(429, &[]), 0),
            Observed::Overloaded {
                retry_after_secs: None
            }
        );
        let t = Outcome::Transport {
            kind: TransportErrorKind::Timeout,
            message: "x".into(),
        };
        assert_eq!(observe(&t, 0), Observed::Failure);
        let e = OperationalEvent::of(
            "shop",
            "https://a.example:443",
            &Transition::Opened {
                until_ms: 9,
                reason: "5 failures in a row".into(),
            },
            3,
        );
        assert_eq!(
            e.to_json(),
            r#"{"v":1,"kind":"endpoint.opened","app_id":"shop","endpoint":"https://a.example:443","reason":"5 failures in a row","at_ms":3,"until_ms":9}"#
        );
    }

    #[test]
    fn deferral_delays_are_whole_seconds_within_sqs_limits() {
        assert_eq!(defer_secs(10_500, 10_000), 1);
        assert_eq!(defer_secs(20_001, 10_000), 11);
        assert_eq!(defer_secs(5_000, 10_000), 1);
        assert_eq!(defer_secs(10_000_000, 0), 900);
    }
}
