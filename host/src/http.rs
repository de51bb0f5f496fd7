//! The HTTP side of a delivery: one pooled reqwest client per distinct SSRF allow-list (and
//! connect timeout), rustls, no redirects (a 3xx is a failure), no proxy, per-request total
//! timeout, the response body read up to a cap, and every failure classified into a
//! [`TransportErrorKind`].
//!
//! Lifecycle: [`Deliverers`] once per process; [`Deliverer`] shared by the applications with
//! the same allow-list; [`AppDelivery`] once per application (its timeouts and caps), which is
//! what the pipeline calls per event.

use std::collections::HashMap;
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::AppConfig;
use crate::hooks::{Headers, Outcome, Request, TransportErrorKind};
use crate::oauth2::{Credential, TokenSource};
use crate::pipeline::{Deliver, Delivery};
use crate::ssrf::{self, Allowlist, SsrfError};

/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("Squall/", env!("CARGO_PKG_VERSION"));
/// Response headers kept at most (the rest are dropped).
pub const MAX_RESPONSE_HEADERS: usize = 64;
/// Longest response header value kept, bytes (longer values are dropped).
pub const MAX_RESPONSE_HEADER_VALUE: usize = 1024;

/// Idle keep-alive connections kept per host: above any sane `max_per_endpoint`, so every
/// concurrent delivery to a host finds its connection again.
pub const POOL_MAX_IDLE_PER_HOST: usize = 1024;

/// Per-request options (per application).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Total time: connect, send, response headers and the capped body.
    pub timeout: Duration,
    /// The response body is read up to this many bytes.
    pub max_response_bytes: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            timeout: Duration::from_secs(15),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// Result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Status and headers, or the classified transport error.
    pub outcome: Outcome,
    /// From just before sending to the end of the (capped) body.
    pub latency: Duration,
    /// The first `max_response_bytes` of the response body.
    pub body_prefix: Vec<u8>,
    /// True when the body was longer than the cap (the rest was not read).
    pub truncated: bool,
}

/// Settings of a shared client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientOptions {
    /// Networks allowed despite the SSRF guard.
    pub allowlist: Allowlist,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// mTLS client certificate and extra roots: part of the key, so a client (and its pool)
    /// made with one application's certificate never serves an application with another.
    pub tls: Option<TlsMaterial>,
}

/// A client certificate with its key (PEM) and extra trusted roots (PEM), from an
/// application's secrets. Compared and hashed by a digest; `Debug` shows neither.
#[derive(Clone)]
pub struct TlsMaterial {
    identity_pem: Arc<Vec<u8>>,
    ca_pem: Option<Arc<Vec<u8>>>,
    digest: [u8; 32],
}

impl TlsMaterial {
    /// From the PEM texts: the certificate chain, its private key, extra roots.
    pub fn new(cert: Option<&[u8]>, key: Option<&[u8]>, ca: Option<&[u8]>) -> Option<TlsMaterial> {
        use sha2::Digest as _;
        if cert.is_none() && ca.is_none() {
            return None;
        }
        let mut identity = Vec::new();
        if let (Some(c), Some(k)) = (cert, key) {
            identity.extend_from_slice(c);
            identity.push(b'\n');
            identity.extend_from_slice(k);
        }
        let digest = sha2::Sha256::new()
            .chain_update(&identity)
            .chain_update([0u8])
            .chain_update(ca.unwrap_or_default())
            .finalize()
            .into();
        Some(TlsMaterial {
            identity_pem: Arc::new(identity),
            ca_pem: ca.map(|c| Arc::new(c.to_vec())),
            digest,
        })
    }
}

impl PartialEq for TlsMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}
impl Eq for TlsMaterial {}
impl std::hash::Hash for TlsMaterial {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}
impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial(<redacted>)")
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(String);

/// A pooled client with one SSRF allow-list.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    allowlist: Arc<Allowlist>,
}

