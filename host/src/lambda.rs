//! The Lambda handler: an SQS batch in, partial batch failures out.
//!
//! Lifecycles: [`Function`] is built once per cold start (applications with their compiled
//! plugins and pooled HTTP clients, the SQS client, the queue-ARN index, the metrics sink);
//! [`Function::handle`] runs once per invocation.
//!
//! Per invocation, each message goes through the same [`pipeline::process`] as `squall run`
//! (concurrently within the batch, up to the application's `max_concurrency`), then the
//! function acts per ARCHITECTURE.md "Where a message ends", with one rule: **it never deletes
//! a message**. The event source mapping deletes every message not reported as a batch item
//! failure, so:
//!
//! | action | the function does | reports |
//! |---|---|---|
//! | delete (2xx, skip, discard) | nothing | success (the mapping deletes) |
//! | retry by visibility | ChangeMessageVisibility(wait) | failure (SQS redelivers after the wait) |
//! | re-send (long wait, hop) | SendMessage copy with DelaySeconds | success if sent, else failure |
//! | dead-letter (give up, malformed) | SendMessage to the DLQ with reason attributes | success if sent, else failure |
//! | message from an unknown queue, or missing a field | nothing | failure (the redrive policy ends a repeat) |
//!
//! Sends finish before the response is returned, so the mapping's delete always comes after
//! the copy exists: a crash in between gives a duplicate, never a loss.
//!
//! A record from the stack's shared queue ([`Function::with_shared_queue`]) is routed by its
//! envelope's `app_id` to a registered application of the shared tier; one naming no such
//! application is dead-lettered with a reason naming the queue and the `app_id`
//! (`squall_core::shared_queue`); one whose application cannot be read now is a failure.
//!
//! Deciding what to report ([`report_for`]) and routing a message to its application
//! ([`QueueKey`]) are plain functions; [`Function::handle`] does the I/O.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use squall_core::metrics::render::emf_lines_for;

use crate::actor::{ActError, ActMode, Actor};
use crate::apps::BuiltApp;
use crate::metrics::{MetricRecord, MetricsSink};
use crate::pipeline::{self, Action, App, Clock, ProcessOptions};
use crate::queue::{Attributes, Queue, Received};
use crate::registry::{Directory, Found, SharedFound};

pub mod init;

pub use crate::registry::QueueKey;

/// Why a record of the event could not be handed to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A field the function needs is absent.
    #[error("SQS record {message_id}: missing {field}")]
    Missing {
        /// The record's message id (or `?`).
        message_id: String,
        /// The missing field.
        field: &'static str,
    },
    /// The event source ARN names a queue that no configured application consumes.
    #[error("SQS record {message_id} from {arn}: {reason}")]
    UnknownQueue {
        /// The record's message id.
        message_id: String,
        /// The event source ARN.
        arn: String,
        /// Why no application took it (none reads the queue, or it is unavailable now).
        reason: String,
    },
}

/// Turn a record of an SQS event into what the pipeline reads. `ApproximateReceiveCount`
/// and `SentTimestamp` come from the record's system attributes; the `squall-*` message
/// attributes are its string message attributes.
pub fn received_from_record(record: &SqsMessage) -> Result<Received, RecordError> {
    let message_id = record.message_id.clone().ok_or(RecordError::Missing {
        message_id: "?".into(),
        field: "messageId",
    })?;
    let missing = |field| RecordError::Missing {
        message_id: message_id.clone(),
        field,
    };
    let receipt_handle = record
        .receipt_handle
        .clone()
        .ok_or_else(|| missing("receiptHandle"))?;
    let body = record.body.clone().ok_or_else(|| missing("body"))?;
    let number = |name: &str| {
        record
            .attributes
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
    };
    let receive_count = number("ApproximateReceiveCount")
        .ok_or_else(|| missing("attributes.ApproximateReceiveCount"))?
        .clamp(1, u32::MAX as u64) as u32;
    let sent_timestamp_ms =
        number("SentTimestamp").ok_or_else(|| missing("attributes.SentTimestamp"))?;
    let attributes: Attributes = record
        .message_attributes
        .iter()
        .filter_map(|(k, v)| v.string_value.as_ref().map(|s| (k.clone(), s.clone())))
        .collect();
    Ok(Received {
        message_id,
        receipt_handle,
        body,
        attributes,
        receive_count,
        sent_timestamp_ms,
        group_id: record.attributes.get("MessageGroupId").cloned(),
    })
}

