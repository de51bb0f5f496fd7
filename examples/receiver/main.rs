//! A webhook receiver that verifies Standard Webhooks signatures: what a subscriber runs.
//!
//! ```sh
//! cargo run -p squall --example receiver -- --port 8080 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
//! ```
//!
//! Answers 204 to a correctly signed request, 401 (and says why on stderr) otherwise, and
//! prints one line per request. The check is the `standardwebhooks` crate's (by the
//! specification's authors; nothing from Squall), as a subscriber in Rust would write it:
//! HMAC-SHA256 over `webhook-id.webhook-timestamp.body` compared with each `v1,` entry of
//! `webhook-signature`; timestamps more than 5 minutes away are refused (replay protection).
//! Deduplicate on `webhook-id`: delivery is at-least-once.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use standardwebhooks::Webhook;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 8080u16;
    let mut secret = std::env::var("WEBHOOK_SECRET").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--secret" => secret = args.next().ok_or("--secret needs a value")?,
            _ => {
                return Err(format!(
                    "unknown argument {a}; usage: receiver --port N --secret whsec_..."
                )
                .into());
            }
        }
    }
    if secret.is_empty() {
        return Err("give the signing secret with --secret or WEBHOOK_SECRET".into());
    }
    // `whsec_<base64>` is the Standard Webhooks form; any other string is used as its bytes.
    let webhook = Arc::new(if secret.starts_with("whsec_") {
        Webhook::new(&secret).map_err(|_| "secret: bad base64 after whsec_")?
    } else {
        Webhook::from_bytes(secret.into_bytes())?
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("receiver listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let webhook = webhook.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let id = parts
                        .headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let path = parts.uri.path();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let status = match webhook.verify(&body, &parts.headers) {
                        Ok(()) => {
                            println!("{path} webhook-id={id} verified, {} bytes", body.len());
                            StatusCode::NO_CONTENT
                        }
                        Err(why) => {
                            eprintln!("{path} webhook-id={id} REFUSED: {why}");
                            StatusCode::UNAUTHORIZED
                        }
                    };
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = status;
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
