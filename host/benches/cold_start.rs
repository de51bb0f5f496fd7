//! Lambda cold start: from `exec` of the real `bootstrap` binary to the response of its first
//! SQS event (init: config, plugin runtime and plugins, HTTP and SQS clients; then one event
//! delivered to a loopback receiver), against a minimal Lambda Runtime API served here.
//!
//! Variants: built-ins only; the Rust sample plugins bundled precompiled (`.cwasm` beside the
//! `.wasm`, as `squall deploy bundle --precompile` stages them) and compiled at init; the same
//! with the Python and JavaScript samples when `plugins/dist` has them.
//!
//! Run: `scripts/build-plugins && cargo bench -p squall --bench cold_start` (optional
//! `COLD_START_RUNS=N`, default 10). Prints a table; `docs/benchmarks.md` keeps the results.
//!
//! Another architecture's bootstrap (the arm64 one from `scripts/package-lambda --arch arm64`,
//! under qemu-aarch64): `COLD_START_BOOTSTRAP=<its bootstrap>`, `COLD_START_EMULATOR="<qemu>
//! -L <sysroot>"` (words prepended to the command), `COLD_START_ARCH=arm64` (the artifacts are
//! precompiled for that architecture, as `squall deploy bundle --precompile --arch` makes
//! them; without it, by this machine's own engine) and `COLD_START_POOL=N` (`[plugins]
//! pool_instances`; emulation needs a small pool, see docs/config.md).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::RuntimeApi;

const BOOTSTRAP: &str = env!("CARGO_BIN_EXE_bootstrap");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sqs_event(receiver: SocketAddr) -> String {
    let body = squall_testkit::envelope::TestEnvelope::new(
        "evt_cold",
        "bench",
        &format!("http://{receiver}/hook"),
    )
    .created_at_ms(1_795_860_000_000) // 2026-11-28T10:00:00Z
    .payload(serde_json::json!({"amount": 42}))
    .to_json();
    support::sqs_event("bench", "m-1", &body)
}

/// One cold start: exec the binary, hand it one event, wait for its response. Returns the
/// time to the response and the response body.
async fn one_run(config: &Path, receiver: SocketAddr) -> (Duration, String) {
    let api = RuntimeApi::start().await;
    let started = Instant::now();
    let bootstrap = std::env::var("COLD_START_BOOTSTRAP").unwrap_or_else(|_| BOOTSTRAP.into());
    let emulator = std::env::var("COLD_START_EMULATOR").unwrap_or_default();
    let mut words: Vec<&str> = emulator.split_whitespace().collect();
    words.push(&bootstrap);
    let mut cmd = Command::new(words[0]);
    cmd.args(&words[1..]);
    for (k, v) in support::lambda_env(api.addr) {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("SQUALL_CONFIG", config)
        .env("SQUALL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bootstrap");
    let response = api.invoke(sqs_event(receiver)).await;
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, response)
}

