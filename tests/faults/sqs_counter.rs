//! A counting proxy in front of the SQS server: the runner is given its URL as its SQS
//! endpoint, so every call the engine makes passes through it and is counted by action,
//! independently of the engine's own accounting. Plain TCP both ways; both directions are
//! also framed as HTTP/1.1 messages (headers up to the blank line, then `Content-Length`
//! bytes of body): each request's action is read from `X-Amz-Target`
//! (`AmazonSQS.ReceiveMessage`: the JSON protocol the AWS SDK speaks) or, failing that, an
//! `Action=` query parameter, and each response is matched to its request (the SDK sends the
//! next request on a connection only after the previous answer) to tell receives that
//! returned messages from empty ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Calls per action name (`ReceiveMessage`, `DeleteMessageBatch`, ...; `unknown` when a
/// request named none), and [`EMPTY_RECEIVES`].
pub type Counts = BTreeMap<String, u64>;

/// The key counting the `ReceiveMessage` calls whose answer held no message (a long poll
/// that timed out), included in `ReceiveMessage`.
pub const EMPTY_RECEIVES: &str = "ReceiveMessage, empty";

/// Per action: the slowest call (request seen to answer read, ms; a receive includes its
/// long poll) and how many took longer than [`SLOW_MS`].
pub type Slowest = BTreeMap<String, (u64, u64)>;

/// A call slower than this is counted in [`Slowest`] (ms).
pub const SLOW_MS: u64 = 5_000;

#[derive(Default)]
struct Tally {
    counts: Counts,
    slowest: Slowest,
}

/// A running proxy; dropping it stops accepting (open connections finish on their own).
pub struct SqsCounter {
    url: String,
    tally: Arc<Mutex<Tally>>,
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
        let tally = Arc::new(Mutex::new(Tally::default()));
        let task = tokio::spawn(accept(listener, target, tally.clone()));
        Ok(SqsCounter { url, tally, task })
    }

    /// The URL to give the runner as its SQS endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls so far, by action.
    pub fn counts(&self) -> Counts {
        self.tally.lock().unwrap().counts.clone()
    }

    /// The slowest calls so far, by action.
    pub fn slowest(&self) -> Slowest {
        self.tally.lock().unwrap().slowest.clone()
    }
}

impl Drop for SqsCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: String, counts: Arc<Mutex<Tally>>) {
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

/// Copy both ways until either side closes; count the requests going up, and the empty
/// receives coming down.
async fn relay(client: TcpStream, server: TcpStream, counts: Arc<Mutex<Tally>>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let asked = Arc::new(Mutex::new(VecDeque::<(String, Instant)>::new()));
    let (up_counts, up_asked) = (counts.clone(), asked.clone());
    let up = async move {
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let requests = framer.feed(&buf[..n]);
            if !requests.is_empty() {
                let mut c = up_counts.lock().unwrap();
                let mut q = up_asked.lock().unwrap();
                for r in requests {
                    let action = action_of(&r.head);
                    *c.counts.entry(action.clone()).or_default() += 1;
                    q.push_back((action, Instant::now()));
                }
            }
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async move {
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for r in framer.feed(&buf[..n]) {
                let Some((action, at)) = asked.lock().unwrap().pop_front() else {
                    continue;
                };
                let mut t = counts.lock().unwrap();
                if action == "ReceiveMessage" && !find_in(&r.body, b"ReceiptHandle") {
                    *t.counts.entry(EMPTY_RECEIVES.into()).or_default() += 1;
                }
                let ms = at.elapsed().as_millis() as u64;
                let slow = t.slowest.entry(action).or_default();
                slow.0 = slow.0.max(ms);
                slow.1 += u64::from(ms > SLOW_MS);
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// One HTTP/1.1 message: its head (start line and headers) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    /// Start line and headers, up to the blank line.
    pub head: String,
    /// `Content-Length` bytes of body.
    pub body: Vec<u8>,
}

/// Splits one direction of a connection into HTTP/1.1 messages framed by `Content-Length`
/// (what the SDK sends and moto answers; chunked bodies are not used by either).
#[derive(Debug, Default)]
pub struct Framer {
    head: Vec<u8>,
    /// The head of the message whose body is being read, and the bytes still due.
    reading: Option<(String, usize)>,
    body: Vec<u8>,
}

impl Framer {
    /// Take the next bytes; the messages they complete.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Framed> {
        let mut out = Vec::new();
        loop {
            if let Some((_, left)) = &mut self.reading {
                let n = (*left).min(data.len());
                self.body.extend_from_slice(&data[..n]);
                *left -= n;
                data = &data[n..];
                if *left > 0 {
                    return out;
                }
                let (head, _) = self.reading.take().expect("reading");
                out.push(Framed {
                    head,
                    body: std::mem::take(&mut self.body),
                });
            }
            if data.is_empty() {
                return out;
            }
            let before = self.head.len();
            self.head.extend_from_slice(data);
            let Some(end) = find(&self.head, b"\r\n\r\n") else {
                return out;
            };
            let head_len = end + 4;
            let head = String::from_utf8_lossy(&self.head[..head_len]).into_owned();
            let length = content_length(&head);
            self.reading = Some((head, length));
            // What followed the blank line in this read: body, then perhaps the next message.
            data = &data[head_len - before..];
            self.head.clear();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_in(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// A header's value in a message head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn content_length(head: &str) -> usize {
    header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A request's action: `X-Amz-Target`'s last part, else an `Action=` query parameter.
fn action_of(head: &str) -> String {
    if let Some(t) = header(head, "x-amz-target") {
        return t.rsplit('.').next().unwrap_or(t).to_string();
    }
    let request_line = head.split("\r\n").next().unwrap_or("");
    request_line
        .split(['?', '&', ' '])
        .find_map(|p| p.strip_prefix("Action="))
        .unwrap_or("unknown")
        .to_string()
}

/// Calls by the groups the run reports: receives, deletes, sends, visibility changes, other.
pub fn grouped(counts: &Counts) -> BTreeMap<&'static str, u64> {
    let mut g = BTreeMap::new();
    for (action, n) in counts {
        let group = match action.as_str() {
            "ReceiveMessage" => "ReceiveMessage",
            EMPTY_RECEIVES => continue,
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
            let got: Vec<Framed> = stream
                .as_bytes()
                .chunks(cut)
                .flat_map(|c| f.feed(c))
                .collect();
            let actions: Vec<String> = got.iter().map(|r| action_of(&r.head)).collect();
            assert_eq!(actions, want, "cut {cut}");
            assert_eq!(got[3].body.len(), 5000);
            assert!(got[2].body.is_empty());
        }
    }

    #[test]
    fn actions_group_as_reported() {
        let counts = Counts::from([
            ("ReceiveMessage".into(), 3),
            ("DeleteMessageBatch".into(), 2),
            ("DeleteMessage".into(), 1),
            ("GetQueueAttributes".into(), 4),
            (EMPTY_RECEIVES.into(), 2),
        ]);
        let g = grouped(&counts);
        assert_eq!(g["ReceiveMessage"], 3);
        assert_eq!(g["DeleteMessage(Batch)"], 3);
        assert_eq!(g["other"], 4);
    }
}
