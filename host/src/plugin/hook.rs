//! One plugin hook bound to one application (once per application): its pre-linked
//! template, its config and secrets, and its own pool of idle instances. Each call
//! (once per event) takes an instance, or makes a fresh one, under a wall-time deadline
//! and a memory limit; an instance that trapped or timed out is dropped, never reused.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{ComponentExportIndex, Func, InstancePre};

use super::bindings::{
    AttemptContextRef, Checked, DecideSig, DecideSigV3, EventRef, RequestRef, RetryDecisionV3,
    SignResultV3, SignSig, SignSigV2, SignSigV3, TransformResultV3, TransformSig, TransformSigV3,
    wit,
};
use super::contract::Hook;
use super::guest_output::{GuestOutput, LogBudget, TRAP_TAIL_BYTES};
use super::output;
use super::state::{AppBinding, HostState};
use super::{Isolation, PluginLimits};
use crate::hooks::{
    AttemptContext, Event, Headers, HookError, Outcome, Request, RetryDecision, RetryPolicy,
    Signer, Transform, TransformResult,
};

/// The exported interface of one hook, as the runtime loads it. Implemented for the three
/// marker types below; not meant to be implemented elsewhere.
pub trait HookExport: Sized + Send + 'static {
    /// Which hook.
    const HOOK: Hook;
    /// The function's name inside the hook's interface.
    const FUNC: &'static str;
    /// The export of one instance, checked against the types this host calls it with.
    type Func: Send + 'static;
    /// Check `func`, this hook's function as exported in WIT `version`.
    fn check(func: Func, version: &str, store: &Store<HostState>) -> wasmtime::Result<Self::Func>;
}

/// `transform.transform`: returning a `result` up to 0.2.0, a variant with `fail` from 0.3.0.
pub enum TransformExport {}
impl HookExport for TransformExport {
    const HOOK: Hook = Hook::Transform;
    const FUNC: &'static str = "transform";
    type Func = TransformFunc;
    fn check(func: Func, version: &str, store: &Store<HostState>) -> wasmtime::Result<Self::Func> {
        Ok(match version {
            "0.1.0" | "0.2.0" => TransformFunc::V1(Checked::new(func, store)?),
            _ => TransformFunc::V3(Checked::new(func, store)?),
        })
    }
}

/// A transform's export, by the WIT version it was built for.
pub enum TransformFunc {
    /// 0.1.0 and 0.2.0: `-> result<transform-result, plugin-error>`.
    V1(Checked<TransformSig>),
    /// 0.3.0: `-> transform-result` (with `fail`).
    V3(Checked<TransformSigV3>),
}

/// `signer.sign`: given the request in 0.1.0, asking the host about it in 0.2.0.
pub enum SignerExport {}
impl HookExport for SignerExport {
    const HOOK: Hook = Hook::Signer;
    const FUNC: &'static str = "sign";
    type Func = SignFunc;
    fn check(func: Func, version: &str, store: &Store<HostState>) -> wasmtime::Result<SignFunc> {
        Ok(match version {
            "0.1.0" => SignFunc::V1(Checked::new(func, store)?),
            "0.2.0" => SignFunc::V2(Checked::new(func, store)?),
            "0.3.0" => SignFunc::V3(Checked::new(func, store)?),
            other => wasmtime::bail!("this host has no signer call for WIT {other}"),
        })
    }
}

/// A signer's export, by the WIT version it was built for.
pub enum SignFunc {
    /// `sign(ctx, request, key-name, timestamp)`.
    V1(Checked<SignSig>),
    /// `sign(ctx, key-name, timestamp)`, the request held by the host for the call.
    V2(Checked<SignSigV2>),
    /// 0.3.0: as 0.2.0, returning `sign-result` (with `fail`) instead of a `result`.
    V3(Checked<SignSigV3>),
}

