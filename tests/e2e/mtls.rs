//! mTLS to endpoints through the real `squall run` on moto: an HTTPS endpoint on loopback that
//! accepts only client certificates issued by its CA. Application `shop` presents one (its
//! `tls_client_cert` / `tls_client_key` secrets) and trusts the endpoint's CA (`tls_ca`): its
//! events are delivered. Application `other`, same endpoint, presents a certificate from
//! another CA: every handshake fails, its events are retried and dead-lettered with the
//! attempt error `tls`, and none of its requests ever rides a connection made with `shop`'s
//! certificate. The certificates are made by the openssl command for each run.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use sha2::Digest;
use squall_testkit::envelope::TestEnvelope;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::{TestQueues, msg_attr};
use squall_tests::{config_head, sqs_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::lambda::temp_dir;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf (`NAME.pem`, `NAME.key`, PKCS#8) issued by CA `issuer` with extensions `ext`.
fn leaf(dir: &Path, name: &str, issuer: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}-ca.pem"),
            "-CAkey",
            &format!("{issuer}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// What the endpoint saw: accepted requests (event id, SHA-256 of the client certificate) and
/// refused handshakes.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, Vec<u8>)>>,
    refused: AtomicUsize,
}

/// An HTTPS/1.1 endpoint on loopback that requires a client certificate from `client_ca`.
async fn mtls_endpoint(dir: &Path, seen: Arc<Seen>) -> u16 {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read("trusted-ca.pem")) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("server.pem"))
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&read("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    seen.refused.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                let fingerprint = sha2::Sha256::digest(&cert).to_vec();
                // Keep-alive: serve requests until the client closes.
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}:")))
                            .map(|v| v.trim().to_string())
                    };
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let id = header("webhook-id").unwrap_or_default();
                    seen.requests
                        .lock()
                        .unwrap()
                        .push((id, fingerprint.clone()));
                    buf.drain(..head_end + len);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if tls.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A PEM file as a `literal:` secret inside a TOML basic string.
fn literal(dir: &Path, file: &str) -> String {
    let pem = std::fs::read_to_string(dir.join(file)).unwrap();
    format!("literal:{}", pem.replace('\n', "\\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_application_with_the_right_certificate_gets_through() {
    let endpoint = sqs_or_skip!();
    let dir = temp_dir("mtls");
    ca(&dir, "trusted");
    ca(&dir, "rogue");
    leaf(
        &dir,
        "server",
        "trusted",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    let client_ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n";
    leaf(&dir, "shop-client", "trusted", client_ext);
    leaf(&dir, "other-client", "rogue", client_ext);
    let seen = Arc::new(Seen::default());
    let port = mtls_endpoint(&dir, seen.clone()).await;

    let q = TestQueues::create(&endpoint, &["shop", "other"]).await;
    let mut config = config_head(&endpoint, &q, true);
    config.push_str(squall_testkit::config::FAST_RETRY_DEFAULTS);
    for app in ["shop", "other"] {
        config.push_str(&format!(
            "\n[apps.{app}]\nqueue_url = \"{queue}\"\n\
             tls_client_cert = \"cert\"\ntls_client_key = \"key\"\ntls_ca = \"ca\"\n\
             secrets = {{ default = \"literal:{secret}\", cert = \"{cert}\", key = \"{key}\", ca = \"{ca}\" }}\n",
            queue = q.app(app),
            secret = squall_tests::TEST_SECRET,
            cert = literal(&dir, &format!("{app}-client.pem")),
            key = literal(&dir, &format!("{app}-client.key")),
            ca = literal(&dir, "trusted-ca.pem"),
        ));
    }
    let run = SquallRun::start(&config);
    let url = format!("https://127.0.0.1:{port}/hooks");
    for i in 0..10 {
        for app in ["shop", "other"] {
            let body = TestEnvelope::new(&format!("{app}-{i}"), app, &url)
                .payload(json!({"n": i}))
                .to_json();
            q.send(app, &body).await;
        }
    }
    eventually(
        Duration::from_secs(90),
        "shop delivered, other dead-lettered",
        || async {
            let delivered = seen.requests.lock().unwrap().len();
            (delivered >= 10 && q.depth(&q.dlq).await.0 >= 10).then_some(())
        },
    )
    .await;
    let mut run = run;
    assert!(run.is_running(), "{}", run.log());
    let log = run.log();
    assert!(run.terminate().success());
    // No key material in the log: neither the PEM armour nor a line of the key's base64.
    let key_pem = std::fs::read_to_string(dir.join("shop-client.key")).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(!log.contains("PRIVATE KEY") && !log.contains(key_line));

    let shop_cert = {
        let pem = std::fs::read(dir.join("shop-client.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        sha2::Sha256::digest(der.as_ref()).to_vec()
    };
    let requests = seen.requests.lock().unwrap().clone();
    let mut ids: Vec<&str> = requests.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "{ids:?}");
    for (id, cert) in &requests {
        assert!(id.starts_with("shop-"), "{id} got through");
        assert_eq!(cert, &shop_cert, "{id} came with shop's certificate");
    }
    assert!(
        seen.refused.load(Ordering::SeqCst) >= 10,
        "other's handshakes refused"
    );
    let dead = q.drain(&q.dlq).await;
    assert_eq!(dead.len(), 10);
    for m in &dead {
        assert_eq!(msg_attr(m, "squall-app-id").as_deref(), Some("other"));
        let last = msg_attr(m, "squall-last-error").unwrap_or_default();
        assert!(
            last.starts_with("tls") || last.starts_with("reset"),
            "{last}"
        );
        let body = m.body().unwrap_or_default();
        assert!(
            !body.contains("PRIVATE KEY"),
            "no key material in a dead letter"
        );
    }
}
