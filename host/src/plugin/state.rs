//! What a plugin's Store holds (once per instance) and the `host` imports it is
//! granted: logging, the clock, its own config, and HMAC/SHA-256 over the app's secrets
//! by key name. Nothing here gives a plugin a secret, a file, a socket or another
//! application's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, ResourceTable, WasmList, WasmStr};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{host, wit};
use crate::secrets::Secrets;

/// Longest log message a plugin may emit; longer ones are cut (with a marker).
const MAX_LOG_MESSAGE: usize = 2048;
/// At most this many structured fields per log line.
const MAX_LOG_FIELDS: usize = 16;

/// One application's view of one plugin: shared by every instance of that plugin for
/// that application, never by another application.
#[derive(Debug)]
pub(crate) struct AppBinding {
    pub app_id: String,
    /// Plugin identity for logs and errors: `path#sha256-prefix`.
    pub plugin: String,
    pub config: BTreeMap<String, String>,
    pub secrets: Arc<Secrets>,
}

/// Refuses memory growth past the plugin's limit and remembers that it did, so a trap
/// that follows is reported as a memory error rather than a generic one.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub limit_bytes: usize,
    pub refused: bool,
    pub peak_bytes: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a plugin needs a few thousand at most.
        Ok(desired <= 100_000)
    }
}

/// The data of every plugin Store: the app binding, the memory limiter and an empty WASI
/// context. Opaque outside the runtime.
pub struct HostState {
    pub(crate) app: Arc<AppBinding>,
    pub(crate) limiter: MemoryLimiter,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub(crate) fn new(app: Arc<AppBinding>, memory_limit: usize) -> HostState {
        HostState {
            app,
            limiter: MemoryLimiter {
                limit_bytes: memory_limit,
                refused: false,
                peak_bytes: 0,
            },
            // No environment, arguments, preopened directories or network; stdio is closed.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: host::LogLevel, message: String, fields: Vec<(String, String)>) {
        let message = cap(&message, MAX_LOG_MESSAGE);
        let mut rendered = String::new();
        for (k, v) in fields.iter().take(MAX_LOG_FIELDS) {
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            rendered.push_str(cap(k, 64));
            rendered.push('=');
            rendered.push_str(cap(v, 256));
        }
        let (app, plugin) = (self.app.app_id.as_str(), self.app.plugin.as_str());
        match level {
            host::LogLevel::Trace => tracing::trace!(app, plugin, fields = %rendered, "{message}"),
            host::LogLevel::Debug => tracing::debug!(app, plugin, fields = %rendered, "{message}"),
            host::LogLevel::Info => tracing::info!(app, plugin, fields = %rendered, "{message}"),
            host::LogLevel::Warn => tracing::warn!(app, plugin, fields = %rendered, "{message}"),
            host::LogLevel::Error => tracing::error!(app, plugin, fields = %rendered, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.app.config.get(&key).cloned()
    }

    // The runtime links `link_borrowed_digests` over these three; they stay the reference.
    fn hmac_sha256(&mut self, key_name: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        self.hmac_newest(&key_name, &data)
    }

    fn hmac_sha256_all(&mut self, key_name: String, data: Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
        self.hmac_all(&key_name, &data)
    }

    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        Sha256::digest(&data).to_vec()
    }
}

impl HostState {
    fn keys(&self, key_name: &str) -> Result<&[crate::secrets::SecretKey], String> {
        self.app.secrets.get(key_name).ok_or_else(|| {
            format!(
                "application {} has no secret named {:?}",
                self.app.app_id,
                cap(key_name, 128)
            )
        })
    }

    fn hmac_newest(&self, key_name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let keys = self.keys(key_name)?;
        Ok(keys[0].hmac_sha256(data).to_vec())
    }

    fn hmac_all(&self, key_name: &str, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let keys = self.keys(key_name)?;
        Ok(keys.iter().map(|k| k.hmac_sha256(data).to_vec()).collect())
    }
}

/// Link `hmac-sha256`, `hmac-sha256-all` and `sha256` of the `host` interface again, over the
/// generated ones, reading the key name and the data where they lie in the plugin's memory:
/// the generated functions first copy both into new host allocations (a kilobyte and more per
/// signature, for a value read once). Same semantics, same errors.
pub(crate) fn link_borrowed_digests(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut host = linker.instance(&format!(
        "squall:plugin/host@{}",
        super::SUPPORTED_VERSIONS[0]
    ))?;
    host.func_wrap("hmac-sha256", keyed_digest(HostState::hmac_newest))?;
    host.func_wrap("hmac-sha256-all", keyed_digest(HostState::hmac_all))?;
    host.func_wrap(
        "sha256",
        |store: StoreContextMut<'_, HostState>, (data,): (WasmList<u8>,)| {
            Ok((Sha256::digest(data.as_le_slice(&store)).to_vec(),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The parameters of `hmac-sha256(-all)`, where the plugin put them.
type KeyAndData = (WasmStr, WasmList<u8>);
/// What a host digest returns: `result<R, string>`, or a trap.
type DigestReturn<R> = wasmtime::Result<(Result<R, String>,)>;

/// A host function `(key-name: string, data: list<u8>) -> result<R, string>` running `digest`
/// over the key name and data as they lie in the plugin's memory.
fn keyed_digest<R: 'static>(
    digest: fn(&HostState, &str, &[u8]) -> Result<R, String>,
) -> impl Fn(StoreContextMut<'_, HostState>, KeyAndData) -> DigestReturn<R> + Send + Sync + 'static
{
    move |store, (key, data)| {
        let key = key.to_str(&store)?;
        Ok((digest(store.data(), &key, data.as_le_slice(&store)),))
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