/// `retry-policy.decide`: returning a `result` with `u32` seconds up to 0.2.0, a variant with
/// `s64` seconds and `fail` from 0.3.0.
pub enum RetryPolicyExport {}
impl HookExport for RetryPolicyExport {
    const HOOK: Hook = Hook::RetryPolicy;
    const FUNC: &'static str = "decide";
    type Func = DecideFunc;
    fn check(func: Func, version: &str, store: &Store<HostState>) -> wasmtime::Result<Self::Func> {
        Ok(match version {
            "0.1.0" | "0.2.0" => DecideFunc::V1(Checked::new(func, store)?),
            _ => DecideFunc::V3(Checked::new(func, store)?),
        })
    }
}

/// A retry policy's export, by the WIT version it was built for.
pub enum DecideFunc {
    /// 0.1.0 and 0.2.0: `-> result<retry-decision, plugin-error>`, seconds a `u32`.
    V1(Checked<DecideSig>),
    /// 0.3.0: `-> retry-decision` (with `fail`), seconds an `s64`.
    V3(Checked<DecideSigV3>),
}

/// Where a hook's function is in a pre-linked component, and the WIT version it is in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportAt {
    index: ComponentExportIndex,
    version: &'static str,
}

impl ExportAt {
    /// Find `G`'s function exported in WIT `version`, once per application at load time.
    pub(crate) fn find<G: HookExport>(
        pre: &InstancePre<HostState>,
        version: &'static str,
    ) -> Option<ExportAt> {
        let component = pre.component();
        let interface = component.get_export_index(None, G::HOOK.export_name(version))?;
        let index = component.get_export_index(Some(&interface), G::FUNC)?;
        Some(ExportAt { index, version })
    }

    /// The WIT version the function is exported in.
    pub(crate) fn version(&self) -> &'static str {
        self.version
    }
}

/// A plugin transform bound to one application.
pub type PluginTransform = PluginHook<TransformExport>;
/// A plugin signer bound to one application.
pub type PluginSigner = PluginHook<SignerExport>;
/// A plugin retry policy bound to one application.
pub type PluginRetryPolicy = PluginHook<RetryPolicyExport>;

/// Counters of one hook object, for tests, `squall plugin test` and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStats {
    /// Calls made.
    pub calls: u64,
    /// Instances created (fresh per call, or to refill the pool after a trap).
    pub instances_created: u64,
    /// Instances dropped after a trap, timeout or memory error.
    pub instances_discarded: u64,
    /// Idle instances in the pool now.
    pub idle: usize,
    /// Largest linear memory any instance of this hook reached, bytes.
    pub peak_memory_bytes: usize,
}

struct Live<G: HookExport> {
    store: Store<HostState>,
    /// The hook's export, type-checked against this host's parameter types.
    func: G::Func,
}

/// One hook of one plugin for one application.
pub struct PluginHook<G: HookExport> {
    app: Arc<AppBinding>,
    pre: InstancePre<HostState>,
    export: ExportAt,
    limits: PluginLimits,
    isolation: Isolation,
    deadline_ticks: u64,
    max_idle: usize,
    idle: Mutex<Vec<Live<G>>>,
    calls: AtomicU64,
    created: AtomicU64,
    discarded: AtomicU64,
    peak_memory: AtomicUsize,
    /// Set once a call needed WASI stdio inside the async runtime: calls then run off it.
    off_reactor: AtomicBool,
    /// What the latest call that wrote anything wrote (for `squall plugin test`).
    last_output: Mutex<Option<GuestOutput>>,
    /// How often this hook's output may be logged.
    output_log: LogBudget,
}