/// What the function tells the event source mapping about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The mapping deletes the message.
    Success,
    /// The mapping leaves it; SQS makes it visible again (after the visibility we set, or the
    /// queue's default).
    Failure,
}

/// The report for a message whose pipeline action is `action`, given how the SQS call the
/// action needed went (`Ok(())` when it needed none). See the module table.
pub fn report_for(action: &Action, acted: &Result<(), ActError>) -> Report {
    match action {
        Action::Delete { .. } => Report::Success,
        Action::RetryByVisibility { .. } => Report::Failure,
        Action::Resend { .. } | Action::DeadLetter { .. } => {
            if acted.is_ok() {
                Report::Success
            } else {
                Report::Failure
            }
        }
    }
}

/// Where the function writes its CloudWatch Embedded Metric Format lines (stdout in a real
/// Lambda, where CloudWatch Logs turns them into metrics).
pub type EmfSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything built once per cold start.
pub struct Function<Q: Queue> {
    apps: AppSource,
    actor: Actor<Q>,
    metrics: MetricsSink<Q>,
    clock: Arc<dyn Clock>,
    emf: Option<(String, EmfSink)>,
    /// The stack's shared queue, as its key and URL.
    shared_queue: Option<(QueueKey, String)>,
}

/// Where a shared-queue record goes.
enum SharedRoute {
    App(Arc<App>, usize),
    Unroutable(squall_core::shared_queue::Unroutable),
    Unavailable(String),
}

/// Where the function finds the application of a record's queue.
enum AppSource {
    /// The configuration file's applications, built at init.
    Fixed(HashMap<QueueKey, BuiltApp>),
    /// The registry, read on first use of each queue and cached.
    Registry(Box<Directory>),
}

/// Why the function could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionError {
    /// An application's queue URL does not name an account and queue.
    #[error(
        "apps.{app}.queue_url = {url:?}: not an SQS queue URL (expected <endpoint>/<account>/<queue name>)"
    )]
    BadQueueUrl {
        /// Application id.
        app: String,
        /// The URL.
        url: String,
    },
    /// Two applications read the same queue.
    #[error(
        "apps.{first} and apps.{second} have the same queue {url}: each application needs its own queue"
    )]
    SharedQueue {
        /// First application.
        first: String,
        /// Second application.
        second: String,
        /// The queue URL.
        url: String,
    },
    /// No dead-letter queue URL.
    #[error("sqs.dead_letter_queue_url is empty: the function needs the DLQ to dead-letter events")]
    NoDeadLetterQueue,
}

