//! The WebAssembly plugin runtime: loads components that implement the hooks of
//! `wit/v0.3.0`, `wit/v0.2.0` or `wit/v0.1.0` and runs them sandboxed, with limits, behind
//! the traits of [`crate::hooks`].
//!
//! Lifecycles:
//! - once per process, [`PluginRuntime`]: the wasmtime `Engine` (epoch interruption, the
//!   pooling allocator or on-demand allocation), the `Linker` with the `host` imports and
//!   an empty WASI context, the epoch ticker thread, and the compiled components (each
//!   file compiled once, cached on disk as a verified `.cwasm`);
//! - once per application and hook, [`PluginHook`] (returned as `Arc<dyn Transform>`...):
//!   the pre-linked template, the app's plugin config and secrets, its own instance pool;
//! - once per call: a `Store` with a memory limit and a wall-time deadline, on a pooled
//!   instance ([`Isolation::Reuse`]) or a fresh one ([`Isolation::FreshPerCall`]).
//!
//! A plugin never panics or hangs the host: traps, timeouts, memory exhaustion, plugin
//! errors and invalid outputs all come back as [`crate::hooks::HookError`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use squall::hooks::{AttemptContext, Request};
//! use squall::plugin::{PluginRuntime, PluginSpec, RuntimeOptions};
//! use squall::secrets::{SecretKey, Secrets};
//!
//! let runtime = PluginRuntime::new(RuntimeOptions::default())?;
//! let mut secrets = Secrets::new();
//! secrets.insert("main", vec![SecretKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()]);
//! let spec = PluginSpec::new("plugins/dist/standard-webhooks-signer.wasm");
//! let signer = runtime.signer("billing", &spec, Arc::new(secrets))?;
//! # Ok::<(), squall::plugin::PluginError>(())
//! ```

mod artifact;
pub mod bindings;
mod contract;
mod guest_output;
mod hook;
pub use squall_core::output;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use contract::{ComponentInfo, Hook, SUPPORTED_VERSIONS};
pub use guest_output::{CAPTURE_BYTES, GuestOutput};
pub use hook::{
    DecideFunc, HookExport, HookStats, PluginHook, PluginRetryPolicy, PluginSigner,
    PluginTransform, RetryPolicyExport, SignFunc, SignerExport, TransformExport, TransformFunc,
};
pub use state::HostState;

use crate::hooks;
use crate::secrets::Secrets;
pub use squall_core::config::Architecture;
use state::AppBinding;

/// Per-call limits of a plugin, configurable per application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall time per call, milliseconds (enforced by epoch interruption, to within one tick).
    pub timeout_ms: u64,
    /// Largest linear memory, bytes.
    pub memory_bytes: usize,
    /// Largest output: request body plus headers, or headers, or a reason, bytes.
    pub max_output_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            timeout_ms: 100,
            memory_bytes: 64 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

/// How instances are shared between calls of one application's hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Instances are pooled and reused across events of the same application (never
    /// across applications); an instance that trapped is dropped.
    #[default]
    Reuse,
    /// A fresh instance for every call: nothing survives from one event to the next.
    FreshPerCall,
}

/// Which plugin to load for an application, with what config and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// A component (`.wasm`) or an artifact made by [`PluginRuntime::precompile`] (`.cwasm`).
    pub path: PathBuf,
    /// Values the plugin reads with `config-get`.
    pub config: BTreeMap<String, String>,
    /// Per-call limits.
    pub limits: PluginLimits,
    /// Instance sharing.
    pub isolation: Isolation,
    /// The SHA-256 the plugin must have (`sha256 = "..."` in the config), `None` = unpinned.
    /// A `.wasm` is hashed; a `.cwasm` is held to the source digest in its trailer. A file
    /// whose digest differs is refused before it is compiled or deserialized.
    pub sha256: Option<[u8; 32]>,
}

impl PluginSpec {
    /// A spec with empty config, default limits and isolation, and no pinned digest.
    pub fn new(path: impl Into<PathBuf>) -> PluginSpec {
        PluginSpec {
            path: path.into(),
            config: BTreeMap::new(),
            limits: PluginLimits::default(),
            isolation: Isolation::default(),
            sha256: None,
        }
    }
}

