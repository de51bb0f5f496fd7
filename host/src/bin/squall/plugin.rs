//! `squall plugin check|test|precompile|conformance`: a plugin author's loop. Every subcommand loads
//! the plugin through the same `PluginRuntime` path as production (same engine
//! settings, same contract checks, same limits).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use squall::hooks::{
    AttemptContext, Outcome, Request, RetryPolicy, Signer, Transform, TransformResult,
    TransportErrorKind,
};
use squall::plugin::{Hook, Isolation, PluginRuntime, PluginSpec, Precompiler, RuntimeOptions};
use squall::secrets::{SecretKey, Secrets};

/// Plugin subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Validate a plugin's exports, imports and WIT version; list the hooks it provides.
    Check {
        /// Path to the component (.wasm) or precompiled artifact (.cwasm).
        path: PathBuf,
    },
    /// Run one hook of a plugin on a sample event, as production would, and print the
    /// result, the time and the memory used. Exits non-zero on a plugin error.
    Test(TestArgs),
    /// Compile a component for a CPU architecture and write a verified .cwasm (loading it
    /// needs no compilation). Any machine makes artifacts for either architecture.
    Precompile {
        /// The component (.wasm).
        path: PathBuf,
        /// Where to write the artifact.
        #[arg(short, long)]
        output: PathBuf,
        /// The architecture it will run on: `arm64` or `x86_64` (that architecture's
        /// baseline CPU, so any CPU of it loads the artifact: what deployment bundles hold),
        /// or `native` (this machine's own CPU features). Default: `[lambda] architecture`
        /// of `--config`; without `--config`, this machine's architecture (its baseline: the
        /// artifact loads here and on a Lambda function of the same architecture).
        #[arg(long, value_enum)]
        arch: Option<crate::deploy::ArchArg>,
        /// A config file whose `[lambda] architecture` is the default `--arch`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a plugin against conformance vectors (plugins/conformance/*.json): every vector
    /// through the runtime with its own config and secrets. Exits non-zero if any fails.
    Conformance {
        /// Path to the component (.wasm) or precompiled artifact (.cwasm).
        path: PathBuf,
        /// A vector file (repeatable).
        #[arg(long, required = true)]
        vectors: Vec<PathBuf>,
    },
}

/// Which hook `squall plugin test` runs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HookArg {
    /// `transform`: event -> request or skip.
    Transform,
    /// `signer`: request -> signature headers.
    Sign,
    /// `retry-policy`: failed attempt -> decision.
    Retry,
}

/// Arguments of `squall plugin test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Path to the component (.wasm) or precompiled artifact (.cwasm).
    pub path: PathBuf,
    /// The hook to run.
    #[arg(long)]
    pub hook: HookArg,
    /// An event envelope (the JSON a producer sends to the queue; see docs/envelope.schema.json).
    #[arg(long)]
    pub event: PathBuf,
    /// For `--hook retry`: the failed attempt's outcome: a status with optional response
    /// headers (`503`, `429;retry-after=30`) or a transport error kind (`timeout`, `dns`,
    /// `connect`, `tls`, `reset`, `refused-by-policy`, `response-too-large`, `other`).
    #[arg(long, default_value = "503")]
    pub outcome: String,
    /// Attempt number (1 for the first delivery).
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// Plugin config value, `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Application secret, `name=value` (repeatable; `whsec_` values are base64).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secret: Vec<String>,
    /// For `--hook sign`: the secret name to sign with (default: the envelope's
    /// `signing_key`, else `default`).
    #[arg(long)]
    pub key_name: Option<String>,
    /// For `--hook sign`: Unix seconds to sign with (default: now).
    #[arg(long)]
    pub timestamp: Option<u64>,
    /// Wall-time limit per call, ms.
    #[arg(long, default_value_t = 100)]
    pub timeout_ms: u64,
    /// Memory limit, MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mib: usize,
    /// Output limit, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_output_bytes: usize,
    /// Do not use or fill the on-disk compilation cache.
    #[arg(long)]
    pub no_cache: bool,
    /// The SHA-256 the plugin must have (64 hex digits, as `squall plugin check` prints it
    /// and a config's `sha256` pins it): a file whose digest differs is refused, as in
    /// production.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// After the first call, make this many more on the same reused instance and print
    /// their median and 90th percentile (what a warm production call costs).
    #[arg(long, default_value_t = 0)]
    pub repeat: usize,
    /// For `--hook transform`: write the request body, byte for byte, to FILE (the printed
    /// body replaces invalid UTF-8; compare this file, e.g. with `cmp` or `xxd`).
    #[arg(long, value_name = "FILE")]
    pub body_out: Option<PathBuf>,
}

