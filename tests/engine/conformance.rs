//! Every sample plugin, in every language, against the shared conformance vectors in
//! `plugins/conformance/`, through the real plugin runtime (build the components first with
//! `scripts/build-plugins`). Also: the Python, JavaScript and Rust reshape transforms give
//! byte-identical requests on every vector.

use std::path::PathBuf;
use std::sync::OnceLock;

use squall::conformance::{self, Actual, BuiltinHooks, PluginHooks, Report, VectorFile};
use squall::hooks::{HookError, TransformResult};
use squall::plugin::{PluginRuntime, PluginSpec, RuntimeOptions};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn dist(name: &str) -> PathBuf {
    let path = repo(&format!("plugins/dist/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

fn vectors(file: &str) -> VectorFile {
    conformance::load(&repo(&format!("plugins/conformance/{file}")))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One runtime for the whole test binary: each component is compiled once. The compile cache
/// lives in the system temp dir so a re-run skips Cranelift for the 12-18 MB interpreters.
fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        PluginRuntime::new(RuntimeOptions {
            cache_dir: Some(std::env::temp_dir().join("squall-conformance-cache")),
            ..RuntimeOptions::default()
        })
        .unwrap()
    })
}

/// The spec a vector run uses: production limits except the wall time. Conformance is about
/// behaviour; a debug build of the host on a loaded 2-core machine can take longer than the
/// 100 ms default to instantiate an 18 MB Python component (release: ~1 ms, see
/// docs/benchmarks.md), and a timing flake must not read as a wrong answer.
fn spec(plugin: &str) -> PluginSpec {
    let mut spec = PluginSpec::new(dist(plugin));
    spec.limits.timeout_ms = 10_000;
    spec
}

/// Run `plugin` (a component in plugins/dist) against `file` and require every vector to pass.
fn conforms(plugin: &str, file: &str) -> Report {
    let report = conformance::run(&vectors(file), &PluginHooks::new(runtime(), spec(plugin)));
    assert!(report.all_passed(), "{plugin} against {file}:\n{report}");
    assert!(report.vectors.len() >= 3, "{file} has too few vectors");
    report
}

#[test]
fn python_reshape_transform_conforms() {
    conforms("python-reshape-transform", "transform-reshape.json");
}

#[test]
fn javascript_reshape_transform_conforms() {
    conforms("js-reshape-transform", "transform-reshape.json");
}

#[test]
fn rust_reshape_transform_conforms() {
    conforms("reshape-transform", "transform-reshape.json");
}

#[test]
fn python_status_retry_conforms() {
    conforms("python-status-retry", "retry-status.json");
}

#[test]
fn rust_schedule_retry_conforms() {
    conforms("schedule-retry", "retry-schedule.json");
}

#[test]
fn javascript_stripe_signer_conforms() {
    conforms("js-stripe-signer", "signer-stripe.json");
}

#[test]
fn rust_stripe_signer_conforms() {
    conforms("stripe-signer", "signer-stripe.json");
}

#[test]
fn c_github_signer_conforms() {
    conforms("c-github-signer", "signer-github.json");
}

#[test]
fn rust_github_signer_conforms() {
    conforms("github-signer", "signer-github.json");
}

#[test]
fn rust_standard_webhooks_signer_conforms() {
    conforms("standard-webhooks-signer", "signer-standard-webhooks.json");
}

#[test]
fn builtin_signer_conforms_to_the_same_table() {
    let report = conformance::run(&vectors("signer-standard-webhooks.json"), &BuiltinHooks);
    assert!(report.all_passed(), "{report}");
}

/// What a reshape returned, without the plugin's identity (paths differ per language).
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Result(TransformResult),
    Reported(String),
}

fn answer(actual: &Actual) -> Answer {
    match actual {
        Actual::Transform(Ok(r)) => Answer::Result(r.clone()),
        Actual::Transform(Err(HookError::Plugin { message, .. })) => {
            Answer::Reported(message.clone())
        }
        other => panic!("not a transform answer or a reported error: {other:?}"),
    }
}

#[test]
fn reshape_is_byte_identical_in_python_javascript_and_rust() {
    let file = vectors("transform-reshape.json");
    let reports: Vec<(&str, Report)> = [
        "python-reshape-transform",
        "js-reshape-transform",
        "reshape-transform",
    ]
    .into_iter()
    .map(|p| {
        (
            p,
            conformance::run(&file, &PluginHooks::new(runtime(), spec(p))),
        )
    })
    .collect();
    let (first_name, first) = &reports[0];
    let mut sends = 0;
    for v in &first.vectors {
        let reference = answer(&v.actual);
        if let Answer::Result(TransformResult::Send(_)) = reference {
            sends += 1;
        }
        for (name, report) in &reports[1..] {
            let other = answer(report.actual(&v.name).expect("same vectors"));
            assert_eq!(
                other, reference,
                "vector {}: {name} differs from {first_name}",
                v.name
            );
        }
    }
    assert!(sends >= 10, "only {sends} vectors produce a request");
}

/// The JavaScript samples built with componentize-qjs 0.4.5 (QuickJS) pass every vector but the
/// ones whose `u32` or `u64` argument has its top bit set: that toolchain lifts them as signed
/// (an `attempt` of 4294967295 arrives as -1, a `u64` timestamp of 2^64-1 as -1). Pinned here,
/// so a toolchain that fixes it (or a vector that starts failing for another reason) shows.
#[test]
fn javascript_samples_built_with_quickjs_conform_but_for_the_top_bit_of_unsigned_integers() {
    for (plugin, file, known) in [
        (
            "qjs-reshape-transform",
            "transform-reshape.json",
            &["large-created-at"][..],
        ),
        (
            "qjs-stripe-signer",
            "signer-stripe.json",
            &["largest-timestamp"][..],
        ),
    ] {
        let report = conformance::run(&vectors(file), &PluginHooks::new(runtime(), spec(plugin)));
        let failed: Vec<&str> = report
            .vectors
            .iter()
            .filter(|v| !v.passed())
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(failed, known, "{plugin} against {file}:\n{report}");
    }
}
