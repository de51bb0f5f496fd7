//! A counting proxy in front of the SQS server: the runner is given its URL as its SQS
//! endpoint, so every call the engine makes passes through it and is counted by action,
//! independently of the engine's own accounting. Plain TCP both ways; the client-to-server
//! bytes are also framed as HTTP/1.1 requests (headers up to the blank line, then
//! `Content-Length` bytes of body) to read each request's action from `X-Amz-Target`
//! (`AmazonSQS.ReceiveMessage`: the JSON protocol the AWS SDK speaks) or, failing that, an
//! `Action=` query parameter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Calls per action name (`ReceiveMessage`, `DeleteMessageBatch`, ...; `unknown` when a
/// request named none).
pub type Counts = BTreeMap<String, u64>;

/// A running proxy; dropping it stops accepting (open connections finish on their own).
pub struct SqsCounter {
    url: String,
    counts: Arc<Mutex<Counts>>,
    task: JoinHandle<()>,
}

impl SqsCounter {
    /// Listen on a free port of 127.0.0.1 and forward every connection to `upstream`
    /// (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<SqsCounter> {
        let u = url::Url::parse(upstream).with_context(|| format!("SQS endpoint {upstream}"))?;
        let target = format!(
            "{}:{}",
            u.host_str().context("SQS endpoint without a host")?,
            u.port_or_known_default().unwrap_or(80)
        );
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(Mutex::new(Counts::new()));
        let task = tokio::spawn(accept(listener, target, counts.clone()));
        Ok(SqsCounter { url, counts, task })
    }

    /// The URL to give the runner as its SQS endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls so far, by action.
    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for SqsCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: String, counts: Arc<Mutex<Counts>>) {
    while let Ok((client, _)) = listener.accept().await {
        let (target, counts) = (target.clone(), counts.clone());
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(&target).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                relay(client, server, counts).await;
            }
        });
    }
}

/// Copy both ways until either side closes; count the requests going up.
async fn relay(client: TcpStream, server: TcpStream, counts: Arc<Mutex<Counts>>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let up = async move {
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let actions = framer.feed(&buf[..n]);
            if !actions.is_empty() {
                let mut c = counts.lock().unwrap();
                for a in actions {
                    *c.entry(a).or_default() += 1;
                }
            }
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Splits a client's byte stream into HTTP/1.1 requests and names each one's action.
#[derive(Debug, Default)]
pub struct Framer {
    head: Vec<u8>,
    body_left: usize,
}

impl Framer {
    /// Take the next bytes; the actions of the requests whose headers they complete.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let before = self.head.len();
            self.head.extend_from_slice(data);
            let Some(end) = find(&self.head, b"\r\n\r\n") else {
                return out;
            };
            let head_len = end + 4;
            let (action, length) = parse_head(&self.head[..head_len]);
            out.push(action);
            self.body_left = length;
            // What followed the blank line in this read: body, then perhaps the next request.
            data = &data[head_len - before..];
            self.head.clear();
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The action and `Content-Length` of one request head.
fn parse_head(head: &[u8]) -> (String, usize) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut action = None;
    let mut length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-amz-target") {
            action = Some(value.rsplit('.').next().unwrap_or(value).to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().unwrap_or(0);
        }
    }
    let action = action.or_else(|| {
        request_line
            .split(['?', '&', ' '])
            .find_map(|p| p.strip_prefix("Action="))
            .map(str::to_string)
    });
    (action.unwrap_or_else(|| "unknown".into()), length)
}

/// Calls by the groups the run reports: receives, deletes, sends, visibility changes, other.
pub fn grouped(counts: &Counts) -> BTreeMap<&'static str, u64> {
    let mut g = BTreeMap::new();
    for (action, n) in counts {
        let group = match action.as_str() {
            "ReceiveMessage" => "ReceiveMessage",
            "DeleteMessage" | "DeleteMessageBatch" => "DeleteMessage(Batch)",
            "SendMessage" | "SendMessageBatch" => "SendMessage(Batch)",
            "ChangeMessageVisibility" | "ChangeMessageVisibilityBatch" => {
                "ChangeMessageVisibility(Batch)"
            }
            _ => "other",
        };
        *g.entry(group).or_default() += n;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, body: &str) -> String {
        format!(
            "POST / HTTP/1.1\r\nhost: 127.0.0.1:1\r\nX-Amz-Target: AmazonSQS.{target}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn requests_are_counted_by_action_however_the_stream_is_cut() {
        let stream = [
            request(
                "ReceiveMessage",
                r#"{"QueueUrl":"q","X-Amz-Target":"AmazonSQS.Fake"}"#,
            ),
            request("DeleteMessageBatch", "{}"),
            "GET /?Action=ListQueues&Version=2012-11-05 HTTP/1.1\r\nhost: x\r\n\r\n".into(),
            request("SendMessageBatch", &"x".repeat(5000)),
        ]
        .concat();
        let want = [
            "ReceiveMessage",
            "DeleteMessageBatch",
            "ListQueues",
            "SendMessageBatch",
        ];
        for cut in [1, 7, 100, 4096, stream.len()] {
            let mut f = Framer::default();
            let got: Vec<String> = stream
                .as_bytes()
                .chunks(cut)
                .flat_map(|c| f.feed(c))
                .collect();
            assert_eq!(got, want, "cut {cut}");
        }
    }

    #[test]
    fn actions_group_as_reported() {
        let counts = Counts::from([
            ("ReceiveMessage".into(), 3),
            ("DeleteMessageBatch".into(), 2),
            ("DeleteMessage".into(), 1),
            ("GetQueueAttributes".into(), 4),
        ]);
        let g = grouped(&counts);
        assert_eq!(g["ReceiveMessage"], 3);
        assert_eq!(g["DeleteMessage(Batch)"], 3);
        assert_eq!(g["other"], 4);
    }
}