impl<G: HookExport> PluginHook<G> {
    pub(crate) fn new(
        app: Arc<AppBinding>,
        pre: InstancePre<HostState>,
        export: ExportAt,
        limits: PluginLimits,
        isolation: Isolation,
        tick: Duration,
        max_idle: usize,
    ) -> Self {
        let tick_ms = tick.as_millis().max(1) as u64;
        // The deadline fires between (ticks - 1) and ticks epochs from now: one extra
        // tick makes sure a plugin always gets at least its full time.
        let deadline_ticks = limits.timeout_ms.div_ceil(tick_ms).max(1) + 1;
        PluginHook {
            app,
            pre,
            export,
            limits,
            isolation,
            deadline_ticks,
            max_idle,
            idle: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            created: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            off_reactor: AtomicBool::new(false),
            peak_memory: AtomicUsize::new(0),
            last_output: Mutex::new(None),
            output_log: LogBudget::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> HookStats {
        HookStats {
            calls: self.calls.load(Ordering::Relaxed),
            instances_created: self.created.load(Ordering::Relaxed),
            instances_discarded: self.discarded.load(Ordering::Relaxed),
            idle: self.idle.lock().map(|v| v.len()).unwrap_or(0),
            peak_memory_bytes: self.peak_memory.load(Ordering::Relaxed),
        }
    }

    /// What the latest call that wrote to stdout or stderr wrote, taken (the next call that
    /// writes replaces it). For tools (`squall plugin test`); production logs it instead.
    pub fn take_last_output(&self) -> Option<GuestOutput> {
        self.last_output.lock().ok()?.take()
    }

    /// Log a call's output (rate-limited per hook) and keep it for [`Self::take_last_output`].
    fn record_output(&self, output: GuestOutput, failed: bool) {
        if let Some(held_back) = self.output_log.admit(std::time::Instant::now()) {
            let (app_id, plugin) = (self.app.app_id.as_str(), self.app.plugin.as_str());
            let text = output.to_string();
            // A failed call's output is what explains the failure; a successful call's is a
            // plugin's debugging print, which may hold payload data: debug level only.
            if failed {
                tracing::info!(app_id, plugin, held_back, output = %text, "plugin output (failed call)");
            } else {
                tracing::debug!(app_id, plugin, held_back, output = %text, "plugin output");
            }
        }
        if let Ok(mut last) = self.last_output.lock() {
            *last = Some(output);
        }
    }

    /// The application this hook belongs to.
    pub fn app_id(&self) -> &str {
        &self.app.app_id
    }

    fn plugin(&self) -> String {
        self.app.plugin.clone()
    }

    fn instantiate(&self) -> Result<Live<G>, HookError> {
        self.created.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            self.pre.engine(),
            HostState::new(self.app.clone(), self.limits.memory_bytes),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(self.classify(e, &store)),
        };
        let func = instance
            .get_func(&mut store, self.export.index)
            .ok_or_else(|| wasmtime::format_err!("{} not found", G::FUNC))
            .and_then(|func| G::check(func, self.export.version, &store))
            .map_err(|e| HookError::Trap {
                plugin: self.plugin(),
                detail: format!("export lookup failed: {e:#}"),
            })?;
        Ok(Live { store, func })
    }

    /// Run one call on a pooled or fresh instance.
    ///
    /// Guest code normally runs right here, on the caller's thread: a hook call is a few
    /// microseconds of CPU. The exception is WASI stdio (a guest printing, or writing its panic
    /// message before it traps): wasmtime-wasi's synchronous shims block on the ambient tokio
    /// runtime to do it, which panics on a runtime worker thread. That panic unwinds out of
    /// the guest before anything is written; the instance is dropped, the call runs again off
    /// the reactor (see `off_reactor`), and so does every later call of this hook. Hook calls
    /// are pure functions of their inputs, so running one twice is invisible but for a
    /// repeated host `log` line.
    fn call<R: Send>(
        &self,
        f: impl Fn(&G::Func, &mut Store<HostState>) -> wasmtime::Result<Result<R, wit::PluginError>>
        + Sync,
    ) -> Result<R, HookError> {
        // Counted once here, not in `call_here`: a call re-run off the reactor is one call.
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.off_reactor.load(Ordering::Relaxed) {
            quiet_panics_in_guest_calls();
            IN_GUEST_CALL.with(|c| c.set(true));
            let here =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.call_here(&f)));
            IN_GUEST_CALL.with(|c| c.set(false));
            match here {
                Ok(r) => return r,
                Err(_) => {
                    self.discarded.fetch_add(1, Ordering::Relaxed);
                    self.off_reactor.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        app_id = %self.app.app_id,
                        plugin = %self.app.plugin,
                        "the plugin used WASI stdio inside the async runtime; its calls now run \
                         off the async workers (prefer the host log function)"
                    );
                }
            }
        }
        off_reactor(|| self.call_here(&f))
    }

    fn call_here<R>(
        &self,
        f: impl FnOnce(&G::Func, &mut Store<HostState>) -> wasmtime::Result<Result<R, wit::PluginError>>,
    ) -> Result<R, HookError> {
        let pooled = match self.isolation {
            Isolation::Reuse => self.idle.lock().ok().and_then(|mut v| v.pop()),
            Isolation::FreshPerCall => None,
        };
        let mut live = match pooled {
            Some(live) => live,
            None => self.instantiate()?,
        };
        live.store.data_mut().limiter.refused = false;
        live.store.data().output.clear();
        live.store.set_epoch_deadline(self.deadline_ticks);
        let result = f(&live.func, &mut live.store);
        self.peak_memory
            .fetch_max(live.store.data().limiter.peak_bytes, Ordering::Relaxed);
        let output = live.store.data().output.take();
        let failed = !matches!(result, Ok(Ok(_)));
        let tail = match (&result, &output) {
            (Err(_), Some(out)) => Some(out.last_lines(TRAP_TAIL_BYTES).to_string()),
            _ => None,
        };
        if let Some(output) = output {
            self.record_output(output, failed);
        }
        match result {
            Ok(r) => {
                if self.isolation == Isolation::Reuse
                    && let Ok(mut idle) = self.idle.lock()
                    && idle.len() < self.max_idle
                {
                    idle.push(live);
                }
                r.map_err(|e| HookError::Plugin {
                    plugin: self.plugin(),
                    message: e.message,
                })
            }
            Err(e) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                let mut err = self.classify(e, &live.store);
                // A trap says where; the guest's last words (a traceback, an uncaught
                // exception, a panic message) say why.
                if let (HookError::Trap { detail, .. }, Some(tail)) = (&mut err, tail)
                    && !tail.is_empty()
                {
                    detail.push_str("; guest output (last lines):\n");
                    detail.push_str(&tail);
                }
                Err(err)
            }
        }
    }

    fn classify(&self, e: wasmtime::Error, store: &Store<HostState>) -> HookError {
        let plugin = self.plugin();
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return HookError::Timeout {
                plugin,
                limit_ms: self.limits.timeout_ms,
            };
        }
        if store.data().limiter.refused {
            return HookError::Memory {
                plugin,
                limit_bytes: self.limits.memory_bytes,
            };
        }
        let mut detail = match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => format!("{trap}"),
            None => format!("{e:#}"),
        };
        // The first guest frame says where; the rest of the backtrace is noise in a DLQ reason.
        if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>()
            && let Some(frame) = bt.frames().iter().find_map(|f| f.func_name())
        {
            detail.push_str(" in ");
            detail.push_str(frame);
        }
        detail.truncate(detail.floor_char_boundary(512));
        HookError::Trap { plugin, detail }
    }

    fn invalid(&self, reason: String) -> HookError {
        HookError::InvalidOutput {
            plugin: self.plugin(),
            reason,
        }
    }
}

