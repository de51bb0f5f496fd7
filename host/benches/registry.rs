//! The Lambda function on the application registry: cold start with 10,000 applications
//! registered, the reads an application's first and later events cost, and peak memory after
//! events for 1,000 different applications.
//!
//! Real parts: the `bootstrap` binary, moto's DynamoDB and SSM on loopback (started here from
//! `.tools/moto`, or `SQUALL_TEST_SQS_ENDPOINT` if set), a Runtime API served here. Between the
//! function and moto sits a counting proxy, so the reads are counted by an observer outside the
//! function: `DynamoDB_20120810.*` calls are registry reads, `AmazonSSM.GetParameters` secret
//! reads.
//!
//! Run: `scripts/build-plugins && cargo bench -p squall --bench registry` (optional
//! `REGISTRY_APPS` (10000), `REGISTRY_RUNS` (10), `REGISTRY_MEMORY_APPS` (1000)).
//! Results: docs/benchmarks.md.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use http_body_util::{BodyExt, Full};
use hyper::Response;
use support::{RuntimeApi, handled, lambda_env, serve, sqs_event};

const BOOTSTRAP: &str = env!("CARGO_BIN_EXE_bootstrap");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TABLE: &str = "bench-registry";
const RUST_PLUGINS: [(&str, &str); 3] = [
    ("transform", "envelope-transform.wasm"),
    ("signer", "standard-webhooks-signer.wasm"),
    ("retry_policy", "schedule-retry.wasm"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// moto on a free port, stopped on drop; or the one `SQUALL_TEST_SQS_ENDPOINT` names.
struct Moto {
    endpoint: String,
    child: Option<Child>,
}

impl Moto {
    async fn start() -> Moto {
        if let Ok(endpoint) = std::env::var("SQUALL_TEST_SQS_ENDPOINT") {
            return Moto {
                endpoint,
                child: None,
            };
        }
        let bin = repo_root().join(".tools/moto/bin/moto_server");
        assert!(
            bin.exists(),
            "{} missing: run scripts/test once (it installs moto)",
            bin.display()
        );
        let port = support::free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{endpoint}/moto-api/")).await.is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Moto {
            endpoint,
            child: Some(child),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls that passed through the proxy, by `X-Amz-Target` (or `other`): how many, and the time
/// moto took to answer them, microseconds.
type Counts = Arc<Mutex<BTreeMap<String, (u64, u64)>>>;

/// A proxy to moto that counts the calls going through it.
async fn counting_proxy(upstream: String) -> (String, Counts, tokio::task::JoinHandle<()>) {
    let counts: Counts = Arc::default();
    let client = reqwest::Client::new();
    let c = counts.clone();
    let (addr, task) = serve(move |req| {
        let (client, counts, upstream) = (client.clone(), c.clone(), upstream.clone());
        Box::pin(async move {
            let target = req
                .headers()
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("other")
                .to_string();
            let began = Instant::now();
            let uri = format!(
                "{upstream}{}",
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let method = req.method().clone();
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut r = client.request(method, uri).body(body);
            for (k, v) in &headers {
                if k != "host" && k != "content-length" {
                    r = r.header(k, v);
                }
            }
            let answer = r.send().await.unwrap();
            let mut out = Response::builder().status(answer.status().as_u16());
            for (k, v) in answer.headers() {
                if k != "content-length" && k != "transfer-encoding" {
                    out = out.header(k, v);
                }
            }
            let body = answer.bytes().await.unwrap();
            {
                let mut c = counts.lock().unwrap();
                let e = c.entry(target).or_default();
                e.0 += 1;
                e.1 += began.elapsed().as_micros() as u64;
            }
            out.body(Full::new(body)).unwrap()
        })
    })
    .await;
    (format!("http://{addr}"), counts, task)
}

fn reads(counts: &Counts) -> (u64, u64) {
    let (r, s, _) = reads_and_time(counts);
    (r, s)
}

/// Registry reads, secret reads, and the time moto took over all calls (ms).
fn reads_and_time(counts: &Counts) -> (u64, u64, f64) {
    let c = counts.lock().unwrap();
    let registry = c
        .iter()
        .filter(|(k, _)| k.starts_with("DynamoDB_20120810."))
        .map(|(_, v)| v.0)
        .sum();
    let secrets = c.get("AmazonSSM.GetParameters").map_or(0, |v| v.0);
    let micros: u64 = c.values().map(|v| v.1).sum();
    (registry, secrets, micros as f64 / 1e3)
}

fn app_id(i: usize) -> String {
    format!("app{i:05}")
}

/// The settings of application `i`: built-ins, or the Rust sample plugins (precompiled,
/// staged in `plugins`) when `with_plugins`.
fn settings(i: usize, plugins: Option<&Path>) -> String {
    let mut s = format!(
        "queue_url = \"http://127.0.0.1:9/123456789012/q{i:05}\"\n\
         allowed_networks = [\"127.0.0.0/8\"]\n\
         secrets = {{ default = \"ssm:/bench/{}/signing\" }}\n",
        app_id(i)
    );
    if let Some(dir) = plugins {
        for (hook, file) in RUST_PLUGINS {
            s.push_str(&format!(
                "[plugins.{hook}]\npath = \"{}\"\n",
                dir.join(file).display()
            ));
        }
    }
    s
}

async fn register(endpoint: &str, apps: usize, memory_apps: usize, plugins: Option<&Path>) {
    let settings_for = squall::queue::sqs::SqsSettings {
        region: "us-east-1".into(),
        endpoint_url: Some(endpoint.to_string()),
        static_credentials: Some(("bench".into(), "bench".into())),
    };
    let sdk = squall::queue::sqs::sdk_config(&settings_for).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let store = squall::registry::DynamoStore::new(dynamo.clone(), TABLE.into());
    store.create_table().await.unwrap();
    let started = Instant::now();
    for chunk in (0..apps).collect::<Vec<_>>().chunks(25) {
        let writes: Vec<WriteRequest> = chunk
            .iter()
            .map(|&i| {
                let with_plugins = i < memory_apps && i % 2 == 1;
                let item = HashMap::from([
                    ("app_id".to_string(), AttributeValue::S(app_id(i))),
                    (
                        "queue_key".to_string(),
                        AttributeValue::S(format!("123456789012/q{i:05}")),
                    ),
                    ("version".to_string(), AttributeValue::N("1".into())),
                    ("tier".to_string(), AttributeValue::S("dedicated".into())),
                    (
                        "settings".to_string(),
                        AttributeValue::S(settings(i, plugins.filter(|_| with_plugins))),
                    ),
                ]);
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                    .build()
            })
            .collect();
        dynamo
            .batch_write_item()
            .request_items(TABLE, writes)
            .send()
            .await
            .unwrap();
    }
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    for i in 0..memory_apps.max(1) {
        ssm.put_parameter()
            .name(format!("/bench/{}/signing", app_id(i)))
            .value(SECRET)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }
    println!(
        "registered {apps} applications ({} with secrets) in {:.1} s",
        memory_apps.max(1),
        started.elapsed().as_secs_f64()
    );
}

fn write_config(dir: &Path, endpoint: &str, registry: bool) -> PathBuf {
    let mut text = format!(
        "allow_literal_secrets = true\n[sqs]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
         dead_letter_queue_url = \"{endpoint}/123456789012/dlq\"\n"
    );
    if registry {
        text.push_str(&format!(
            "[registry]\nbackend = \"dynamodb\"\ntable = \"{TABLE}\"\nttl_secs = 300\n\
             secret_path = \"/bench/\"\n"
        ));
    } else {
        text.push_str(&format!(
            "[apps.app00000]\nqueue_url = \"http://127.0.0.1:9/123456789012/q00000\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\nsecrets = {{ default = \"literal:{SECRET}\" }}\n"
        ));
    }
    let path = dir.join(if registry {
        "registry.toml"
    } else {
        "file.toml"
    });
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(api: &RuntimeApi, config: &Path, extra_env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BOOTSTRAP);
    for (k, v) in lambda_env(api.addr) {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.env("SQUALL_CONFIG", config)
        .env("SQUALL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start bootstrap")
}

fn event_for(i: usize, receiver: &str, n: usize) -> String {
    let body = squall_testkit::envelope::TestEnvelope::new(
        &format!("evt-{i}-{n}"),
        &app_id(i),
        &format!("{receiver}/hook"),
    )
    .payload(serde_json::json!({"amount": 42, "n": n}))
    .to_json();
    sqs_event(&format!("q{i:05}"), &format!("m-{i}-{n}"), &body)
}

/// Peak resident memory of a process (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    format!(
        "{} | {} | {}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

#[tokio::main]
async fn main() {
    let apps = env_usize("REGISTRY_APPS", 10_000);
    let runs = env_usize("REGISTRY_RUNS", 10);
    let memory_apps = env_usize("REGISTRY_MEMORY_APPS", 1000).min(apps);
    let moto = Moto::start().await;
    let (proxy, counts, _proxy_task) = counting_proxy(moto.endpoint.clone()).await;
    let rx = squall_testkit::receiver::Receiver::options()
        .record(false)
        .start()
        .await
        .expect("receiver");
    let receiver = format!("http://{}", rx.addr());

    // The Rust sample plugins, staged with their precompiled artifacts as a bundle has them.
    let dir = std::env::temp_dir().join(format!("squall-bench-registry-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let dist = repo_root().join("plugins/dist");
    let plugins = if RUST_PLUGINS.iter().all(|(_, f)| dist.join(f).exists()) {
        let rt = squall::plugin::PluginRuntime::new(squall::plugin::RuntimeOptions {
            cache_dir: None,
            ..Default::default()
        })
        .unwrap();
        for (_, f) in RUST_PLUGINS {
            let dst = dir.join("plugins").join(f);
            std::fs::copy(dist.join(f), &dst).unwrap();
            rt.precompile(&dst, &dst.with_extension("cwasm")).unwrap();
        }
        Some(dir.join("plugins"))
    } else {
        println!("(no Rust sample plugins in plugins/dist: the memory run uses built-ins only)");
        None
    };
    register(&moto.endpoint, apps, memory_apps, plugins.as_deref()).await;
    let registry_config = write_config(&dir, &proxy, true);
    let file_config = write_config(&dir, &proxy, false);

    // Cold start: exec -> the first event's response, with the registry and, as the baseline
    // measured in the same run, with the one application in the file.
    println!("\n| cold start, exec -> first response ({runs} runs) | min | median | max |");
    println!("|---|---:|---:|---:|");
    let mut first_reads = Vec::new();
    let mut later_reads = Vec::new();
    let mut moto_ms = Vec::new();
    for (name, config, registry) in [
        (
            "file registry, 1 application (baseline)",
            &file_config,
            false,
        ),
        (
            &*format!("DynamoDB registry, {apps} applications"),
            &registry_config,
            true,
        ),
    ] {
        let mut times = Vec::new();
        for run in 0..runs {
            let api = RuntimeApi::start().await;
            counts.lock().unwrap().clear();
            let started = Instant::now();
            let mut child = spawn(&api, config, &[]);
            let first = api.invoke(event_for(0, &receiver, run * 2)).await;
            times.push(started.elapsed());
            assert!(handled(&first), "{name}: {first}");
            if registry {
                first_reads.push(reads(&counts));
                moto_ms.push(reads_and_time(&counts).2);
                let second = api.invoke(event_for(0, &receiver, run * 2 + 1)).await;
                assert!(handled(&second), "{name}: {second}");
                let (r, s) = reads(&counts);
                let (r0, s0) = *first_reads.last().unwrap();
                later_reads.push((r - r0, s - s0));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        println!("| {name} | {} |", summary(times));
    }
    let max = |v: &[(u64, u64)]| {
        (
            v.iter().map(|p| p.0).max().unwrap_or(0),
            v.iter().map(|p| p.1).max().unwrap_or(0),
        )
    };
    moto_ms.sort_by(f64::total_cmp);
    if !moto_ms.is_empty() {
        println!(
            "\nof which moto answering the registry and secret reads (at the proxy): median {:.1} ms",
            moto_ms[moto_ms.len() / 2]
        );
    }
    let (fr, fs) = max(&first_reads);
    let (lr, ls) = max(&later_reads);
    println!(
        "\nreads by the function (counted at the proxy, worst of {runs} runs): first event of an \
         application: {fr} registry, {fs} secret store; a later event within the TTL: {lr} \
         registry, {ls} secret store"
    );

    if memory_apps == 0 {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // Memory: one function, one event for each of `memory_apps` applications (every other one
    // with the three Rust plugins), with every application kept and with the cache bounded.
    println!(
        "\n| {memory_apps} applications, one event each (odd ones with 3 Rust plugins) | peak RSS | registry reads | secret reads | time |"
    );
    println!("|---|---:|---:|---:|---:|");
    for cap in [
        memory_apps.to_string(),
        (memory_apps / 10).max(1).to_string(),
    ] {
        let api = RuntimeApi::start().await;
        counts.lock().unwrap().clear();
        let started = Instant::now();
        let mut child = spawn(
            &api,
            &registry_config,
            &[("SQUALL__REGISTRY__MAX_CACHED_APPS", &cap)],
        );
        for i in 0..memory_apps {
            let r = api.invoke(event_for(i, &receiver, 1_000_000)).await;
            assert!(handled(&r), "app {i}: {r}");
        }
        let elapsed = started.elapsed();
        let rss = peak_rss_mib(child.id());
        let (r, s) = reads(&counts);
        println!(
            "| max_cached_apps = {cap} | {rss:.1} MiB | {r} | {s} | {:.1} s |",
            elapsed.as_secs_f64()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