impl Deliverer {
    /// Build the client (once per distinct [`ClientOptions`]).
    pub fn new(opts: &ClientOptions) -> Result<Deliverer, ClientError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(USER_AGENT)
            .connect_timeout(opts.connect_timeout)
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(ssrf::GuardedResolver::new(opts.allowlist.clone())));
        let mut client = client;
        if let Some(tls) = &opts.tls {
            if !tls.identity_pem.is_empty() {
                // The message names what is wrong, never the material.
                let identity = reqwest::Identity::from_pem(&tls.identity_pem).map_err(|_| {
                    ClientError(
                        "tls_client_cert / tls_client_key: not a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1) that belong together".into(),
                    )
                })?;
                client = client.identity(identity);
            }
            if let Some(ca) = &tls.ca_pem {
                let roots = reqwest::Certificate::from_pem_bundle(ca)
                    .map_err(|_| ClientError("tls_ca: not a bundle of PEM certificates".into()))?;
                if roots.is_empty() {
                    return Err(ClientError("tls_ca: holds no PEM certificate".into()));
                }
                for root in roots {
                    client = client.add_root_certificate(root);
                }
            }
        }
        let client = client.build().map_err(|e| ClientError(e.to_string()))?;
        Ok(Deliverer {
            client,
            allowlist: Arc::new(opts.allowlist.clone()),
        })
    }

    /// Send one request. Never fails: every problem is an [`Outcome::Transport`].
    pub async fn send(&self, req: &Request, opts: &SendOptions) -> Attempt {
        self.send_authorized(req, opts, None).await
    }

    /// Send one request with `authorization` (an OAuth2 bearer, a token request's Basic
    /// credentials) in place of any `authorization` header the request has. The value is
    /// marked sensitive (hyper and reqwest leave it out of their `Debug`) and never appears
    /// in an outcome's message.
    pub async fn send_authorized(
        &self,
        req: &Request,
        opts: &SendOptions,
        authorization: Option<&Credential>,
    ) -> Attempt {
        let started = Instant::now();
        let refused = |message: String| Attempt {
            outcome: Outcome::Transport {
                kind: TransportErrorKind::RefusedByPolicy,
                message,
            },
            latency: started.elapsed(),
            body_prefix: Vec::new(),
            truncated: false,
        };
        let prepared = match self.prepare(req, authorization) {
            Ok(p) => p,
            Err(message) => return refused(message),
        };
        let (method, url, headers) = prepared;
        let sent = self
            .client
            .request(method, url)
            .headers(headers)
            .timeout(opts.timeout)
            .body(req.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                let (kind, message) = classify_error(&e);
                return Attempt {
                    outcome: Outcome::Transport { kind, message },
                    latency: started.elapsed(),
                    body_prefix: Vec::new(),
                    truncated: false,
                };
            }
        };
        let status = response.status().as_u16();
        let headers = keep_headers(response.headers());
        let (body_prefix, truncated) = read_capped(&mut response, opts.max_response_bytes).await;
        Attempt {
            outcome: Outcome::Response { status, headers },
            latency: started.elapsed(),
            body_prefix,
            truncated,
        }
    }

    /// Checks before anything leaves the process: method, URL (incl. IP literals), headers.
    /// Messages name the header, never its value.
    fn prepare(
        &self,
        req: &Request,
        authorization: Option<&Credential>,
    ) -> Result<(reqwest::Method, url::Url, HeaderMap), String> {
        let method = if req.method.eq_ignore_ascii_case("POST") {
            reqwest::Method::POST
        } else if req.method.eq_ignore_ascii_case("PUT") {
            reqwest::Method::PUT
        } else {
            return Err(format!(
                "method {:?} is not allowed (POST or PUT)",
                truncate(&req.method, 16)
            ));
        };
        let url = crate::envelope::parse_url(&req.url)
            .map_err(|e| format!("the endpoint is not an absolute URL: {e}"))?;
        crate::envelope::check_endpoint_url(&url).map_err(|m| format!("the endpoint {m}"))?;
        ssrf::check_url(&url, &self.allowlist).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        for (name, value) in &req.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {:?} is not valid", truncate(name, 64)))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {n} contains invalid characters"))?;
            if authorization.is_some() && n == reqwest::header::AUTHORIZATION {
                continue;
            }
            headers.append(n, v);
        }
        if let Some(credential) = authorization {
            let mut v = HeaderValue::from_str(credential.expose()).map_err(|_| {
                "the authorization credential contains invalid characters".to_string()
            })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok((method, url, headers))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Lower-cased names (reqwest already lower-cases), capped in count and value size.
fn keep_headers(map: &HeaderMap) -> Headers {
    let mut out = Vec::with_capacity(map.len().min(MAX_RESPONSE_HEADERS));
    for (name, value) in map {
        if out.len() == MAX_RESPONSE_HEADERS {
            break;
        }
        if value.len() > MAX_RESPONSE_HEADER_VALUE {
            continue;
        }
        if let Ok(v) = value.to_str() {
            out.push((name.as_str().to_string(), v.to_string()));
        }
    }
    out
}

/// Read the body until `cap` bytes; stop at the first chunk past the cap (the rest is not read).
/// A read error keeps what arrived: the status is what counts.
async fn read_capped(response: &mut reqwest::Response, cap: usize) -> (Vec<u8>, bool) {
    let hint = response.content_length().unwrap_or(0).min(cap as u64) as usize;
    let mut buf = Vec::with_capacity(hint);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - buf.len();
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    return (buf, true);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) | Err(_) => return (buf, false),
        }
    }
}