impl<Q: Queue> Function<Q> {
    /// Index the applications by their queue; check that each has its own queue.
    pub fn new(
        queue: Arc<Q>,
        apps: Vec<BuiltApp>,
        dead_letter_queue_url: String,
        metrics_queue_url: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Function<Q>, FunctionError> {
        let mut index: HashMap<QueueKey, BuiltApp> = HashMap::new();
        for fa in apps {
            let key = QueueKey::from_url(&fa.app.queue_url).ok_or_else(|| {
                FunctionError::BadQueueUrl {
                    app: fa.app.id.clone(),
                    url: fa.app.queue_url.clone(),
                }
            })?;
            if let Some(other) = index.get(&key) {
                return Err(FunctionError::SharedQueue {
                    first: other.app.id.clone(),
                    second: fa.app.id.clone(),
                    url: fa.app.queue_url.clone(),
                });
            }
            index.insert(key, fa);
        }
        Function::with_source(
            queue,
            AppSource::Fixed(index),
            dead_letter_queue_url,
            metrics_queue_url,
            clock,
        )
    }

    /// A function that finds its applications in the registry through `directory`: nothing
    /// per application is read or built at init.
    pub fn with_registry(
        queue: Arc<Q>,
        directory: Directory,
        dead_letter_queue_url: String,
        metrics_queue_url: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Function<Q>, FunctionError> {
        Function::with_source(
            queue,
            AppSource::Registry(Box::new(directory)),
            dead_letter_queue_url,
            metrics_queue_url,
            clock,
        )
    }

    fn with_source(
        queue: Arc<Q>,
        apps: AppSource,
        dead_letter_queue_url: String,
        metrics_queue_url: Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Function<Q>, FunctionError> {
        if dead_letter_queue_url.is_empty() {
            return Err(FunctionError::NoDeadLetterQueue);
        }
        Ok(Function {
            metrics: MetricsSink::new(queue.clone(), metrics_queue_url),
            actor: Actor::new(queue, dead_letter_queue_url, ActMode::Lambda),
            apps,
            clock,
            emf: None,
            shared_queue: None,
        })
    }

    /// Serve the shared queue `url` too: its records go to the registry's shared application
    /// their envelope's `app_id` names.
    pub fn with_shared_queue(mut self, url: &str) -> Result<Function<Q>, FunctionError> {
        let key = QueueKey::from_url(url).ok_or_else(|| FunctionError::BadQueueUrl {
            app: "(sqs.shared_queue_url)".into(),
            url: url.to_string(),
        })?;
        self.shared_queue = Some((key, url.to_string()));
        Ok(self)
    }

    /// The application of a shared-queue record (by its envelope's `app_id`).
    async fn shared_app_for(&self, msg: &Received) -> SharedRoute {
        let app_id = match squall_core::shared_queue::app_id_of(&msg.body) {
            Ok(id) => id,
            Err(why) => return SharedRoute::Unroutable(why),
        };
        match &self.apps {
            AppSource::Registry(directory) => match directory.lookup_shared(&app_id).await {
                SharedFound::App(b) => SharedRoute::App(b.app.clone(), b.max_concurrency.max(1)),
                SharedFound::Unroutable(why) => SharedRoute::Unroutable(why),
                SharedFound::Unavailable(reason) => SharedRoute::Unavailable(reason),
            },
            // The file's applications are all dedicated.
            AppSource::Fixed(_) => {
                SharedRoute::Unroutable(squall_core::shared_queue::Unroutable::Unknown(app_id))
            }
        }
    }

    /// The registry's directory, when the function reads one.
    pub fn directory(&self) -> Option<&Directory> {
        match &self.apps {
            AppSource::Registry(d) => Some(d),
            AppSource::Fixed(_) => None,
        }
    }

    /// The application of a queue, as (pipeline view, concurrency), or why there is none.
    async fn app_for(&self, key: Option<&QueueKey>) -> Result<(Arc<App>, usize), String> {
        let Some(key) = key else {
            return Err("the record's eventSourceARN is not an SQS queue ARN".into());
        };
        match &self.apps {
            AppSource::Fixed(index) => index
                .get(key)
                .map(|b| (b.app.clone(), b.max_concurrency.max(1)))
                .ok_or_else(|| format!("no configured application reads queue {key}")),
            AppSource::Registry(directory) => match directory.lookup(key).await {
                Found::App(b) => Ok((b.app.clone(), b.max_concurrency.max(1))),
                Found::Unknown => Err(format!("no registered application reads queue {key}")),
                Found::Unavailable(reason) => Err(reason),
            },
        }
    }

    /// After each invocation, write the EMF lines of its attempts (per application and
    /// endpoint host, namespace `namespace`) to `sink`.
    pub fn with_emf(mut self, namespace: impl Into<String>, sink: EmfSink) -> Function<Q> {
        self.emf = Some((namespace.into(), sink));
        self
    }

    /// The metrics sink (totals for logs and tests).
    pub fn metrics(&self) -> &MetricsSink<Q> {
        &self.metrics
    }

    /// Handle one invocation: every message is either reported as a batch item failure or
    /// ends as the pipeline decided. The only error is a record without a message id, which
    /// cannot be reported alone: the invocation fails, so the mapping deletes nothing.
    pub async fn handle(&self, event: SqsEvent) -> Result<SqsBatchResponse, RecordError> {
        let mut failures: Vec<String> = Vec::new();
        // (message id, app, received) of the records that route to an application.
        let mut routed: Vec<(Arc<App>, Received, usize)> = Vec::new();
        type Lookup = Result<(Arc<App>, usize), String>;
        let mut lookups: Vec<(Option<QueueKey>, Lookup)> = Vec::new();
        // Shared-queue records naming no shared application: dead-lettered.
        let mut unroutable: Vec<(Received, Action)> = Vec::new();
        for record in &event.records {
            let received = match received_from_record(record) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "record left for SQS to redeliver");
                    // Without a message id the mapping cannot be told which one failed:
                    // the whole batch is reported failed instead (nothing is deleted).
                    match &record.message_id {
                        Some(id) => failures.push(id.clone()),
                        None => return Err(e),
                    }
                    continue;
                }
            };
            let arn = record.event_source_arn.clone().unwrap_or_default();
            let key = QueueKey::from_arn(&arn);
            if let Some((shared, url)) = &self.shared_queue
                && key.as_ref() == Some(shared)
            {
                match self.shared_app_for(&received).await {
                    SharedRoute::App(app, max) => routed.push((app, received, max)),
                    SharedRoute::Unroutable(why) => {
                        let p = squall_core::shared_queue::dead_letter(
                            &why,
                            url,
                            &received,
                            self.clock.now_ms(),
                        );
                        unroutable.push((received, p.action));
                    }
                    SharedRoute::Unavailable(reason) => {
                        tracing::warn!(message_id = %received.message_id, reason = %reason, "shared application unavailable: record left for SQS to redeliver");
                        failures.push(received.message_id);
                    }
                }
                continue;
            }
            // One lookup per queue of the batch (a mapping's batch comes from one queue).
            let found = match lookups.iter().find(|(k, _)| *k == key) {
                Some((_, found)) => found.clone(),
                None => {
                    let found = self.app_for(key.as_ref()).await;
                    if let (Err(reason), AppSource::Fixed(_)) = (&found, &self.apps) {
                        tracing::error!(arn = %arn, reason = %reason, "records left for SQS to redeliver");
                    }
                    lookups.push((key, found.clone()));
                    found
                }
            };
            match found {
                Ok((app, max)) => routed.push((app, received, max)),
                Err(reason) => {
                    let e = RecordError::UnknownQueue {
                        message_id: received.message_id.clone(),
                        arn,
                        reason,
                    };
                    tracing::debug!(error = %e, "record left for SQS to redeliver");
                    failures.push(received.message_id);
                }
            }
        }

        let mut processed = Vec::with_capacity(routed.len());
        for r in self.process_all(routed).await {
            match r {
                Ok(p) => processed.push(p),
                Err(message_id) => failures.push(message_id),
            }
        }

        // Act per application queue with the shared actor in Lambda mode: sends and
        // visibility changes, batched, never a delete.
        let metrics: Vec<MetricRecord> = processed
            .iter()
            .flat_map(|(_, _, p)| p.metrics.iter().cloned())
            .collect();
        let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (app, _, _)) in processed.iter().enumerate() {
            by_queue.entry(app.queue_url.as_str()).or_default().push(i);
        }
        for (queue_url, idx) in by_queue {
            let msgs: Vec<&Received> = idx.iter().map(|&i| &processed[i].1).collect();
            let actions: Vec<&Action> = idx.iter().map(|&i| &processed[i].2.action).collect();
            let results = self.actor.apply(queue_url, &msgs, &actions).await;
            for ((msg, action), acted) in msgs.iter().zip(&actions).zip(&results) {
                if let Err(e) = acted {
                    tracing::warn!(message_id = %msg.message_id, error = %e, "action failed: the message is left for SQS to redeliver");
                }
                if report_for(action, acted) == Report::Failure {
                    failures.push(msg.message_id.clone());
                }
            }
        }
        if let (Some((_, url)), false) = (&self.shared_queue, unroutable.is_empty()) {
            let msgs: Vec<&Received> = unroutable.iter().map(|(m, _)| m).collect();
            let actions: Vec<&Action> = unroutable.iter().map(|(_, a)| a).collect();
            let results = self.actor.apply(url, &msgs, &actions).await;
            for ((msg, action), acted) in msgs.iter().zip(&actions).zip(&results) {
                if let Action::DeadLetter { reason, .. } = action {
                    tracing::warn!(message_id = %msg.message_id, %reason, "dead-lettered");
                }
                if let Err(e) = acted {
                    tracing::warn!(message_id = %msg.message_id, error = %e, "action failed: the message is left for SQS to redeliver");
                }
                if report_for(action, acted) == Report::Failure {
                    failures.push(msg.message_id.clone());
                }
            }
        }
        self.metrics.flush(&metrics).await;
        // Taking an application's events twice gives nothing the second time.
        let events: Vec<_> = processed
            .iter()
            .filter_map(|(app, _, _)| app.health.as_ref())
            .flat_map(|h| h.take_events())
            .collect();
        self.metrics.flush_events(&events).await;
        // Spans leave before the invocation returns (the instance may be frozen after it);
        // every application shares the one exporter, so the first export sends them all.
        if let Some(t) = processed.iter().find_map(|(app, _, _)| app.tracer.as_ref()) {
            t.export().await;
        }
        if let Some((namespace, sink)) = &self.emf {
            for line in emf_lines_for(&metrics, namespace, self.clock.now_ms()) {
                sink(&line);
            }
        }