thread_local! {
    /// True while this thread runs a guest call whose panic `PluginHook::call` catches.
    static IN_GUEST_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic that `PluginHook::call` catches and reports itself is not printed by the process's
/// panic hook: printing it would also resolve a backtrace when RUST_BACKTRACE is set, which
/// maps the binary's debug info (well over 100 MB of resident memory, once).
fn quiet_panics_in_guest_calls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUEST_CALL.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
}

/// Run guest code where it may block. wasmtime-wasi's synchronous WASI shims (a guest writing
/// its panic message to stderr, dropping a stream) call `Handle::block_on` on the ambient tokio
/// runtime, which panics on a runtime worker thread; and a plugin running up to its deadline
/// must not stall the other deliveries scheduled on that worker. So on a multi-threaded
/// runtime the call runs under `block_in_place` (the worker hands its queue to another thread
/// meanwhile); on a current-thread runtime, which cannot do that, on a scoped thread; outside
/// any runtime (benchmarks, tools), right here.
fn off_reactor<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

impl Transform for PluginTransform {
    fn identity(&self) -> &str {
        &self.app.plugin
    }

    fn transform(&self, event: &Event) -> Result<TransformResult, HookError> {
        let result = self.call(|func, store| {
            let event = (EventRef::from(event),);
            Ok(match func {
                TransformFunc::V1(func) => func.typed().call(store, event)?.0.map(Into::into),
                TransformFunc::V3(func) => match func.typed().call(store, event)?.0 {
                    TransformResultV3::Send(r) => Ok(TransformResult::Send(r.into())),
                    TransformResultV3::Skip(reason) => Ok(TransformResult::Skip(reason)),
                    TransformResultV3::Fail(message) => Err(wit::PluginError { message }),
                },
            })
        })?;
        // The event's endpoint was checked when its envelope was decoded (and the deliverer
        // checks every URL again before sending): only a URL the plugin changed is parsed here.
        output::check_transform(
            &result,
            self.limits.max_output_bytes,
            Some(&event.endpoint_url),
        )
        .map_err(|r| self.invalid(r))?;
        Ok(result)
    }
}

