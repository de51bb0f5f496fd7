//! What the Lambda benches share: a minimal Lambda Runtime API on loopback that hands the
//! function the events it is given, one per `next` call, and returns each response; and a
//! small HTTP server to build it (and the registry bench's counting proxy) on.

#![allow(dead_code)] // each bench uses part of it

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

/// A boxed response future.
pub type Reply = std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// Serve `handler` on a fresh loopback port until the returned handle is aborted.
pub async fn serve<F>(handler: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Request<Incoming>) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let handler = handler.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The Runtime API: [`RuntimeApi::invoke`] queues an event and waits for the function's
/// response (or init/invocation error, prefixed `ERROR at <path>: `).
pub struct RuntimeApi {
    /// Where the function reaches it (`AWS_LAMBDA_RUNTIME_API`).
    pub addr: SocketAddr,
    events: mpsc::UnboundedSender<String>,
    responses: Mutex<mpsc::UnboundedReceiver<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Start it.
    pub async fn start() -> RuntimeApi {
        let (event_tx, event_rx) = mpsc::unbounded_channel::<String>();
        let (resp_tx, resp_rx) = mpsc::unbounded_channel::<String>();
        let event_rx = Arc::new(Mutex::new(event_rx));
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (addr, task) = serve(move |req| {
            let (event_rx, resp_tx, counter) = (event_rx.clone(), resp_tx.clone(), counter.clone());
            Box::pin(async move {
                let path = req.uri().path().to_string();
                if path.ends_with("/runtime/invocation/next") {
                    let Some(event) = event_rx.lock().await.recv().await else {
                        std::future::pending::<()>().await;
                        unreachable!()
                    };
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Response::builder()
                        .header("lambda-runtime-aws-request-id", format!("req-{n}"))
                        .header("lambda-runtime-deadline-ms", "99999999999999")
                        .header(
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:us-east-1:123456789012:function:squall",
                        )
                        .body(Full::new(Bytes::from(event)))
                        .unwrap();
                }
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&body).into_owned();
                let _ = resp_tx.send(if path.ends_with("/error") {
                    format!("ERROR at {path}: {text}")
                } else {
                    text
                });
                Response::builder()
                    .status(202)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            })
        })
        .await;
        RuntimeApi {
            addr,
            events: event_tx,
            responses: Mutex::new(resp_rx),
            task,
        }
    }

    /// Hand the function `event`; its response.
    pub async fn invoke(&self, event: String) -> String {
        self.events.send(event).unwrap();
        tokio::time::timeout(Duration::from_secs(120), self.responses.lock().await.recv())
            .await
            .expect("no response within 120 s")
            .expect("the Runtime API stopped")
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An SQS event of one record from queue `queue` (account 123456789012) carrying `body`.
pub fn sqs_event(queue: &str, message_id: &str, body: &str) -> String {
    serde_json::json!({"Records": [{
        "messageId": message_id, "receiptHandle": format!("h-{message_id}"), "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795000000000"},
        "messageAttributes": {}, "eventSource": "aws:sqs",
        "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{queue}"),
        "awsRegion": "us-east-1"
    }]})
    .to_string()
}

/// The environment Lambda gives a function, for `bootstrap` started against `api`.
pub fn lambda_env(api: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", "squall".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/squall".into()),
        ("AWS_ACCESS_KEY_ID", "bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The response handled its one record without a failure.
pub fn handled(response: &str) -> bool {
    response.contains("batchItemFailures") && !response.contains("itemIdentifier")
}
