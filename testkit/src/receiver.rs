//! The one HTTP subscriber for tests: a keep-alive HTTP/1.1 server (hyper) on a loopback address
//! that records every request byte for byte and answers from fault scripts, so a test can do
//! what a real endpoint does wrong: answer 5xx, 429 with `Retry-After`, answer slowly, hang past
//! a timeout, or reset the connection.
//!
//! How a request is answered, first match wins:
//! 1. a path under a [`ReceiverOptions::verify`] prefix whose Standard Webhooks signature does
//!    not verify: 401;
//! 2. the next reply scripted for its path ([`Receiver::script`], used once each);
//! 3. the standing reply of its path ([`ReceiverOptions::route`], [`ReceiverOptions::route_with`]);
//! 4. the [`Chooser`] ([`ReceiverOptions::chooser`]), which sees the request;
//! 5. the default reply.
//!
//! With recording off, no verification and no chooser, a request costs no allocation beyond
//! hyper's own (the benchmarks' receiver).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::verify::{self, VerifyError};

/// What the receiver does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer this status with an empty body.
    Status(u16),
    /// Answer this status with these headers (e.g. `retry-after`, `location`).
    StatusWith(u16, Vec<(String, String)>),
    /// Wait `delay`, then answer `status` with `headers` and `body`.
    Answer {
        /// Status code.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Vec<u8>,
        /// Wait this long before answering.
        delay: Duration,
    },
    /// Read the request, then say nothing for this long, then close the connection (FIN).
    Hang(Duration),
    /// Read the request, then reset the connection (RST).
    Reset,
    /// Wait this long, then answer this status.
    Slow(Duration, u16),
}

impl Reply {
    /// The status this reply answers (`None` for a hang or a reset).
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Status(s) | Reply::StatusWith(s, _) | Reply::Slow(_, s) => Some(*s),
            Reply::Answer { status, .. } => Some(*status),
            Reply::Hang(_) | Reply::Reset => None,
        }
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request target: path and query.
    pub path: String,
    /// Method.
    pub method: String,
    /// Headers, names lower-cased (repeated names in arrival order).
    pub headers: Vec<(String, String)>,
    /// Body bytes, exactly as received.
    pub body: Vec<u8>,
    /// Arrival time (the whole request read).
    pub at: Instant,
    /// Wall-clock time of `at` (what a signature's timestamp is checked against).
    pub received_at: SystemTime,
    /// When the connection it came on was accepted. A sender that died before this request was
    /// read may still have written it: a request on a connection accepted before some moment
    /// was sent by a process that existed then.
    pub connected_at: Instant,
    /// The signature check, for paths under a [`ReceiverOptions::verify`] prefix.
    pub verified: Option<Result<(), VerifyError>>,
    /// What the receiver did (the [`Reply`] in `Debug` form, e.g. `Status(200)`).
    pub reply: String,
    /// The status it answered (`None` for a hang or a reset).
    pub status: Option<u16>,
}

impl Recorded {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `webhook-id` header, or "".
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").unwrap_or("")
    }
}

/// Chooses the reply to a request from the request itself (headers, path, body): the fault run
/// answers at random, seeded, per event id; the demo fails each event twice before accepting.
pub type Chooser = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

#[derive(Clone)]
enum Rule {
    Fixed(Reply),
    Choose(Chooser),
}

/// How to start a [`Receiver`]; [`Receiver::options`] gives the defaults: a free port of
/// 127.0.0.1, every request recorded and answered 200.
#[derive(Clone)]
pub struct ReceiverOptions {
    ip: IpAddr,
    default: Reply,
    chooser: Option<Chooser>,
    routes: HashMap<String, Rule>,
    verify: Vec<(String, String)>,
    record: bool,
}