/// Classify a reqwest error by walking its source chain. The message is built from error
/// descriptions only, never from the request (no headers, no body, no query string).
pub fn classify_error(err: &reqwest::Error) -> (TransportErrorKind, String) {
    let mut kind = None;
    let mut detail = String::new();
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(s) = e.downcast_ref::<SsrfError>() {
            let k = match s {
                SsrfError::Forbidden { .. } => TransportErrorKind::RefusedByPolicy,
                SsrfError::Dns { .. } => TransportErrorKind::Dns,
            };
            return (k, s.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            kind = kind.or(match io.kind() {
                ConnectionRefused => Some(TransportErrorKind::Connect),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    Some(TransportErrorKind::Reset)
                }
                TimedOut => Some(TransportErrorKind::Timeout),
                _ => None,
            });
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_closed() || h.is_canceled())
        {
            kind = kind.or(Some(TransportErrorKind::Reset));
        }
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if kind.is_none()
            && (lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake")
                || lower.contains("invalidcontenttype")
                || lower.contains("peer is incompatible")
                // A TLS alert, such as a client certificate the server refused (TLS 1.3 sends
                // it after the client's handshake is done, on the first read).
                || lower.contains("fatal alert"))
        {
            kind = Some(TransportErrorKind::Tls);
        }
        if !detail.contains(&text) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&text);
        }
        source = e.source();
    }
    let kind = if err.is_timeout() {
        TransportErrorKind::Timeout
    } else if let Some(k) = kind {
        k
    } else if err.is_connect() {
        TransportErrorKind::Connect
    } else {
        TransportErrorKind::Other
    };
    let headline = match kind {
        TransportErrorKind::Timeout => "timed out",
        TransportErrorKind::Connect => "connect failed",
        TransportErrorKind::Reset => "connection closed or reset",
        TransportErrorKind::Tls => "TLS failed",
        TransportErrorKind::Dns => "name resolution failed",
        _ => "request failed",
    };
    let message = if detail.is_empty() {
        headline.to_string()
    } else {
        format!("{headline}: {detail}")
    };
    (kind, message)
}

/// One shared client per distinct (allow-list, connect timeout): applications with the same
/// settings share a connection pool.
#[derive(Debug, Default)]
pub struct Deliverers {
    clients: Mutex<HashMap<ClientOptions, Arc<Deliverer>>>,
}

