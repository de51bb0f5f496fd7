//! The applications: from their settings to what the runner and the Lambda handler drive.
//!
//! One path for `squall run`, the Lambda init, the demo and the benches, in two lifecycles:
//!
//! - **once per process**, [`AppBuilder::new`]: the plugin runtime (only when an application
//!   configures a plugin; its options are the caller's, see [`PluginSetup`]) and the shared
//!   HTTP clients ([`Deliverers`], one per distinct set of client options);
//! - **once per application**, [`AppBuilder::build`]: the application's settings
//!   ([`AppConfig`]) and resolved secrets in, a [`BuiltApp`] out: its hooks (plugins loaded,
//!   compiled and validated now, or the built-ins), its HTTP client with its timeouts and SSRF
//!   allow-list behind its per-endpoint-host limit, its retry and envelope limits.
//!
//! [`from_config`] is the start-up sequence over a whole configuration (queues required,
//! secrets resolved, the process-wide parts made, each application built). The config file is
//! the one source of application settings today; another source (a registry) hands
//! [`AppBuilder::build`] one application's settings and secrets when it needs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, AppConfig, Config, ConfigError};
use crate::hooks::{PassThrough, RetryPolicy, Signer, Transform};
use crate::http::Deliverers;
use crate::pipeline::{App, EndpointLimiter, RegisteredEndpoints};
use crate::plugin::{PluginError, PluginRuntime, RuntimeOptions};
use crate::retry::BackoffPolicy;
use crate::secrets::Secrets;
use crate::signing::StandardWebhooksSigner;

/// One application as the runner and the Lambda handler drive it.
pub struct BuiltApp {
    /// What the pipeline needs per message.
    pub app: Arc<App>,
    /// At most this many messages of the application processed at once.
    pub max_concurrency: usize,
}

/// Why one application could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `apps.ID.queue_url` is missing.
    #[error("apps.{0}.queue_url is required")]
    MissingQueue(String),
    /// No resolved secrets for an application.
    #[error("apps.{0}: secrets were not resolved")]
    MissingSecrets(String),
    /// The HTTP client could not be built.
    #[error("apps.{app}: {error}")]
    Http {
        /// Application id.
        app: String,
        /// Cause.
        error: crate::http::ClientError,
    },
    /// A plugin could not be loaded.
    #[error("apps.{app}.plugins.{hook}: {message}")]
    Plugin {
        /// Application id.
        app: String,
        /// `transform`, `signer` or `retry_policy`.
        hook: &'static str,
        /// What went wrong, naming the plugin file.
        message: String,
    },
}

/// Why the applications of a configuration could not be built, by step of the start-up
/// sequence ([`from_config`]).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration lacks what running needs (queues), or a secret is missing or unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(PluginError),
    /// An application could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// How the plugin runtime is made, when an application needs one.
#[derive(Debug, Clone)]
pub struct PluginSetup {
    /// The runtime's options.
    pub options: RuntimeOptions,
    /// Load `x.cwasm` beside a configured `x.wasm` when this engine accepts it (a bundle made
    /// by `squall deploy bundle --precompile`); otherwise the `.wasm` is compiled at start-up.
    pub prefer_artifacts: bool,
}

impl PluginSetup {
    /// `squall run`, the demo and the benches: the options of `[plugins]` (an empty
    /// `cache_dir` = the runtime's default), each plugin file as configured.
    pub fn from_config(config: &Config) -> PluginSetup {
        let mut options = RuntimeOptions {
            pooled_instances: config.plugins.pool_instances,
            ..RuntimeOptions::default()
        };
        if let Some(dir) = &config.plugins.cache_dir {
            options.cache_dir = Some(dir.clone());
        }
        PluginSetup {
            options,
            prefer_artifacts: false,
        }
    }

    /// The Lambda function: no disk cache (/var/task is read-only and every cold start is a
    /// fresh sandbox), artifacts mapped rather than read (nothing rewrites /var/task under a
    /// mapping), and the bundled `.cwasm` artifacts preferred: they are what makes plugin
    /// loading cheap at a cold start. `[plugins] pool_instances` sizes the pool.
    pub fn lambda(config: &Config) -> PluginSetup {
        PluginSetup {
            options: RuntimeOptions {
                cache_dir: None,
                map_artifacts: true,
                pooled_instances: config.plugins.pool_instances,
                ..RuntimeOptions::default()
            },
            prefer_artifacts: true,
        }
    }
}

/// What every application is built with, made once per process.
pub struct AppBuilder {
    /// Made at once when the configuration's applications need it, else by the first
    /// application built that configures a plugin (a registry's).
    runtime: std::sync::OnceLock<PluginRuntime>,
    options: RuntimeOptions,
    making_runtime: std::sync::Mutex<()>,
    prefer_artifacts: bool,
    deliverers: Deliverers,
    visibility_backoff_max_secs: u32,
    tracer: Option<Arc<crate::traces::Tracer>>,
}

