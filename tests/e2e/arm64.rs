//! The arm64 deployment zip, made on this x86_64 machine by `scripts/package-lambda --arch
//! arm64` (scripts/test builds it once from tests/fixtures/arm64/squall.toml), run as Lambda
//! runs it: unpacked, its bootstrap started under qemu-aarch64 user-mode emulation (Debian's
//! static qemu and aarch64 sysroot, unpacked into .tools/qemu by scripts/lib.sh) against
//! cargo-lambda's Runtime API emulator and moto, as the x86_64 test in `lambda.rs` does.
//!
//! The function loads the Rust, Python and JavaScript samples from the `.cwasm` files
//! cross-compiled for aarch64 and compiles nothing (its log says so), delivers a batch per
//! application and reports the partial batch failures. The bundled config sizes wasmtime's
//! pool at 16 instances (`[plugins] pool_instances`): under emulation each reserved page costs
//! real memory, and 1,000 instances' reservations exhausted this machine. The pool's size
//! changes no code and no artifact, only how many instances may exist at once; the allocator,
//! the loader and the delivery path are the ones Lambda runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use squall_testkit::envelope::TestEnvelope;
use squall_testkit::receiver::{Receiver, Reply};
use squall_tests::sqs::TestQueues;
use squall_tests::sqs_or_skip;

use crate::lambda::{
    cargo_lambda, invoke, sqs_event, start_emulator, start_function_with, temp_dir,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The placeholder queue URLs of tests/fixtures/arm64/squall.toml, replaced by the test's.
const PLACEHOLDER: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/arm64-";
const APPS: [&str; 3] = ["rust", "python", "js"];
/// ELF `e_machine` of aarch64.
const EM_AARCH64: u16 = 183;

/// The zip, qemu-aarch64 and its sysroot, from `SQUALL_ARM64_ZIP`, `QEMU_AARCH64` and
/// `QEMU_SYSROOT` (scripts/test sets them); `None` (skipped with a notice) unless
/// `SQUALL_REQUIRE_ARM64=1`.
fn arm64_parts() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.exists())
    };
    match (
        var("SQUALL_ARM64_ZIP"),
        var("QEMU_AARCH64"),
        var("QEMU_SYSROOT"),
    ) {
        (Some(zip), Some(qemu), Some(sysroot)) => Some((zip, qemu, sysroot)),
        _ => {
            assert!(
                std::env::var("SQUALL_REQUIRE_ARM64").is_err(),
                "SQUALL_REQUIRE_ARM64 is set but SQUALL_ARM64_ZIP, QEMU_AARCH64 or QEMU_SYSROOT \
                 is missing: run scripts/test"
            );
            eprintln!("SKIPPED: no arm64 zip or qemu (scripts/test builds and installs them)");
            None
        }
    }
}

fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with(b"\x7fELF"),
        "{} is not ELF",
        path.display()
    );
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[tokio::test(flavor = "multi_thread")]
async fn arm64_zip_runs_under_emulation_with_its_precompiled_plugins() {
    let endpoint = sqs_or_skip!();
    let Some(cargo_lambda) = cargo_lambda() else {
        return;
    };
    let Some((zip, qemu, sysroot)) = arm64_parts() else {
        return;
    };
    let dir = temp_dir("arm64");
    let status = Command::new("unzip")
        .arg("-q")
        .arg(&zip)
        .arg("-d")
        .arg(&dir)
        .status()
        .expect("run unzip");
    assert!(status.success(), "unzip {}", zip.display());

    // Everything native in the zip is aarch64: the bootstrap and one artifact per plugin.
    let bootstrap = dir.join("bootstrap");
    assert_eq!(elf_machine(&bootstrap), EM_AARCH64, "bootstrap");
    let mut plugins = Vec::new();
    for entry in std::fs::read_dir(dir.join("plugins")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let artifact = path.with_extension("cwasm");
            assert!(artifact.exists(), "{} has no .cwasm", path.display());
            assert_eq!(elf_machine(&artifact), EM_AARCH64, "{}", artifact.display());
            plugins.push(artifact);
        }
    }
    assert_eq!(plugins.len(), 6, "{plugins:?}");

    // The bundled config, pointed at this test's queues.
    let q = TestQueues::create(&endpoint, &APPS).await;
    let config = dir.join("squall.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    let mut urls = vec![("dlq", q.dlq.clone()), ("metrics", q.metrics.clone())];
    urls.extend(APPS.iter().map(|a| (*a, q.app(a).to_string())));
    for (name, url) in urls {
        let placeholder = format!("\"{PLACEHOLDER}{name}\"");
        assert!(text.contains(&placeholder), "{placeholder} in\n{text}");
        text = text.replace(&placeholder, &format!("\"{url}\""));
    }
    assert!(text.contains("[sqs]\n"), "{text}");
    text = text.replace(
        "[sqs]\n",
        &format!("[sqs]\nendpoint_url = \"{endpoint}\"\n"),
    );
    std::fs::write(&config, text).unwrap();

    let rx = Receiver::start(Reply::Status(200)).await;
    for app in APPS {
        rx.script(&format!("/{app}/retry"), vec![Reply::Status(503)]);
        for (kind, id) in [("ok", "evt_ok"), ("retry", "evt_retry")] {
            let body = TestEnvelope::new(
                &format!("{id}_{app}"),
                app,
                &rx.url(&format!("/{app}/{kind}")),
            )
            .event_type("invoice.paid")
            .payload(json!({"invoice": id, "amount": 1200, "currency": "eur"}))
            .to_json();
            q.send(app, &body).await;
        }
    }

    let (_emulator, port) = start_emulator(&cargo_lambda);
    let log = dir.join("bootstrap.log");
    let mut command = Command::new(&qemu);
    command
        .arg("-L")
        .arg(&sysroot)
        .arg(&bootstrap)
        .env("ARM64_TEST_SECRET", SECRET);
    let _function = start_function_with(command, port, &config, &log);

    for app in APPS {
        let (event, received) = sqs_event(&q, q.app(app), 2).await;
        let (status, response) = invoke(port, &event).await;
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            status, 200,
            "{app}: invocation failed: {response}\nfunction log:\n{log_text}"
        );
        let retry_id = received
            .iter()
            .find(|m| m.body.as_deref().unwrap_or("").contains("evt_retry"))
            .and_then(|m| m.message_id.clone())
            .unwrap();
        let failures: Vec<&str> = response["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("{app}: no batchItemFailures in {response}"))
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap())
            .collect();
        assert_eq!(failures, vec![retry_id.as_str()], "{app}");
        let ok = rx.requests_for(&format!("/{app}/ok"));
        assert_eq!(ok.len(), 1, "{app}");
        squall_testkit::verify::verify_recorded(SECRET, &ok[0])
            .unwrap_or_else(|e| panic!("{app}: {e}"));
        assert_eq!(rx.requests_for(&format!("/{app}/retry")).len(), 1, "{app}");
    }

    // Loaded, not compiled: one "loading precompiled plugin" line per artifact, for aarch64,
    // and no "compiled plugin" line.
    let log_text = std::fs::read_to_string(&log).unwrap();
    for artifact in &plugins {
        let name = artifact.file_name().unwrap().to_str().unwrap();
        assert!(
            log_text
                .lines()
                .any(|l| l.contains("loading precompiled plugin")
                    && l.contains(name)
                    && l.contains("aarch64")),
            "{name} not loaded from its artifact:\n{log_text}"
        );
    }
    assert!(
        !log_text.contains("\"message\":\"compiled plugin\""),
        "the function compiled a plugin:\n{log_text}"
    );
    let ready = log_text
        .lines()
        .find(|l| l.contains("function ready"))
        .unwrap_or_else(|| panic!("no \"function ready\" line:\n{log_text}"));
    eprintln!("arm64 bootstrap under qemu-aarch64: {ready}");

    // One metrics record per attempt; nothing dead-lettered.
    assert_eq!(q.drain(&q.metrics).await.len(), 6);
    assert!(q.drain(&q.dlq).await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
