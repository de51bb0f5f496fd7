//! The run's plan, a pure function of the seed: which events go to which application and
//! endpoint, which ones a plugin misbehaves on, which ones are malformed, and how every
//! receiver answers each attempt.

use std::time::Duration;

use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::Reply;

/// The applications: two plain ones, one whose transform plugin traps on [`TRAP_TYPE`]
/// (`on_plugin_error = "dead-letter"`), one whose transform loops on [`LOOP_TYPE`]
/// (`on_plugin_error = "retry"`, the default).
pub const APPS: [&str; 4] = ["alpha", "bravo", "trapper", "looper"];
/// Index of the trapping application in [`APPS`].
pub const TRAPPER: usize = 2;
/// Index of the looping application in [`APPS`].
pub const LOOPER: usize = 3;
/// Endpoints (receivers, each its own 127.0.0.x host) per application.
pub const ENDPOINTS_PER_APP: usize = 6;
/// Event type the trapping plugin traps on.
pub const TRAP_TYPE: &str = "order.trap";
/// Event type the looping plugin spins on.
pub const LOOP_TYPE: &str = "order.loop";
const TYPES: [&str; 4] = [
    "order.created",
    "order.paid",
    "invoice.paid",
    "customer.updated",
];

/// The delivery timeout configured for every application (ms). Hangs last longer, slow
/// answers at most a third of it, so a slow 2xx is never also a timeout.
pub const TIMEOUT_MS: u64 = 2000;
/// How long a hanging receiver holds the connection before closing it.
pub const HANG: Duration = Duration::from_millis(TIMEOUT_MS + 1500);

/// What the run expects of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Valid, plain: delivered, or dead-lettered after 410 or after its attempts ran out.
    Normal,
    /// Its application's plugin traps on it: dead-lettered at the first attempt.
    Trap,
    /// Its application's plugin loops on it: retried until the attempts run out.
    Loop,
    /// Not a valid envelope: dead-lettered as malformed, never delivered.
    Malformed,
}

/// One planned event.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Event id (also embedded in a malformed body).
    pub id: String,
    /// Index into [`APPS`].
    pub app: usize,
    /// Index of the receiver it is addressed to.
    pub endpoint: usize,
    /// What is expected of it.
    pub kind: Kind,
    /// The exact SQS message body.
    pub body: String,
}

/// splitmix64: a well-mixed hash step for deriving independent streams from one seed.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_str(seed: u64, s: &str) -> u64 {
    s.bytes().fold(mix(seed), |h, b| mix(h ^ u64::from(b)))
}

/// Plan `n` events. `urls[e]` is receiver `e`'s URL; application `a` owns receivers
/// `a * ENDPOINTS_PER_APP ..`. Exactly one event in a hundred is malformed (five variants in
/// turn); `created_ms` is the envelopes' `created_at`.
pub fn plan(seed: u64, n: usize, urls: &[String], created_ms: u64) -> Vec<Planned> {
    assert_eq!(urls.len(), APPS.len() * ENDPOINTS_PER_APP);
    let mut rng = fastrand::Rng::with_seed(mix(seed ^ 0x706c_616e));
    (0..n)
        .map(|i| {
            let id = format!("evt-{seed:016x}-{i:05}");
            let app = rng.usize(..APPS.len());
            let endpoint = app * ENDPOINTS_PER_APP + rng.usize(..ENDPOINTS_PER_APP);
            let url = &urls[endpoint];
            let roll = rng.f64();
            if i % 100 == 37 {
                let body = malformed(i / 100 % 5, &id, APPS[app], url, created_ms);
                return Planned {
                    id,
                    app,
                    endpoint,
                    kind: Kind::Malformed,
                    body,
                };
            }
            let (kind, event_type) = match app {
                TRAPPER if roll < 0.10 => (Kind::Trap, TRAP_TYPE),
                LOOPER if roll < 0.05 => (Kind::Loop, LOOP_TYPE),
                _ => (Kind::Normal, TYPES[rng.usize(..TYPES.len())]),
            };
            let payload = serde_json::json!({"seq": i, "app": APPS[app], "note": "fault-run"});
            let body = TestEnvelope::new(&id, APPS[app], url)
                .event_type(event_type)
                .created_at_ms(created_ms)
                .payload(payload)
                .to_json();
            Planned {
                id,
                app,
                endpoint,
                kind,
                body,
            }
        })
        .collect()
}