impl Signer for PluginSigner {
    fn identity(&self) -> &str {
        &self.app.plugin
    }

    fn sign(
        &self,
        ctx: &AttemptContext,
        request: &Request,
        key_name: &str,
        timestamp: u64,
    ) -> Result<Headers, HookError> {
        let headers = self.call(|func, store| match func {
            SignFunc::V1(func) => {
                let args = (
                    AttemptContextRef::from(ctx),
                    RequestRef::from(request),
                    key_name,
                    timestamp,
                );
                Ok(func.typed().call(store, args)?.0)
            }
            SignFunc::V2(func) => {
                store.data_mut().begin_signing(request);
                let args = (AttemptContextRef::from(ctx), key_name, timestamp);
                let result = func.typed().call(&mut *store, args);
                store.data_mut().end_signing();
                Ok(result?.0)
            }
            SignFunc::V3(func) => {
                store.data_mut().begin_signing(request);
                let args = (AttemptContextRef::from(ctx), key_name, timestamp);
                let result = func.typed().call(&mut *store, args);
                store.data_mut().end_signing();
                Ok(match result?.0 {
                    SignResultV3::Signed(headers) => Ok(headers),
                    SignResultV3::Fail(message) => Err(wit::PluginError { message }),
                })
            }
        })?;
        output::check_headers(&headers, self.limits.max_output_bytes)
            .map_err(|r| self.invalid(r))?;
        Ok(headers)
    }
}

impl RetryPolicy for PluginRetryPolicy {
    fn identity(&self) -> &str {
        &self.app.plugin
    }

    fn decide(&self, ctx: &AttemptContext, outcome: &Outcome) -> Result<RetryDecision, HookError> {
        let o = wit::Outcome::from(outcome);
        // Ok(Err(reason)): a decision the host refuses (seconds out of range).
        let decision = self.call(|func, store| {
            let args = (AttemptContextRef::from(ctx), &o);
            Ok(match func {
                DecideFunc::V1(func) => func.typed().call(store, args)?.0.map(|d| Ok(d.into())),
                DecideFunc::V3(func) => match func.typed().call(store, args)?.0 {
                    RetryDecisionV3::RetryAfterSeconds(s) => {
                        Ok(output::retry_after_seconds(s).map(RetryDecision::RetryAfterSeconds))
                    }
                    RetryDecisionV3::DeadLetter(r) => Ok(Ok(RetryDecision::DeadLetter(r))),
                    RetryDecisionV3::Discard(r) => Ok(Ok(RetryDecision::Discard(r))),
                    RetryDecisionV3::Fail(message) => Err(wit::PluginError { message }),
                },
            })
        })?;
        let decision = decision.map_err(|r| self.invalid(r))?;
        output::check_decision(&decision, self.limits.max_output_bytes)
            .map_err(|r| self.invalid(r))?;
        Ok(decision)
    }
}

impl<G: HookExport> PluginHook<G> {
    /// Create one instance now: fails at load time when the component cannot start.
    pub(crate) fn prewarm(&self) -> Result<(), HookError> {
        let live = off_reactor(|| self.instantiate())?;
        if self.isolation == Isolation::Reuse
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(live);
        }
        Ok(())
    }
}
