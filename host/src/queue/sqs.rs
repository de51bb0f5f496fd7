//! AWS SQS through aws-sdk-sqs, or any SQS-compatible server (moto on loopback in tests).
//!
//! The client is built once per process: rustls with the `ring` provider (no aws-lc build),
//! the region from config, an optional endpoint URL override and optional static credentials
//! for local servers. Receives ask for `ApproximateReceiveCount`, `SentTimestamp`,
//! `MessageGroupId` and all message attributes; sends set `MessageGroupId` when the message has
//! one (a standard queue takes it: fair queues order by it).

use std::error::Error as _;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::{
    Attributes, BatchResults, MAX_BATCH, Outgoing, Queue, QueueError, Received, VisibilityChange,
};

/// How to reach SQS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqsSettings {
    /// AWS region, e.g. `us-east-1`; empty = the AWS default chain (AWS_REGION, profile...).
    pub region: String,
    /// Endpoint override (e.g. `http://127.0.0.1:4566` for a local server); `None` = AWS.
    pub endpoint_url: Option<String>,
    /// Static (access key id, secret access key) for local servers; `None` = the default
    /// AWS credential chain (environment, profile, ECS/EC2 role, ...).
    pub static_credentials: Option<(String, String)>,
}

impl SqsSettings {
    /// As `squall run` and the Lambda function reach SQS: region from `sqs.region` (empty: the
    /// AWS default chain), endpoint from `sqs.endpoint_url`, credentials from the default chain.
    pub fn from_config(config: &crate::config::Config) -> SqsSettings {
        SqsSettings {
            region: config.sqs.region.clone().unwrap_or_default(),
            endpoint_url: config.sqs.endpoint_url.clone(),
            static_credentials: None,
        }
    }
}

/// The AWS SDK configuration for these settings (region, endpoint override, credentials), with
/// the one HTTP client (rustls on ring) every SDK client of the engine uses: SQS, and the
/// registry's DynamoDB and SSM clients.
pub async fn sdk_config(settings: &SqsSettings) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if !settings.region.is_empty() {
        loader = loader.region(aws_config::Region::new(settings.region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some((id, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "squall-static",
        ));
    }
    loader.load().await
}

/// The SQS client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
}

impl SqsQueues {
    /// Build the client once per process.
    pub async fn connect(settings: &SqsSettings) -> SqsQueues {
        SqsQueues::with_sdk_config(&sdk_config(settings).await)
    }

    /// The client over an SDK configuration already loaded (shared with other clients).
    pub fn with_sdk_config(sdk: &aws_config::SdkConfig) -> SqsQueues {
        SqsQueues {
            client: Client::new(sdk),
        }
    }

    /// The underlying SDK client (for queue creation in tests and tools).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue's default visibility timeout (GetQueueAttributes; `None` if the answer lacks
    /// it): also how `squall run` finds out at start-up that a configured queue exists.
    pub async fn visibility_timeout(&self, queue: &str) -> Result<Option<Duration>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| from_sdk(queue, "GetQueueAttributes", e))?;
        Ok(out
            .attributes
            .unwrap_or_default()
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs))
    }
}

/// Map an SQS error code to a typed error.
fn from_code(queue: &str, operation: &'static str, code: &str, message: &str) -> QueueError {
    let queue = queue.to_string();
    match code {
        "OverLimit" | "AWS.SimpleQueueService.OverLimit" => QueueError::OverLimit { queue },
        "ReceiptHandleIsInvalid" | "AWS.SimpleQueueService.ReceiptHandleIsInvalid" => {
            QueueError::ReceiptHandleInvalid { queue }
        }
        "MessageNotInflight" | "AWS.SimpleQueueService.MessageNotInflight" => {
            QueueError::NotInFlight { queue }
        }
        "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue" => {
            QueueError::QueueDoesNotExist { queue }
        }
        "InvalidParameterValue" | "InvalidParameterValueException" | "InvalidMessageContents" => {
            QueueError::InvalidParameter {
                queue,
                operation,
                message: message.to_string(),
            }
        }
        _ => QueueError::Service {
            queue,
            operation,
            code: code.to_string(),
            message: message.to_string(),
        },
    }
}

/// Map a whole-call SDK error.
/// A queue error from an SDK error: the service's error code when there is one, else the
/// transport failure with its source chain.
pub(crate) fn from_sdk<E, R>(
    queue: &str,
    operation: &'static str,
    err: SdkError<E, R>,
) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(_) = &err {
        let code = err.code().unwrap_or("Unknown").to_string();
        let message = err.message().unwrap_or("").to_string();
        return from_code(queue, operation, &code, &message);
    }
    // Walk the source chain for a useful message (the top level says only "dispatch failure").
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    QueueError::Transport {
        queue: queue.to_string(),
        operation,
        message,
    }
}