/// Five ways a producer gets an envelope wrong; each body still names the event id so the
/// dead letter can be matched to it (byte for byte).
fn malformed(variant: usize, id: &str, app: &str, url: &str, created_ms: u64) -> String {
    let other_app = if app == APPS[0] { APPS[1] } else { APPS[0] };
    match variant {
        0 => format!("{{\"version\":1,\"id\":\"{id}\" this is not JSON"),
        1 => format!(
            r#"{{"version":1,"id":"{id}","app_id":"{app}","type":"order.created","created_at":{created_ms},"payload":{{}}}}"#
        ),
        2 => format!(
            r#"{{"version":2,"id":"{id}","app_id":"{app}","type":"order.created","endpoint":"{url}","created_at":{created_ms},"payload":{{}}}}"#
        ),
        3 => format!(
            r#"{{"version":1,"id":"{id}","app_id":"{other_app}","type":"order.created","endpoint":"{url}","created_at":{created_ms},"payload":{{}}}}"#
        ),
        _ => format!(
            r#"{{"version":1,"id":"{id}","app_id":"{app}","type":"order.created","endpoint":"ftp://127.0.0.1/x","created_at":{created_ms},"payload":{{}}}}"#
        ),
    }
}

/// The receivers' answer to the `nth` request (0-based) carrying `event_id`: a function of
/// the seed only, so a rerun with the same seed answers the same attempt the same way.
///
/// | answer | share |
/// |---|---|
/// | 200 at once | 45 % |
/// | 200 after 100-600 ms | 15 % |
/// | 500 / 502 / 503 | 15 % |
/// | 429 with `Retry-After: 1` | 8 % |
/// | connection reset after reading the request | 8 % |
/// | hang past the timeout, then close | 6 % |
/// | 410 Gone (permanent) | 3 % |
pub fn reply_for(seed: u64, event_id: &str, nth: u32) -> Reply {
    let mut rng = fastrand::Rng::with_seed(mix(hash_str(seed, event_id) ^ u64::from(nth)));
    let r = rng.u32(..100);
    match r {
        0..45 => Reply::Status(200),
        45..60 => Reply::Slow(Duration::from_millis(rng.u64(100..=600)), 200),
        60..75 => Reply::Status([500, 502, 503][rng.usize(..3)]),
        75..83 => Reply::StatusWith(429, vec![("retry-after".into(), "1".into())]),
        83..91 => Reply::Reset,
        91..97 => Reply::Hang(HANG),
        _ => Reply::Status(410),
    }
}

/// How one endpoint fails as a whole, on top of the per-request answers of [`reply_for`]
/// (docs/reliability.md, "Endpoint faults"): real endpoints go down together and have a
/// capacity, which per-request answers cannot model, and which endpoint health acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointFault {
    /// Only the per-request answers.
    None,
    /// Down during each window (ms since the run started, start inclusive, end exclusive):
    /// every request gets `down`, whatever the event.
    Outage {
        /// The windows, in order.
        windows: Vec<(u64, u64)>,
        /// What a request gets while down: 503 (no `Retry-After`), a reset, or a hang.
        down: Reply,
    },
    /// A subscriber's rate limiter: a token bucket of `burst` tokens refilled at `per_sec`; a
    /// request finding no token gets 429 with `Retry-After: 1`.
    Capacity {
        /// Requests per second it serves.
        per_sec: f64,
        /// Requests it serves at once after a quiet spell.
        burst: f64,
    },
}