impl Deliverers {
    /// An empty set.
    pub fn new() -> Deliverers {
        Deliverers::default()
    }

    /// The shared client for these options, built on first use.
    pub fn get(&self, opts: &ClientOptions) -> Result<Arc<Deliverer>, ClientError> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map.get(opts) {
            return Ok(d.clone());
        }
        let d = Arc::new(Deliverer::new(opts)?);
        map.insert(opts.clone(), d.clone());
        Ok(d)
    }

    /// Distinct clients built so far.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no client was built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The delivery handle of one application (`secrets`: its resolved secrets, for its mTLS
    /// material).
    pub fn for_app(
        &self,
        app: &AppConfig,
        secrets: &crate::secrets::Secrets,
    ) -> Result<AppDelivery, ClientError> {
        let pem = |name: &Option<String>| {
            name.as_deref()
                .and_then(|n| secrets.get(n))
                .and_then(|keys| keys.first())
                .map(|k| k.material())
        };
        let opts = ClientOptions {
            allowlist: app.allowed_networks.clone(),
            connect_timeout: Duration::from_millis(app.connect_timeout_ms),
            // Not per app, so that apps differing only in concurrency share one pool.
            pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
            tls: TlsMaterial::new(
                pem(&app.tls_client_cert),
                pem(&app.tls_client_key),
                pem(&app.tls_ca),
            ),
        };
        Ok(AppDelivery {
            deliverer: self.get(&opts)?,
            opts: SendOptions {
                timeout: Duration::from_millis(app.timeout_ms),
                max_response_bytes: app.max_response_bytes,
            },
            oauth2: None,
        })
    }
}

/// An application's way to deliver: a shared client, the application's options and, with
/// OAuth2, its token source.
#[derive(Debug, Clone)]
pub struct AppDelivery {
    /// The shared client.
    pub deliverer: Arc<Deliverer>,
    /// The application's per-request options.
    pub opts: SendOptions,
    /// The application's OAuth2 tokens (`[apps.ID.oauth2]`), attached to requests to its
    /// listed origins.
    pub oauth2: Option<Arc<TokenSource>>,
}

impl AppDelivery {
    /// Send with this application's options (and its bearer token, when the URL's origin
    /// takes one). One attempt: a 401 answered to a token refreshes the token once and sends
    /// once more; the second answer is the attempt's outcome, the latency covers both.
    pub async fn send(&self, req: &Request) -> Attempt {
        let Some(tokens) = self
            .oauth2
            .as_ref()
            .filter(|t| t.config().sends_to(&req.url))
        else {
            return self.deliverer.send(req, &self.opts).await;
        };
        // Boxed: the token steps are not in the state machine of every delivery.
        Box::pin(self.send_with_token(req, tokens)).await
    }

    /// [`AppDelivery::send`] to an origin that takes the application's bearer token.
    async fn send_with_token(&self, req: &Request, tokens: &crate::oauth2::TokenSource) -> Attempt {
        let started = Instant::now();
        let failed = |outcome: Outcome| Attempt {
            outcome,
            latency: started.elapsed(),
            body_prefix: Vec::new(),
            truncated: false,
        };
        let token = match tokens.token().await {
            Ok(t) => t,
            Err(e) => return failed(e.outcome()),
        };
        let mut a = self
            .deliverer
            .send_authorized(req, &self.opts, Some(&token.bearer()))
            .await;
        if matches!(a.outcome, Outcome::Response { status: 401, .. }) {
            let fresh = match tokens.refresh(&token).await {
                Ok(t) => t,
                Err(e) => return failed(e.outcome()),
            };
            a = self
                .deliverer
                .send_authorized(req, &self.opts, Some(&fresh.bearer()))
                .await;
        }
        a.latency = started.elapsed();
        a
    }
}