impl From<crate::config::Isolation> for Isolation {
    fn from(v: crate::config::Isolation) -> Isolation {
        match v {
            crate::config::Isolation::Reuse => Isolation::Reuse,
            crate::config::Isolation::Fresh => Isolation::FreshPerCall,
        }
    }
}

impl From<&crate::config::PluginConfig> for PluginSpec {
    /// The spec of a configured plugin (`[apps.NAME.plugins.HOOK]`).
    fn from(cfg: &crate::config::PluginConfig) -> PluginSpec {
        PluginSpec {
            path: cfg.path.clone(),
            config: cfg.config.clone(),
            limits: PluginLimits {
                timeout_ms: cfg.limits.timeout_ms,
                memory_bytes: cfg.limits.memory_bytes,
                max_output_bytes: cfg.limits.max_output_bytes,
            },
            isolation: cfg.limits.isolation.into(),
            sha256: cfg.sha256,
        }
    }
}

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AllocatorChoice {
    /// The pooling allocator, or on-demand allocation when address space cannot be reserved.
    #[default]
    Auto,
    /// The pooling allocator; fail if it cannot be set up.
    Pooling,
    /// Allocate every instance on demand.
    OnDemand,
}

/// The allocator the runtime ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots, fast instantiation.
    Pooling,
    /// mmap per instance.
    OnDemand,
}

/// Process-wide runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Where compiled components are cached; `None` disables the disk cache.
    /// Default: `$XDG_CACHE_HOME/squall/plugins`, else `$HOME/.cache/squall/plugins`.
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the granularity of the wall-time limit. Default 10 ms.
    pub epoch_tick: Duration,
    /// Allocation strategy. Default [`AllocatorChoice::Auto`].
    pub allocator: AllocatorChoice,
    /// The largest `memory_bytes` any plugin may be given (sizes the pool slots). Default 256 MiB.
    pub max_memory_bytes: usize,
    /// Component instances the pool holds at once (idle plus running). Default 1000.
    pub pooled_instances: u32,
    /// Idle instances kept per application hook. Default 4.
    pub max_idle_per_hook: usize,
    /// Map precompiled artifacts (`.cwasm`) instead of reading them: no copy, and the
    /// plugins' initial memories are copy-on-write mappings of the file. Only for files that
    /// nothing rewrites in place while the process runs (a Lambda's read-only `/var/task`):
    /// a mapped file truncated under the process crashes it (SIGBUS). Default false; the
    /// Lambda function turns it on.
    pub map_artifacts: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: default_cache_dir(),
            epoch_tick: Duration::from_millis(10),
            allocator: AllocatorChoice::Auto,
            max_memory_bytes: 256 << 20,
            pooled_instances: 1000,
            max_idle_per_hook: 4,
            map_artifacts: false,
        }
    }
}

/// `$XDG_CACHE_HOME/squall/plugins`, else `$HOME/.cache/squall/plugins`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("squall").join("plugins"))
}