impl EndpointFault {
    /// A short name for tables.
    pub fn label(&self) -> &'static str {
        match self {
            EndpointFault::None => "per-request faults only",
            EndpointFault::Outage { .. } => "outages",
            EndpointFault::Capacity { .. } => "capacity limit",
        }
    }
}

/// Per application, one endpoint with outages and another with a capacity limit, drawn from
/// the seed; the other four have only the per-request answers. `production_ms` is how long
/// the producer is planned to send: each outage endpoint is down 15-25 s once per started
/// minute of it, at a seeded time within that minute (windows may overlap the next one's).
/// A limited endpoint serves `per_sec` requests per second (burst 2).
pub fn endpoint_faults(seed: u64, production_ms: u64, per_sec: f64) -> Vec<EndpointFault> {
    let mut rng = fastrand::Rng::with_seed(mix(seed ^ 0x656e_6470_6f69_6e74));
    let slots = production_ms.div_ceil(60_000).max(1);
    let slot_ms = production_ms.max(1) / slots;
    let mut out = Vec::with_capacity(APPS.len() * ENDPOINTS_PER_APP);
    for _ in APPS {
        let down_at = rng.usize(..ENDPOINTS_PER_APP);
        let limited_at = (down_at + 1 + rng.usize(..ENDPOINTS_PER_APP - 1)) % ENDPOINTS_PER_APP;
        for e in 0..ENDPOINTS_PER_APP {
            out.push(if e == down_at {
                let windows = (0..slots)
                    .map(|k| {
                        let start = k * slot_ms + rng.u64(..=slot_ms * 6 / 10);
                        (start, start + rng.u64(15_000..=25_000))
                    })
                    .collect();
                let down = match rng.usize(..3) {
                    0 => Reply::Status(503),
                    1 => Reply::Reset,
                    _ => Reply::Hang(HANG),
                };
                EndpointFault::Outage { windows, down }
            } else if e == limited_at {
                EndpointFault::Capacity {
                    per_sec,
                    burst: 2.0,
                }
            } else {
                EndpointFault::None
            });
        }
    }
    out
}

/// A receiver's token bucket (for [`EndpointFault::Capacity`]).
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    tokens: Option<f64>,
    at_ms: u64,
}

impl Bucket {
    /// Take a token at `now_ms` (ms since the run started), if there is one.
    pub fn take(&mut self, per_sec: f64, burst: f64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        let tokens = self
            .tokens
            .map_or(burst, |t| (t + elapsed * per_sec).min(burst));
        self.at_ms = self.at_ms.max(now_ms);
        let ok = tokens >= 1.0;
        self.tokens = Some(if ok { tokens - 1.0 } else { tokens });
        ok
    }
}

