//! What a plugin's Store holds (once per instance) and the `host` imports it is
//! granted: logging, the clock, its own config, HMAC/SHA-256 over the app's secrets
//! by key name, and (WIT 0.2.0) the request being signed. Nothing here gives a plugin a
//! secret, a file, a socket or another application's data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, ResourceTable, WasmList, WasmStr};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::RequestHead;
use super::bindings::host::LogLevel;
use super::guest_output::Capture;
use super::output::truncate;
use crate::hooks::Request;
use crate::secrets::Secrets;

/// Longest log message a plugin may emit; longer ones are cut (with a marker).
const MAX_LOG_MESSAGE: usize = 2048;
/// At most this many structured fields per log line.
const MAX_LOG_FIELDS: usize = 16;
/// A signed body's buffer above this capacity is released after the call, not kept for the
/// next one (an idle pooled instance should not pin a large body).
const KEEP_SIGNING_BODY_BYTES: usize = 64 * 1024;

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
    /// This instance's stdout and stderr (one buffer, emptied at the start of each call).
    pub(crate) output: Capture,
    /// The request of the WIT 0.2.0 `signer.sign` call under way, when `signing_active`.
    signing: Request,
    signing_active: bool,
}

impl HostState {
    pub(crate) fn new(app: Arc<AppBinding>, memory_limit: usize) -> HostState {
        let output = Capture::default();
        HostState {
            app,
            limiter: MemoryLimiter {
                limit_bytes: memory_limit,
                refused: false,
                peak_bytes: 0,
            },
            // No environment, arguments, preopened directories or network; no stdin; stdout
            // and stderr go to this instance's own capture buffer.
            wasi: WasiCtx::builder()
                .stdout(output.clone())
                .stderr(output.clone())
                .build(),
            table: ResourceTable::new(),
            output,
            signing: Request::default(),
            signing_active: false,
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

impl HostState {
    /// `host.log`: one tracing event tagged with the app and plugin, message and fields capped.
    fn log(&self, level: LogLevel, message: &str, fields: &[(String, String)]) {
        let message = truncate(message, MAX_LOG_MESSAGE);
        let mut rendered = String::new();
        for (k, v) in fields.iter().take(MAX_LOG_FIELDS) {
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            rendered.push_str(truncate(k, 64));
            rendered.push('=');
            rendered.push_str(truncate(v, 256));
        }
        let (app, plugin) = (self.app.app_id.as_str(), self.app.plugin.as_str());
        match level {
            LogLevel::Trace => tracing::trace!(app, plugin, fields = %rendered, "{message}"),
            LogLevel::Debug => tracing::debug!(app, plugin, fields = %rendered, "{message}"),
            LogLevel::Info => tracing::info!(app, plugin, fields = %rendered, "{message}"),
            LogLevel::Warn => tracing::warn!(app, plugin, fields = %rendered, "{message}"),
            LogLevel::Error => tracing::error!(app, plugin, fields = %rendered, "{message}"),
        }
    }

    fn keys(&self, key_name: &str) -> Result<&[crate::secrets::SecretKey], String> {
        let keys = self.app.secrets.get(key_name).ok_or_else(|| {
            format!(
                "application {} has no secret named {:?}",
                self.app.app_id,
                truncate(key_name, 128)
            )
        })?;
        if keys.iter().any(|k| k.is_ed25519()) {
            return Err(format!(
                "secret {:?} of application {} is an ed25519 signing key (whsk_): it signs Standard Webhooks v1a in the built-in signer, never an HMAC",
                truncate(key_name, 128),
                self.app.app_id
            ));
        }
        Ok(keys)
    }

    fn hmac_newest(&self, key_name: &str, parts: &[&[u8]]) -> Result<Vec<u8>, String> {
        let keys = self.keys(key_name)?;
        Ok(keys[0].hmac_sha256_parts(parts).to_vec())
    }

    fn hmac_all(&self, key_name: &str, parts: &[&[u8]]) -> Result<Vec<Vec<u8>>, String> {
        let keys = self.keys(key_name)?;
        Ok(keys
            .iter()
            .map(|k| k.hmac_sha256_parts(parts).to_vec())
            .collect())
    }

    /// Hold `request` for a WIT 0.2.0 `signer.sign` call: the plugin's `signing-*`,
    /// `hmac-sha256-body(-all)` and `sha256-body` calls are answered from it until
    /// [`HostState::end_signing`].
    /// Copied into buffers kept from the previous call, so a warm instance allocates nothing.
    pub(crate) fn begin_signing(&mut self, request: &Request) {
        let held = &mut self.signing;
        held.method.clone_from(&request.method);
        held.url.clone_from(&request.url);
        held.headers.clone_from(&request.headers);
        held.body.clone_from(&request.body);
        self.signing_active = true;
    }

    /// The call is over: the `signing-*` functions answer with an error again. A large body's
    /// buffer is not kept for the next call.
    pub(crate) fn end_signing(&mut self) {
        self.signing_active = false;
        if self.signing.body.capacity() > KEEP_SIGNING_BODY_BYTES {
            self.signing.body = Vec::new();
        }
    }

    /// The request being signed, or the error `function` returns outside a sign call.
    fn signing(&self, function: &str) -> Result<&Request, String> {
        if self.signing_active {
            Ok(&self.signing)
        } else {
            Err(format!(
                "{function} is answered only during a signer.sign call (WIT 0.2.0)"
            ))
        }
    }
}

/// Link the `host` interface, and the `types` instance its users import, of every supported
/// WIT version. The functions read strings and byte lists where they lie in the plugin's
/// memory: generated bindings would first copy each into a new host allocation (a kilobyte
/// and more per signature, for a value read once).
pub(crate) fn link_host(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for version in super::SUPPORTED_VERSIONS {
        // `types` has no functions, but a component using its types imports it by name.
        linker.instance(&format!("squall:plugin/types@{version}"))?;
        let mut host = linker.instance(&format!("squall:plugin/host@{version}"))?;
        host.func_wrap(
            "log",
            |store: StoreContextMut<'_, HostState>,
             (level, message, fields): (LogLevel, WasmStr, Vec<(String, String)>)| {
                store.data().log(level, &message.to_str(&store)?, &fields);
                Ok(())
            },
        )?;
        host.func_wrap(
            "now-ms",
            |_: StoreContextMut<'_, HostState>, (): ()| -> wasmtime::Result<(u64,)> {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                Ok((now,))
            },
        )?;
        host.func_wrap(
            "config-get",
            |store: StoreContextMut<'_, HostState>, (key,): (WasmStr,)| {
                let key = key.to_str(&store)?;
                Ok((store.data().app.config.get(&*key).cloned(),))
            },
        )?;
        host.func_wrap("hmac-sha256", keyed_digest(HostState::hmac_newest))?;
        host.func_wrap("hmac-sha256-all", keyed_digest(HostState::hmac_all))?;
        host.func_wrap(
            "sha256",
            |store: StoreContextMut<'_, HostState>, (data,): (WasmList<u8>,)| {
                Ok((Sha256::digest(data.as_le_slice(&store)).to_vec(),))
            },
        )?;
        if *version == "0.1.0" {
            continue;
        }
        host.func_wrap(
            "signing-request",
            |store: StoreContextMut<'_, HostState>, (): ()| {
                let head = store
                    .data()
                    .signing("signing-request")
                    .map(|r| RequestHead {
                        method: r.method.clone(),
                        url: r.url.clone(),
                        headers: r.headers.clone(),
                    });
                Ok((head,))
            },
        )?;
        host.func_wrap(
            "signing-body",
            |store: StoreContextMut<'_, HostState>, (): ()| {
                Ok((store.data().signing("signing-body").map(|r| r.body.clone()),))
            },
        )?;
        host.func_wrap(
            "hmac-sha256-body",
            body_digest("hmac-sha256-body", HostState::hmac_newest),
        )?;
        host.func_wrap(
            "hmac-sha256-body-all",
            body_digest("hmac-sha256-body-all", HostState::hmac_all),
        )?;
        host.func_wrap(
            "sha256-body",
            |store: StoreContextMut<'_, HostState>,
             (prefix, suffix): (WasmList<u8>, WasmList<u8>)| {
                let digest = store.data().signing("sha256-body").map(|request| {
                    let mut sha = Sha256::new();
                    sha.update(prefix.as_le_slice(&store));
                    sha.update(&request.body);
                    sha.update(suffix.as_le_slice(&store));
                    sha.finalize().to_vec()
                });
                Ok((digest,))
            },
        )?;
    }
    Ok(())
}