/// Why a plugin could not be loaded. Every variant names the plugin's path.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The file could not be read or written.
    #[error("plugin {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a WebAssembly component.
    #[error("plugin {path}: {detail}")]
    NotAComponent {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        detail: String,
    },
    /// Cranelift refused the component.
    #[error("plugin {path}: does not compile: {detail}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// Compiler message.
        detail: String,
    },
    /// A precompiled artifact for another engine, CPU, wasmtime version or format.
    #[error("plugin {path}: precompiled artifact refused: {detail}")]
    ForeignArtifact {
        /// The file.
        path: PathBuf,
        /// Which mismatch.
        detail: String,
    },
    /// A precompiled artifact that is damaged.
    #[error("plugin {path}: precompiled artifact is corrupt: {detail}")]
    CorruptArtifact {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The component does not export the requested hook.
    #[error("plugin {path}: does not export {export} (it exports: {found})")]
    MissingExport {
        /// The file.
        path: PathBuf,
        /// The missing export, e.g. `squall:plugin/transform@0.3.0 or
        /// squall:plugin/transform@0.2.0 or squall:plugin/transform@0.1.0`.
        export: String,
        /// What it does export.
        found: String,
    },
    /// The component uses a `squall:plugin` version this host does not link.
    #[error(
        "plugin {path}: {item} is not a supported WIT version (this host supports squall:plugin@{supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The import or export.
        item: String,
        /// Supported versions.
        supported: String,
    },
    /// The component imports something the host does not offer.
    #[error(
        "plugin {path}: imports {import}, which the host does not provide (it provides squall:plugin/host, squall:plugin/types and WASI 0.2 interfaces)"
    )]
    UnknownImport {
        /// The file.
        path: PathBuf,
        /// The import.
        import: String,
    },
    /// Linking failed (for example a WASI interface of an unknown version).
    #[error("plugin {path}: cannot be linked: {detail}")]
    Link {
        /// The file.
        path: PathBuf,
        /// wasmtime's message, naming the import.
        detail: String,
    },
    /// The first instance could not be created (start function trapped, pool exhausted...).
    #[error("plugin {path}: cannot be instantiated: {detail}")]
    Instantiate {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The file is not the one pinned in the config (`sha256`).
    #[error(
        "plugin {path}: SHA-256 {}, but the config pins {} (sha256): the file changed since it was pinned; deploy the pinned build or pin the new one (`squall plugin check` prints its digest)",
        hex::encode(actual),
        hex::encode(expected)
    )]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: [u8; 32],
        /// The file's digest (for a `.cwasm`, the digest of the source it was compiled from).
        actual: [u8; 32],
    },
    /// Limits out of range.
    #[error("plugin {path}: invalid limits: {detail}")]
    Limits {
        /// The file.
        path: PathBuf,
        /// Which limit.
        detail: String,
    },
}

/// A compiled component with its pre-linked template, shared by every app using it.
struct LoadedComponent {
    digest: [u8; 32],
    info: ComponentInfo,
    pre: InstancePre<HostState>,
}

/// The process-wide plugin runtime. See the module docs.
pub struct PluginRuntime {
    engine: Engine,
    engine_digest: [u8; 32],
    /// The digest of baseline artifacts for this host's architecture (see `artifact`), made
    /// when the first artifact that is not native is met; `None` where there is none.
    baseline_digest: std::sync::OnceLock<Option<[u8; 32]>>,
    linker: Linker<HostState>,
    allocator: Allocator,
    opts: RuntimeOptions,
    components: Mutex<HashMap<[u8; 32], Arc<LoadedComponent>>>,
    /// Files already loaded: path -> (length, modification time, digest). The same unchanged
    /// file loaded again (by `inspect` at init, then by the hook) is not read again.
    files: Mutex<HashMap<PathBuf, SeenFile>>,
}

