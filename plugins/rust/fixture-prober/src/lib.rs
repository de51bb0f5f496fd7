//! A fixture for the host's isolation tests (tests/e2e/isolation.rs): a plugin that tries
//! what a malicious plugin would try and reports what it saw, so a test can assert that the
//! sandbox held. Exports every hook.
//!
//! The transform probes according to the event type and sends the report (JSON) as the
//! request body to the event's endpoint:
//!
//! | event type | tries |
//! |---|---|
//! | `probe.env` | every environment variable, the arguments, the working directory, and `std::env::var` of the names in config key `env_names` (comma-separated) |
//! | `probe.fs` | reading, listing and writing `/`, `.`, `/etc/passwd`, `/proc/self/environ`, `/tmp` and the paths in config key `paths` |
//! | `probe.net` | a TCP connection to config key `connect_to` (`ip:port`; if it opens, an HTTP request is written), a UDP datagram to it, a DNS lookup of `localhost` |
//! | `probe.clock` | the wall clock, the monotonic clock, the host's `now-ms`, and randomness (two `RandomState` hashes) |
//! | `probe.secret` | `hmac-sha256`/`hmac-sha256-all` with key name `default` over `probe`, a key name that does not exist, `sha256` of `probe`, and `config-get` of likely secret names |
//! | `state.add` | appends the event id to this instance's memory and reports the memory |
//! | `state.read` | reports this instance's memory |
//!
//! The retry policy dead-letters with a reason describing the outcome it was given (status,
//! header count, longest header value, total header bytes), so a test can see what the host
//! passes a policy. The signer adds one fixed header.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "all-hooks",
});

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use exports::squall::plugin::{retry_policy, signer, transform};
use serde_json::{Value, json};
use squall::plugin::host;
use squall::plugin::types::{
    AttemptContext, Event, Headers, Outcome, PluginError, Request, RetryDecision, TransformResult,
};

struct Component;

/// Event ids this instance has seen through `state.add`.
static MEMORY: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn result<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> Value {
    match r {
        Ok(v) => json!({"ok": format!("{v:?}")}),
        Err(e) => json!({"err": e.to_string()}),
    }
}

fn list(key: &str) -> Vec<String> {
    host::config_get(key)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn probe_env() -> Value {
    let vars: Vec<String> = std::env::vars_os()
        .map(|(k, v)| format!("{k:?}={v:?}"))
        .collect();
    let args: Vec<String> = std::env::args_os().map(|a| format!("{a:?}")).collect();
    let named: Vec<Value> = list("env_names")
        .iter()
        .map(|n| json!({"name": n, "value": result(std::env::var(n))}))
        .collect();
    json!({"vars": vars, "args": args, "cwd": result(std::env::current_dir()), "named": named})
}

fn probe_fs() -> Value {
    let mut paths: Vec<String> = ["/", ".", "/etc/passwd", "/proc/self/environ", "/tmp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    paths.extend(list("paths"));
    let reads: Vec<Value> = paths
        .iter()
        .map(|p| {
            json!({
                "path": p,
                "read": result(std::fs::read(p).map(|b| b.len())),
                "list": result(std::fs::read_dir(p).map(|d| d.count())),
                "metadata": result(std::fs::metadata(p).map(|m| m.len())),
            })
        })
        .collect();
    let write = result(std::fs::write("/tmp/squall-prober-was-here", b"x"));
    let create = result(std::fs::File::create("squall-prober-was-here").map(|_| ()));
    json!({"paths": reads, "write": write, "create": create})
}

fn probe_net() -> Value {
    let target = host::config_get("connect_to").unwrap_or_else(|| "127.0.0.1:9".to_string());
    let tcp = match target.parse::<std::net::SocketAddr>() {
        Ok(addr) => match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                let wrote = s.write_all(
                    b"POST /leak HTTP/1.1\r\nhost: prober\r\ncontent-length: 4\r\n\r\nleak",
                );
                let mut buf = [0u8; 64];
                let read = s.read(&mut buf);
                json!({"connect": "ok", "write": result(wrote), "read": result(read)})
            }
            Err(e) => json!({"connect": {"err": e.to_string(), "kind": format!("{:?}", e.kind())}}),
        },
        Err(e) => json!({"connect": {"err": format!("bad connect_to: {e}")}}),
    };
    let udp = match std::net::UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => json!({"bind": "ok", "send": result(s.send_to(b"leak", &target))}),
        Err(e) => json!({"bind": {"err": e.to_string(), "kind": format!("{:?}", e.kind())}}),
    };
    let dns = {
        use std::net::ToSocketAddrs;
        result(
            ("localhost", 80)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        )
    };
    let listen = result(std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr()));
    json!({"target": target, "tcp": tcp, "udp": udp, "dns": dns, "listen": listen})
}