/// The endpoint-level answer to a request arriving `at_ms` after the run started, if the
/// endpoint is down or over its capacity; `None`: the per-request answer applies.
pub fn endpoint_reply(fault: &EndpointFault, bucket: &mut Bucket, at_ms: u64) -> Option<Reply> {
    match fault {
        EndpointFault::None => None,
        EndpointFault::Outage { windows, down } => windows
            .iter()
            .any(|(a, b)| (*a..*b).contains(&at_ms))
            .then(|| down.clone()),
        EndpointFault::Capacity { per_sec, burst } => (!bucket.take(*per_sec, *burst, at_ms))
            .then(|| Reply::StatusWith(429, vec![("retry-after".into(), "1".into())])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> Vec<String> {
        (0..APPS.len() * ENDPOINTS_PER_APP)
            .map(|i| format!("http://127.0.0.{}:9/hook", 10 + i))
            .collect()
    }

    #[test]
    fn the_plan_is_a_function_of_the_seed_with_one_percent_malformed() {
        let a = plan(7, 1000, &urls(), 0);
        let b = plan(7, 1000, &urls(), 0);
        assert_eq!(
            a.iter().map(|p| &p.body).collect::<Vec<_>>(),
            b.iter().map(|p| &p.body).collect::<Vec<_>>()
        );
        assert_eq!(a.iter().filter(|p| p.kind == Kind::Malformed).count(), 10);
        for p in &a {
            assert_eq!(p.endpoint / ENDPOINTS_PER_APP, p.app);
            assert!(p.body.contains(&p.id), "{} names its id", p.body);
            match p.kind {
                Kind::Trap => assert_eq!(p.app, TRAPPER),
                Kind::Loop => assert_eq!(p.app, LOOPER),
                _ => {}
            }
        }
        assert!(a.iter().any(|p| p.kind == Kind::Trap));
        assert!(a.iter().any(|p| p.kind == Kind::Loop));
    }

    #[test]
    fn malformed_bodies_are_refused_by_the_engine_decoder_and_valid_ones_pass() {
        let limits = squall::envelope::Limits::default();
        for p in plan(3, 600, &urls(), 1_795_000_000_000) {
            let decoded = squall::envelope::decode(p.body.as_bytes(), &limits);
            let own_app = decoded.as_ref().is_ok_and(|e| e.app_id == APPS[p.app]);
            assert_eq!(
                own_app,
                p.kind != Kind::Malformed,
                "{:?} {}",
                p.kind,
                p.body
            );
        }
    }

    #[test]
    fn replies_are_seeded_and_cover_every_fault() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let id = format!("e{i}");
            let a = format!("{:?}", reply_for(1, &id, 0));
            assert_eq!(a, format!("{:?}", reply_for(1, &id, 0)));
            seen.insert(a.split('(').next().unwrap().to_string());
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["Hang", "Reset", "Slow", "Status", "StatusWith"]
        );
    }

    #[test]
    fn endpoint_faults_are_seeded_one_outage_and_one_limit_per_application() {
        let a = endpoint_faults(9, 150_000, 2.0);
        assert_eq!(a, endpoint_faults(9, 150_000, 2.0));
        assert_eq!(a.len(), APPS.len() * ENDPOINTS_PER_APP);
        for app in a.chunks(ENDPOINTS_PER_APP) {
            let kinds: Vec<&str> = app.iter().map(EndpointFault::label).collect();
            assert_eq!(kinds.iter().filter(|k| **k == "outages").count(), 1);
            assert_eq!(kinds.iter().filter(|k| **k == "capacity limit").count(), 1);
        }
        for f in &a {
            if let EndpointFault::Outage { windows, .. } = f {
                // 150 s of production: three slots of 50 s, one outage of 15-25 s in each.
                assert_eq!(windows.len(), 3);
                for (k, (start, end)) in windows.iter().enumerate() {
                    assert!((15_000..=25_000).contains(&(end - start)));
                    assert!((k as u64 * 50_000..=k as u64 * 50_000 + 30_000).contains(start));
                }
            }
        }
    }

    #[test]
    fn an_outage_answers_every_request_in_its_window_and_a_limit_serves_its_rate() {
        let down = EndpointFault::Outage {
            windows: vec![(1_000, 2_000)],
            down: Reply::Reset,
        };
        let mut b = Bucket::default();
        assert_eq!(endpoint_reply(&down, &mut b, 999), None);
        assert_eq!(endpoint_reply(&down, &mut b, 1_000), Some(Reply::Reset));
        assert_eq!(endpoint_reply(&down, &mut b, 2_000), None);

        let limited = EndpointFault::Capacity {
            per_sec: 2.0,
            burst: 2.0,
        };
        // 10 s of requests every 100 ms: the burst, then two per second.
        let served = (0..100)
            .filter(|i| endpoint_reply(&limited, &mut b, 10_000 + i * 100).is_none())
            .count();
        assert!((20..=22).contains(&served), "{served}");
    }
}
