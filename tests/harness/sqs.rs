//! The SQS-compatible server the test script started (moto on loopback), and helpers to
//! create an isolated set of queues per test and read what ended up in them.

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use squall::queue::sqs::{SqsQueues, SqsSettings};

/// The endpoint of the test server, from `SQUALL_TEST_SQS_ENDPOINT` (set by `scripts/test`).
/// `None` means "not running under the test script": the caller skips, unless
/// `SQUALL_REQUIRE_SQS=1`, in which case a missing server is a failure.
pub fn endpoint() -> Option<String> {
    match std::env::var("SQUALL_TEST_SQS_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            assert!(
                std::env::var("SQUALL_REQUIRE_SQS").is_err(),
                "SQUALL_REQUIRE_SQS is set but SQUALL_TEST_SQS_ENDPOINT is not: run scripts/test"
            );
            eprintln!("SKIPPED: no SQS-compatible server (run scripts/test, which starts moto)");
            None
        }
    }
}

/// Skip the current test (return) when no SQS server is available.
#[macro_export]
macro_rules! sqs_or_skip {
    () => {
        match $crate::sqs::endpoint() {
            Some(e) => e,
            None => return,
        }
    };
}

/// Settings for the test server: loopback endpoint, static test credentials.
pub fn settings(endpoint: &str) -> SqsSettings {
    SqsSettings {
        region: "us-east-1".to_string(),
        endpoint_url: Some(endpoint.to_string()),
        static_credentials: Some(("test".to_string(), "test".to_string())),
    }
}

/// A client for the test server, built the way the engine builds its own.
pub async fn client(endpoint: &str) -> Client {
    SqsQueues::connect(&settings(endpoint))
        .await
        .client()
        .clone()
}

/// Queues for one test: a DLQ, a metrics queue, and one queue per application, all with a
/// unique prefix so tests sharing a server never see each other's messages.
pub struct TestQueues {
    /// Client.
    pub client: Client,
    /// Dead-letter queue URL.
    pub dlq: String,
    /// Metrics queue URL.
    pub metrics: String,
    /// Application id -> queue URL.
    pub apps: HashMap<String, String>,
}

impl TestQueues {
    /// Create the queues. App queues redrive to the DLQ after 10 receives (the safety net).
    pub async fn create(endpoint: &str, apps: &[&str]) -> TestQueues {
        let client = client(endpoint).await;
        let prefix = format!("t{:08x}", fastrand::u32(..));
        let dlq = create(&client, &format!("{prefix}-dlq"), &[]).await;
        let dlq_arn = attr(&client, &dlq, QueueAttributeName::QueueArn)
            .await
            .expect("dlq arn");
        let metrics = create(&client, &format!("{prefix}-metrics"), &[]).await;
        let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"10"}}"#);
        let mut map = HashMap::new();
        for app in apps {
            let url = create(
                &client,
                &format!("{prefix}-{app}"),
                &[
                    (QueueAttributeName::RedrivePolicy, redrive.as_str()),
                    (QueueAttributeName::VisibilityTimeout, "30"),
                ],
            )
            .await;
            map.insert(app.to_string(), url);
        }
        TestQueues {
            client,
            dlq,
            metrics,
            apps: map,
        }
    }

    /// The queue of one application.
    pub fn app(&self, app: &str) -> &str {
        &self.apps[app]
    }

    /// Send a raw body to an application's queue.
    pub async fn send(&self, app: &str, body: &str) {
        self.client
            .send_message()
            .queue_url(self.app(app))
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    /// Receive everything currently visible in `queue` (deleting nothing; visibility 60 s so
    /// each message is returned once).
    pub async fn drain(&self, queue: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut out = Vec::new();
        loop {
            let r = self
                .client
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .wait_time_seconds(0)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            let msgs = r.messages.unwrap_or_default();
            if msgs.is_empty() {
                return out;
            }
            out.extend(msgs);
        }
    }

    /// ApproximateNumberOfMessages + NotVisible + Delayed of `queue`.
    pub async fn depth(&self, queue: &str) -> (u64, u64, u64) {
        self.try_depth(queue).await.expect("attributes")
    }

    /// [`TestQueues::depth`], or `None` when the server did not answer.
    pub async fn try_depth(&self, queue: &str) -> Option<(u64, u64, u64)> {
        let r = self
            .client
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .ok()?;
        let a = r.attributes.unwrap_or_default();
        let n = |k: QueueAttributeName| a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some((
            n(QueueAttributeName::ApproximateNumberOfMessages),
            n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            n(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }
}

/// A string message attribute of a received message.
pub fn msg_attr(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes
        .as_ref()?
        .get(name)?
        .string_value
        .clone()
}

async fn create(client: &Client, name: &str, attrs: &[(QueueAttributeName, &str)]) -> String {
    let mut req = client.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), *v);
    }
    req.send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url")
}

async fn attr(client: &Client, url: &str, name: QueueAttributeName) -> Option<String> {
    let r = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .ok()?;
    r.attributes?.get(&name).cloned()
}