impl AppBuilder {
    /// The process-wide parts for `config`'s applications: a plugin runtime made with
    /// `plugins` if any of them configures a plugin, and no HTTP client yet (each is made when
    /// the first application that needs it is built).
    pub fn new(config: &Config, plugins: PluginSetup) -> Result<AppBuilder, PluginError> {
        let runtime = std::sync::OnceLock::new();
        if config.apps.iter().any(|a| a.plugins.any()) {
            let _ = runtime.set(PluginRuntime::new(plugins.options.clone())?);
        }
        Ok(AppBuilder {
            runtime,
            options: plugins.options,
            making_runtime: std::sync::Mutex::new(()),
            prefer_artifacts: plugins.prefer_artifacts,
            deliverers: Deliverers::new(),
            visibility_backoff_max_secs: config.sqs.visibility_backoff_max_secs,
            tracer: crate::traces::Tracer::from_config(config).map(Arc::new),
        })
    }

    /// The trace exporter every application built here shares, if traces are on.
    pub fn tracer(&self) -> Option<Arc<crate::traces::Tracer>> {
        self.tracer.clone()
    }

    /// The plugin runtime, if one was made.
    pub fn runtime(&self) -> Option<&PluginRuntime> {
        self.runtime.get()
    }

    /// The plugin runtime, made now if none was.
    fn runtime_or_make(&self) -> Result<&PluginRuntime, PluginError> {
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let _one_at_a_time = self
            .making_runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.runtime.get() {
            return Ok(r);
        }
        let made = PluginRuntime::new(self.options.clone())?;
        Ok(self.runtime.get_or_init(|| made))
    }

    /// Build one application whose settings arrived after start-up (a registry's): its
    /// plugins' precompiled artifacts preferred as at start-up, the plugin runtime made first
    /// if this is the first application that needs one.
    pub fn build_late(
        &self,
        settings: &AppConfig,
        secrets: Arc<Secrets>,
    ) -> Result<BuiltApp, BuildError> {
        if settings.plugins.any() {
            self.runtime_or_make().map_err(|e| BuildError::Plugin {
                app: settings.id.clone(),
                hook: "runtime",
                message: e.to_string(),
            })?;
        }
        let settings = self
            .prefer_artifacts(std::slice::from_ref(settings))
            .pop()
            .expect("one in, one out");
        self.build(&settings, secrets)
    }

    /// Build one application from its settings and its resolved secrets.
    pub fn build(
        &self,
        settings: &AppConfig,
        secrets: Arc<Secrets>,
    ) -> Result<BuiltApp, BuildError> {
        // Before the split below: the client's mTLS material is among the secrets.
        let delivery = self.deliverers.for_app(settings, &secrets);
        // The OAuth2 client secret goes to the token source only: the signer and the plugins
        // get the other secrets.
        let (secrets, client_secret) = match &settings.oauth2 {
            Some(o) => {
                let (rest, taken) = secrets.split_off(&o.client_secret);
                let newest = taken
                    .and_then(|keys| keys.into_iter().next())
                    .ok_or_else(|| BuildError::MissingSecrets(settings.id.clone()))?;
                (Arc::new(rest), Some(newest))
            }
            None => (secrets, None),
        };
        let hooks = self.hooks(settings, secrets)?;
        let queue_url = settings
            .queue_url
            .clone()
            .ok_or_else(|| BuildError::MissingQueue(settings.id.clone()))?;
        let mut delivery = delivery.map_err(|error| BuildError::Http {
            app: settings.id.clone(),
            error,
        })?;
        if let (Some(config), Some(secret)) = (&settings.oauth2, client_secret) {
            delivery.oauth2 = Some(Arc::new(crate::oauth2::TokenSource::new(
                &settings.id,
                config.clone(),
                secret,
                delivery.deliverer.clone(),
                delivery.opts.timeout,
                Arc::new(crate::pipeline::SystemClock),
            )));
        }
        Ok(BuiltApp {
            app: Arc::new(App {
                id: settings.id.clone(),
                queue_url,
                transform: hooks.transform,
                signer: hooks.signer,
                retry_policy: hooks.retry_policy,
                backoff: settings.backoff(),
                limits: settings.retry_limits(),
                envelope_limits: settings.envelope_limits(),
                signing_key: settings.signing_key.clone(),
                on_plugin_error: settings.on_plugin_error.into(),
                visibility_backoff_max_secs: self.visibility_backoff_max_secs,
                deliver: Arc::new(delivery),
                endpoints: Some(Arc::new(EndpointLimiter::new(
                    settings.max_per_endpoint as usize,
                    Duration::from_secs(settings.endpoint_wait_secs.into()),
                ))),
                registered: RegisteredEndpoints::new(settings.endpoints.clone()),
                health: settings.endpoint_health.enabled.then(|| {
                    Arc::new(crate::health::HealthMap::new(
                        &settings.id,
                        crate::health::HealthSettings {
                            // A probe reports within the HTTP timeout; a few seconds more, then
                            // another probe replaces it.
                            probe_timeout_ms: settings.timeout_ms + 5_000,
                            ..settings.endpoint_health.settings
                        },
                    ))
                }),
                tracer: self.tracer.clone(),
            }),
            max_concurrency: settings.max_concurrency as usize,
        })
    }

