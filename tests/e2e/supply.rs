//! Supply chain (docs/security.md): plugins pinned by digest and refused when their file
//! changed after pinning (`squall run`, the Lambda init, `squall plugin test`), `squall deploy
//! bundle` pinning what it bundles, the SBOM in the deployment zip, and the dependency checks
//! (scripts/deny) failing on a new advisory or a disallowed licence.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;
use squall_tests::TEST_SECRET;
use squall_tests::process::{Scratch, SquallRun, squall_bin};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dist(name: &str) -> PathBuf {
    PathBuf::from(squall_tests::plugin_path(name))
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A plugin file pinned by its digest, then replaced by another build (a different signer):
/// the scratch directory, the plugin's path, the pinned digest and the new file's digest.
fn pinned_then_changed() -> (Scratch, PathBuf, String, String) {
    let dir = Scratch::new("pin");
    let plugin = dir.path().join("signer.wasm");
    std::fs::copy(dist("standard-webhooks-signer"), &plugin).unwrap();
    let pinned = file_sha256(&plugin);
    std::fs::copy(dist("stripe-signer"), &plugin).unwrap();
    let now = file_sha256(&plugin);
    assert_ne!(pinned, now);
    (dir, plugin, pinned, now)
}

/// A config with one application whose signer is `plugin`, pinned to `sha256`. The queue URLs
/// are never contacted: plugins are loaded before any SQS call, in `squall run` and in Lambda.
fn pinned_config(plugin: &Path, sha256: &str) -> String {
    format!(
        r#"allow_literal_secrets = true
[sqs]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:9"
dead_letter_queue_url = "http://127.0.0.1:9/000000000000/dlq"
[apps.shop]
queue_url = "http://127.0.0.1:9/000000000000/shop"
secrets = {{ default = "literal:{TEST_SECRET}" }}
[apps.shop.plugins.signer]
path = "{}"
sha256 = "{sha256}"
"#,
        plugin.display()
    )
}

fn assert_refusal(output: &str, plugin: &Path, pinned: &str, now: &str) {
    for needle in [
        &plugin.display().to_string(),
        pinned,
        now,
        "the config pins",
    ] {
        assert!(
            output.contains(needle),
            "the refusal lacks {needle:?}:\n{output}"
        );
    }
}

#[test]
fn squall_run_refuses_a_plugin_changed_after_pinning() {
    let (_dir, plugin, pinned, now) = pinned_then_changed();
    let run = SquallRun::start(&pinned_config(&plugin, &pinned));
    let (status, log) = run.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "squall run started with it:\n{log}");
    assert_refusal(&log, &plugin, &pinned, &now);

    // The same config pinned to the file as it is now starts (and is then stopped).
    let mut run = SquallRun::start(&pinned_config(&plugin, &now));
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) && !run.log().contains("plugin bound") {
        assert!(run.is_running(), "squall run exited:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run.log().contains("plugin bound"), "{}", run.log());
    run.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn lambda_init_refuses_a_plugin_changed_after_pinning() {
    let (dir, plugin, pinned, now) = pinned_then_changed();
    let config =
        squall::config::from_toml_str(&pinned_config(&plugin, &pinned), dir.path(), []).unwrap();
    let err = match squall::lambda::init::from_config(&config).await {
        Ok(_) => panic!("the function started with a plugin that is not the pinned one"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "PluginError");
    assert_refusal(&err.to_string(), &plugin, &pinned, &now);

    // Bundled beside it, a precompiled artifact of the pinned build is used instead: the pin
    // holds for the .cwasm (its source digest), and the function starts.
    let out = Command::new(squall_bin())
        .args(["plugin", "precompile"])
        .arg(dist("standard-webhooks-signer"))
        .arg("-o")
        .arg(plugin.with_extension("cwasm"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let function = squall::lambda::init::from_config(&config).await;
    assert!(function.is_ok(), "{:?}", function.err());
}

#[test]
fn plugin_test_refuses_a_plugin_changed_after_pinning() {
    let (_dir, plugin, pinned, now) = pinned_then_changed();
    let event = repo_root().join("examples/envelope.json");
    let plugin_test = |sha256: &str| {
        Command::new(squall_bin())
            .args([
                "plugin",
                "test",
                "--hook",
                "sign",
                "--no-cache",
                "--sha256",
                sha256,
            ])
            .arg(&plugin)
            .arg("--event")
            .arg(&event)
            .arg("--secret")
            .arg(format!("default={TEST_SECRET}"))
            .output()
            .unwrap()
    };
    let refused = plugin_test(&pinned);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert_refusal(&text(&refused), &plugin, &pinned, &now);
    let accepted = plugin_test(&now);
    assert!(accepted.status.success(), "{}", text(&accepted));

    // `squall plugin check` prints the digest to pin.
    let check = Command::new(squall_bin())
        .args(["plugin", "check"])
        .arg(&plugin)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains(&format!("sha256 = \"{now}\"")),
        "{}",
        text(&check)
    );
}

#[test]
fn deploy_bundle_pins_every_plugin_it_bundles_and_refuses_a_mismatched_pin() {
    let dir = Scratch::new("bundle");
    let examples = repo_root().join("examples/squall.toml");
    let out = dir.path().join("stage");
    let bundle = |config: &Path, out: &Path| {
        Command::new(squall_bin())
            .args(["deploy", "bundle", "--config"])
            .arg(config)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let done = bundle(&examples, &out);
    assert!(done.status.success(), "{}", text(&done));
    let bundled: toml_like::Doc = toml_like::Doc::read(&out.join("squall.toml"));
    let plugins = ["envelope-transform", "stripe-signer", "schedule-retry"];
    for name in plugins {
        let file = out.join(format!("plugins/{name}.wasm"));
        assert_eq!(file_sha256(&file), file_sha256(&dist(name)));
        assert_eq!(
            bundled.sha256_after(&format!("path = \"plugins/{name}.wasm\"")),
            Some(file_sha256(&file)),
            "{name} is not pinned to its digest in the bundled config:\n{}",
            bundled.0
        );
    }
    // The bundled config loads, pins and all.
    squall::config::load(Some(&out.join("squall.toml"))).unwrap();

    // A source config whose pin does not match the file is refused, naming both digests.
    let text_in = std::fs::read_to_string(&examples).unwrap();
    let signer = dist("stripe-signer");
    let dist_dir = signer.parent().unwrap().display().to_string();
    let wrong = "ab".repeat(32);
    let mispinned = text_in
        .replace("../plugins/dist/", &format!("{dist_dir}/"))
        .replace(
            "stripe-signer.wasm\"",
            &format!("stripe-signer.wasm\"\nsha256 = \"{wrong}\""),
        );
    assert!(mispinned.contains(&wrong));
    let config = dir.path().join("mispinned.toml");
    std::fs::write(&config, mispinned).unwrap();
    let refused = bundle(&config, &dir.path().join("stage2"));
    assert!(!refused.status.success());
    for needle in ["apps.shop.plugins.signer", &wrong, &file_sha256(&signer)] {
        assert!(text(&refused).contains(needle), "{}", text(&refused));
    }
}

/// Just enough of the bundled TOML for the test: the `sha256` line that follows a line.
mod toml_like {
    pub struct Doc(pub String);
    impl Doc {
        pub fn read(path: &std::path::Path) -> Doc {
            Doc(std::fs::read_to_string(path).unwrap())
        }
        /// The `sha256 = "..."` value in the same table as the line `after`.
        pub fn sha256_after(&self, after: &str) -> Option<String> {
            let table = self
                .0
                .split("\n[")
                .find(|t| t.lines().any(|l| l.trim() == after))?;
            table
                .lines()
                .find_map(|l| l.trim().strip_prefix("sha256 = \""))
                .map(|v| v.trim_end_matches('"').to_string())
        }
    }
}

/// `.tools/NAME` exists, or `None` (the test is skipped with a notice) unless
/// `SQUALL_REQUIRE_SUPPLY_TOOLS=1` (scripts/test installs them).
fn supply_tool(name: &str) -> Option<PathBuf> {
    let p = repo_root().join(".tools").join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("SQUALL_REQUIRE_SUPPLY_TOOLS").is_err(),
        "SQUALL_REQUIRE_SUPPLY_TOOLS is set but {} is missing: run scripts/test",
        p.display()
    );
    eprintln!("SKIPPED: no {name} in .tools (scripts/test installs it)");
    None
}

/// The debug bootstrap the suite builds (`cargo build --workspace --bins`), beside `squall`.
fn debug_bootstrap() -> PathBuf {
    let bin = squall_bin().with_file_name("bootstrap");
    assert!(
        bin.exists(),
        "{} missing: cargo build -p squall --bins",
        bin.display()
    );
    bin
}

#[test]
fn the_deployment_zip_carries_an_sbom_with_wasmtime_and_every_bundled_plugin() {
    if supply_tool("cargo-cyclonedx").is_none() || supply_tool("cyclonedx").is_none() {
        return;
    }
    let dir = Scratch::new("package");
    let zip = dir.path().join("squall-x86_64.zip");
    // The suite's own bootstrap build: the zip's layout and SBOM do not depend on how the
    // binary was built (scripts/package-lambda builds a release one through cargo-auditable).
    let out = Command::new(repo_root().join("scripts/package-lambda"))
        .args([
            "--arch",
            "x86_64",
            "--config",
            "examples/squall.toml",
            "--out",
        ])
        .arg(&zip)
        .arg("--bootstrap")
        .arg(debug_bootstrap())
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let listing = Command::new("unzip").arg("-l").arg(&zip).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    for file in ["bootstrap", "squall.toml", "sbom.cdx.json"] {
        assert!(
            listing
                .lines()
                .any(|l| l.trim_end().ends_with(&format!(" {file}"))),
            "unzip -l lacks {file}:\n{listing}"
        );
    }
    let sbom = Command::new("unzip")
        .arg("-p")
        .arg(&zip)
        .arg("sbom.cdx.json")
        .output()
        .unwrap();
    let sbom: Value = serde_json::from_slice(&sbom.stdout).expect("the SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    let components = sbom["components"].as_array().expect("components");
    let named = |name: &str| {
        components
            .iter()
            .filter(|c| c["name"] == name)
            .collect::<Vec<_>>()
    };
    let wasmtime = named("wasmtime");
    assert_eq!(wasmtime.len(), 1, "{wasmtime:?}");
    let version = wasmtime[0]["version"].as_str().unwrap();
    assert!(version.starts_with("48.0."), "wasmtime {version}");
    assert!(
        wasmtime[0]["purl"]
            .as_str()
            .unwrap()
            .starts_with("pkg:cargo/wasmtime@48.0."),
        "{:?}",
        wasmtime[0]
    );
    for name in ["envelope-transform", "stripe-signer", "schedule-retry"] {
        let file = format!("{name}.wasm");
        let plugin = named(&file);
        assert_eq!(plugin.len(), 1, "{file} in the SBOM: {plugin:?}");
        let hashes = plugin[0]["hashes"].as_array().unwrap();
        assert!(
            hashes
                .iter()
                .any(|h| h["alg"] == "SHA-256" && h["content"] == file_sha256(&dist(name))),
            "{file}: {hashes:?}"
        );
        let wit = plugin[0]["properties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "squall:wit-version")
            .and_then(|p| p["value"].as_str())
            .unwrap_or_default()
            .to_string();
        assert!(wit.starts_with("0."), "{file}: WIT version {wit:?}");
    }
}

/// scripts/deny with an advisory database and/or a config of the test's making.
fn deny(db: Option<&Path>, config: Option<&Path>) -> Output {
    let mut cmd = Command::new(repo_root().join("scripts/deny"));
    cmd.current_dir(repo_root())
        .env_remove("SQUALL_ADVISORY_DB");
    if let Some(db) = db {
        cmd.env("SQUALL_ADVISORY_DB", db);
    }
    if let Some(config) = config {
        cmd.env("SQUALL_DENY_CONFIG", config);
    }
    cmd.output().unwrap()
}

#[test]
fn dependency_checks_fail_on_a_new_advisory() {
    if supply_tool("cargo-deny").is_none() {
        return;
    }
    let dir = Scratch::new("advisory-db");
    let advisory = dir.path().join("crates/hex/RUSTSEC-2099-0001.md");
    std::fs::create_dir_all(advisory.parent().unwrap()).unwrap();
    std::fs::write(
        &advisory,
        r#"```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "hex"
date = "2099-01-01"
url = "https://example.invalid/RUSTSEC-2099-0001"
categories = ["memory-corruption"]
keywords = ["test"]

[versions]
patched = [">= 99.0.0"]
```

# Crafted for Squall's tests: every hex release is vulnerable

The dependency checks must fail on this advisory.
"#,
    )
    .unwrap();
    let out = deny(Some(dir.path()), None);
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(output.contains("RUSTSEC-2099-0001"), "{output}");

    // Without a database the advisories check is skipped, said so, and the rest still runs.
    let out = deny(None, None);
    let output = text(&out);
    assert!(out.status.success(), "{output}");
    assert!(output.contains("advisories: NOT CHECKED"), "{output}");
    assert!(output.contains("licenses ok"), "{output}");
}

#[test]
fn dependency_checks_fail_on_a_disallowed_licence() {
    if supply_tool("cargo-deny").is_none() {
        return;
    }
    let dir = Scratch::new("deny-config");
    let config = std::fs::read_to_string(repo_root().join("deny.toml")).unwrap();
    // MIT taken off the allow-list: crates licensed under MIT alone are then refused.
    let without_mit = config.replace("    \"MIT\",\n", "");
    assert_ne!(without_mit, config);
    let path = dir.path().join("deny.toml");
    std::fs::write(&path, without_mit).unwrap();
    let out = deny(None, Some(&path));
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(
        output.contains("rejected") && output.contains("MIT"),
        "{output}"
    );
}