impl Deliver for AppDelivery {
    fn deliver<'a>(
        &'a self,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Delivery> + Send + 'a>> {
        Box::pin(async move {
            let a = self.send(request).await;
            Delivery {
                outcome: a.outcome,
                latency: a.latency,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_testkit::receiver::{Receiver, Reply};
    use tokio::net::TcpListener;

    /// The test kit's receiver answering every request with `reply`.
    async fn receiver(reply: Reply) -> Receiver {
        Receiver::start(reply).await
    }

    /// A reply with headers and a body.
    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8], delay: Duration) -> Reply {
        Reply::Answer {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
            delay,
        }
    }

    fn loopback() -> Deliverer {
        Deliverer::new(&ClientOptions {
            allowlist: Allowlist::parse(&["127.0.0.0/8", "::1/128"]).unwrap(),
            connect_timeout: Duration::from_secs(2),
            pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
            tls: None,
        })
        .unwrap()
    }

    fn post(url: &str, body: &[u8]) -> Request {
        Request {
            method: "POST".into(),
            url: url.into(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("webhook-id".into(), "evt_1".into()),
            ],
            body: body.to_vec(),
        }
    }

    fn opts(timeout_ms: u64, cap: usize) -> SendOptions {
        SendOptions {
            timeout: Duration::from_millis(timeout_ms),
            max_response_bytes: cap,
        }
    }

    fn kind(a: &Attempt) -> Option<TransportErrorKind> {
        match &a.outcome {
            Outcome::Transport { kind, .. } => Some(*kind),
            Outcome::Response { .. } => None,
        }
    }

    #[tokio::test]
    async fn delivers_exact_bytes_and_caps_the_response_body() {
        let ok = [("x-reply", "ok")];
        let server = Receiver::options()
            .route("/big", answer(200, &ok, &[b'r'; 100_000], Duration::ZERO))
            .default_reply(answer(200, &ok, &[b'r'; 10], Duration::ZERO))
            .start()
            .await
            .unwrap();
        let d = loopback();
        let body = br#"{"b" : 2,  "a":[1, 2.50]}"#;
        let a = d
            .send(&post(&server.url("/big"), body), &opts(5000, 1000))
            .await;
        assert!(a.outcome.is_success(), "{:?}", a.outcome);
        assert_eq!(a.body_prefix, vec![b'r'; 1000]);
        assert!(a.truncated);
        assert_eq!(a.outcome.header("x-reply"), Some("ok"));
        let small = d
            .send(&post(&server.url("/small"), body), &opts(5000, 1000))
            .await;
        assert_eq!(small.body_prefix, b"rrrrrrrrrr");
        assert!(!small.truncated);

        let seen = server.requests();
        assert_eq!(seen.len(), 2);
        let first = &seen[0];
        assert_eq!(first.method, "POST");
        assert_eq!(first.body, body);
        let header = |n: &str| first.header(n);
        assert_eq!(header("user-agent"), Some(USER_AGENT));
        assert!(USER_AGENT.starts_with("Squall/"));
        assert_eq!(header("webhook-id"), Some("evt_1"));
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(
            header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }

    #[tokio::test]
    async fn keeps_connections_alive_across_requests() {
        let server = receiver(Reply::Status(204)).await;
        let d = loopback();
        for _ in 0..5 {
            let a = d
                .send(&post(&server.url("/"), b"{}"), &opts(5000, 100))
                .await;
            assert!(a.outcome.is_success());
        }
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let server = Receiver::options()
            .route(
                "/moved",
                Reply::StatusWith(302, vec![("location".into(), "/target".into())]),
            )
            .start()
            .await
            .unwrap();
        let a = loopback()
            .send(&post(&server.url("/moved"), b"{}"), &opts(5000, 100))
            .await;
        assert!(
            matches!(a.outcome, Outcome::Response { status: 302, .. }),
            "{:?}",
            a.outcome
        );
        assert!(!a.outcome.is_success());
        assert_eq!(a.outcome.header("location"), Some("/target"));
        assert_eq!(
            server.requests().len(),
            1,
            "the redirect target must not be requested"
        );
    }

    #[tokio::test]
    async fn retry_after_is_visible_in_the_outcome() {
        let server = receiver(answer(
            429,
            &[("retry-after", "7")],
            b"slow down",
            Duration::ZERO,
        ))
        .await;
        let a = loopback()
            .send(&post(&server.url("/"), b"{}"), &opts(5000, 100))
            .await;
        assert!(matches!(a.outcome, Outcome::Response { status: 429, .. }));
        assert_eq!(a.outcome.header("retry-after"), Some("7"));
        assert_eq!(a.body_prefix, b"slow down");
    }

    #[tokio::test]
    async fn a_slow_server_is_a_timeout() {
        let server = receiver(Reply::Slow(Duration::from_secs(3), 200)).await;
        let a = loopback()
            .send(&post(&server.url("/"), b"{}"), &opts(300, 100))
            .await;
        assert_eq!(
            kind(&a),
            Some(TransportErrorKind::Timeout),
            "{:?}",
            a.outcome
        );
        assert!(a.latency < Duration::from_secs(2), "{:?}", a.latency);
    }

    #[tokio::test]
    async fn a_dropped_connection_is_a_reset() {
        // Closed after the request is read: first with FIN, then with RST.
        let server = receiver(Reply::Reset).await;
        server.script("/", vec![Reply::Hang(Duration::ZERO)]);
        let d = loopback();
        for _ in 0..2 {
            let a = d
                .send(&post(&server.url("/"), b"{}"), &opts(5000, 100))
                .await;
            assert_eq!(kind(&a), Some(TransportErrorKind::Reset), "{:?}", a.outcome);
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let a = loopback()
            .send(&post(&format!("http://{addr}/"), b"{}"), &opts(5000, 100))
            .await;
        assert_eq!(
            kind(&a),
            Some(TransportErrorKind::Connect),
            "{:?}",
            a.outcome
        );
    }

    #[tokio::test]
    async fn the_ssrf_guard_refuses_without_an_allow_list() {
        let server = receiver(Reply::Status(200)).await;
        let d = Deliverer::new(&ClientOptions {
            allowlist: Allowlist::default(),
            connect_timeout: Duration::from_secs(2),
            pool_max_idle_per_host: 8,
            tls: None,
        })
        .unwrap();
        let port = server.addr().port();
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://2130706433:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://localhost:{port}/"),
        ] {
            let a = d.send(&post(&url, b"{}"), &opts(5000, 100)).await;
            assert_eq!(
                kind(&a),
                Some(TransportErrorKind::RefusedByPolicy),
                "{url}: {:?}",
                a.outcome
            );
            let Outcome::Transport { message, .. } = &a.outcome else {
                unreachable!()
            };
            assert!(
                message.contains("loopback") && message.contains("SSRF"),
                "{message}"
            );
        }
        assert!(server.requests().is_empty(), "nothing may reach the server");
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_sending_without_leaking_values() {
        let d = loopback();
        let mut get = post("http://127.0.0.1:9/", b"");
        get.method = "GET".into();
        let a = d.send(&get, &opts(1000, 10)).await;
        assert_eq!(kind(&a), Some(TransportErrorKind::RefusedByPolicy));
        let mut crlf = post("http://127.0.0.1:9/", b"");
        crlf.headers
            .push(("x-token".into(), "s3cret\r\nx-evil: 1".into()));
        let a = d.send(&crlf, &opts(1000, 10)).await;
        let Outcome::Transport { kind: k, message } = &a.outcome else {
            panic!()
        };
        assert_eq!(*k, TransportErrorKind::RefusedByPolicy);
        assert!(
            message.contains("x-token") && !message.contains("s3cret"),
            "{message}"
        );
        for url in ["ftp://h.test/", "http://user:pw@h.test/", "/relative"] {
            let a = d.send(&post(url, b""), &opts(1000, 10)).await;
            assert_eq!(kind(&a), Some(TransportErrorKind::RefusedByPolicy), "{url}");
        }
    }

    #[tokio::test]
    async fn apps_with_the_same_allow_list_share_a_client() {
        let text = r#"
            [apps.a]
            secrets = { default = "env:A" }
            allowed_networks = ["127.0.0.0/8"]
            timeout_ms = 6000
            [apps.b]
            secrets = { default = "env:B" }
            allowed_networks = ["127.0.0.0/8"]
            max_concurrency = 2
            max_per_endpoint = 2
            [apps.c]
            secrets = { default = "env:C" }
        "#;
        let c = crate::config::Config::from_toml_str(text, std::path::Path::new("."), Vec::new())
            .unwrap();
        let ds = Deliverers::new();
        let a = ds
            .for_app(c.app("a").unwrap(), &Default::default())
            .unwrap();
        let b = ds
            .for_app(c.app("b").unwrap(), &Default::default())
            .unwrap();
        let cc = ds
            .for_app(c.app("c").unwrap(), &Default::default())
            .unwrap();
        assert!(Arc::ptr_eq(&a.deliverer, &b.deliverer));
        assert!(!Arc::ptr_eq(&a.deliverer, &cc.deliverer));
        assert_eq!(ds.len(), 2);
        assert_eq!(a.opts.timeout, Duration::from_millis(6000));
        assert_eq!(b.opts.timeout, Duration::from_millis(15000));

        // Through the pipeline's trait.
        let server = receiver(Reply::Status(503)).await;
        let delivery = Deliver::deliver(&a, &post(&server.url("/"), b"{}")).await;
        assert!(matches!(
            delivery.outcome,
            Outcome::Response { status: 503, .. }
        ));
    }

    /// Throughput of `Deliverer::send` beside a plain reqwest POST loop against the same
    /// keep-alive loopback server, same concurrency. Run:
    /// `cargo test --release -p squall --lib http::tests::throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark"]
    async fn throughput_against_plain_reqwest() {
        const TOTAL: usize = 20_000;
        const CONCURRENCY: usize = 32;
        let server = Receiver::options().record(false).start().await.unwrap();
        let url = server.url("/hook");
        let body = vec![b'x'; 1024];
        let plain = reqwest::Client::builder().no_proxy().build().unwrap();
        let d = Arc::new(loopback());

        async fn run<F, Fut>(f: F) -> f64
        where
            F: Fn() -> Fut + Clone + Send + 'static,
            Fut: Future<Output = ()> + Send,
        {
            let started = Instant::now();
            let tasks: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    let f = f.clone();
                    tokio::spawn(async move {
                        for _ in 0..TOTAL / CONCURRENCY {
                            f().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            (TOTAL / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64()
        }

        let mut results = Vec::new();
        for round in 0..2 {
            let (c, u, b) = (plain.clone(), url.clone(), body.clone());
            let plain_rate = run(move || {
                let (c, u, b) = (c.clone(), u.clone(), b.clone());
                async move {
                    let r = c.post(&u).body(b).send().await.unwrap();
                    assert!(r.status().is_success());
                    let _ = r.bytes().await;
                }
            })
            .await;
            let req = post(&url, &body);
            let (d2, r2) = (d.clone(), req.clone());
            let squall_rate = run(move || {
                let (d, r) = (d2.clone(), r2.clone());
                async move {
                    let a = d.send(&r, &opts(5000, 65536)).await;
                    assert!(a.outcome.is_success());
                }
            })
            .await;
            eprintln!(
                "round {round}: plain reqwest {plain_rate:.0} req/s, Deliverer {squall_rate:.0} req/s, ratio {:.2}",
                squall_rate / plain_rate
            );
            results.push(squall_rate / plain_rate);
        }
        assert!(results.iter().any(|r| *r >= 0.7), "{results:?}");
    }
}