    /// The hooks of one application: plugins where configured (loaded, compiled and validated
    /// now, through the runtime), the built-ins for the others.
    fn hooks(&self, app: &AppConfig, secrets: Arc<Secrets>) -> Result<AppHooks, BuildError> {
        let mut hooks = AppHooks {
            transform: Arc::new(PassThrough),
            signer: Arc::new(StandardWebhooksSigner::new(secrets.clone())),
            retry_policy: Arc::new(BackoffPolicy {
                backoff: app.backoff(),
            }),
        };
        let runtime = |hook: &'static str| -> Result<&PluginRuntime, BuildError> {
            self.runtime.get().ok_or_else(|| BuildError::Plugin {
                app: app.id.clone(),
                hook,
                message: "no plugin runtime was created".into(),
            })
        };
        let err = |hook: &'static str| {
            move |e: PluginError| BuildError::Plugin {
                app: app.id.clone(),
                hook,
                message: e.to_string(),
            }
        };
        let p = &app.plugins;
        if let Some(c) = &p.transform {
            hooks.transform = runtime("transform")?
                .transform(&app.id, &c.into(), secrets.clone())
                .map_err(err("transform"))?;
        }
        if let Some(c) = &p.signer {
            hooks.signer = runtime("signer")?
                .signer(&app.id, &c.into(), secrets.clone())
                .map_err(err("signer"))?;
        }
        if let Some(c) = &p.retry_policy {
            hooks.retry_policy = runtime("retry_policy")?
                .retry_policy(&app.id, &c.into(), secrets)
                .map_err(err("retry_policy"))?;
        }
        Ok(hooks)
    }

    /// With [`PluginSetup::prefer_artifacts`], the applications' settings with each plugin path
    /// replaced by its precompiled artifact ([`artifact_path`]) when it exists and this engine
    /// accepts it; otherwise the `.wasm` stays (compiled when the application is built) and a
    /// warning says why the artifact was not used. The artifacts of all the applications are
    /// loaded side by side, so the hooks built next find them loaded. Without the option, or
    /// without a runtime, the settings as given.
    pub fn prefer_artifacts(&self, apps: &[AppConfig]) -> Vec<AppConfig> {
        let mut apps = apps.to_vec();
        let Some(runtime) = self.runtime.get().filter(|_| self.prefer_artifacts) else {
            return apps;
        };
        // (app index, hook position in `by_hook`, artifact path, pinned digest)
        let mut candidates = Vec::new();
        for (i, app) in apps.iter().enumerate() {
            for (j, (_, cfg)) in app.plugins.by_hook().into_iter().enumerate() {
                let Some(cfg) = cfg else { continue };
                let artifact = artifact_path(&cfg.path);
                if artifact != cfg.path && artifact.exists() {
                    candidates.push((i, j, artifact, cfg.sha256));
                }
            }
        }
        // A pinned artifact must carry the pinned source digest; one that does not is not used
        // (the warning names both digests) and the `.wasm` is then held to the pin in its place.
        let paths: Vec<(&Path, Option<[u8; 32]>)> = candidates
            .iter()
            .map(|(_, _, a, pin)| (a.as_path(), *pin))
            .collect();
        let loaded = runtime.inspect_all(&paths);
        for ((i, j, artifact, _), result) in candidates.into_iter().zip(loaded) {
            let app = &mut apps[i];
            let (hook, cfg) = app
                .plugins
                .by_hook_mut()
                .into_iter()
                .nth(j)
                .expect("3 hooks");
            let cfg = cfg.expect("a candidate has a plugin");
            match result {
                Ok(_) => cfg.path = artifact,
                Err(e) => {
                    tracing::warn!(app = %app.id, hook, artifact = %artifact.display(), error = %e,
                    "bundled precompiled plugin not usable by this engine; compiling the .wasm at init")
                }
            }
        }
        apps
    }
}

/// An application's three hooks.
struct AppHooks {
    transform: Arc<dyn Transform>,
    signer: Arc<dyn Signer>,
    retry_policy: Arc<dyn RetryPolicy>,
}

/// `x.wasm` -> `x.cwasm`: where `squall deploy bundle --precompile` puts the artifact.
pub fn artifact_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("cwasm")
}