/// A config with app `bench` (the event's) and, for `extra`, more apps whose plugins are
/// loaded at init too. Plugin files are copied into `dir` (with `.cwasm` if `precompile`).
fn stage(
    dir: &Path,
    receiver: SocketAddr,
    apps: &[(&str, &[(&str, &str)])],
    precompile: Option<&Precompile>,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let _ = receiver;
    let mut toml = String::from(
        "allow_literal_secrets = true\n[sqs]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n\
         dead_letter_queue_url = \"http://127.0.0.1:9/123456789012/dlq\"\n",
    );
    if let Ok(pool) = std::env::var("COLD_START_POOL") {
        toml.push_str(&format!("[plugins]\npool_instances = {pool}\n"));
    }
    for (i, (app, plugins)) in apps.iter().enumerate() {
        let queue = if i == 0 {
            "bench".to_string()
        } else {
            format!("extra{i}")
        };
        toml.push_str(&format!(
            "[apps.{app}]\nqueue_url = \"http://127.0.0.1:9/123456789012/{queue}\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\n\
             secrets = {{ default = [\"literal:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }}\n"
        ));
        for (hook, file) in *plugins {
            let src = repo_root().join("plugins/dist").join(file);
            let dst = dir.join("plugins").join(file);
            if !dst.exists() {
                std::fs::copy(&src, &dst).unwrap();
                match precompile {
                    Some(Precompile::Native(rt)) => {
                        rt.precompile(&src, &dst.with_extension("cwasm")).unwrap()
                    }
                    Some(Precompile::For(p)) => {
                        p.precompile(&src, &dst.with_extension("cwasm")).unwrap()
                    }
                    None => {}
                }
            }
            toml.push_str(&format!(
                "[apps.{app}.plugins.{hook}]\npath = \"plugins/{file}\"\n"
            ));
        }
    }
    let path = dir.join("squall.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Who makes the artifacts: this machine's engine, or a precompiler for an architecture.
enum Precompile {
    Native(Box<squall::plugin::PluginRuntime>),
    For(squall::plugin::Precompiler),
}

/// Hook -> plugin file name.
type PluginSet<'a> = &'a [(&'a str, &'a str)];
/// (name, apps with their plugins, precompiled, runs).
type Variant<'a> = (String, Vec<(&'a str, PluginSet<'a>)>, bool, usize);

fn median(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("COLD_START_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // The webhook endpoint: the test kit's receiver, answering 200, keeping nothing.
    let rx = squall_testkit::receiver::Receiver::options()
        .record(false)
        .start()
        .await
        .expect("receiver");
    let receiver = rx.addr();
    let dist = repo_root().join("plugins/dist");
    let have = |f: &str| dist.join(f).exists();
    let rust: &[(&str, &str)] = &[
        ("transform", "envelope-transform.wasm"),
        ("signer", "standard-webhooks-signer.wasm"),
        ("retry_policy", "schedule-retry.wasm"),
    ];
    let python: &[(&str, &str)] = &[
        ("transform", "python-reshape-transform.wasm"),
        ("retry_policy", "python-status-retry.wasm"),
    ];
    let js: &[(&str, &str)] = &[
        ("transform", "js-reshape-transform.wasm"),
        ("signer", "js-stripe-signer.wasm"),
    ];
    let all_there = |set: &[(&str, &str)]| set.iter().all(|(_, f)| have(f));

    let options = squall::plugin::RuntimeOptions {
        cache_dir: None,
        ..Default::default()
    };
    let runtime = match std::env::var("COLD_START_ARCH").as_deref() {
        Ok("arm64") => Precompile::For(
            squall::plugin::Precompiler::new(&options, squall::plugin::Architecture::Arm64)
                .unwrap(),
        ),
        Ok("x86_64") => Precompile::For(
            squall::plugin::Precompiler::new(&options, squall::plugin::Architecture::X86_64)
                .unwrap(),
        ),
        Ok(other) => panic!("COLD_START_ARCH={other}: arm64 or x86_64"),
        Err(_) => Precompile::Native(Box::new(
            squall::plugin::PluginRuntime::new(options).unwrap(),
        )),
    };
    let base = std::env::temp_dir().join(format!("squall-cold-start-{}", std::process::id()));
    let mut variants: Vec<Variant> =
        vec![("built-ins only".into(), vec![("bench", &[])], false, runs)];
    if all_there(rust) {
        variants.push((
            "Rust plugins (3), precompiled".into(),
            vec![("bench", rust)],
            true,
            runs,
        ));
        variants.push((
            "Rust plugins (3), compiled at init".into(),
            vec![("bench", rust)],
            false,
            runs,
        ));
    } else {
        println!("(no Rust sample plugins in plugins/dist: run scripts/build-plugins)");
    }
    if all_there(rust) && all_there(python) && all_there(js) {
        let apps = vec![("bench", rust), ("py", python), ("js", js)];
        variants.push((
            "Rust + Python + JS (7), precompiled".into(),
            apps.clone(),
            true,
            runs,
        ));
        variants.push((
            "Rust + Python + JS (7), compiled at init".into(),
            apps,
            false,
            runs.min(2),
        ));
    } else {
        println!("(Python/JS samples not in plugins/dist: their rows are skipped)");
    }

    println!(
        "\nLambda cold start: exec -> first SQS event handled ({runs} runs; min / median / max)\n"
    );
    println!("| variant | min | median | max |");
    println!("|---|---:|---:|---:|");
    // COLD_START_ONLY=<text>: run only the variants whose name contains it (case-insensitive).
    let only = std::env::var("COLD_START_ONLY")
        .unwrap_or_default()
        .to_lowercase();
    for (i, (name, apps, precompiled, n)) in variants.into_iter().enumerate() {
        if !name.to_lowercase().contains(&only) {
            continue;
        }
        let dir = base.join(format!("v{i}"));
        let config = stage(&dir, receiver, &apps, precompiled.then_some(&runtime));
        let mut times = Vec::new();
        for _ in 0..n {
            let (t, response) = one_run(&config, receiver).await;
            assert!(
                support::handled(&response),
                "{name}: the event was not handled: {response}"
            );
            times.push(t);
        }
        let (lo, mid, hi) = median(times);
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!("| {name} | {} | {} | {} |", ms(lo), ms(mid), ms(hi));
    }
    let _ = std::fs::remove_dir_all(&base);
}