/// Fill per-entry results of one chunk from the batch response's failures.
fn apply_failures(
    results: &mut [Result<(), QueueError>],
    failed: &[BatchResultErrorEntry],
    queue: &str,
    operation: &'static str,
) {
    for f in failed {
        if let Some(slot) = f
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *slot = Err(from_code(
                queue,
                operation,
                f.code(),
                f.message().unwrap_or(""),
            ));
        }
    }
}

fn attribute_value(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("data_type is set")
}

impl SqsQueues {
    /// ReceiveMessage with the system attributes the pipeline needs and every message
    /// attribute; `visibility` overrides the queue's visibility timeout (operator tools hold
    /// what they inspect).
    pub(crate) async fn receive_message(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .set_visibility_timeout(visibility.map(|v| v.as_secs().clamp(1, 43_200) as i32))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| from_sdk(queue, "ReceiveMessage", e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(received)
            .collect())
    }

    /// Send `items` in batches of ten through `call`, mapping each entry's failure back to
    /// its item; a failed call fails every item of its batch.
    async fn in_batches<'a, T, E, F, Fut, SE, R>(
        queue: &str,
        operation: &'static str,
        items: &'a [T],
        entry: impl Fn(usize, &'a T) -> E,
        call: F,
    ) -> BatchResults
    where
        F: Fn(Vec<E>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, SdkError<SE, R>>>,
        SE: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let mut all = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH) {
            let entries = chunk.iter().enumerate().map(|(i, t)| entry(i, t)).collect();
            let mut results: BatchResults = vec![Ok(()); chunk.len()];
            // Boxed: keeps the callers' future types shallow (the Lambda handler nests them).
            match Box::pin(call(entries)).await {
                Ok(failed) => apply_failures(&mut results, &failed, queue, operation),
                Err(e) => results = super::all_failed(chunk.len(), &from_sdk(queue, operation, e)),
            }
            all.extend(results);
        }
        all
    }
}

/// One received SDK message as the pipeline sees it.
fn received(m: aws_sdk_sqs::types::Message) -> Received {
    let sys = |name: MessageSystemAttributeName| {
        m.attributes
            .as_ref()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let receive_count = sys(MessageSystemAttributeName::ApproximateReceiveCount)
        .unwrap_or(1)
        .min(u32::MAX as u64) as u32;
    let sent_timestamp_ms = sys(MessageSystemAttributeName::SentTimestamp).unwrap_or(0);
    let attributes: Attributes = m
        .message_attributes
        .as_ref()
        .map(|attrs| {
            attrs
                .iter()
                .filter_map(|(k, v)| v.string_value().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let group_id = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned();
    Received {
        group_id,
        receive_count,
        sent_timestamp_ms,
        message_id: m.message_id.unwrap_or_default(),
        receipt_handle: m.receipt_handle.unwrap_or_default(),
        body: m.body.unwrap_or_default(),
        attributes,
    }
}

impl Queue for SqsQueues {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        self.receive_message(queue, max, wait, None).await
    }

    async fn delete_batch(&self, queue: &str, receipt_handles: &[String]) -> BatchResults {
        let entry = |i: usize, h: &String| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(h)
                .build()
                .expect("id and receipt handle are set")
        };
        let call = |entries| async move {
            let req = self.client.delete_message_batch().queue_url(queue);
            req.set_entries(Some(entries))
                .send()
                .await
                .map(|o| o.failed)
        };
        Self::in_batches(queue, "DeleteMessageBatch", receipt_handles, entry, call).await
    }

    async fn change_visibility_batch(
        &self,
        queue: &str,
        changes: &[VisibilityChange],
    ) -> BatchResults {
        let entry = |i: usize, c: &VisibilityChange| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&c.receipt_handle)
                .visibility_timeout(c.timeout_secs.min(i32::MAX as u32) as i32)
                .build()
                .expect("id and receipt handle are set")
        };
        let call = |entries| async move {
            let req = self
                .client
                .change_message_visibility_batch()
                .queue_url(queue);
            req.set_entries(Some(entries))
                .send()
                .await
                .map(|o| o.failed)
        };
        Self::in_batches(queue, "ChangeMessageVisibilityBatch", changes, entry, call).await
    }

    async fn send_batch(&self, queue: &str, messages: &[Outgoing]) -> BatchResults {
        let entry = |i: usize, m: &Outgoing| {
            let mut b = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body);
            if m.delay_secs > 0 {
                b = b.delay_seconds(m.delay_secs.min(i32::MAX as u32) as i32);
            }
            if let Some(g) = &m.group_id {
                b = b.message_group_id(g);
            }
            for (k, v) in &m.attributes {
                b = b.message_attributes(k, attribute_value(v));
            }
            b.build().expect("id and body are set")
        };
        let call = |entries| async move {
            let req = self.client.send_message_batch().queue_url(queue);
            req.set_entries(Some(entries))
                .send()
                .await
                .map(|o| o.failed)
        };
        Self::in_batches(queue, "SendMessageBatch", messages, entry, call).await
    }
}

#[cfg(test)]
mod tests {
    //! Against a real SQS-compatible server: set `SQUALL_TEST_SQS_ENDPOINT` (the project's test
    //! script starts moto and sets it). Without it these tests print a notice and pass.

