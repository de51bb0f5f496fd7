//! A deliberately misbehaving plugin for the host's own tests: exports every hook and
//! misbehaves as plugin config key `mode` says:
//!
//! | mode | behaviour |
//! |---|---|
//! | `ok` (default) | behaves: pass-through transform, one fixed header, 10 s retry |
//! | `trap` | panics (a trap for the host) |
//! | `loop` | spins forever (the host's wall-time limit must stop it) |
//! | `hog` | allocates until memory runs out (the host's memory limit must stop it) |
//! | `bad-url` | transform returns a `file:` URL |
//! | `crlf-header` | returns a header value with CR/LF (header injection) |
//! | `huge-body` | transform returns a 2 MiB body; signer a 2 MiB header value; retry a 2 MiB reason |
//! | `error` | returns a plugin error |
//!
//! `only_types` (comma-separated event types) limits the misbehaviour to those types;
//! every other event gets the `ok` behaviour.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "all-hooks",
});

use exports::squall::plugin::{retry_policy, signer, transform};
use squall::plugin::host;
use squall::plugin::types::{
    AttemptContext, Event, Headers, Outcome, PluginError, Request, RetryDecision, TransformResult,
};

struct Component;

#[derive(PartialEq, Eq)]
enum Mode {
    Ok,
    Trap,
    Loop,
    Hog,
    BadUrl,
    CrlfHeader,
    HugeBody,
    Error,
    NoContentType,
}

fn mode_for(event_type: &str) -> Result<Mode, PluginError> {
    if let Some(only) = host::config_get("only_types") {
        if !only.split(',').map(str::trim).any(|t| t == event_type) {
            return Ok(Mode::Ok);
        }
    }
    let mode = host::config_get("mode").unwrap_or_else(|| "ok".to_string());
    Ok(match mode.as_str() {
        "ok" => Mode::Ok,
        "trap" => Mode::Trap,
        "loop" => Mode::Loop,
        "hog" => Mode::Hog,
        "bad-url" => Mode::BadUrl,
        "crlf-header" => Mode::CrlfHeader,
        "huge-body" => Mode::HugeBody,
        "error" => Mode::Error,
        "no-content-type" => Mode::NoContentType,
        other => {
            return Err(PluginError { message: format!("config key mode: unknown mode {other:?}") });
        }
    })
}

/// Runs the effectful modes (trap, loop, hog, error); returns for the others.
fn misbehave(mode: &Mode) -> Result<(), PluginError> {
    match mode {
        Mode::Trap => panic!("misbehave: trapping on purpose"),
        Mode::Loop => {
            let mut n: u64 = 0;
            loop {
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        Mode::Hog => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch the pages so the allocation is real.
                hoard.push(vec![0xA5; 1 << 20]);
                core::hint::black_box(&hoard);
            }
        }
        Mode::Error => Err(PluginError { message: "misbehave: failing on purpose".to_string() }),
        _ => Ok(()),
    }
}

impl transform::Guest for Component {
    fn transform(event: Event) -> Result<TransformResult, PluginError> {
        let mode = mode_for(&event.event_type)?;
        misbehave(&mode)?;
        let mut request = Request {
            method: "POST".to_string(),
            url: event.endpoint_url,
            headers: vec![("content-type".to_string(), event.content_type)],
            body: event.body,
        };
        match mode {
            Mode::BadUrl => request.url = "file:///etc/passwd".to_string(),
            Mode::CrlfHeader => request
                .headers
                .push(("x-injected".to_string(), "a\r\nset-cookie: evil=1".to_string())),
            Mode::HugeBody => request.body = vec![b'x'; 2 << 20],
            Mode::NoContentType => request.headers.clear(),
            _ => {}
        }
        Ok(TransformResult::Send(request))
    }
}

impl signer::Guest for Component {
    fn sign(ctx: AttemptContext, _request: Request, _key_name: String, timestamp: u64) -> Result<Headers, PluginError> {
        let mode = mode_for(&ctx.event_type)?;
        misbehave(&mode)?;
        let value = match mode {
            Mode::CrlfHeader => "v1,abc\r\nx-evil: 1".to_string(),
            Mode::HugeBody => "a".repeat(2 << 20),
            _ => format!("ok t={timestamp}"),
        };
        Ok(vec![("x-misbehave".to_string(), value)])
    }
}

impl retry_policy::Guest for Component {
    fn decide(ctx: AttemptContext, _outcome: Outcome) -> Result<RetryDecision, PluginError> {
        let mode = mode_for(&ctx.event_type)?;
        misbehave(&mode)?;
        Ok(match mode {
            Mode::HugeBody => RetryDecision::DeadLetter("r".repeat(2 << 20)),
            _ => RetryDecision::RetryAfterSeconds(10),
        })
    }
}

export!(Component);
