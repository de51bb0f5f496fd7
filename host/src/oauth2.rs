//! OAuth2 client credentials at run time: one [`TokenSource`] per application (built with the
//! application, dropped with it), which fetches the access token through the application's
//! SSRF-guarded client and shares it between every delivery until it is due for a refresh.
//!
//! Single flight: the cache sits behind an async lock held across the fetch, so deliveries
//! that find no fresh token wait for the one fetch in progress and use its result (a failure
//! included: a down token endpoint is asked once per wave of waiting deliveries, not once per
//! delivery). A 401 refreshes only if the rejected token is still the cached one, so 50
//! deliveries rejected with one token cause one fetch.
//!
//! The decisions (the request, the answer, the refresh time) are the core's
//! (`squall_core::oauth2`, re-exported here). Neither the token nor the client secret is ever
//! logged: log lines name the application, the token URL and the lifetime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use squall_core::oauth2::*;

use crate::hooks::{Outcome, Request, TransportErrorKind};
use crate::http::{Deliverer, SendOptions};
use crate::pipeline::Clock;
use crate::secrets::SecretKey;

/// Why a delivery got no token: the error and the outcome kind the attempt records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFailure {
    /// `token`, or `refused-by-policy` when the SSRF guard refused the token URL (dead-lettered
    /// at once, like an endpoint it refuses).
    pub kind: TransportErrorKind,
    /// What failed (no token, no secret, no body).
    pub error: TokenError,
}

impl TokenFailure {
    /// The attempt's outcome: no request was sent to the endpoint.
    pub fn outcome(&self) -> Outcome {
        Outcome::Transport {
            kind: self.kind,
            message: self.error.to_string(),
        }
    }
}

#[derive(Default)]
struct Cache {
    token: Option<Arc<Token>>,
    /// The last fetch's failure and when it ended: deliveries that were waiting for that fetch
    /// take its failure instead of fetching again.
    failed: Option<(Instant, TokenFailure)>,
}