/// A file loaded before: its inode (where there is one), length and modification time, and
/// its content digest. A file replaced (a new inode) or rewritten in place (a new time) is
/// loaded and checked again.
type SeenFile = (FileStamp, [u8; 32]);
/// Inode, length, modification time.
type FileStamp = (u64, u64, Option<std::time::SystemTime>);

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("allocator", &self.allocator)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// Create the engine, the linker and the epoch ticker.
    pub fn new(opts: RuntimeOptions) -> Result<PluginRuntime, PluginError> {
        if opts.epoch_tick.is_zero() {
            return Err(PluginError::Engine("epoch_tick must be above zero".into()));
        }
        let (engine, allocator) = match opts.allocator {
            AllocatorChoice::OnDemand => (make_engine(&opts, false, None)?, Allocator::OnDemand),
            AllocatorChoice::Pooling => (make_engine(&opts, true, None)?, Allocator::Pooling),
            AllocatorChoice::Auto => match make_engine(&opts, true, None) {
                Ok(e) => (e, Allocator::Pooling),
                Err(err) => {
                    tracing::warn!(error = %err, "pooling allocator unavailable, falling back to on-demand allocation");
                    (make_engine(&opts, false, None)?, Allocator::OnDemand)
                }
            },
        };
        tracing::info!(allocator = ?allocator, epoch_tick_ms = opts.epoch_tick.as_millis() as u64, "plugin runtime ready");

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(format!("linking WASI: {e:#}")))?;
        state::link_host(&mut linker)
            .map_err(|e| PluginError::Engine(format!("linking the host interface: {e:#}")))?;

        let weak = engine.weak();
        let tick = opts.epoch_tick;
        std::thread::Builder::new()
            .name("squall-plugin-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("starting the epoch ticker: {e}")))?;

        Ok(PluginRuntime {
            engine_digest: artifact::engine_digest(&engine, std::env::consts::ARCH),
            baseline_digest: std::sync::OnceLock::new(),
            engine,
            linker,
            allocator,
            opts,
            components: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
        })
    }

    /// Distinct components compiled or loaded so far (one per content digest).
    pub fn components_loaded(&self) -> usize {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The allocator in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// The options the runtime was created with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.opts
    }

    /// Load a component (or artifact) and report what it exports and imports, checked
    /// against the contract and linked, exactly as a hook load would do.
    pub fn inspect(&self, path: &Path) -> Result<ComponentInfo, PluginError> {
        self.inspect_pinned(path, None)
    }

    /// [`PluginRuntime::inspect`], refusing a file whose digest is not `sha256` (see
    /// [`PluginSpec::sha256`]) before compiling or deserializing it.
    pub fn inspect_pinned(
        &self,
        path: &Path,
        sha256: Option<&[u8; 32]>,
    ) -> Result<ComponentInfo, PluginError> {
        Ok(self.component(path, sha256)?.info.clone())
    }

    /// [`PluginRuntime::inspect`] for several files at once, on up to as many threads as
    /// there are CPUs (a cold start with several large plugins loads them side by side).
    /// Each file comes with its pinned digest, if any ([`PluginRuntime::inspect_pinned`]).
    /// Results are in the order of `paths`; later loads of the same files are cache hits.
    pub fn inspect_all(
        &self,
        paths: &[(&Path, Option<[u8; 32]>)],
    ) -> Vec<Result<ComponentInfo, PluginError>> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(paths.len());
        if workers <= 1 {
            return paths
                .iter()
                .map(|(p, pin)| self.inspect_pinned(p, pin.as_ref()))
                .collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<ComponentInfo, PluginError>>>> =
            paths.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((path, pin)) = paths.get(i) else {
                            break;
                        };
                        let r = self.inspect_pinned(path, pin.as_ref());
                        *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .expect("every path was loaded")
            })
            .collect()
    }

    /// Compile `path` (a `.wasm` component) for this engine, with this machine's CPU
    /// features, and write a verified artifact to `out`: loading it needs no Cranelift work,
    /// on this machine or one like it. Deployment bundles use [`Precompiler`] instead.
    pub fn precompile(&self, path: &Path, out: &Path) -> Result<(), PluginError> {
        let bytes = read(path)?;
        let component = self.compile(path, &bytes)?;
        contract::inspect(&self.engine, &component, path)?;
        let payload = component.serialize().map_err(|e| serializing(path, e))?;
        write_artifact(
            &self.engine_digest,
            &artifact::Target::native(),
            &bytes,
            &payload,
            out,
        )
    }

    fn host_baseline_digest(&self) -> Option<[u8; 32]> {
        let arch = host_architecture()?;
        match make_engine(&self.opts, false, Some(arch)) {
            Ok(engine) => Some(artifact::engine_digest(&engine, arch_name(arch))),
            Err(e) => {
                tracing::warn!(error = %e, "no baseline engine for this architecture: bundled artifacts will not load");
                None
            }
        }
    }

    /// A transform for one application.
    pub fn transform(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn hooks::Transform>, PluginError> {
        Ok(self.load_transform(app_id, spec, secrets)?)
    }

    /// A signer for one application.
    pub fn signer(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn hooks::Signer>, PluginError> {
        Ok(self.load_signer(app_id, spec, secrets)?)
    }

    /// A retry policy for one application.
    pub fn retry_policy(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<dyn hooks::RetryPolicy>, PluginError> {
        Ok(self.load_retry_policy(app_id, spec, secrets)?)
    }

    /// [`PluginRuntime::transform`] with the concrete type (for its [`HookStats`]).
    pub fn load_transform(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<PluginTransform>, PluginError> {
        self.load_hook(app_id, spec, secrets)
    }

    /// [`PluginRuntime::signer`] with the concrete type.
    pub fn load_signer(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<PluginSigner>, PluginError> {
        self.load_hook(app_id, spec, secrets)
    }

    /// [`PluginRuntime::retry_policy`] with the concrete type.
    pub fn load_retry_policy(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<PluginRetryPolicy>, PluginError> {
        self.load_hook(app_id, spec, secrets)
    }

    fn load_hook<G: HookExport>(
        &self,
        app_id: &str,
        spec: &PluginSpec,
        secrets: Arc<Secrets>,
    ) -> Result<Arc<PluginHook<G>>, PluginError> {
        let path = &spec.path;
        self.check_limits(spec)?;
        let loaded = self.component(path, spec.sha256.as_ref())?;
        let hook = G::HOOK;
        contract::require(&loaded.info, hook, path)?;
        let export = loaded
            .info
            .hook_version(hook)
            .and_then(|version| hook::ExportAt::find::<G>(&loaded.pre, version))
            .ok_or_else(|| PluginError::MissingExport {
                path: path.clone(),
                export: format!("{} (function {})", hook.export_names(), G::FUNC),
                found: loaded.info.exports.join(", "),
            })?;
        let identity = plugin_identity(path, &loaded.digest);
        tracing::info!(app_id, %hook, plugin = %identity, path = %path.display(), wit = export.version(), "plugin bound");
        let app = Arc::new(AppBinding {
            app_id: app_id.to_string(),
            plugin: identity,
            config: spec.config.clone(),
            secrets,
        });
        let hook = PluginHook::<G>::new(
            app,
            loaded.pre.clone(),
            export,
            spec.limits,
            spec.isolation,
            self.opts.epoch_tick,
            self.opts.max_idle_per_hook,
        );
        // Instantiate once now, so a component that cannot start fails at load time; in
        // Reuse mode the instance then serves the first event.
        hook.prewarm().map_err(|e| PluginError::Instantiate {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        Ok(Arc::new(hook))
    }

    fn check_limits(&self, spec: &PluginSpec) -> Result<(), PluginError> {
        let l = &spec.limits;
        let bad = |detail: String| PluginError::Limits {
            path: spec.path.clone(),
            detail,
        };
        if l.timeout_ms == 0 || l.timeout_ms > 60_000 {
            return Err(bad(format!(
                "timeout_ms = {} (must be 1 to 60000)",
                l.timeout_ms
            )));
        }
        if l.memory_bytes < (1 << 20) || l.memory_bytes > self.opts.max_memory_bytes {
            return Err(bad(format!(
                "memory_bytes = {} (must be 1 MiB to {} bytes, the runtime's max_memory_bytes)",
                l.memory_bytes, self.opts.max_memory_bytes
            )));
        }
        if l.max_output_bytes == 0 {
            return Err(bad("max_output_bytes = 0 (must be above zero)".into()));
        }
        Ok(())
    }

    /// The compiled, checked and pre-linked component at `path`, compiled at most once
    /// per content digest; refused before any compiling or deserializing when `pin` is set
    /// and the file's digest differs.
    fn component(
        &self,
        path: &Path,
        pin: Option<&[u8; 32]>,
    ) -> Result<Arc<LoadedComponent>, PluginError> {
        let io = |source| PluginError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let stamp: FileStamp = (inode(&meta), meta.len(), meta.modified().ok());
        let seen = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied();
        if let Some((was, digest)) = seen
            && was == stamp
            && let Some(hit) = self.cached(&digest)
        {
            check_pin(path, pin, &digest)?;
            return Ok(hit);
        }
        let loaded = self.load_component(path, file, meta.len(), pin)?;
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf(), (stamp, loaded.digest));
        Ok(loaded)
    }

    fn load_component(
        &self,
        path: &Path,
        mut file: std::fs::File,
        size: u64,
        pin: Option<&[u8; 32]>,
    ) -> Result<Arc<LoadedComponent>, PluginError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |source| PluginError::Io {
            path: path.to_path_buf(),
            source,
        };
        // An artifact ends with its trailer: read that first.
        let (component, digest) = if let Some(tail) = read_trailer(&mut file, size) {
            // The pin is held against the source digest the trailer names (a `.cwasm` is
            // native code: only trusted bundles carry them, see `artifact`).
            let header = artifact::check_header(self, &tail, path)?;
            check_pin(path, pin, &header.source_digest)?;
            tracing::info!(plugin = %path.display(), target = %header.target, "loading precompiled plugin");
            if self.opts.map_artifacts {
                let component = artifact::load_file(&self.engine, &header, file, size, path)?;
                (component, header.source_digest)
            } else {
                let mut bytes = Vec::with_capacity(size as usize);
                file.seek(SeekFrom::Start(0))
                    .and_then(|_| file.read_to_end(&mut bytes))
                    .map_err(io)?;
                artifact::load(&self.engine, self, &bytes, path)?
            }
        } else {
            let mut bytes = Vec::with_capacity(size as usize);
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut bytes))
                .map_err(io)?;
            if artifact::is_format_1(&bytes) {
                return Err(artifact::format_1_error(path));
            }
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            check_pin(path, pin, &digest)?;
            if let Some(hit) = self.cached(&digest) {
                return Ok(hit);
            }
            (self.compile_cached(path, &bytes, &digest)?, digest)
        };
        let info = contract::inspect(&self.engine, &component, path)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link {
                path: path.to_path_buf(),
                detail: format!("{e:#}"),
            })?;
        let loaded = Arc::new(LoadedComponent { digest, info, pre });
        let mut map = self.components.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(digest).or_insert(loaded).clone())
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<LoadedComponent>> {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Compile, going through the disk cache when one is configured. A damaged or stale
    /// cache entry is recompiled over; a cache that cannot be written only costs speed.
    fn compile_cached(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<Component, PluginError> {
        let Some(dir) = &self.opts.cache_dir else {
            return self.compile(path, bytes);
        };
        let file = dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(digest),
            hex::encode(&self.engine_digest[..8])
        ));
        // Read and copied, not mapped: the cache directory is shared and writable, and a file
        // truncated in place under a mapping would crash the process (SIGBUS), not fail a load.
        if let Ok(cached) = std::fs::read(&file) {
            match artifact::load(
                &self.engine,
                &artifact::NativeOnly(&self.engine_digest),
                &cached,
                &file,
            ) {
                Ok((component, d)) if d == *digest => return Ok(component),
                Ok(_) => {
                    tracing::warn!(cache = %file.display(), "cached artifact is for other source bytes; recompiling")
                }
                Err(e) => tracing::warn!(error = %e, "ignoring cached artifact; recompiling"),
            }
        }
        let component = self.compile(path, bytes)?;
        match component.serialize() {
            Ok(payload) => {
                let wrapped = artifact::wrap(
                    &self.engine_digest,
                    &artifact::Target::native(),
                    digest,
                    &payload,
                );
                if let Err(e) = std::fs::create_dir_all(dir)
                    .map_err(|source| PluginError::Io {
                        path: dir.clone(),
                        source,
                    })
                    .and_then(|()| write_atomically(&file, &wrapped))
                {
                    tracing::warn!(error = %e, "cannot write the plugin cache; continuing without it");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialize a compiled plugin; continuing without the cache")
            }
        }
        Ok(component)
    }

    fn compile(&self, path: &Path, bytes: &[u8]) -> Result<Component, PluginError> {
        compile_on(&self.engine, path, bytes)
    }
}

/// Compile a component's bytes on `engine`, refusing what is not a component by name.
fn compile_on(engine: &Engine, path: &Path, bytes: &[u8]) -> Result<Component, PluginError> {
    check_component_bytes(path, bytes)?;
    let started = std::time::Instant::now();
    let component = Component::from_binary(engine, bytes).map_err(|e| PluginError::Compile {
        path: path.to_path_buf(),
        detail: format!("{e:#}"),
    })?;
    tracing::info!(plugin = %path.display(), ms = started.elapsed().as_millis() as u64, "compiled plugin");
    Ok(component)
}

/// Refuse, by name, bytes that are not a WebAssembly component.
fn check_component_bytes(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    if Engine::detect_precompiled(bytes).is_some() {
        return Err(PluginError::ForeignArtifact {
            path: path.to_path_buf(),
            detail: "a raw wasmtime artifact without Squall's verified trailer; make one with `squall plugin precompile`".into(),
        });
    }
    if bytes.starts_with(b"\x7fELF") {
        return Err(PluginError::CorruptArtifact {
            path: path.to_path_buf(),
            detail: "a precompiled artifact without its trailer (truncated?); precompile it again with `squall plugin precompile`".into(),
        });
    }
    let not = |detail: &str| PluginError::NotAComponent {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => {}
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            return Err(not(
                "a core WebAssembly module, not a component (build for wasm32-wasip2, or encode it with `wasm-tools component new`)",
            ));
        }
        _ => return Err(not("not a WebAssembly component (bad magic number)")),
    }
    Ok(())
}

/// Refuse `path` when a digest is pinned and `actual` is not it.
fn check_pin(path: &Path, pin: Option<&[u8; 32]>, actual: &[u8; 32]) -> Result<(), PluginError> {
    match pin {
        Some(expected) if expected != actual => Err(PluginError::DigestMismatch {
            path: path.to_path_buf(),
            expected: *expected,
            actual: *actual,
        }),
        _ => Ok(()),
    }
}

/// The digest that identifies the plugin file at `path` and that a `sha256` pin is held
/// to: the SHA-256 of a component (`.wasm`), or, for a precompiled artifact (`.cwasm`), the
/// SHA-256 of the source component its trailer names. Reads the file; compiles nothing.
pub fn file_digest(path: &Path) -> Result<[u8; 32], PluginError> {
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if let Some(tail) = read_trailer(&mut file, size) {
        return Ok(artifact::source_digest(&tail));
    }
    Ok(Sha256::digest(read(path)?).into())
}

/// The last [`artifact::TRAILER_LEN`] bytes of `file` (`size` bytes long) when they are a Squall
/// artifact trailer.
fn read_trailer(file: &mut std::fs::File, size: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    if size < artifact::TRAILER_LEN as u64 {
        return None;
    }
    let mut tail = vec![0u8; artifact::TRAILER_LEN];
    file.seek(SeekFrom::End(-(artifact::TRAILER_LEN as i64)))
        .and_then(|_| file.read_exact(&mut tail))
        .ok()?;
    artifact::trailer(&tail).is_some().then_some(tail)
}

/// How a loaded plugin is named in metrics records, DLQ reasons and logs: its file name and
/// the first 12 hex digits of its SHA-256 (`envelope-transform.wasm#1a2b3c4d5e6f`). The
/// digest tells two builds apart; the directory is deployment detail, logged once per binding
/// ("plugin bound") rather than repeated in every metrics record.
fn plugin_identity(path: &Path, digest: &[u8]) -> String {
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    format!("{name}#{}", hex::encode(&digest[..6]))
}

/// A runtime loads its own artifacts and the baseline artifacts of its architecture.
impl artifact::Accepts for PluginRuntime {
    fn native(&self) -> &[u8; 32] {
        &self.engine_digest
    }
    fn baseline(&self) -> Option<[u8; 32]> {
        *self
            .baseline_digest
            .get_or_init(|| self.host_baseline_digest())
    }
}

fn serializing(path: &Path, e: wasmtime::Error) -> PluginError {
    PluginError::Compile {
        path: path.to_path_buf(),
        detail: format!("serializing: {e:#}"),
    }
}

/// Write the artifact of `source` (the `.wasm` bytes) to `out`.
fn write_artifact(
    digest: &[u8; 32],
    target: &artifact::Target,
    source: &[u8],
    payload: &[u8],
    out: &Path,
) -> Result<(), PluginError> {
    let source: [u8; 32] = Sha256::digest(source).into();
    write_atomically(out, &artifact::wrap(digest, target, &source, payload))
}

/// Makes deployment artifacts for a CPU architecture, on any machine: the code is compiled
/// for the architecture's baseline (no optional CPU extension, so it runs on every CPU of
/// that architecture, each Graviton or x86_64 generation a Lambda function may land on),
/// with the runtime's settings, and the function's [`PluginRuntime`] on that architecture
/// loads it without compiling. Cross-compiling (arm64 artifacts on an x86_64 machine) is
/// the same call.
pub struct Precompiler {
    engine: Engine,
    digest: [u8; 32],
    target: artifact::Target,
}

impl Precompiler {
    /// A precompiler for `arch`, with the engine settings of `opts` (the allocator does not
    /// matter: it does not change the code).
    pub fn new(opts: &RuntimeOptions, arch: Architecture) -> Result<Precompiler, PluginError> {
        let engine = make_engine(opts, false, Some(arch))?;
        Ok(Precompiler {
            digest: artifact::engine_digest(&engine, arch_name(arch)),
            engine,
            target: artifact::Target {
                arch: arch_name(arch).to_string(),
                cpu: artifact::Cpu::Baseline,
            },
        })
    }

    /// Compile `path` (a `.wasm` component) and write the verified artifact to `out`.
    /// The component is compiled, not instantiated: its contract (exports, WIT version,
    /// imports) is checked where it runs (at load, as for a `.wasm`) and by `squall plugin
    /// check`, which `scripts/package-lambda` runs on every bundled plugin.
    pub fn precompile(&self, path: &Path, out: &Path) -> Result<(), PluginError> {
        let bytes = read(path)?;
        check_component_bytes(path, &bytes)?;
        let started = std::time::Instant::now();
        let payload =
            self.engine
                .precompile_component(&bytes)
                .map_err(|e| PluginError::Compile {
                    path: path.to_path_buf(),
                    detail: format!("{e:#}"),
                })?;
        tracing::info!(plugin = %path.display(), target = %self.target, ms = started.elapsed().as_millis() as u64, "precompiled plugin");
        write_artifact(&self.digest, &self.target, &bytes, &payload, out)
    }
}

/// The architecture's name as Rust and wasmtime spell it (`std::env::consts::ARCH`).
pub fn arch_name(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Arm64 => "aarch64",
        Architecture::X86_64 => "x86_64",
    }
}

/// This machine's architecture when it is one a Lambda function runs on (Linux, aarch64
/// or x86_64): the one whose baseline artifacts it loads.
pub fn host_architecture() -> Option<Architecture> {
    if std::env::consts::OS != "linux" {
        return None;
    }
    match std::env::consts::ARCH {
        "aarch64" => Some(Architecture::Arm64),
        "x86_64" => Some(Architecture::X86_64),
        _ => None,
    }
}

/// `target`: `None` = this machine, with the CPU features it detects; an architecture =
/// that architecture's Linux triple with its baseline features (an explicit target turns
/// wasmtime's CPU detection off, also when it is this machine's).
fn make_engine(
    opts: &RuntimeOptions,
    pooling: bool,
    target: Option<Architecture>,
) -> Result<Engine, PluginError> {
    let mut config = Config::new();
    if let Some(arch) = target {
        config
            .target(&format!("{}-unknown-linux-gnu", arch_name(arch)))
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    }
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.parallel_compilation(true);
    // For `perf`: plugin code gets symbols in /tmp/perf-<pid>.map (see docs/plugins.md).
    if std::env::var_os("SQUALL_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let n = opts.pooled_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(4))
            .max_memory_size(opts.max_memory_bytes)
            .max_unused_warm_slots(n.min(100));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))
}

fn read(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), fastrand::u32(..)));
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