fn probe_clock() -> Value {
    let started = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64);
    let hash = |v: u64| RandomState::new().hash_one(v);
    json!({
        "wall_ms": result(wall),
        "host_now_ms": host::now_ms(),
        "monotonic_ns": started.elapsed().as_nanos() as u64,
        "random": [hash(1), hash(1)],
    })
}

fn probe_secret() -> Value {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mac = host::hmac_sha256("default", b"probe").map(|m| hex(&m));
    let all = host::hmac_sha256_all("default", b"probe")
        .map(|ms| ms.iter().map(|m| hex(m)).collect::<Vec<_>>());
    let missing = host::hmac_sha256("no-such-key", b"probe").map(|m| hex(&m));
    let digest = hex(&host::sha256(b"probe"));
    let configs: Vec<Value> = ["default", "secret", "key", "signing_key", "whsec"]
        .iter()
        .map(|k| json!({"key": k, "value": host::config_get(k)}))
        .collect();
    json!({
        "hmac_default": match mac { Ok(m) => json!(m), Err(e) => json!({"err": e}) },
        "hmac_all": match all { Ok(m) => json!(m), Err(e) => json!({"err": e}) },
        "hmac_missing": match missing { Ok(m) => json!(m), Err(e) => json!({"err": e}) },
        "sha256": digest,
        "config": configs,
    })
}

impl transform::Guest for Component {
    fn transform(event: Event) -> Result<TransformResult, PluginError> {
        let report = match event.event_type.as_str() {
            "probe.env" => probe_env(),
            "probe.fs" => probe_fs(),
            "probe.net" => probe_net(),
            "probe.clock" => probe_clock(),
            "probe.secret" => probe_secret(),
            "state.add" | "state.read" => {
                let mut memory = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
                if event.event_type == "state.add" {
                    memory.push(event.id.clone());
                }
                json!({"memory": *memory})
            }
            other => {
                return Err(PluginError {
                    message: format!("fixture-prober: unknown probe {other:?}"),
                });
            }
        };
        let body = json!({"probe": event.event_type, "app_id": event.app_id, "id": event.id, "report": report});
        Ok(TransformResult::Send(Request {
            method: "POST".to_string(),
            url: event.endpoint_url,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: body.to_string().into_bytes(),
        }))
    }
}

impl signer::Guest for Component {
    fn sign(
        _ctx: AttemptContext,
        _request: Request,
        _key_name: String,
        _timestamp: u64,
    ) -> Result<Headers, PluginError> {
        Ok(vec![("x-prober".to_string(), "signed".to_string())])
    }
}

impl retry_policy::Guest for Component {
    fn decide(_ctx: AttemptContext, outcome: Outcome) -> Result<RetryDecision, PluginError> {
        let reason = match outcome {
            Outcome::Response(r) => {
                let longest = r.headers.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
                let total: usize = r.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
                format!(
                    "prober saw status={} headers={} longest_value={} header_bytes={}",
                    r.status,
                    r.headers.len(),
                    longest,
                    total
                )
            }
            Outcome::Transport(t) => format!("prober saw transport {:?}: {}", t.kind, t.message),
        };
        Ok(RetryDecision::DeadLetter(reason))
    }
}

export!(Component);