/// The access tokens of one application.
pub struct TokenSource {
    app_id: String,
    config: OAuth2Config,
    client_secret: SecretKey,
    deliverer: Arc<Deliverer>,
    opts: SendOptions,
    clock: Arc<dyn Clock>,
    cache: tokio::sync::Mutex<Cache>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("app_id", &self.app_id)
            .field("token_url", &self.config.token_url)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The token source of application `app_id`: its settings, its client secret (taken out of
    /// the secrets the signer and plugins get), its HTTP client (so the token request passes the
    /// same SSRF guard as its deliveries), the request timeout.
    pub fn new(
        app_id: &str,
        config: OAuth2Config,
        client_secret: SecretKey,
        deliverer: Arc<Deliverer>,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> TokenSource {
        TokenSource {
            app_id: app_id.to_string(),
            config,
            client_secret,
            deliverer,
            opts: SendOptions {
                timeout,
                max_response_bytes: MAX_TOKEN_RESPONSE_BYTES,
            },
            clock,
            cache: tokio::sync::Mutex::new(Cache::default()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OAuth2Config {
        &self.config
    }

    /// Token requests sent so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A fresh token: the cached one, else the result of one fetch shared by every caller
    /// waiting for it.
    pub async fn token(&self) -> Result<Arc<Token>, TokenFailure> {
        self.get(None).await
    }

    /// A token other than `rejected` (the endpoint answered 401 to it): fetched now, unless
    /// another delivery already replaced it.
    pub async fn refresh(&self, rejected: &Arc<Token>) -> Result<Arc<Token>, TokenFailure> {
        self.get(Some(rejected)).await
    }

    async fn get(&self, rejected: Option<&Arc<Token>>) -> Result<Arc<Token>, TokenFailure> {
        let asked = Instant::now();
        let mut cache = self.cache.lock().await;
        let now = self.clock.now_ms();
        if let Some(t) = &cache.token
            && t.fresh(now)
            && rejected.is_none_or(|r| !Arc::ptr_eq(r, t))
        {
            return Ok(t.clone());
        }
        if let Some((ended, failure)) = &cache.failed
            && *ended >= asked
        {
            return Err(failure.clone());
        }
        match self.fetch(now).await {
            Ok(token) => {
                let token = Arc::new(token);
                cache.token = Some(token.clone());
                cache.failed = None;
                Ok(token)
            }
            Err(failure) => {
                cache.failed = Some((Instant::now(), failure.clone()));
                // A token due for a refresh but not expired still serves (not after a 401).
                match &cache.token {
                    Some(t) if rejected.is_none() && self.clock.now_ms() < t.expires_at_ms => {
                        tracing::warn!(app_id = %self.app_id, token_url = %self.config.token_url, error = %failure.error, "oauth2 token refresh failed; the current token serves until it expires");
                        Ok(t.clone())
                    }
                    _ => {
                        cache.token = None;
                        Err(failure)
                    }
                }
            }
        }
    }

    async fn fetch(&self, now_ms: u64) -> Result<Token, TokenFailure> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let wire = self.config.token_request(self.client_secret.material());
        let request = Request {
            method: "POST".into(),
            url: self.config.token_url.clone(),
            headers: wire.headers,
            body: wire.body.expose().as_bytes().to_vec(),
        };
        let a = self
            .deliverer
            .send_authorized(&request, &self.opts, wire.authorization.as_ref())
            .await;
        let result = match a.outcome {
            Outcome::Response { status, .. } => {
                read_token_response(&self.config, status, &a.body_prefix, a.truncated, now_ms)
                    .map_err(|error| TokenFailure {
                        kind: TransportErrorKind::Token,
                        error,
                    })
            }
            Outcome::Transport { kind, message } => Err(TokenFailure {
                kind: if kind == TransportErrorKind::RefusedByPolicy {
                    kind
                } else {
                    TransportErrorKind::Token
                },
                error: TokenError::Transport {
                    url: self.config.token_url.clone(),
                    detail: message,
                },
            }),
        };
        match &result {
            Ok(t) => tracing::info!(app_id = %self.app_id, token_url = %self.config.token_url,
                lifetime_secs = t.expires_at_ms.saturating_sub(now_ms) / 1000,
                refresh_in_secs = t.refresh_at_ms.saturating_sub(now_ms) / 1000,
                "oauth2 token fetched"),
            Err(f) => {
                tracing::warn!(app_id = %self.app_id, error = %f.error, "oauth2 token request failed")
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{ClientOptions, POOL_MAX_IDLE_PER_HOST};
    use crate::ssrf::Allowlist;
    use squall_testkit::receiver::{Receiver, Reply};
    use std::sync::atomic::AtomicU64;

    struct TestClock(AtomicU64);
    impl Clock for TestClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn deliverer(allow: &[&str]) -> Arc<Deliverer> {
        Arc::new(
            Deliverer::new(&ClientOptions {
                allowlist: Allowlist::parse(allow).unwrap(),
                connect_timeout: Duration::from_secs(2),
                pool_max_idle_per_host: POOL_MAX_IDLE_PER_HOST,
                tls: None,
            })
            .unwrap(),
        )
    }

    fn config(token_url: String) -> OAuth2Config {
        OAuth2Config {
            token_url,
            client_id: "squall".into(),
            client_secret: "oauth".into(),
            scope: "hooks".into(),
            audience: String::new(),
            origins: vec!["http://127.0.0.1:9".into()],
            refresh_before_secs: 60,
            auth_method: AuthMethod::Basic,
        }
    }

    /// A token server answering `{"access_token":"tok-N",...}` with `expires_in`, slowly
    /// enough that concurrent callers overlap.
    async fn token_server(expires_in: u64) -> (Receiver, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        let counter = n.clone();
        let server = Receiver::options()
            .route_with("/token", Arc::new(move |_req: &squall_testkit::receiver::Recorded| {
                let i = counter.fetch_add(1, Ordering::SeqCst) + 1;
                Reply::Answer {
                    status: 200,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: format!(
                        r#"{{"access_token":"tok-{i}","token_type":"Bearer","expires_in":{expires_in}}}"#
                    )
                    .into_bytes(),
                    delay: Duration::from_millis(100),
                }
            }))
            .start()
            .await
            .unwrap();
        (server, n)
    }

    fn source(url: String, clock: Arc<TestClock>, allow: &[&str]) -> Arc<TokenSource> {
        Arc::new(TokenSource::new(
            "shop",
            config(url),
            SecretKey::from_bytes(b"s3cret".to_vec()),
            deliverer(allow),
            Duration::from_secs(5),
            clock,
        ))
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_expiry_fetches_again() {
        let (server, count) = token_server(120).await;
        let clock = Arc::new(TestClock(AtomicU64::new(1_000_000)));
        let src = source(server.url("/token"), clock.clone(), &["127.0.0.0/8"]);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let s = src.clone();
                tokio::spawn(async move { s.token().await.unwrap().bearer() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().expose(), "Bearer tok-1");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one fetch for 50 callers");
        // The request: form body and HTTP Basic per RFC 6749 2.3.1.
        let seen = &server.requests()[0];
        assert_eq!(seen.body, b"grant_type=client_credentials&scope=hooks");
        assert_eq!(
            seen.header("authorization"),
            Some("Basic c3F1YWxsOnMzY3JldA==")
        );

        // Fresh until 60 s before its 120-s lifetime ends.
        clock.0.store(1_000_000 + 59_999, Ordering::SeqCst);
        assert_eq!(src.token().await.unwrap().bearer().expose(), "Bearer tok-1");
        clock.0.store(1_000_000 + 60_000, Ordering::SeqCst);
        assert_eq!(src.token().await.unwrap().bearer().expose(), "Bearer tok-2");
        assert_eq!(src.fetches(), 2);
    }

    #[tokio::test]
    async fn a_rejected_token_is_replaced_once_for_every_delivery_it_failed() {
        let (server, count) = token_server(3600).await;
        let clock = Arc::new(TestClock(AtomicU64::new(0)));
        let src = source(server.url("/token"), clock, &["127.0.0.0/8"]);
        let first = src.token().await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (s, f) = (src.clone(), first.clone());
                tokio::spawn(async move { s.refresh(&f).await.unwrap().bearer() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().expose(), "Bearer tok-2");
        }
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_token_errors_shared_by_waiters_and_the_guard_refuses_the_url() {
        let server = Receiver::options()
            .route(
                "/token",
                Reply::Answer {
                    status: 401,
                    headers: vec![],
                    body: br#"{"error":"invalid_client"}"#.to_vec(),
                    delay: Duration::from_millis(100),
                },
            )
            .start()
            .await
            .unwrap();
        let clock = Arc::new(TestClock(AtomicU64::new(0)));
        let src = source(server.url("/token"), clock.clone(), &["127.0.0.0/8"]);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let s = src.clone();
                tokio::spawn(async move { s.token().await.unwrap_err() })
            })
            .collect();
        for t in tasks {
            let f = t.await.unwrap();
            assert_eq!(f.kind, TransportErrorKind::Token);
            let Outcome::Transport { message, .. } = f.outcome() else {
                unreachable!()
            };
            assert!(
                message.ends_with("answered status 401 (error \"invalid_client\")"),
                "{message}"
            );
            assert!(!message.contains("s3cret"));
        }
        assert_eq!(server.requests().len(), 1, "waiters share the failed fetch");

        // Without an allow-list, a loopback token URL is refused before connecting.
        let guarded = source(server.url("/token"), clock, &[]);
        let f = guarded.token().await.unwrap_err();
        assert_eq!(f.kind, TransportErrorKind::RefusedByPolicy, "{f:?}");
        assert!(f.error.to_string().contains("SSRF"), "{}", f.error);
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn the_bearer_goes_only_to_listed_origins_replacing_any_authorization_header() {
        let (server, count) = token_server(3600).await;
        let hooks = Receiver::start(Reply::Status(204)).await;
        let mut cfg = config(server.url("/token"));
        cfg.origins = vec![format!("http://127.0.0.1:{}", hooks.addr().port())];
        let clock = Arc::new(TestClock(AtomicU64::new(0)));
        let d = deliverer(&["127.0.0.0/8"]);
        let delivery = crate::http::AppDelivery {
            deliverer: d.clone(),
            opts: SendOptions::default(),
            oauth2: Some(Arc::new(TokenSource::new(
                "shop",
                cfg,
                SecretKey::from_bytes(b"s3cret".to_vec()),
                d,
                Duration::from_secs(5),
                clock,
            ))),
        };
        let request = |url: String| Request {
            method: "POST".into(),
            url,
            headers: vec![("Authorization".into(), "Bearer forged".into())],
            body: b"{}".to_vec(),
        };
        let a = delivery.send(&request(hooks.url("/in"))).await;
        assert!(a.outcome.is_success(), "{:?}", a.outcome);
        // The same server by another name (localhost) is another origin: no token.
        let other = format!("http://localhost:{}/in", hooks.addr().port());
        let a = delivery.send(&request(other)).await;
        assert!(a.outcome.is_success(), "{:?}", a.outcome);
        let seen = hooks.requests();
        let auth: Vec<Vec<&str>> = seen
            .iter()
            .map(|r| {
                r.headers
                    .iter()
                    .filter(|(n, _)| n == "authorization")
                    .map(|(_, v)| v.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(auth, [vec!["Bearer tok-1"], vec!["Bearer forged"]]);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
