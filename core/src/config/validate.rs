//! The configuration as written (raw shapes, deserialized with `deny_unknown_fields`) and its
//! validation into the typed [`Config`]: ranges, URLs, CIDR networks, secret references, plugin
//! limits, each error naming its key path.

use serde::de::{self, Deserializer, Visitor};
use toml::{Table, Value};

use super::layering::{Origins, apply_env, env_form, merge, parse_table, typed};
use super::*;
use crate::endpoints::{Endpoint, EndpointTable, MAX_ENDPOINTS_PER_APP};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    allow_literal_secrets: bool,
    sqs: RawSqs,
    runner: RawRunner,
    plugins: RawPlugins,
    lambda: RawLambda,
    traces: RawTraces,
    registry: RawRegistry,
    app_defaults: Table,
    #[serde(default)]
    apps: BTreeMap<String, Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSqs {
    region: String,
    endpoint_url: String,
    dead_letter_queue_url: String,
    metrics_queue_url: String,
    shared_queue_url: String,
    wait_time_secs: u32,
    receive_batch: u32,
    visibility_backoff_max_secs: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    shutdown_grace_secs: u64,
    shared_concurrency: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugins {
    cache_dir: String,
    pool_instances: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLambda {
    architecture: Architecture,
    memory_mb: u32,
    timeout_secs: u64,
    log_retention_days: u32,
    emf_namespace: String,
    egress: RawEgress,
    egress_azs: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawEgress {
    Default,
    FixedIps,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraces {
    otlp_endpoint: String,
    service_name: String,
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    backend: RegistryBackend,
    table: String,
    ttl_secs: u64,
    max_cached_apps: usize,
    endpoint_url: String,
    secret_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppSettings {
    connect_timeout_ms: u64,
    timeout_ms: u64,
    max_response_bytes: usize,
    max_body_bytes: usize,
    max_concurrency: u32,
    max_per_endpoint: u32,
    endpoint_wait_secs: u32,
    allowed_networks: Vec<String>,
    on_plugin_error: OnPluginError,
    signing_key: String,
    secret_format: SecretFormat,
    tls_client_cert: String,
    tls_client_key: String,
    tls_ca: String,
    retry: RawRetry,
    plugin_limits: RawPluginLimits,
    lambda: RawAppLambda,
    endpoint_health: RawEndpointHealth,
    oauth2: RawOAuth2,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2 {
    token_url: String,
    client_id: String,
    client_secret: String,
    scope: String,
    audience: String,
    origins: Vec<String>,
    refresh_before_secs: u64,
    auth_method: crate::oauth2::AuthMethod,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpointHealth {
    enabled: bool,
    failure_threshold: u32,
    open_secs: u32,
    open_max_secs: u32,
    max_rate: f64,
    disable_after_secs: u64,
    shared_ttl_secs: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: u32,
    horizon_secs: u64,
    initial_delay_secs: u32,
    multiplier: f64,
    max_delay_secs: u32,
    jitter: f64,
    retry_after_max_secs: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginLimits {
    timeout_ms: u64,
    memory_bytes: usize,
    max_output_bytes: usize,
    isolation: Isolation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppLambda {
    batch_size: u32,
    batching_window_secs: u32,
    age_alarm_secs: u64,
}

/// Keys that exist only per application (not in `app_defaults`).
const APP_ONLY_KEYS: &[&str] = &["queue_url", "secrets", "plugins", "endpoints"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAppOnly {
    #[serde(default)]
    queue_url: String,
    #[serde(default)]
    secrets: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    plugins: RawAppPlugins,
    #[serde(default)]
    endpoints: BTreeMap<String, RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: String,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    signing_key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAppPlugins {
    transform: Option<RawPlugin>,
    signer: Option<RawPlugin>,
    retry_policy: Option<RawPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: String,
    #[serde(default)]
    config: BTreeMap<String, Scalar>,
    timeout_ms: Option<u64>,
    memory_bytes: Option<usize>,
    max_output_bytes: Option<usize>,
    isolation: Option<Isolation>,
    sha256: Option<String>,
}

/// A plugin config value: string, number or boolean, kept as text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean (plugin config values are text)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A secret reference or a list of them.
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OneOrMany, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret reference (\"env:NAME\") or an array of them, newest first")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Loading and validation.

pub(super) fn load_inner(
    user: Option<&str>,
    base_dir: &Path,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut root = parse_table(DEFAULTS_TOML, "built-in defaults")?;
    if let Some(text) = user {
        merge(&mut root, parse_table(text, origin)?);
    }
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    env.sort();
    let mut origins = Origins {
        file: origin.to_string(),
        env: Vec::new(),
    };
    for (var, value) in &env {
        let path = apply_env(&mut root, var, value)?;
        origins.env.push((path, var.clone()));
    }
    let raw: RawRoot = typed(Value::Table(root), "", &origins)?;
    build(raw, base_dir, &origins)
}

fn build(raw: RawRoot, base_dir: &Path, o: &Origins) -> Result<Config, ConfigError> {
    let sqs = build_sqs(raw.sqs, o)?;
    if raw.runner.shutdown_grace_secs > 3600 {
        return Err(o.invalid("runner.shutdown_grace_secs", "must be 0-3600"));
    }
    in_range(
        "runner.shared_concurrency".into(),
        raw.runner.shared_concurrency,
        1,
        10_000,
        o,
    )?;
    let lambda = build_lambda(raw.lambda, o)?;
    let traces = build_traces(raw.traces, o)?;
    let cache_dir = resolve_cache_dir(&raw.plugins.cache_dir, base_dir);
    if !(1..=10_000).contains(&raw.plugins.pool_instances) {
        return Err(o.invalid("plugins.pool_instances", "must be 1-10000"));
    }

    // app_defaults on its own first, so a bad default is named where it is written.
    for key in APP_ONLY_KEYS {
        if raw.app_defaults.contains_key(*key) {
            return Err(o.invalid(
                format!("app_defaults.{key}"),
                format!("{key} is set per application, under [apps.NAME]"),
            ));
        }
    }
    let defaults: RawAppSettings =
        typed(Value::Table(raw.app_defaults.clone()), "app_defaults", o)?;
    check_settings(&defaults, "app_defaults", o)?;

    let registry = build_registry(raw.registry, &sqs, o)?;

    let mut apps = Vec::with_capacity(raw.apps.len());
    let mut env_names: BTreeMap<String, String> = BTreeMap::new();
    for (id, table) in raw.apps {
        if let Some(other) = env_names.insert(env_form(&id), id.clone()) {
            return Err(o.invalid(
                format!("apps.{id}"),
                format!(
                    "apps.{other} and apps.{id} have the same environment variable form {}; rename one",
                    env_form(&id)
                ),
            ));
        }
        apps.push(app_from_table(
            id,
            table,
            &raw.app_defaults,
            raw.allow_literal_secrets,
            base_dir,
            o,
        )?);
    }
    Ok(Config {
        path: None,
        base_dir: base_dir.to_path_buf(),
        allow_literal_secrets: raw.allow_literal_secrets,
        sqs,
        runner: RunnerConfig {
            shutdown_grace_secs: raw.runner.shutdown_grace_secs,
            shared_concurrency: raw.runner.shared_concurrency,
        },
        plugins: PluginsConfig {
            cache_dir,
            pool_instances: raw.plugins.pool_instances,
        },
        lambda,
        traces,
        registry,
        apps,
        app_defaults: raw.app_defaults,
    })
}

/// One application from its table (`[apps.ID]` of a file, or a registry item's settings) laid
/// over `[app_defaults]`, validated with every error naming `apps.ID.key`.
fn app_from_table(
    id: String,
    mut table: Table,
    defaults: &Table,
    allow_literal: bool,
    base_dir: &Path,
    o: &Origins,
) -> Result<AppConfig, ConfigError> {
    let prefix = format!("apps.{id}");
    check_app_id(&id, o)?;
    let mut only = Table::new();
    for key in APP_ONLY_KEYS {
        if let Some(v) = table.remove(*key) {
            only.insert(key.to_string(), v);
        }
    }
    let only: RawAppOnly = typed(Value::Table(only), &prefix, o)?;
    let mut merged = defaults.clone();
    merge(&mut merged, table);
    let settings: RawAppSettings = typed(Value::Table(merged), &prefix, o)?;
    check_settings(&settings, &prefix, o)?;
    build_app(id, settings, only, allow_literal, base_dir, o)
}

/// An application whose settings arrive after start-up (a registry item's TOML text, `origin`
/// naming it in errors), built as `[apps.ID]` of the loaded configuration would be. `endpoints`
/// are the registry item's endpoints (id and the TOML body of each), added as
/// `[apps.ID.endpoints.EID]` tables; the settings text itself may not hold `endpoints`.
pub(super) fn app_from_toml(
    config: &Config,
    id: &str,
    text: &str,
    endpoints: &BTreeMap<String, String>,
    origin: &str,
) -> Result<AppConfig, ConfigError> {
    let o = Origins {
        file: origin.to_string(),
        env: Vec::new(),
    };
    let mut table = parse_table(text, origin)?;
    if table.contains_key("endpoints") {
        return Err(o.invalid(
            format!("apps.{id}.endpoints"),
            "a registry item's endpoints are kept apart from its settings: manage them with \
             `squall endpoints` (or list them as [apps.ID.endpoints.EID] in a file given to \
             `squall apps import`)",
        ));
    }
    if !endpoints.is_empty() {
        let mut tables = Table::new();
        for (eid, body) in endpoints {
            let t = parse_table(body, &format!("{origin}, endpoint {eid}"))?;
            tables.insert(eid.clone(), Value::Table(t));
        }
        table.insert("endpoints".into(), Value::Table(tables));
    }
    app_from_table(
        id.to_string(),
        table,
        &config.app_defaults,
        config.allow_literal_secrets,
        &config.base_dir,
        &o,
    )
}

fn build_registry(
    raw: RawRegistry,
    sqs: &SqsConfig,
    o: &Origins,
) -> Result<RegistryConfig, ConfigError> {
    in_range("registry.ttl_secs".into(), raw.ttl_secs, 1, 3600, o)?;
    in_range(
        "registry.max_cached_apps".into(),
        raw.max_cached_apps,
        1,
        100_000,
        o,
    )?;
    let endpoint_url = match non_empty(raw.endpoint_url) {
        Some(url) => {
            check_url("registry.endpoint_url", &url, o)?;
            Some(url)
        }
        None => sqs.endpoint_url.clone(),
    };
    let path = raw.secret_path.trim();
    if !(path.starts_with('/') && path.ends_with('/') && is_ssm_name(path.trim_end_matches('/')))
        && path != "/"
    {
        return Err(o.invalid(
            "registry.secret_path",
            "must be an SSM parameter path starting and ending with '/' (letters, digits, \
             '_', '.', '-', '/')",
        ));
    }
    let table = non_empty(raw.table);
    if raw.backend == RegistryBackend::Dynamodb {
        match &table {
            None => {
                return Err(o.invalid(
                    "registry.table",
                    "is empty: backend = \"dynamodb\" needs the table's name",
                ));
            }
            Some(t) if !is_table_name(t) => {
                return Err(o.invalid(
                    "registry.table",
                    "a DynamoDB table name is 3-255 letters, digits, '_', '-' or '.'",
                ));
            }
            Some(_) => {}
        }
    }
    Ok(RegistryConfig {
        backend: raw.backend,
        table,
        ttl: Duration::from_secs(raw.ttl_secs),
        max_cached_apps: raw.max_cached_apps,
        endpoint_url,
        secret_path: path.to_string(),
    })
}

fn is_table_name(s: &str) -> bool {
    (3..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An SSM parameter name: `/`-separated, letters, digits, `_`, `.`, `-`, at most 2048 bytes.
fn is_ssm_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 2048
        && !s.contains("//")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

fn non_empty(s: String) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn check_url(key: &str, value: &str, o: &Origins) -> Result<(), ConfigError> {
    let url = url::Url::parse(value)
        .map_err(|e| o.invalid(key, format!("{value:?} is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(o.invalid(key, format!("{value:?} must be an http or https URL")));
    }
    Ok(())
}

/// A queue URL: an http(s) URL that does not name a FIFO queue. FIFO queues would refuse
/// what Squall sends them (a retry's or deferral's copy carries `DelaySeconds` and no
/// `MessageGroupId`; so would a dead letter or a metrics record): every such send would fail
/// and the message come back again and again, so they are refused here, at start-up.
fn check_queue_url(key: &str, value: &str, o: &Origins) -> Result<(), ConfigError> {
    check_url(key, value, o)?;
    let name = value.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if name.ends_with(".fifo") {
        return Err(o.invalid(
            key,
            format!(
                "{value:?} is a FIFO queue: Squall does not support FIFO queues yet (its \
                 re-sends carry DelaySeconds and no MessageGroupId, which FIFO queues refuse); \
                 use a standard queue"
            ),
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + fmt::Display + Copy>(
    key: String,
    v: T,
    lo: T,
    hi: T,
    o: &Origins,
) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(o.invalid(key, format!("{v} is out of range: must be {lo}-{hi}")));
    }
    Ok(())
}

fn build_sqs(raw: RawSqs, o: &Origins) -> Result<SqsConfig, ConfigError> {
    let sqs = SqsConfig {
        region: non_empty(raw.region),
        endpoint_url: non_empty(raw.endpoint_url),
        dead_letter_queue_url: non_empty(raw.dead_letter_queue_url),
        metrics_queue_url: non_empty(raw.metrics_queue_url),
        shared_queue_url: non_empty(raw.shared_queue_url),
        wait_time_secs: raw.wait_time_secs,
        receive_batch: raw.receive_batch,
        visibility_backoff_max_secs: raw.visibility_backoff_max_secs,
    };
    if let Some(v) = &sqs.endpoint_url {
        check_url("sqs.endpoint_url", v, o)?;
    }
    for (key, v) in [
        ("sqs.dead_letter_queue_url", &sqs.dead_letter_queue_url),
        ("sqs.metrics_queue_url", &sqs.metrics_queue_url),
        ("sqs.shared_queue_url", &sqs.shared_queue_url),
    ] {
        if let Some(v) = v {
            check_queue_url(key, v, o)?;
        }
    }
    in_range("sqs.wait_time_secs".into(), sqs.wait_time_secs, 0, 20, o)?;
    in_range("sqs.receive_batch".into(), sqs.receive_batch, 1, 10, o)?;
    // Not 43,200 (ChangeMessageVisibility's limit): a longer wait by visibility would keep the
    // message in flight for hours, and the re-send path tops out at DelaySeconds' 900.
    in_range(
        "sqs.visibility_backoff_max_secs".into(),
        sqs.visibility_backoff_max_secs,
        0,
        900,
        o,
    )?;
    Ok(sqs)
}

fn build_traces(raw: RawTraces, o: &Origins) -> Result<TracesConfig, ConfigError> {
    let endpoint = raw.otlp_endpoint.trim();
    let otlp_endpoint = if endpoint.is_empty() {
        None
    } else {
        match url::Url::parse(endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Some(endpoint.to_string())
            }
            _ => {
                return Err(o.invalid(
                    "traces.otlp_endpoint",
                    format!("{endpoint:?} is not an http(s) URL (a collector's OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces), or \"\" for no traces"),
                ));
            }
        }
    };
    if raw.service_name.trim().is_empty() {
        return Err(o.invalid("traces.service_name", "is empty"));
    }
    in_range("traces.timeout_ms".into(), raw.timeout_ms, 1, 60_000, o)?;
    Ok(TracesConfig {
        otlp_endpoint,
        service_name: raw.service_name.trim().to_string(),
        timeout_ms: raw.timeout_ms,
    })
}

fn build_lambda(raw: RawLambda, o: &Origins) -> Result<LambdaConfig, ConfigError> {
    in_range("lambda.memory_mb".into(), raw.memory_mb, 128, 10_240, o)?;
    in_range("lambda.timeout_secs".into(), raw.timeout_secs, 0, 900, o)?;
    in_range(
        "lambda.log_retention_days".into(),
        raw.log_retention_days,
        1,
        3653,
        o,
    )?;
    let emf_namespace = match raw.emf_namespace.trim() {
        "" => {
            return Err(o.invalid(
                "lambda.emf_namespace",
                "is empty: give a CloudWatch namespace, or \"off\" to print no EMF lines",
            ));
        }
        "off" => None,
        ns => Some(ns.to_string()),
    };
    // Checked whatever `egress` says, so a bad value is found before it is switched on.
    in_range("lambda.egress_azs".into(), raw.egress_azs, 1, 3, o)?;
    let egress = match raw.egress {
        RawEgress::Default => Egress::Default,
        RawEgress::FixedIps => Egress::FixedIps {
            azs: raw.egress_azs as u8,
        },
    };
    Ok(LambdaConfig {
        architecture: raw.architecture,
        memory_mb: raw.memory_mb,
        timeout_secs: (raw.timeout_secs > 0).then_some(raw.timeout_secs),
        log_retention_days: raw.log_retention_days,
        emf_namespace,
        egress,
    })
}

fn resolve_cache_dir(value: &str, base_dir: &Path) -> Option<PathBuf> {
    let value = value.trim();
    (!value.is_empty()).then(|| base_dir.join(value))
}

fn check_app_id(id: &str, o: &Origins) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(o.invalid(
            format!("apps.{id}"),
            "an application id must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'",
        ));
    }
    Ok(())
}

fn is_key_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= envelope::MAX_SIGNING_KEY_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_settings(s: &RawAppSettings, p: &str, o: &Origins) -> Result<(), ConfigError> {
    let k = |name: &str| format!("{p}.{name}");
    let h = &s.endpoint_health;
    in_range(
        k("endpoint_health.failure_threshold"),
        h.failure_threshold,
        1,
        1000,
        o,
    )?;
    in_range(k("endpoint_health.open_secs"), h.open_secs, 1, 900, o)?;
    in_range(
        k("endpoint_health.open_max_secs"),
        h.open_max_secs,
        h.open_secs,
        900,
        o,
    )?;
    if !(h.max_rate.is_finite() && (0.0..=100_000.0).contains(&h.max_rate)) {
        return Err(o.invalid(
            k("endpoint_health.max_rate"),
            "must be 0 (no cap) to 100000 requests per second",
        ));
    }
    in_range(
        k("endpoint_health.disable_after_secs"),
        h.disable_after_secs,
        1,
        crate::config::MAX_HORIZON_SECS,
        o,
    )?;
    in_range(
        k("endpoint_health.shared_ttl_secs"),
        h.shared_ttl_secs,
        1,
        300,
        o,
    )?;
    in_range(k("connect_timeout_ms"), s.connect_timeout_ms, 1, 600_000, o)?;
    in_range(k("timeout_ms"), s.timeout_ms, 1, 900_000, o)?;
    if s.connect_timeout_ms > s.timeout_ms {
        return Err(o.invalid(
            k("connect_timeout_ms"),
            format!(
                "{} is longer than timeout_ms ({}), which includes the connect",
                s.connect_timeout_ms, s.timeout_ms
            ),
        ));
    }
    in_range(
        k("max_response_bytes"),
        s.max_response_bytes,
        0,
        16 << 20,
        o,
    )?;
    in_range(
        k("max_body_bytes"),
        s.max_body_bytes,
        1,
        envelope::DEFAULT_MAX_BODY_BYTES,
        o,
    )?;
    in_range(k("max_concurrency"), s.max_concurrency, 1, 100_000, o)?;
    in_range(
        k("max_per_endpoint"),
        s.max_per_endpoint,
        1,
        s.max_concurrency,
        o,
    )?;
    in_range(k("endpoint_wait_secs"), s.endpoint_wait_secs, 0, 300, o)?;
    if let Err((i, e)) = Allowlist::parse(&s.allowed_networks) {
        return Err(o.invalid(format!("{p}.allowed_networks[{i}]"), e.to_string()));
    }
    if !is_key_name(&s.signing_key) {
        return Err(o.invalid(
            k("signing_key"),
            "must be a key name of 1-128 letters, digits, '_', '-' or '.'",
        ));
    }
    let r = &s.retry;
    in_range(k("retry.max_attempts"), r.max_attempts, 1, 10_000, o)?;
    in_range(
        k("retry.horizon_secs"),
        r.horizon_secs,
        1,
        MAX_HORIZON_SECS,
        o,
    )
    .map_err(|e| {
        add_hint(
            e,
            "the horizon must fit in the SQS retention maximum of 14 days",
        )
    })?;
    in_range(
        k("retry.initial_delay_secs"),
        r.initial_delay_secs,
        1,
        43_200,
        o,
    )?;
    if !(r.multiplier.is_finite() && (1.0..=100.0).contains(&r.multiplier)) {
        return Err(o.invalid(
            k("retry.multiplier"),
            format!("{} is out of range: must be 1.0-100.0", r.multiplier),
        ));
    }
    in_range(
        k("retry.max_delay_secs"),
        r.max_delay_secs,
        r.initial_delay_secs,
        u32::try_from(MAX_HORIZON_SECS).unwrap_or(u32::MAX),
        o,
    )?;
    if !(r.jitter.is_finite() && (0.0..=1.0).contains(&r.jitter)) {
        return Err(o.invalid(
            k("retry.jitter"),
            format!("{} is out of range: must be 0.0-1.0", r.jitter),
        ));
    }
    in_range(
        k("retry.retry_after_max_secs"),
        r.retry_after_max_secs,
        1,
        u32::try_from(MAX_HORIZON_SECS).unwrap_or(u32::MAX),
        o,
    )?;
    check_plugin_limits(
        &format!("{p}.plugin_limits"),
        s.plugin_limits.timeout_ms,
        s.plugin_limits.memory_bytes,
        s.plugin_limits.max_output_bytes,
        o,
    )?;
    in_range(k("lambda.batch_size"), s.lambda.batch_size, 1, 10_000, o)?;
    in_range(
        k("lambda.batching_window_secs"),
        s.lambda.batching_window_secs,
        0,
        300,
        o,
    )?;
    in_range(
        k("lambda.age_alarm_secs"),
        s.lambda.age_alarm_secs,
        60,
        MAX_HORIZON_SECS,
        o,
    )?;
    Ok(())
}

fn add_hint(e: ConfigError, hint: &str) -> ConfigError {
    match e {
        ConfigError::Invalid {
            origin,
            key,
            message,
        } => ConfigError::Invalid {
            origin,
            key,
            message: format!("{message} ({hint})"),
        },
        other => other,
    }
}

fn check_plugin_limits(
    p: &str,
    timeout_ms: u64,
    memory_bytes: usize,
    max_output_bytes: usize,
    o: &Origins,
) -> Result<(), ConfigError> {
    in_range(format!("{p}.timeout_ms"), timeout_ms, 1, 60_000, o)?;
    in_range(
        format!("{p}.memory_bytes"),
        memory_bytes,
        1 << 20,
        4 << 30,
        o,
    )?;
    in_range(
        format!("{p}.max_output_bytes"),
        max_output_bytes,
        1024,
        16 << 20,
        o,
    )?;
    Ok(())
}

fn parse_secret_ref(
    value: &str,
    key: &str,
    allow_literal: bool,
    o: &Origins,
) -> Result<SecretRef, ConfigError> {
    if let Some(name) = value.strip_prefix("env:") {
        let ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(o.invalid(
                key,
                format!("env:{name} does not name an environment variable (letters, digits, '_')"),
            ));
        }
        return Ok(SecretRef::Env(name.to_string()));
    }
    if let Some(v) = value.strip_prefix("literal:") {
        if !allow_literal {
            return Err(o.invalid(
                key,
                "literal: secrets are refused unless allow_literal_secrets = true (local demos \
                 only); use env:NAME",
            ));
        }
        // Check the value now, so a bad literal fails at load; never echo it.
        SecretKey::parse(v).map_err(|e| o.invalid(key, format!("literal secret: {e}")))?;
        return Ok(SecretRef::Literal(v.to_string()));
    }
    if let Some(name) = value.strip_prefix("ssm:") {
        if !is_ssm_name(name) {
            return Err(o.invalid(
                key,
                format!(
                    "ssm:{name} does not name an SSM parameter (letters, digits, '_', '.', '-', \
                     '/'; at most 2048)"
                ),
            ));
        }
        return Ok(SecretRef::Ssm(name.to_string()));
    }
    if value.starts_with("arn:aws:secretsmanager:") {
        return Err(o.invalid(
            key,
            "AWS Secrets Manager references are not supported; store the secret as an SSM \
             SecureString parameter and write ssm:NAME (or pass it in an environment variable: \
             env:NAME)",
        ));
    }
    Err(o.invalid(
        key,
        "a secret reference must start with env: or ssm: (or literal: for local demos); the \
         value is not shown",
    ))
}

fn build_plugin(
    raw: RawPlugin,
    key: &str,
    app_limits: PluginLimitsConfig,
    base_dir: &Path,
    o: &Origins,
) -> Result<PluginConfig, ConfigError> {
    if raw.path.trim().is_empty() {
        return Err(o.invalid(format!("{key}.path"), "must name a plugin component file"));
    }
    let path = base_dir.join(raw.path.trim());
    let limits = PluginLimitsConfig {
        timeout_ms: raw.timeout_ms.unwrap_or(app_limits.timeout_ms),
        memory_bytes: raw.memory_bytes.unwrap_or(app_limits.memory_bytes),
        max_output_bytes: raw.max_output_bytes.unwrap_or(app_limits.max_output_bytes),
        isolation: raw.isolation.unwrap_or(app_limits.isolation),
    };
    check_plugin_limits(
        key,
        limits.timeout_ms,
        limits.memory_bytes,
        limits.max_output_bytes,
        o,
    )?;
    let sha256 = match raw.sha256 {
        None => None,
        Some(text) => Some(parse_sha256(&text).ok_or_else(|| {
            o.invalid(
                format!("{key}.sha256"),
                format!(
                    "{text:?} is not a SHA-256 digest (64 hex digits; `squall plugin check FILE` prints the one to pin)"
                ),
            )
        })?),
    };
    Ok(PluginConfig {
        key: key.to_string(),
        path,
        config: raw.config.into_iter().map(|(k, v)| (k, v.0)).collect(),
        limits,
        sha256,
    })
}

/// A SHA-256 digest written as 64 hex digits (either case).
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

fn build_app(
    id: String,
    s: RawAppSettings,
    only: RawAppOnly,
    allow_literal: bool,
    base_dir: &Path,
    o: &Origins,
) -> Result<AppConfig, ConfigError> {
    let p = format!("apps.{id}");
    let queue_url = non_empty(only.queue_url);
    if let Some(q) = &queue_url {
        check_queue_url(&format!("{p}.queue_url"), q, o)?;
    }
    let mut secrets = BTreeMap::new();
    for (name, refs) in only.secrets {
        let key = format!("{p}.secrets.{name}");
        if !is_key_name(&name) {
            return Err(o.invalid(
                key,
                "a secret name must be 1-128 letters, digits, '_', '-' or '.'",
            ));
        }
        if refs.0.is_empty() {
            return Err(o.invalid(key, "needs at least one secret reference"));
        }
        let refs = refs
            .0
            .iter()
            .enumerate()
            .map(|(i, r)| parse_secret_ref(r, &format!("{key}[{i}]"), allow_literal, o))
            .collect::<Result<Vec<_>, _>>()?;
        secrets.insert(name, refs);
    }
    let plugin_limits = PluginLimitsConfig {
        timeout_ms: s.plugin_limits.timeout_ms,
        memory_bytes: s.plugin_limits.memory_bytes,
        max_output_bytes: s.plugin_limits.max_output_bytes,
        isolation: s.plugin_limits.isolation,
    };
    let plugin = |raw: Option<RawPlugin>, hook: &str| {
        raw.map(|r| {
            build_plugin(
                r,
                &format!("{p}.plugins.{hook}"),
                plugin_limits,
                base_dir,
                o,
            )
        })
        .transpose()
    };
    let plugins = AppPlugins {
        transform: plugin(only.plugins.transform, "transform")?,
        signer: plugin(only.plugins.signer, "signer")?,
        retry_policy: plugin(only.plugins.retry_policy, "retry_policy")?,
    };
    // The built-in signer needs the default key; a signer plugin may use other names.
    if plugins.signer.is_none() && !secrets.contains_key(&s.signing_key) {
        return Err(o.invalid(
            format!("{p}.secrets"),
            format!(
                "no secret named {:?} (the signing_key the built-in signer uses); add \
                 secrets = {{ {} = [\"env:VARIABLE\"] }}",
                s.signing_key, s.signing_key
            ),
        ));
    }
    // mTLS material: secret names, checked like signing_key; the PEM itself when the
    // application is built (its secrets resolved).
    let secret_name = |key: &str, v: &str| -> Result<Option<String>, ConfigError> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        if !secrets.contains_key(v) {
            return Err(o.invalid(
                format!("{p}.{key}"),
                format!(
                    "no secret named {v:?} in {p}.secrets (it names the secret holding the PEM)"
                ),
            ));
        }
        Ok(Some(v.to_string()))
    };
    let tls_client_cert = secret_name("tls_client_cert", &s.tls_client_cert)?;
    let tls_client_key = secret_name("tls_client_key", &s.tls_client_key)?;
    let tls_ca = secret_name("tls_ca", &s.tls_ca)?;
    if tls_client_cert.is_some() != tls_client_key.is_some() {
        return Err(o.invalid(
            format!("{p}.tls_client_key"),
            "tls_client_cert and tls_client_key go together: set both, or neither",
        ));
    }
    let allowed_networks = Allowlist::parse(&s.allowed_networks)
        .map_err(|(i, e)| o.invalid(format!("{p}.allowed_networks[{i}]"), e.to_string()))?;
    let oauth2 = build_oauth2(&p, &s.oauth2, &s.signing_key, &secrets, o)?;
    let endpoints = build_endpoints(&p, only.endpoints, &secrets, plugins.signer.is_none(), o)?;
    Ok(AppConfig {
        id,
        queue_url,
        tier: crate::registry::Tier::Dedicated,
        connect_timeout_ms: s.connect_timeout_ms,
        timeout_ms: s.timeout_ms,
        max_response_bytes: s.max_response_bytes,
        max_body_bytes: s.max_body_bytes,
        max_concurrency: s.max_concurrency,
        max_per_endpoint: s.max_per_endpoint,
        endpoint_wait_secs: s.endpoint_wait_secs,
        allowed_networks,
        on_plugin_error: s.on_plugin_error,
        signing_key: s.signing_key,
        secret_format: s.secret_format,
        tls_client_cert,
        tls_client_key,
        tls_ca,
        backoff: Backoff {
            initial_delay_secs: s.retry.initial_delay_secs,
            multiplier: s.retry.multiplier,
            max_delay_secs: s.retry.max_delay_secs,
            jitter: s.retry.jitter,
            retry_after_max_secs: s.retry.retry_after_max_secs,
        },
        retry_limits: RetryLimits {
            max_attempts: s.retry.max_attempts,
            horizon_secs: s.retry.horizon_secs,
        },
        plugin_limits,
        lambda: AppLambdaConfig {
            batch_size: s.lambda.batch_size,
            batching_window_secs: s.lambda.batching_window_secs,
            age_alarm_secs: s.lambda.age_alarm_secs,
        },
        secrets,
        plugins,
        endpoints,
        endpoint_health: EndpointHealthConfig {
            enabled: s.endpoint_health.enabled,
            settings: crate::health::HealthSettings {
                failure_threshold: s.endpoint_health.failure_threshold,
                open_secs: s.endpoint_health.open_secs,
                open_max_secs: s.endpoint_health.open_max_secs,
                retry_after_max_secs: s.retry.retry_after_max_secs,
                max_rate: (s.endpoint_health.max_rate > 0.0).then_some(s.endpoint_health.max_rate),
                // Never longer than the retry horizon: no event is kept past it.
                disable_after_ms: s
                    .endpoint_health
                    .disable_after_secs
                    .min(s.retry.horizon_secs)
                    .saturating_mul(1000),
                ..crate::health::HealthSettings::default()
            },
            shared_ttl_secs: s.endpoint_health.shared_ttl_secs,
        },
        oauth2,
    })
}

/// `[apps.ID.oauth2]`: off while `token_url` is empty; on, the client id, the client secret's
/// name (one of the application's secrets, not the signing key) and at least one origin are
/// required, each error naming its key.
fn build_oauth2(
    p: &str,
    raw: &RawOAuth2,
    signing_key: &str,
    secrets: &BTreeMap<String, Vec<SecretRef>>,
    o: &Origins,
) -> Result<Option<crate::oauth2::OAuth2Config>, ConfigError> {
    let k = |name: &str| format!("{p}.oauth2.{name}");
    let Some(token_url) = non_empty(raw.token_url.clone()) else {
        return Ok(None);
    };
    check_url(&k("token_url"), &token_url, o)?;
    if url::Url::parse(&token_url).is_ok_and(|u| u.password().is_some() || !u.username().is_empty())
    {
        return Err(o.invalid(
            k("token_url"),
            "must not carry user:password@ (the client secret comes from client_secret)",
        ));
    }
    let client_id = raw.client_id.trim();
    if client_id.is_empty() || client_id.chars().any(char::is_control) {
        return Err(o.invalid(
            k("client_id"),
            "is required with token_url (printable text, the client's id at the token endpoint)",
        ));
    }
    let secret = raw.client_secret.trim();
    if !secrets.contains_key(secret) {
        return Err(o.invalid(
            k("client_secret"),
            format!(
                "{secret:?} is not the name of one of {p}.secrets: add secrets = {{ {} =                  \"ssm:/squall/APP/oauth-client\" }} and name it here (the name, never the secret)",
                if secret.is_empty() { "oauth" } else { secret }
            ),
        ));
    }
    if secret == signing_key {
        return Err(o.invalid(
            k("client_secret"),
            format!("{secret:?} is also the signing_key: give the client secret a name of its own"),
        ));
    }
    for (name, value) in [("scope", &raw.scope), ("audience", &raw.audience)] {
        if value.chars().any(char::is_control) {
            return Err(o.invalid(k(name), "must not contain control characters"));
        }
    }
    if raw.origins.is_empty() {
        return Err(o.invalid(
            k("origins"),
            "is empty: list the endpoint origins the token may be sent to \
             ([\"https://hooks.example.com\"]); a producer names its events' URLs, so the token \
             never goes to an origin not listed here",
        ));
    }
    let mut origins = Vec::with_capacity(raw.origins.len());
    for (i, origin) in raw.origins.iter().enumerate() {
        let key = format!("{p}.oauth2.origins[{i}]");
        check_url(&key, origin, o)?;
        let u = url::Url::parse(origin).map_err(|e| o.invalid(key.clone(), e.to_string()))?;
        if u.path() != "/"
            || u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
        {
            return Err(o.invalid(
                key,
                format!("{origin:?} is not an origin: scheme://host[:port] with no path"),
            ));
        }
        origins.extend(crate::health::origin_of(origin));
    }
    in_range(
        k("refresh_before_secs"),
        raw.refresh_before_secs,
        0,
        86_400,
        o,
    )?;
    Ok(Some(crate::oauth2::OAuth2Config {
        token_url,
        client_id: client_id.to_string(),
        client_secret: secret.to_string(),
        scope: raw.scope.trim().to_string(),
        audience: raw.audience.trim().to_string(),
        origins,
        refresh_before_secs: raw.refresh_before_secs,
        auth_method: raw.auth_method,
    }))
}

/// `[apps.ID.endpoints.EID]`: each endpoint validated with its key path named; with the built-in
/// signer, an endpoint's `signing_key` must be one of the application's secrets.
fn build_endpoints(
    p: &str,
    raw: BTreeMap<String, RawEndpoint>,
    secrets: &BTreeMap<String, Vec<SecretRef>>,
    builtin_signer: bool,
    o: &Origins,
) -> Result<EndpointTable, ConfigError> {
    if raw.len() > MAX_ENDPOINTS_PER_APP {
        return Err(o.invalid(
            format!("{p}.endpoints"),
            format!(
                "has {} endpoints, more than the limit of {MAX_ENDPOINTS_PER_APP} per application",
                raw.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (eid, e) in raw {
        let key = format!("{p}.endpoints.{eid}");
        let headers: Vec<(String, String)> = e.headers.into_iter().collect();
        let endpoint = Endpoint::new(&eid, &e.url, e.enabled, e.signing_key.as_deref(), &headers)
            .map_err(|err| match err.field.as_str() {
            "id" => o.invalid(key.clone(), format!("an endpoint id {}", err.message)),
            field => o.invalid(format!("{key}.{field}"), err.message),
        })?;
        if builtin_signer
            && let Some(k) = &endpoint.signing_key
            && !secrets.contains_key(k)
        {
            return Err(o.invalid(
                format!("{key}.signing_key"),
                format!("no secret named {k:?} in {p}.secrets (the built-in signer signs with it)"),
            ));
        }
        out.push(endpoint);
    }
    Ok(EndpointTable::new(out))
}