/// A keyed digest over parts: the newest key, or every active key.
type KeyedDigest<R> = fn(&HostState, &str, &[&[u8]]) -> Result<R, String>;
/// The parameters of `hmac-sha256-body(-all)`, where the plugin put them: key name, prefix,
/// suffix.
type BodyDigestArgs = (WasmStr, WasmList<u8>, WasmList<u8>);
/// What a host digest returns: `result<R, string>`, or a trap.
type DigestReturn<R> = wasmtime::Result<(Result<R, String>,)>;

/// A host function `(key-name: string, data: list<u8>) -> result<R, string>` running `digest`
/// over the key name and data as they lie in the plugin's memory.
fn keyed_digest<R: 'static>(
    digest: KeyedDigest<R>,
) -> impl Fn(StoreContextMut<'_, HostState>, (WasmStr, WasmList<u8>)) -> DigestReturn<R>
+ Send
+ Sync
+ 'static {
    move |store, (key, data)| {
        let key = key.to_str(&store)?;
        Ok((digest(store.data(), &key, &[data.as_le_slice(&store)]),))
    }
}

/// A host function `(key-name: string, prefix: list<u8>, suffix: list<u8>) -> result<R,
/// string>` running `digest` over prefix, the body of the request being signed, and suffix.
fn body_digest<R: 'static>(
    function: &'static str,
    digest: KeyedDigest<R>,
) -> impl Fn(StoreContextMut<'_, HostState>, BodyDigestArgs) -> DigestReturn<R> + Send + Sync + 'static
{
    move |store, (key, prefix, suffix)| {
        let key = key.to_str(&store)?;
        let state = store.data();
        let result = state.signing(function).and_then(|request| {
            let parts = [
                prefix.as_le_slice(&store),
                &request.body,
                suffix.as_le_slice(&store),
            ];
            digest(state, &key, &parts)
        });
        Ok((result,))
    }
}