/// Run a plugin subcommand.
pub fn main(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Check { path } => check(path),
        PluginCommand::Test(args) => test(args),
        PluginCommand::Conformance { path, vectors } => conformance(path, vectors),
        PluginCommand::Precompile {
            path,
            output,
            arch,
            config,
        } => {
            let arch = match (&config, arch) {
                (Some(path), arch) => crate::deploy::target_arch(
                    arch,
                    squall::config::load(Some(path))?.lambda.architecture,
                ),
                (None, None) => squall::plugin::host_architecture(),
                (None, arch) => {
                    crate::deploy::target_arch(arch, squall::config::Architecture::Arm64)
                }
            };
            let started = Instant::now();
            let target = match arch {
                None => {
                    PluginRuntime::new(RuntimeOptions::default())?.precompile(&path, &output)?;
                    format!("this machine ({})", std::env::consts::ARCH)
                }
                Some(arch) => {
                    Precompiler::new(&RuntimeOptions::default(), arch)?
                        .precompile(&path, &output)?;
                    format!("any {} CPU", squall::plugin::arch_name(arch))
                }
            };
            println!(
                "wrote {} ({} bytes, for {target}) in {:.1} ms",
                output.display(),
                std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0),
                started.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
    }
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let rt = PluginRuntime::new(RuntimeOptions::default())?;
    let started = Instant::now();
    let info = rt.inspect(&path)?;
    let digest = hex::encode(squall::plugin::file_digest(&path)?);
    println!("plugin:   {}", path.display());
    println!("sha256:   {digest}");
    println!(
        "load:     {:.1} ms (compile or cache)",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("wit:      squall:plugin@{}", info.wit_versions.join(", @"));
    let hooks: Vec<String> = info
        .hooks
        .iter()
        .map(|h| format!("{h} (@{})", info.hook_version(*h).unwrap_or("?")))
        .collect();
    println!(
        "hooks:    {}",
        if hooks.is_empty() {
            "none".to_string()
        } else {
            hooks.join(", ")
        }
    );
    println!("exports:");
    for e in &info.exports {
        println!("  {e}");
    }
    println!("imports:");
    for i in &info.imports {
        println!("  {i}");
    }
    if info.hooks.is_empty() {
        bail!(
            "{} exports no Squall hook (expected one of {})",
            path.display(),
            Hook::ALL.map(Hook::export_names).join(", ")
        );
    }
    println!("pin:      sha256 = \"{digest}\"   (in the config's plugin table, beside path)");
    println!("ok");
    Ok(())
}

fn conformance(path: PathBuf, vector_files: Vec<PathBuf>) -> anyhow::Result<()> {
    let rt = PluginRuntime::new(RuntimeOptions::default())?;
    let hooks = squall::conformance::PluginHooks::new(&rt, PluginSpec::new(&path));
    let mut failed = 0;
    for file in &vector_files {
        let vectors = squall::conformance::load(file)?;
        let report = squall::conformance::run(&vectors, &hooks);
        println!(
            "{} ({} vectors) against {}",
            file.display(),
            report.kind,
            path.display()
        );
        println!("{report}");
        failed += report.failed();
    }
    if failed > 0 {
        bail!("{failed} conformance vector(s) failed");
    }
    Ok(())
}

/// A SHA-256 written as 64 hex digits.
fn parse_sha256(s: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(s.trim()).ok().filter(|b| b.len() == 32);
    let bytes = bytes.with_context(|| format!("{s:?} is not a SHA-256 (64 hex digits)"))?;
    Ok(bytes.try_into().expect("32 bytes"))
}

fn key_value(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("--{what} {s:?}: expected NAME=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

fn parse_outcome(s: &str) -> anyhow::Result<Outcome> {
    let kinds = [
        TransportErrorKind::Dns,
        TransportErrorKind::Connect,
        TransportErrorKind::Tls,
        TransportErrorKind::Timeout,
        TransportErrorKind::Reset,
        TransportErrorKind::RefusedByPolicy,
        TransportErrorKind::ResponseTooLarge,
        TransportErrorKind::Token,
        TransportErrorKind::Other,
    ];
    if let Some(kind) = kinds.into_iter().find(|k| k.as_str() == s) {
        return Ok(Outcome::Transport {
            kind,
            message: "simulated by squall plugin test".into(),
        });
    }
    let mut parts = s.split(';');
    let status: u16 = parts
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .ok()
        .filter(|s| (100..1000).contains(s))
        .with_context(|| format!("--outcome {s:?}: expected a status (e.g. 503 or 429;retry-after=30) or a transport error kind"))?;
    let headers = parts
        .map(|h| key_value(h.trim(), "outcome").map(|(k, v)| (k.to_ascii_lowercase(), v)))
        .collect::<anyhow::Result<_>>()?;
    Ok(Outcome::Response { status, headers })
}

fn test(args: TestArgs) -> anyhow::Result<()> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let raw =
        std::fs::read(&args.event).with_context(|| format!("reading {}", args.event.display()))?;
    let envelope = squall::envelope::decode(&raw, &squall::envelope::Limits::default())
        .with_context(|| format!("{} is not a valid envelope", args.event.display()))?;
    if let Some(eid) = envelope.endpoint.endpoint_id() {
        anyhow::bail!(
            "{} names endpoint_id {eid:?}: a plugin test has no registry to look its URL up in; \
             give the endpoint's URL as \"endpoint\" instead",
            args.event.display()
        );
    }
    let signing_key = envelope.signing_key.clone();
    let event = envelope.into_event(args.attempt, now_ms);

    let config: BTreeMap<String, String> = args
        .config
        .iter()
        .map(|s| key_value(s, "config"))
        .collect::<anyhow::Result<_>>()?;
    let mut secrets = Secrets::new();
    for s in &args.secret {
        let (name, value) = key_value(s, "secret")?;
        let key = SecretKey::parse(&value).with_context(|| format!("--secret {name}"))?;
        let mut keys = secrets
            .get(&name)
            .map(<[SecretKey]>::to_vec)
            .unwrap_or_default();
        keys.push(key);
        secrets.insert(name, keys);
    }
    let secrets = Arc::new(secrets);
    let mut spec = PluginSpec::new(&args.path);
    spec.config = config;
    spec.limits.timeout_ms = args.timeout_ms;
    spec.limits.memory_bytes = args.memory_mib << 20;
    spec.limits.max_output_bytes = args.max_output_bytes;
    spec.isolation = Isolation::Reuse;
    spec.sha256 = args
        .sha256
        .as_deref()
        .map(parse_sha256)
        .transpose()
        .context("--sha256")?;

    let rt = PluginRuntime::new(RuntimeOptions {
        cache_dir: if args.no_cache {
            None
        } else {
            squall::plugin::default_cache_dir()
        },
        ..RuntimeOptions::default()
    })?;
    let app = event.app_id.clone();
    let load_started = Instant::now();
    let ctx = AttemptContext::for_event(&event, now_ms);
    // The first call runs on the instance made at load time, as in production.
    type Call<'a> = Box<dyn FnMut() -> Result<Output, squall::hooks::HookError> + 'a>;
    type TakeOutput = Box<dyn Fn() -> Option<squall::plugin::GuestOutput>>;
    let loaded = || {
        println!(
            "loaded in {:.2} ms",
            load_started.elapsed().as_secs_f64() * 1e3
        )
    };
    let (mut call, stats, take_output): (
        Call,
        Box<dyn Fn() -> squall::plugin::HookStats>,
        TakeOutput,
    ) = match args.hook {
        HookArg::Transform => {
            let hook = rt.load_transform(&app, &spec, secrets)?;
            loaded();
            let h = hook.clone();
            // As the pipeline does: a request without a content-type is sent with the event's.
            let call = Box::new(move || {
                h.transform(&event).map(|mut result| {
                    let mut added = None;
                    if let TransformResult::Send(request) = &mut result
                        && request.default_content_type(&event.content_type)
                    {
                        added = Some(event.content_type.clone());
                    }
                    Output::Transform(result, added)
                })
            });
            let o = hook.clone();
            (
                call,
                Box::new(move || hook.stats()),
                Box::new(move || o.take_last_output()),
            )
        }
        HookArg::Sign => {
            let hook = rt.load_signer(&app, &spec, secrets)?;
            loaded();
            let key_name = args
                .key_name
                .clone()
                .or(signing_key)
                .unwrap_or_else(|| "default".to_string());
            let timestamp = args.timestamp.unwrap_or(now_ms / 1000);
            let request = Request::from_event(&event);
            let h = hook.clone();
            let call = Box::new(move || {
                h.sign(&ctx, &request, &key_name, timestamp)
                    .map(Output::Headers)
            });
            let o = hook.clone();
            (
                call,
                Box::new(move || hook.stats()),
                Box::new(move || o.take_last_output()),
            )
        }
        HookArg::Retry => {
            let outcome = parse_outcome(&args.outcome)?;
            let hook = rt.load_retry_policy(&app, &spec, secrets)?;
            loaded();
            let h = hook.clone();
            let call = Box::new(move || h.decide(&ctx, &outcome).map(Output::Decision));
            let o = hook.clone();
            (
                call,
                Box::new(move || hook.stats()),
                Box::new(move || o.take_last_output()),
            )
        }
    };
    let started = Instant::now();
    let result = call();
    let call_time = started.elapsed();
    let output = take_output();
    let mut warm = Vec::with_capacity(args.repeat);
    if result.is_ok() {
        for _ in 0..args.repeat {
            let started = Instant::now();
            let _ = call();
            warm.push(started.elapsed());
        }
    }
    let stats = stats();
    println!("call:     {:.1} us", call_time.as_secs_f64() * 1e6);
    if !warm.is_empty() {
        warm.sort();
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        println!(
            "repeat:   {} calls on the reused instance: median {:.1} us, p90 {:.1} us",
            warm.len(),
            us(warm[warm.len() / 2]),
            us(warm[warm.len() * 9 / 10])
        );
    }
    println!(
        "memory:   {} KiB peak linear memory (limit {} MiB)",
        stats.peak_memory_bytes / 1024,
        args.memory_mib
    );
    // What the plugin wrote to stdout/stderr during the first call (production logs it).
    match &output {
        Some(out) => println!("output:   (stdout and stderr of the call)\n{out}\n---"),
        None => println!("output:   none"),
    }
    match result {
        Ok(output) => {
            if let Output::Transform(_, Some(content_type)) = &output {
                println!(
                    "warning:  the request sets no content-type header: Squall sends the event's, \
                     `content-type: {content_type}` (shown below); set one to send another"
                );
            }
            println!("result:\n{output}");
            if let Some(file) = &args.body_out {
                let Output::Transform(TransformResult::Send(request), _) = &output else {
                    bail!("--body-out: the hook produced no request body");
                };
                std::fs::write(file, &request.body)
                    .with_context(|| format!("writing {}", file.display()))?;
                println!(
                    "\nbody:     {} bytes written to {}",
                    request.body.len(),
                    file.display()
                );
            }
            Ok(())
        }
        Err(e) => bail!("{} ({})", e, e.kind()),
    }
}

/// What a hook answered (printed once, after the timed calls).
enum Output {
    /// The result, and the content type the host added (the request set none).
    Transform(TransformResult, Option<String>),
    Headers(squall::hooks::Headers),
    Decision(squall::hooks::RetryDecision),
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Transform(TransformResult::Skip(reason), _) => write!(f, "skip: {reason}"),
            Output::Transform(TransformResult::Send(req), _) => {
                writeln!(f, "send: {} {}", req.method, req.url)?;
                for (k, v) in &req.headers {
                    writeln!(f, "{k}: {v}")?;
                }
                write!(f, "\n{}", String::from_utf8_lossy(&req.body))
            }
            Output::Headers(headers) => {
                let lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                write!(f, "{}", lines.join("\n"))
            }
            Output::Decision(d) => write!(f, "{d:?}"),
        }
    }
}
