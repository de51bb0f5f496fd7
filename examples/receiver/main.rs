//! A webhook receiver that verifies Standard Webhooks signatures: what a subscriber runs.
//!
//! ```sh
//! cargo run -p squall --example receiver -- --port 8080 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
//! ```
//!
//! Answers 204 to a correctly signed request, 401 (and says why on stderr) otherwise, and
//! prints one line per request. The check is written out here on purpose, with nothing from
//! Squall: HMAC-SHA256 over `webhook-id.webhook-timestamp.body`, base64, compared in constant
//! time with each `v1,` entry of `webhook-signature`; timestamps more than 5 minutes away
//! are refused (replay protection). Deduplicate on `webhook-id`: delivery is at-least-once.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// Verify one request; `Err` says why not.
fn verify(secret: &[u8], id: &str, ts: &str, sigs: &str, body: &[u8]) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let t: u64 = ts
        .parse()
        .map_err(|_| format!("webhook-timestamp {ts:?} is not an integer"))?;
    if t.abs_diff(now) > 300 {
        return Err(format!(
            "webhook-timestamp {t} is more than 300 s from now ({now})"
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let b64 = base64::engine::general_purpose::STANDARD;
    let matched = sigs
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| b64.decode(s).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok());
    if matched {
        Ok(())
    } else {
        Err("no v1 signature matches".into())
    }
}

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
    let key = match secret.strip_prefix("whsec_") {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| "secret: bad base64 after whsec_")?,
        None => secret.into_bytes(),
    };
    let key: &'static [u8] = Box::leak(key.into_boxed_slice());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("receiver listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let h = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let (id, ts, sig) = (
                    h("webhook-id"),
                    h("webhook-timestamp"),
                    h("webhook-signature"),
                );
                let path = req.uri().path().to_string();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let status = match verify(key, &id, &ts, &sig, &body) {
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
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