impl ReceiverOptions {
    /// Listen on a free port of `ip`, a loopback address (any 127.x.y.z works on Linux, so each
    /// receiver can be its own endpoint host; `::1`).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    /// The reply when nothing else applies.
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default = reply;
        self
    }

    /// Choose the reply of requests no script or route answers.
    pub fn chooser(mut self, chooser: Chooser) -> Self {
        self.chooser = Some(chooser);
        self
    }

    /// Answer every request to `path` (path and query) with `reply` once its script is used up.
    pub fn route(mut self, path: impl Into<String>, reply: Reply) -> Self {
        self.routes.insert(path.into(), Rule::Fixed(reply));
        self
    }

    /// Answer every request to `path` with what `chooser` says once its script is used up.
    pub fn route_with(mut self, path: impl Into<String>, chooser: Chooser) -> Self {
        self.routes.insert(path.into(), Rule::Choose(chooser));
        self
    }

    /// Verify the Standard Webhooks signature of requests whose path starts with `prefix`
    /// against `secret`, as a subscriber does: a request that fails is answered 401, and the
    /// result is kept in [`Recorded::verified`].
    pub fn verify(mut self, prefix: impl Into<String>, secret: impl Into<String>) -> Self {
        self.verify.push((prefix.into(), secret.into()));
        self
    }

    /// Keep every request (the default), or none (benchmarks: [`Receiver::served`] still
    /// counts them).
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// Start listening.
    pub async fn start(self) -> std::io::Result<Receiver> {
        assert!(
            self.ip.is_loopback(),
            "test receivers listen on loopback only"
        );
        let listener = TcpListener::bind((self.ip, 0)).await?;
        let addr = listener.local_addr()?;
        let needs_request = self.record
            || !self.verify.is_empty()
            || self.chooser.is_some()
            || self.routes.values().any(|r| matches!(r, Rule::Choose(_)));
        let shared = Arc::new(Shared {
            default: self.default,
            chooser: self.chooser,
            routes: self.routes,
            verify: self.verify,
            record: self.record,
            needs_request,
            scripted: AtomicBool::new(false),
            scripts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            served: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(Receiver { addr, shared, task })
    }
}

struct Shared {
    default: Reply,
    chooser: Option<Chooser>,
    routes: HashMap<String, Rule>,
    verify: Vec<(String, String)>,
    record: bool,
    /// Recording, verification or a chooser needs the request as a [`Recorded`].
    needs_request: bool,
    /// Whether anything was ever scripted (spares the lock when not).
    scripted: AtomicBool,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<Recorded>>,
    served: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connections: AtomicUsize,
}

/// A running receiver. Dropping it stops accepting and closes its connections.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Options to start one with: 127.0.0.1, record everything, answer 200.
    pub fn options() -> ReceiverOptions {
        ReceiverOptions {
            ip: Ipv4Addr::LOCALHOST.into(),
            default: Reply::Status(200),
            chooser: None,
            routes: HashMap::new(),
            verify: Vec::new(),
            record: true,
        }
    }

    /// Start on a free port of 127.0.0.1; requests with no script left get `default`.
    pub async fn start(default: Reply) -> Receiver {
        Receiver::start_with(Ipv4Addr::LOCALHOST.into(), default, None).await
    }

    /// Start on a free port of `ip` (a loopback address, e.g. `::1`).
    pub async fn start_on(ip: IpAddr, default: Reply) -> Receiver {
        Receiver::start_with(ip, default, None).await
    }

    /// Start on a free port of loopback `ip`. Requests with no script left get `chooser`'s
    /// reply, else `default`.
    pub async fn start_with(ip: IpAddr, default: Reply, chooser: Option<Chooser>) -> Receiver {
        let mut opts = Receiver::options().ip(ip).default_reply(default);
        opts.chooser = chooser;
        opts.start().await.expect("bind receiver")
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queue replies for `path`, used in order before its route or the default.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.shared
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_string())
            .or_default()
            .extend(replies);
        self.shared.scripted.store(true, Ordering::Release);
    }

    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests to one path.
    pub fn requests_for(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Requests read so far (counted even when not recorded).
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Most requests held at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One accepted connection.
struct Conn {
    accepted: Instant,
    /// A duplicate of the socket's descriptor: a scripted reset sets SO_LINGER 0 through it
    /// while hyper owns the stream, so that the close sends RST.
    fd: OwnedFd,
    /// Ends the connection (a hang's end, a reset).
    close: Notify,
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set: aborting the accept task closes them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted = Instant::now();
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
            continue;
        };
        let conn = Arc::new(Conn {
            accepted,
            fd,
            close: Notify::new(),
        });
        let shared = shared.clone();
        conns.spawn(async move {
            let svc_conn = conn.clone();
            let svc = service_fn(move |req| answer(shared.clone(), svc_conn.clone(), req));
            let serve = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            // Dropping `serve` closes the socket and drops a pending answer.
            tokio::select! {
                _ = serve => {}
                _ = conn.close.notified() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Counts a request in flight until dropped (an answer that never ends is dropped with its
/// connection).
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.served.fetch_add(1, Ordering::Relaxed);
    }
}

async fn answer(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let _in_flight = InFlight(&shared);
    let reply = decide(&shared, &conn, req).await;
    let (status, headers, body) = match reply {
        Reply::Status(s) => (s, Vec::new(), Vec::new()),
        Reply::StatusWith(s, h) => (s, h, Vec::new()),
        Reply::Answer {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            (status, headers, body)
        }
        Reply::Slow(d, s) => {
            tokio::time::sleep(d).await;
            (s, Vec::new(), Vec::new())
        }
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            conn.close.notify_one();
            return std::future::pending().await;
        }
        Reply::Reset => {
            let _ = socket2::SockRef::from(&conn.fd).set_linger(Some(Duration::ZERO));
            conn.close.notify_one();
            return std::future::pending().await;
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid scripted status");
    for (n, v) in headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(n.as_bytes()).expect("a valid header name"),
            hyper::header::HeaderValue::from_str(&v).expect("a valid header value"),
        );
    }
    Ok(resp)
}

/// Read the request and choose its reply; record it.
async fn decide(shared: &Shared, conn: &Conn, req: Request<Incoming>) -> Reply {
    if !shared.needs_request {
        // The fast path: no copy of the request is kept or looked at.
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let reply = scripted_or_routed(shared, path);
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        return match reply {
            Some(Rule::Fixed(r)) => r,
            _ => shared.default.clone(),
        };
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let mut rec = Recorded {
        path,
        method,
        headers,
        body,
        at: Instant::now(),
        received_at: SystemTime::now(),
        connected_at: conn.accepted,
        verified: None,
        reply: String::new(),
        status: None,
    };
    if let Some((_, secret)) = shared.verify.iter().find(|(p, _)| rec.path.starts_with(p)) {
        let now = rec
            .received_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        rec.verified = Some(check(secret, &rec, now));
    }
    let reply = if matches!(rec.verified, Some(Err(_))) {
        Reply::Status(401)
    } else {
        match scripted_or_routed(shared, &rec.path) {
            Some(Rule::Fixed(r)) => r,
            Some(Rule::Choose(choose)) => choose(&rec),
            None => match &shared.chooser {
                Some(choose) => choose(&rec),
                None => shared.default.clone(),
            },
        }
    };
    rec.reply = format!("{reply:?}");
    rec.status = reply.status();
    if shared.record {
        shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }
    reply
}

fn check(secret: &str, rec: &Recorded, now_secs: u64) -> Result<(), VerifyError> {
    let header = |name: &'static str| rec.header(name).ok_or(VerifyError::MissingHeader(name));
    verify::verify(
        secret,
        header("webhook-id")?,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
        &rec.body,
        now_secs,
    )
}

/// The next scripted reply of `path`, else its route.
fn scripted_or_routed(shared: &Shared, path: &str) -> Option<Rule> {
    if shared.scripted.load(Ordering::Acquire) {
        let mut scripts = shared.scripts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = scripts.get_mut(path).and_then(VecDeque::pop_front) {
            return Some(Rule::Fixed(r));
        }
    }
    shared.routes.get(path).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn scripts_then_routes_then_the_default_and_records_bytes() {
        let rx = Receiver::options()
            .route("/gone", Reply::Status(410))
            .start()
            .await
            .unwrap();
        rx.script(
            "/hook",
            vec![Reply::StatusWith(
                429,
                vec![("retry-after".into(), "1".into())],
            )],
        );
        let first = post(rx.addr(), "/hook", "{\"a\":1}").await.unwrap();
        assert!(first.starts_with("HTTP/1.1 429"), "{first}");
        assert!(first.contains("retry-after: 1"), "{first}");
        assert!(
            post(rx.addr(), "/hook", "x")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        assert!(
            post(rx.addr(), "/gone", "")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 410")
        );
        let reqs = rx.requests_for("/hook");
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].body, b"{\"a\":1}");
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].status, Some(429));
        assert_eq!(reqs[1].reply, "Status(200)");
        assert_eq!(rx.served(), 3);
    }

    #[tokio::test]
    async fn a_reset_resets_and_a_hang_closes() {
        let rx = Receiver::start(Reply::Status(200)).await;
        rx.script("/r", vec![Reply::Reset]);
        rx.script("/h", vec![Reply::Hang(Duration::from_millis(50))]);
        let err = post(rx.addr(), "/r", "x").await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        let t0 = Instant::now();
        assert_eq!(post(rx.addr(), "/h", "x").await.unwrap(), "");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(rx.requests().len(), 2);
    }

    #[tokio::test]
    async fn verifies_under_a_prefix_and_refuses_with_401() {
        let rx = Receiver::options()
            .verify("/signed/", crate::TEST_SECRET)
            .start()
            .await
            .unwrap();
        let unsigned = post(rx.addr(), "/signed/x", "{}").await.unwrap();
        assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
        assert!(
            post(rx.addr(), "/open", "{}")
                .await
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        let reqs = rx.requests();
        assert_eq!(
            reqs[0].verified,
            Some(Err(VerifyError::MissingHeader("webhook-id")))
        );
        assert_eq!(reqs[1].verified, None);
    }
}
