//! Standard Webhooks `v1a` (ed25519) signatures through the real `squall run` on moto, checked
//! by code that shares nothing with Squall's signer: Python's `cryptography` (the moto tool
//! environment has it) verifying each `v1a` entry over `{id}.{timestamp}.{body}` with the
//! public key as `squall keys public` prints it, written from the specification's text. With
//! `v1` and `v1a` sent together the official Rust library (`standardwebhooks`) still verifies
//! the `v1` one.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use squall::secrets::SecretKey;
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Recorded, Reply};
use squall_testkit::verify::verify_recorded;
use squall_tests::process::{SquallRun, eventually};
use squall_tests::sqs::TestQueues;
use squall_tests::{TEST_SECRET, config_head, sqs_or_skip};

use crate::endpoints::squall_ok;
use crate::lambda::{repo_root, temp_dir};

/// Each request's `v1a` entries checked by Python's `cryptography` against `public`
/// (`whpk_...`); the number of requests whose every `v1a` entry verified (at least one each).
fn independent_v1a_check(public: &str, requests: &[Recorded]) -> usize {
    let python = repo_root().join(".tools/moto/bin/python");
    assert!(
        python.exists(),
        "{} (scripts/test installs it)",
        python.display()
    );
    let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature
ok = 0
for line in sys.stdin:
    r = json.loads(line)
    assert r["public"].startswith("whpk_")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(r["public"][len("whpk_"):]))
    signed = r["id"].encode() + b"." + r["timestamp"].encode() + b"." + base64.b64decode(r["body"])
    entries = [s for s in r["signature"].split(" ") if s.startswith("v1a,")]
    good = 0
    for e in entries:
        try:
            key.verify(base64.b64decode(e[len("v1a,"):]), signed)
            good += 1
        except InvalidSignature:
            pass
    if entries and good == len(entries):
        ok += 1
print(ok)
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for r in requests {
        let line = json!({
            "public": public,
            "id": r.header("webhook-id").unwrap(),
            "timestamp": r.header("webhook-timestamp").unwrap(),
            "signature": r.header("webhook-signature").unwrap(),
            "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
        });
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn v1a_signatures_verify_independently_beside_v1() {
    let endpoint = sqs_or_skip!();
    let q = TestQueues::create(&endpoint, &["both", "pinned"]).await;
    let rx = Receiver::start(Reply::Status(200)).await;
    let (sk, _) = SecretKey::generate_ed25519();
    let mut config = config_head(&endpoint, &q, false);
    // Loopback receivers allowed, short retries: as every e2e configuration.
    config.push_str(squall_testkit::config::FAST_RETRY_DEFAULTS);
    config.push_str(&format!(
        "\n[apps.both]\nqueue_url = \"{}\"\n\
         secrets = {{ default = [\"literal:{TEST_SECRET}\", \"literal:{sk}\"] }}\n\
         \n[apps.pinned]\nqueue_url = \"{}\"\nsecrets = {{ default = \"literal:{sk}\" }}\n",
        q.app("both"),
        q.app("pinned"),
    ));
    let dir = temp_dir("v1a");
    let config_file = dir.join("squall.toml");
    std::fs::write(&config_file, &config).unwrap();
    // What the operator gives subscribers, read as the engine reads the secret.
    let printed = squall_ok(
        &config_file,
        &[
            "keys",
            "public",
            "--config",
            config_file.to_str().unwrap(),
            "--app",
            "pinned",
        ],
    );
    let public = printed
        .split_whitespace()
        .find(|w| w.starts_with("whpk_"))
        .unwrap_or_else(|| panic!("no public key in {printed:?}"))
        .to_string();
    let run = SquallRun::start(&config);
    for app in ["both", "pinned"] {
        for i in 0..5 {
            let body = TestEnvelope::new(&format!("{app}-{i}"), app, &rx.url(&format!("/{app}")))
                .payload(json!({"n": i, "text": "caf\u{e9}"}))
                .to_json();
            q.send(app, &body).await;
        }
    }
    eventually(Duration::from_secs(60), "10 deliveries", || async {
        (rx.requests().len() >= 10).then_some(())
    })
    .await;
    assert!(run.terminate().success());

    let both = rx.requests_for("/both");
    let pinned = rx.requests_for("/pinned");
    assert_eq!((both.len(), pinned.len()), (5, 5));
    for r in &both {
        let sig = r.header("webhook-signature").unwrap();
        assert!(sig.starts_with("v1,") && sig.contains(" v1a,"), "{sig}");
        // The official library verifies the v1 entry with the v1a one beside it.
        verify_recorded(TEST_SECRET, r).unwrap();
    }
    for r in &pinned {
        let sig = r.header("webhook-signature").unwrap();
        assert!(sig.starts_with("v1a,") && !sig.contains(' '), "{sig}");
        assert!(verify_recorded(TEST_SECRET, r).is_err(), "no v1 to verify");
    }
    assert_eq!(independent_v1a_check(&public, &both), 5);
    assert_eq!(independent_v1a_check(&public, &pinned), 5);
    // The check can fail: one byte of a body changed, or another key's public half.
    let mut tampered = pinned.clone();
    tampered[0].body[0] ^= 1;
    assert_eq!(independent_v1a_check(&public, &tampered), 4);
    let (_, other) = SecretKey::generate_ed25519();
    assert_eq!(independent_v1a_check(&other, &pinned), 0);
}