        let mut response = SqsBatchResponse::default();
        for id in failures {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            response.batch_item_failures.push(f);
        }
        Ok(response)
    }

    /// Run the pipeline over every routed message concurrently, at most `max_concurrency`
    /// at once per application. Results come back in input order; a task that died (the
    /// pipeline never panics by contract) gives its message id, to be reported as failed.
    async fn process_all(
        &self,
        routed: Vec<(Arc<App>, Received, usize)>,
    ) -> Vec<Result<(Arc<App>, Received, pipeline::Processed), String>> {
        let mut limits: HashMap<String, Arc<tokio::sync::Semaphore>> = HashMap::new();
        let mut tasks = Vec::with_capacity(routed.len());
        for (app, msg, max) in routed {
            let permits = limits
                .entry(app.id.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max)))
                .clone();
            let clock = self.clock.clone();
            let id = msg.message_id.clone();
            tasks.push((
                id,
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let p =
                        pipeline::process(&app, &msg, clock.as_ref(), ProcessOptions::default())
                            .await;
                    (app, msg, p)
                }),
            ));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for (id, t) in tasks {
            out.push(t.await.map_err(|e| {
                tracing::error!(message_id = %id, error = %e, "pipeline task died: message left for SQS to redeliver");
                id
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    use super::*;
    use crate::envelope;
    use crate::hooks::{Outcome, Request};
    use crate::pipeline::{Deliver, Delivery, SystemClock};
    use crate::queue::memory::{MemoryQueues, QueueOptions};
    use crate::queue::{Outgoing, QueueError};
    use crate::testing::TestApp;

    const QUEUE: &str = "http://memory.invalid/123456789012/billing";
    const ARN: &str = "arn:aws:sqs:us-east-1:123456789012:billing";
    const DLQ: &str = "http://memory.invalid/123456789012/dlq";
    const METRICS: &str = "http://memory.invalid/123456789012/metrics";

    #[test]
    fn reports_follow_the_table() {
        let err = Err(ActError::Send(QueueError::Transport {
            queue: "q".into(),
            operation: "SendMessageBatch",
            message: "down".into(),
        }));
        let delete = Action::Delete {
            why: pipeline::DeleteReason::Delivered,
        };
        let vis = Action::RetryByVisibility { secs: 5 };
        let resend = Action::Resend {
            delay_secs: 900,
            attributes: Attributes::new(),
            hop: false,
        };
        let dlq = Action::DeadLetter {
            reason: "status 410".into(),
            attributes: Attributes::new(),
        };
        assert_eq!(report_for(&delete, &Ok(())), Report::Success);
        assert_eq!(report_for(&vis, &Ok(())), Report::Failure);
        assert_eq!(report_for(&vis, &err), Report::Failure);
        assert_eq!(report_for(&resend, &Ok(())), Report::Success);
        assert_eq!(report_for(&resend, &err), Report::Failure);
        assert_eq!(report_for(&dlq, &Ok(())), Report::Success);
        assert_eq!(report_for(&dlq, &err), Report::Failure);
    }

    fn record(msg: &Received, arn: &str) -> SqsMessage {
        // As Lambda serialises it.
        let attrs: serde_json::Map<String, serde_json::Value> = msg
            .attributes
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::json!({"stringValue": v, "dataType": "String"}),
                )
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "messageId": msg.message_id,
            "receiptHandle": msg.receipt_handle,
            "body": msg.body,
            "attributes": {
                "ApproximateReceiveCount": msg.receive_count.to_string(),
                "SentTimestamp": msg.sent_timestamp_ms.to_string(),
                "SenderId": "AIDAEXAMPLE",
                "ApproximateFirstReceiveTimestamp": "1"
            },
            "messageAttributes": attrs,
            "md5OfBody": "x",
            "eventSource": "aws:sqs",
            "eventSourceARN": arn,
            "awsRegion": "us-east-1"
        }))
        .unwrap()
    }

    #[test]
    fn records_convert_with_counts_and_string_attributes() {
        let msg = Received {
            message_id: "m".into(),
            receipt_handle: "h".into(),
            body: "{}".into(),
            attributes: [("squall-attempts".to_string(), "4".to_string())].into(),
            receive_count: 2,
            sent_timestamp_ms: 1_700_000_000_000,
            group_id: None,
        };
        assert_eq!(received_from_record(&record(&msg, ARN)).unwrap(), msg);
        let mut r = record(&msg, ARN);
        r.attributes.remove("SentTimestamp");
        assert_eq!(
            received_from_record(&r).unwrap_err().to_string(),
            "SQS record m: missing attributes.SentTimestamp"
        );
    }

    /// 200 for /ok, 503 for /retry, 503 + Retry-After: 3600 for /later, 410 for /gone.
    struct ByPath;
    impl Deliver for ByPath {
        fn deliver<'a>(
            &'a self,
            request: &'a Request,
        ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
            let (status, headers) = match request.url.rsplit('/').next().unwrap_or("") {
                "ok" => (200, vec![]),
                "retry" => (503, vec![]),
                "later" => (503, vec![("retry-after".to_string(), "3600".to_string())]),
                _ => (410, vec![]),
            };
            Box::pin(async move {
                Delivery {
                    outcome: Outcome::Response { status, headers },
                    latency: Duration::from_millis(1),
                }
            })
        }
    }

    fn app() -> BuiltApp {
        TestApp::new(QUEUE, Arc::new(ByPath)).built(4)
    }

    fn envelope_to(id: &str, path: &str) -> String {
        String::from_utf8(
            envelope::Envelope::new_json(
                id,
                "billing",
                "invoice.paid",
                format!("https://hooks.example.com/{path}"),
                SystemClock.now_ms(),
                &serde_json::json!({"n": 1}),
            )
            .encode(),
        )
        .unwrap()
    }

    /// A mixed batch through the real pipeline and the in-process queue: what is reported,
    /// and where each message ends.
    #[tokio::test]
    async fn mixed_batch_ends_where_the_table_says() {
        let q = Arc::new(MemoryQueues::new());
        q.create_queue(DLQ, QueueOptions::default()).unwrap();
        q.create_queue(METRICS, QueueOptions::default()).unwrap();
        q.create_queue(QUEUE, QueueOptions::default()).unwrap();
        let bodies = [
            envelope_to("evt_ok", "ok"),
            envelope_to("evt_retry", "retry"),
            envelope_to("evt_later", "later"),
            envelope_to("evt_gone", "gone"),
            "{not json".to_string(),
        ];
        let out: Vec<Outgoing> = bodies
            .iter()
            .map(|b| Outgoing {
                body: b.clone(),
                delay_secs: 0,
                attributes: Attributes::new(),
                group_id: None,
            })
            .collect();
        assert!(q.send_batch(QUEUE, &out).await.iter().all(|r| r.is_ok()));
        let got = q.receive(QUEUE, 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 5);
        let id_of = |body: &str| {
            got.iter()
                .find(|m| m.body == body)
                .unwrap()
                .message_id
                .clone()
        };
        let mut event = SqsEvent::default();
        event.records = got.iter().map(|m| record(m, ARN)).collect();
        // One record from a queue no application owns.
        let stranger = Received {
            message_id: "stranger".into(),
            ..got[0].clone()
        };
        event.records.push(record(
            &stranger,
            "arn:aws:sqs:us-east-1:123456789012:other",
        ));

        let emf = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let emf2 = emf.clone();
        let f = Function::new(
            q.clone(),
            vec![app()],
            DLQ.into(),
            Some(METRICS.into()),
            Arc::new(SystemClock),
        )
        .unwrap()
        .with_emf(
            "Squall",
            Arc::new(move |l: &str| emf2.lock().unwrap().push(l.to_string())),
        );
        let response = f.handle(event).await.unwrap();
        let mut failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        failed.sort();
        let mut want = vec![id_of(&bodies[1]), "stranger".to_string()];
        want.sort();
        assert_eq!(
            failed, want,
            "only the visibility retry and the stranger are failures"
        );

        // DLQ: the 410 and the malformed body, bodies byte for byte, with reasons.
        let dlq = q.messages(DLQ).unwrap();
        assert_eq!(dlq.len(), 2);
        let gone = dlq
            .iter()
            .find(|m| m.body == bodies[3])
            .expect("410 dead-lettered");
        assert_eq!(gone.attributes["squall-last-status"], "410");
        assert_eq!(gone.attributes["squall-event-id"], "evt_gone");
        let bad = dlq
            .iter()
            .find(|m| m.body == bodies[4])
            .expect("malformed dead-lettered");
        assert!(
            bad.attributes["squall-reason"].contains("malformed envelope"),
            "{:?}",
            bad.attributes
        );

        // App queue: the function deleted nothing (5 originals) and added the re-sent copy.
        let msgs = q.messages(QUEUE).unwrap();
        assert_eq!(msgs.len(), 6);
        let copies: Vec<_> = msgs
            .iter()
            .filter(|m| m.attributes.contains_key("squall-not-before-ms"))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].body, bodies[2]);
        assert_eq!(copies[0].attributes["squall-attempts"], "1");
        // The visibility retry waits 5 s: nothing is receivable now (the rest are in flight
        // until the mapping deletes them; the copy is delayed 900 s).
        assert!(
            q.receive(QUEUE, 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );

        // Metrics: one record per attempt (4 deliveries; none for the malformed body).
        assert_eq!(q.messages(METRICS).unwrap().len(), 4);
        assert_eq!(f.metrics().totals().sent, 4);

        // The same attempts as EMF log lines: one for the endpoint host, one for the app.
        let lines = emf.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let per_app: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            per_app["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "Squall"
        );
        assert_eq!(per_app["app_id"], "billing");
        assert_eq!(per_app["Attempts"], 4);
        assert_eq!(per_app["Delivered"], 1);
        assert_eq!(per_app["Retries"], 2);
        assert_eq!(per_app["DeadLetters"], 1);
    }

    #[tokio::test]
    async fn a_failed_dead_letter_send_is_a_batch_item_failure() {
        let q = Arc::new(MemoryQueues::new());
        q.create_queue(QUEUE, QueueOptions::default()).unwrap();
        let body = envelope_to("evt_gone", "gone");
        q.send_batch(
            QUEUE,
            &[Outgoing {
                body,
                delay_secs: 0,
                attributes: Attributes::new(),
                group_id: None,
            }],
        )
        .await;
        let got = q.receive(QUEUE, 10, Duration::ZERO).await.unwrap();
        let mut event = SqsEvent::default();
        event.records = got.iter().map(|m| record(m, ARN)).collect();
        // The DLQ does not exist: the send fails, so the message must not be reported done.
        let f = Function::new(
            q.clone(),
            vec![app()],
            DLQ.into(),
            None,
            Arc::new(SystemClock),
        )
        .unwrap();
        let response = f.handle(event).await.unwrap();
        assert_eq!(response.batch_item_failures.len(), 1);
        assert_eq!(
            response.batch_item_failures[0].item_identifier,
            got[0].message_id
        );
    }

    #[test]
    fn each_app_needs_its_own_parseable_queue() {
        let q = Arc::new(MemoryQueues::new());
        let err = Function::new(
            q.clone(),
            vec![app(), app()],
            DLQ.into(),
            None,
            Arc::new(SystemClock),
        )
        .err()
        .unwrap();
        assert!(matches!(err, FunctionError::SharedQueue { .. }), "{err}");
        let err = Function::new(q, vec![app()], String::new(), None, Arc::new(SystemClock))
            .err()
            .unwrap();
        assert_eq!(err, FunctionError::NoDeadLetterQueue);
    }
}