    use super::*;

    fn endpoint() -> Option<String> {
        match std::env::var("SQUALL_TEST_SQS_ENDPOINT") {
            Ok(e) if !e.is_empty() => Some(e),
            _ => {
                eprintln!(
                    "SKIPPED: set SQUALL_TEST_SQS_ENDPOINT (e.g. a moto server) to run the SQS client tests"
                );
                None
            }
        }
    }

    async fn client(endpoint: String) -> SqsQueues {
        SqsQueues::connect(&SqsSettings {
            region: "us-east-1".into(),
            endpoint_url: Some(endpoint),
            static_credentials: Some(("test".into(), "test".into())),
        })
        .await
    }

    async fn create(q: &SqsQueues, name: &str, redrive_to: Option<(&str, u32)>) -> String {
        let mut req = q.client().create_queue().queue_name(name).attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "30",
        );
        if let Some((dlq_url, max)) = redrive_to {
            let arn = q
                .client()
                .get_queue_attributes()
                .queue_url(dlq_url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
                .clone();
            req = req.attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max}"}}"#),
            );
        }
        req.send().await.unwrap().queue_url.unwrap()
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{}-{}", std::process::id(), fastrand::u32(..))
    }

    fn out(body: &str, delay: u32) -> Outgoing {
        Outgoing {
            body: body.into(),
            delay_secs: delay,
            attributes: Attributes::from([
                ("squall-attempts".to_string(), "3".to_string()),
                ("squall-app-id".to_string(), "billing".to_string()),
            ]),
            group_id: None,
        }
    }

    #[tokio::test]
    async fn batches_split_attributes_and_counts_round_trip() {
        let Some(ep) = endpoint() else { return };
        let q = client(ep).await;
        let url = create(&q, &unique("flow-rt"), None).await;
        // 23 messages: three SendMessageBatch calls.
        let msgs: Vec<Outgoing> = (0..23).map(|i| out(&format!("m{i}"), 0)).collect();
        let res = q.send_batch(&url, &msgs).await;
        assert_eq!(res.len(), 23);
        assert!(res.iter().all(Result::is_ok), "{res:?}");
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(q.receive(&url, 10, Duration::from_secs(1)).await.unwrap());
            if got.len() == 23 {
                break;
            }
        }
        assert_eq!(got.len(), 23);
        let r = &got[0];
        assert_eq!(r.receive_count, 1);
        assert!(r.sent_timestamp_ms > 1_600_000_000_000);
        assert_eq!(r.attributes["squall-attempts"], "3");
        assert_eq!(r.attributes["squall-app-id"], "billing");
        // Visibility 0 on one, then it comes back with receive count 2.
        let vis = q
            .change_visibility_batch(
                &url,
                &[VisibilityChange {
                    receipt_handle: r.receipt_handle.clone(),
                    timeout_secs: 0,
                }],
            )
            .await;
        assert_eq!(vis, vec![Ok(())]);
        let again = q.receive(&url, 10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].receive_count, 2);
        assert_eq!(again[0].body, r.body);
        // Delete all 23 (three DeleteMessageBatch calls), one stale handle among them is fine
        // for SQS; a garbage handle is a typed per-entry failure.
        let mut handles: Vec<String> = got[1..].iter().map(|m| m.receipt_handle.clone()).collect();
        handles.push(again[0].receipt_handle.clone());
        handles.push("garbage".into());
        let del = q.delete_batch(&url, &handles).await;
        assert!(del[..23].iter().all(Result::is_ok), "{del:?}");
        assert!(
            matches!(del[23], Err(QueueError::ReceiptHandleInvalid { .. })),
            "{:?}",
            del[23]
        );
        assert!(
            q.receive(&url, 10, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn delay_and_redrive_and_missing_queue() {
        let Some(ep) = endpoint() else { return };
        let q = client(ep).await;
        let dlq = create(&q, &unique("flow-dlq"), None).await;
        let url = create(&q, &unique("flow-redrive"), Some((&dlq, 1))).await;
        assert_eq!(q.send_batch(&url, &[out("delayed", 2)]).await, vec![Ok(())]);
        assert!(
            q.receive(&url, 10, Duration::from_secs(0))
                .await
                .unwrap()
                .is_empty()
        );
        let first = q.receive(&url, 10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.len(), 1);
        q.change_visibility_batch(
            &url,
            &[VisibilityChange {
                receipt_handle: first[0].receipt_handle.clone(),
                timeout_secs: 0,
            }],
        )
        .await;
        // maxReceiveCount 1: the next receive moves it to the DLQ.
        assert!(
            q.receive(&url, 10, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        let dead = q.receive(&dlq, 10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "delayed");
        let missing = format!(
            "{}/000000000000/no-such-queue",
            url.rsplit_once("/000").map_or(url.as_str(), |x| x.0)
        );
        let err = q.receive(&missing, 1, Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(err, QueueError::QueueDoesNotExist { .. }),
            "{err:?}"
        );
    }
}