/// The applications of a configuration, built, and what they were built with.
pub struct Apps {
    /// The process-wide parts (keep it while the applications run: a registry builds more
    /// applications with it).
    pub builder: AppBuilder,
    /// Every configured application, in the configuration's order (by id).
    pub built: Vec<BuiltApp>,
}

/// The start-up sequence of `squall run` and the Lambda init: check that every application has
/// its queue and the dead-letter queue is set, resolve every secret (all problems reported
/// together), make the process-wide parts, then build each application.
pub fn from_config(config: &Config, plugins: PluginSetup) -> Result<Apps, StartupError> {
    config.require_queues()?;
    let secrets: BTreeMap<String, Arc<Secrets>> = config::resolve_secrets(config)?;
    let builder = AppBuilder::new(config, plugins).map_err(StartupError::Runtime)?;
    let settings = builder.prefer_artifacts(&config.apps);
    let mut built = Vec::with_capacity(settings.len());
    for app in &settings {
        let s = secrets
            .get(&app.id)
            .cloned()
            .ok_or_else(|| BuildError::MissingSecrets(app.id.clone()))?;
        built.push(builder.build(app, s)?);
    }
    Ok(Apps { builder, built })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PluginErrorPolicy;

    fn config(extra: &str, dir: &Path) -> Config {
        let text = format!(
            r#"
allow_literal_secrets = true
[sqs]
dead_letter_queue_url = "http://127.0.0.1:9/123/dlq"
visibility_backoff_max_secs = 600
[apps.billing]
queue_url = "http://127.0.0.1:9/123/billing"
max_concurrency = 7
max_per_endpoint = 3
on_plugin_error = "dead-letter"
secrets = {{ default = "literal:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }}
[apps.billing.retry]
max_attempts = 4
{extra}
"#
        );
        Config::from_toml_str(&text, dir, Vec::new()).unwrap()
    }

    #[test]
    fn an_application_is_built_from_its_settings_with_the_built_ins() {
        let c = config("", Path::new("."));
        let apps = from_config(&c, PluginSetup::from_config(&c)).unwrap();
        assert!(apps.builder.runtime().is_none(), "no plugin, no runtime");
        let [b] = apps.built.as_slice() else {
            panic!("one app")
        };
        assert_eq!(b.max_concurrency, 7);
        let a = &b.app;
        assert_eq!(
            (a.id.as_str(), a.queue_url.as_str()),
            ("billing", "http://127.0.0.1:9/123/billing")
        );
        assert_eq!(a.limits.max_attempts, 4);
        assert_eq!(a.on_plugin_error, PluginErrorPolicy::DeadLetter);
        assert_eq!(a.visibility_backoff_max_secs, 600);
        assert!(a.endpoints.is_some());
        assert_eq!(a.transform.identity(), "builtin:pass-through");
        assert_eq!(a.signer.identity(), "builtin:standard-webhooks");
    }

    #[test]
    fn the_start_up_sequence_stops_at_the_first_failing_step_naming_it() {
        // No dead-letter queue: refused before any secret is read.
        let c = Config::from_toml_str(
            "[apps.a]\nqueue_url = \"http://q/1/a\"\nsecrets = { default = \"env:SQUALL_TEST_UNSET_SECRET\" }",
            Path::new("."),
            Vec::new(),
        )
        .unwrap();
        let e = from_config(&c, PluginSetup::from_config(&c)).err().unwrap();
        assert!(matches!(e, StartupError::Config(_)), "{e}");
        assert!(e.to_string().contains("sqs.dead_letter_queue_url"), "{e}");

        // A plugin that is not a component: the runtime is made, the plugin named by its key.
        let dir = std::env::temp_dir().join(format!("squall-apps-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.wasm"), b"not wasm").unwrap();
        std::fs::write(dir.join("bad.cwasm"), b"not an artifact").unwrap();
        let c = config(
            "[apps.billing.plugins.transform]\npath = \"bad.wasm\"",
            &dir,
        );
        let builder = AppBuilder::new(&c, PluginSetup::lambda(&c)).unwrap();
        assert!(builder.runtime().is_some());
        // An artifact this engine refuses is not used: the .wasm stays.
        let preferred = builder.prefer_artifacts(&c.apps);
        assert_eq!(
            preferred[0].plugins.transform.as_ref().unwrap().path,
            dir.join("bad.wasm")
        );
        let e = from_config(&c, PluginSetup::from_config(&c)).err().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let StartupError::Build(BuildError::Plugin { app, hook, .. }) = &e else {
            panic!("{e}")
        };
        assert_eq!((app.as_str(), *hook), ("billing", "transform"));
        assert!(
            e.to_string()
                .starts_with("apps.billing.plugins.transform: "),
            "{e}"
        );
    }
}
