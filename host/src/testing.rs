//! Test applications for the engine's unit tests: one builder instead of a hand-filled
//! [`App`] in each module's tests, and the in-process queues they run against.

use std::sync::Arc;
use std::time::Duration;

use crate::apps::BuiltApp;
use crate::hooks::PassThrough;
use crate::pipeline::{App, Deliver, EndpointLimiter, PluginErrorPolicy};
use crate::queue::memory::{MemoryQueues, QueueOptions};
use crate::retry::{Backoff, BackoffPolicy, RetryLimits};
use crate::secrets::{SecretKey, Secrets};
use crate::signing::StandardWebhooksSigner;

/// The signing secret of every test application (key `default`).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Application `billing` reading `queue_url`, delivering through `deliver`, with the built-in
/// hooks (pass-through, Standard Webhooks signer with [`SECRET`], the default backoff without
/// jitter, so delays are exact), the default limits, retry on a plugin failure, no
/// per-endpoint limit. Change what a test needs with the methods, then take the [`App`].
pub struct TestApp(App);

impl TestApp {
    /// See the type.
    pub fn new(queue_url: &str, deliver: Arc<dyn Deliver>) -> TestApp {
        let mut secrets = Secrets::new();
        secrets.insert("default", vec![SecretKey::parse(SECRET).expect("valid")]);
        let backoff = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        TestApp(App {
            id: "billing".into(),
            queue_url: queue_url.into(),
            transform: Arc::new(PassThrough),
            signer: Arc::new(StandardWebhooksSigner::new(Arc::new(secrets))),
            retry_policy: Arc::new(BackoffPolicy {
                backoff: backoff.clone(),
            }),
            backoff,
            limits: RetryLimits::default(),
            envelope_limits: crate::envelope::Limits::default(),
            signing_key: "default".into(),
            on_plugin_error: PluginErrorPolicy::Retry,
            visibility_backoff_max_secs: 900,
            deliver,
            endpoints: None,
            registered: Default::default(),
            health: None,
            tracer: None,
        })
    }

    /// These registered endpoints (envelopes may name them by `endpoint_id`).
    pub fn registered(self, endpoints: Vec<crate::endpoints::Endpoint>) -> TestApp {
        self.0
            .registered
            .replace(crate::endpoints::EndpointTable::new(endpoints));
        self
    }

    /// Another application id than `billing`.
    pub fn id(mut self, id: &str) -> TestApp {
        self.0.id = id.into();
        self
    }

    /// The built-in retry policy's backoff (also the one a plugin failure is retried with).
    pub fn backoff(mut self, backoff: Backoff) -> TestApp {
        self.0.retry_policy = Arc::new(BackoffPolicy {
            backoff: backoff.clone(),
        });
        self.0.backoff = backoff;
        self
    }

    /// At most `max` deliveries at once per endpoint host, waiting at most `wait` for a slot.
    pub fn per_endpoint(mut self, max: usize, wait: Duration) -> TestApp {
        self.0.endpoints = Some(Arc::new(EndpointLimiter::new(max, wait)));
        self
    }

    /// The application.
    pub fn app(self) -> App {
        self.0
    }

    /// The application as the runner and the Lambda handler take it.
    pub fn built(self, max_concurrency: usize) -> BuiltApp {
        BuiltApp {
            app: Arc::new(self.0),
            max_concurrency,
        }
    }
}

/// In-process queues `app` (at most `max_in_flight` messages in flight), `dlq` and `metrics`.
pub fn queues(max_in_flight: usize) -> Arc<MemoryQueues> {
    let qs = Arc::new(MemoryQueues::new());
    for q in ["dlq", "metrics"] {
        qs.create_queue(q, QueueOptions::default())
            .expect("a new queue");
    }
    qs.create_queue(
        "app",
        QueueOptions {
            max_in_flight,
            ..QueueOptions::default()
        },
    )
    .expect("a new queue");
    qs
}
