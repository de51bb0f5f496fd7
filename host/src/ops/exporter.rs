//! A tiny HTTP server for Prometheus scrapes: `GET /metrics` answers the latest text the
//! caller published; anything else is 404. One hyper http1 connection task per client.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The text served, replaced by the caller after each window.
#[derive(Debug, Clone, Default)]
pub struct Exposition(Arc<RwLock<String>>);

impl Exposition {
    /// Replace the served text.
    pub fn publish(&self, text: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = text;
    }

    fn current(&self) -> String {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Bind `addr` (fails at once if taken) and serve in a background task. Returns the bound
/// address (useful with port 0).
pub async fn serve(addr: SocketAddr, exposition: Exposition) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics exporter: accept failed");
                    continue;
                }
            };
            let exposition = exposition.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let exposition = exposition.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &exposition)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn respond(req: &Request<Incoming>, exposition: &Exposition) -> Response<Full<Bytes>> {
    let (status, ctype, body) = if req.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            exposition.current(),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".to_string(),
        )
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_published_text_on_metrics_only() {
        let e = Exposition::default();
        e.publish("squall_up 1\n".into());
        let addr = serve("127.0.0.1:0".parse().unwrap(), e.clone())
            .await
            .unwrap();
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(r.text().await.unwrap(), "squall_up 1\n");
        e.publish("squall_up 2\n".into());
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "squall_up 2\n");
        let r = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.status(), 404);
    }
}
