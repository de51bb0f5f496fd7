//! `squall deploy ...`: the CloudFormation template generated from the config file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use squall::config::{self, Config};
use squall::config::{AppConfig, RegistryBackend};
use squall::deploy::{
    self, AppSettings, Architecture, DeploySpec, Egress, FunctionSettings, PolicyScope,
    RegistrySpec,
};

/// Deployment subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Print the CloudFormation template (JSON) for the config file: with the file registry,
    /// one queue, mapping and alarm per `[apps.NAME]`; with `registry.backend = "dynamodb"`,
    /// the shared parts only (function, DLQ, metrics queue, registry table), the same
    /// whatever the registry holds.
    Template(TemplateArgs),
    /// Print the IAM policy (JSON) that whoever runs `squall apps` against a registry stack
    /// needs: queues and alarms named `<stack>-*`, the function's event source mappings, the
    /// registry table, the secrets' path (read).
    Policy(PolicyArgs),
    /// Stage the files of the deployment zip: the config as `squall.toml` with its plugins
    /// under `plugins/` (paths rewritten, each pinned by the SHA-256 of the file bundled),
    /// and optionally precompiled `.cwasm` beside them.
    Bundle(BundleArgs),
}

/// Arguments of `squall deploy bundle`.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The Squall config file to bundle.
    #[arg(long, default_value = "squall.toml")]
    pub config: PathBuf,
    /// Staging directory (created; must be empty or absent).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write `<name>.cwasm` beside each plugin, precompiled for `--arch` (on any
    /// machine: an x86_64 machine makes arm64 artifacts). The function uses an artifact only
    /// if it was made for its architecture by the same wasmtime and configuration; otherwise
    /// it compiles the `.wasm` at init and logs a warning naming why.
    #[arg(long)]
    pub precompile: bool,
    /// The function's architecture, for `--precompile`: `arm64` or `x86_64` (that
    /// architecture's baseline CPU, so every CPU of it loads the artifacts). Default: the
    /// config's `[lambda] architecture`.
    #[arg(long, value_enum)]
    pub arch: Option<ArchArg>,
}

/// A CPU architecture to precompile plugins for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchArg {
    /// AWS Graviton (aarch64), any generation.
    Arm64,
    /// x86_64, any CPU (no optional extension).
    #[value(name = "x86_64")]
    X86_64,
    /// This machine's architecture and CPU features (artifacts for this machine only).
    Native,
}

/// The architecture `--arch` names, else `default` (a config's `[lambda] architecture`);
/// `None` = this machine's native CPU.
pub fn target_arch(
    arch: Option<ArchArg>,
    default: config::Architecture,
) -> Option<config::Architecture> {
    match arch {
        Some(ArchArg::Arm64) => Some(config::Architecture::Arm64),
        Some(ArchArg::X86_64) => Some(config::Architecture::X86_64),
        Some(ArchArg::Native) => None,
        None => Some(default),
    }
}

/// Arguments of `squall deploy template`.
#[derive(Debug, clap::Args)]
pub struct TemplateArgs {
    /// The Squall config file (the one bundled into the deployment zip). Its `[lambda]` and
    /// `[app_defaults.lambda]` / `[apps.NAME.lambda]` tables hold the deployment settings.
    #[arg(long, default_value = "squall.toml")]
    pub config: PathBuf,
}

/// Arguments of `squall deploy policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// The Squall config file (`registry.backend = "dynamodb"`).
    #[arg(long, default_value = "squall.toml")]
    pub config: PathBuf,
    /// The CloudFormation stack name (the prefix of the stack's queue, alarm and function names).
    #[arg(long)]
    pub stack: String,
    /// The AWS account id of the stack (12 digits).
    #[arg(long)]
    pub account: String,
    /// The stack's region; default: `[sqs] region` of the config.
    #[arg(long)]
    pub region: Option<String>,
    /// The AWS partition.
    #[arg(long, default_value = "aws")]
    pub partition: String,
}

pub fn main(cmd: DeployCommand) -> anyhow::Result<()> {
    match cmd {
        DeployCommand::Template(args) => {
            let config = config::load(Some(&args.config))?;
            let context = || format!("in config file {}", args.config.display());
            let template = if config.registry.backend == RegistryBackend::Dynamodb {
                let plan = deploy::plan_registry(&registry_spec_from_config(&config)?)
                    .with_context(context)?;
                deploy::registry_template(&plan)
            } else {
                let plan = deploy::plan(&spec_from_config(&config)).with_context(context)?;
                deploy::template(&plan)
            };
            println!("{}", serde_json::to_string_pretty(&template)?);
            Ok(())
        }
        DeployCommand::Policy(args) => {
            let config = config::load(Some(&args.config))?;
            if config.registry.backend != RegistryBackend::Dynamodb {
                bail!(
                    "{}: registry.backend is \"file\": `squall apps` works on a DynamoDB registry; set [registry] backend = \"dynamodb\" and table",
                    args.config.display()
                );
            }
            let plan = deploy::plan_registry(&registry_spec_from_config(&config)?)
                .with_context(|| format!("in config file {}", args.config.display()))?;
            let Some(region) = args.region.clone().or_else(|| config.sqs.region.clone()) else {
                bail!("no region: pass --region or set [sqs] region in the config");
            };
            let scope = policy_scope(&args.stack, &args.account, &region, &args.partition)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&deploy::apps_policy(&plan, &scope))?
            );
            Ok(())
        }
        DeployCommand::Bundle(args) => bundle(&args),
    }
}

/// The policy's scope, each part checked so that nothing but a name lands in an ARN.
fn policy_scope(
    stack: &str,
    account: &str,
    region: &str,
    partition: &str,
) -> anyhow::Result<PolicyScope> {
    let name_like =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !(name_like(stack) && stack.starts_with(|c: char| c.is_ascii_alphabetic())) {
        bail!("--stack {stack:?}: a stack name is letters, digits and '-', starting with a letter");
    }
    if stack.len() > deploy::MAX_REGISTRY_STACK_NAME {
        bail!(
            "--stack {stack:?}: application queues are named <stack>-<app id> in at most 80 characters, so the stack name may have at most {} characters",
            deploy::MAX_REGISTRY_STACK_NAME
        );
    }
    if !(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())) {
        bail!("--account {account:?}: an AWS account id is 12 digits");
    }
    if !name_like(region) {
        bail!("region {region:?}: not a region name");
    }
    if !name_like(partition) {
        bail!("--partition {partition:?}: not a partition name");
    }
    Ok(PolicyScope {
        partition: partition.to_string(),
        region: region.to_string(),
        account: account.to_string(),
        stack: stack.to_string(),
    })
}

/// The registry deployment's view of a loaded config (`registry.backend = "dynamodb"`).
pub fn registry_spec_from_config(config: &Config) -> anyhow::Result<RegistrySpec> {
    // `[app_defaults]` as an application sizes the function timeout. Only its delivery
    // numbers count; the signing key is pinned to a placeholder reference (never read) so
    // defaults that name no secret still make a valid application.
    let defaults = config
        .app_from_toml(
            "defaults",
            "signing_key = \"default\"\nsecrets = { default = \"env:SQUALL_TEMPLATE_SIZING\" }",
            "[app_defaults]",
        )
        .context("[app_defaults] is not a valid application")?;
    Ok(RegistrySpec {
        function: function_settings(config),
        defaults: app_settings(&defaults),
        table: config.registry.table.clone().unwrap_or_default(),
        secret_path: config.registry.secret_path.clone(),
    })
}

fn app_settings(a: &AppConfig) -> AppSettings {
    AppSettings {
        id: a.id.clone(),
        max_concurrency: a.max_concurrency,
        delivery_timeout_ms: a.timeout_ms,
        retry_horizon_secs: a.retry_limits.horizon_secs,
        batch_size: a.lambda.batch_size,
        batching_window_secs: a.lambda.batching_window_secs,
        age_alarm_secs: a.lambda.age_alarm_secs,
    }
}

fn function_settings(config: &Config) -> FunctionSettings {
    FunctionSettings {
        architecture: match config.lambda.architecture {
            config::Architecture::Arm64 => Architecture::Arm64,
            config::Architecture::X86_64 => Architecture::X86_64,
        },
        memory_mb: config.lambda.memory_mb,
        timeout_secs: config.lambda.timeout_secs,
        log_retention_days: config.lambda.log_retention_days,
        egress: match config.lambda.egress {
            config::Egress::Default => Egress::Default,
            config::Egress::FixedIps { azs } => Egress::FixedIps { azs },
        },
    }
}

/// Stage config + plugins. The bundled config names each plugin as `plugins/<file name>`
/// and pins it (`sha256`) to the file bundled, so the function refuses any other file at init.
/// A plugin the source config already pins must match its pin.
fn bundle(args: &BundleArgs) -> anyhow::Result<()> {
    // Validate exactly as the function will (plugin files must exist).
    let config = config::load(Some(&args.config))?;
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading config file {}", args.config.display()))?;
    let mut raw: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", args.config.display()))?;
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("staging directory {} is not empty", args.out.display());
    }
    std::fs::create_dir_all(args.out.join("plugins"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    let runtime = if args.precompile {
        let arch = match args.arch {
            Some(ArchArg::Native) => bail!(
                "--arch native: a deployment bundle is for a Lambda architecture (arm64 or x86_64)"
            ),
            arch => target_arch(arch, config.lambda.architecture).expect("not native"),
        };
        Some(
            squall::plugin::Precompiler::new(&squall::plugin::RuntimeOptions::default(), arch)
                .context("starting the plugin compiler")?,
        )
    } else {
        None
    };
    // file name -> source, so two different plugins with one name are caught.
    let mut staged: std::collections::BTreeMap<String, PathBuf> = Default::default();
    // file name -> the hex SHA-256 the bundled config pins it to.
    let mut digests: std::collections::BTreeMap<String, String> = Default::default();
    for app in &config.apps {
        for (hook, cfg) in app.plugins.by_hook() {
            let Some(cfg) = cfg else { continue };
            let name = cfg
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("apps.{}.plugins.{hook}.path: no file name", app.id))?
                .to_string();
            let src = std::fs::canonicalize(&cfg.path).with_context(|| {
                format!(
                    "apps.{}.plugins.{hook}.path: {}",
                    app.id,
                    cfg.path.display()
                )
            })?;
            let digest = squall::plugin::file_digest(&src)
                .with_context(|| format!("apps.{}.plugins.{hook}.path", app.id))?;
            if let Some(pin) = cfg.sha256
                && pin != digest
            {
                bail!(
                    "apps.{}.plugins.{hook}: {} has SHA-256 {}, but the config pins {} (sha256); bundle the pinned build or pin this one",
                    app.id,
                    src.display(),
                    hex::encode(digest),
                    hex::encode(pin)
                );
            }
            match staged.get(&name) {
                Some(prev) if prev != &src => bail!(
                    "apps.{}.plugins.{hook}.path: {} and {} have the same file name; rename one",
                    app.id,
                    prev.display(),
                    src.display()
                ),
                Some(_) => {}
                None => {
                    let dst = args.out.join("plugins").join(&name);
                    std::fs::copy(&src, &dst)
                        .with_context(|| format!("copying {}", src.display()))?;
                    if let Some(rt) = &runtime {
                        rt.precompile(&src, &squall::apps::artifact_path(&dst))
                            .with_context(|| {
                                format!("apps.{}.plugins.{hook}: precompiling", app.id)
                            })?;
                    }
                    eprintln!(
                        "bundled plugins/{name}{} sha256 {}",
                        if runtime.is_some() { " (+ .cwasm)" } else { "" },
                        hex::encode(digest)
                    );
                    staged.insert(name.clone(), src);
                    digests.insert(name.clone(), hex::encode(digest));
                }
            }
        }
    }
    // Point every plugin table of the bundled config at plugins/<file name>, pinned to the
    // digest of the file bundled there.
    let rewrite = |table: Option<&mut toml::Value>| {
        let Some(plugins) = table
            .and_then(|t| t.get_mut("plugins"))
            .and_then(|p| p.as_table_mut())
        else {
            return;
        };
        for (_, spec) in plugins.iter_mut() {
            let Some(spec) = spec.as_table_mut() else {
                continue;
            };
            let name = spec
                .get("path")
                .and_then(|p| p.as_str())
                .and_then(|p| std::path::Path::new(p).file_name())
                .and_then(|n| n.to_str())
                .map(str::to_string);
            if let Some(name) = name {
                spec.insert("path".into(), format!("plugins/{name}").into());
                if let Some(digest) = digests.get(&name) {
                    spec.insert("sha256".into(), digest.clone().into());
                }
            }
        }
    };
    rewrite(raw.get_mut("app_defaults"));
    if let Some(apps) = raw.get_mut("apps").and_then(|a| a.as_table_mut()) {
        for (_, app) in apps.iter_mut() {
            rewrite(Some(app));
        }
    }
    let header = format!(
        "# Bundled by `squall deploy bundle` from {}; plugin paths point into the zip, each\n# pinned (sha256) to the file bundled.\n",
        args.config.display()
    );
    std::fs::write(
        args.out.join("squall.toml"),
        header + &toml::to_string(&raw)?,
    )?;
    Ok(())
}

/// The deployment view of a loaded config.
pub fn spec_from_config(config: &Config) -> DeploySpec {
    let apps = config.apps.iter().map(app_settings).collect();
    let mut secret_env_vars: Vec<String> = Vec::new();
    for a in &config.apps {
        for v in a.secret_env_vars() {
            if !secret_env_vars.iter().any(|s| s == v) {
                secret_env_vars.push(v.to_string());
            }
        }
    }
    DeploySpec {
        apps,
        function: function_settings(config),
        secret_env_vars,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apps_lambda_settings_and_secret_references() {
        let config = Config::from_toml_str(
            r#"
            [lambda]
            architecture = "x86_64"
            [app_defaults]
            max_concurrency = 32
            [apps.billing]
            queue_url = "https://sqs.eu-west-1.amazonaws.com/1/billing"
            timeout_ms = 5000
            secrets = { default = ["env:BILLING_SECRET", "env:BILLING_SECRET_OLD"] }
            [apps.shipping]
            queue_url = "https://sqs.eu-west-1.amazonaws.com/1/shipping"
            max_concurrency = 4
            max_per_endpoint = 4
            secrets = { default = ["env:BILLING_SECRET"] }
            [apps.shipping.lambda]
            batch_size = 100
            batching_window_secs = 5
            [apps.shipping.retry]
            horizon_secs = 86400
            "#,
            std::path::Path::new("."),
            Vec::<(String, String)>::new(),
        )
        .unwrap();
        let spec = spec_from_config(&config);
        let billing = &spec.apps[0];
        assert_eq!(
            (
                billing.id.as_str(),
                billing.max_concurrency,
                billing.delivery_timeout_ms,
                billing.batch_size
            ),
            ("billing", 32, 5000, 10)
        );
        let shipping = &spec.apps[1];
        assert_eq!(
            (
                shipping.max_concurrency,
                shipping.batch_size,
                shipping.batching_window_secs
            ),
            (4, 100, 5)
        );
        assert_eq!(shipping.retry_horizon_secs, 86400);
        assert_eq!(
            spec.secret_env_vars,
            ["BILLING_SECRET", "BILLING_SECRET_OLD"]
        );
        assert_eq!(spec.function.architecture, Architecture::X86_64);
        // And the plan accepts it.
        let plan = deploy::plan(&spec).unwrap();
        assert_eq!(plan.apps[1].maximum_concurrency, 2);
    }

    #[test]
    fn registry_spec_sizes_the_function_from_app_defaults_whatever_they_sign_with() {
        let config = Config::from_toml_str(
            r#"
            [registry]
            backend = "dynamodb"
            table = "squall-registry"
            secret_path = "/hooks/"
            [app_defaults]
            timeout_ms = 40000
            signing_key = "stripe"
            "#,
            std::path::Path::new("."),
            Vec::<(String, String)>::new(),
        )
        .unwrap();
        let spec = registry_spec_from_config(&config).unwrap();
        assert_eq!(spec.defaults.delivery_timeout_ms, 40_000);
        assert_eq!(
            (spec.table.as_str(), spec.secret_path.as_str()),
            ("squall-registry", "/hooks/")
        );
        // One round of 40 s + 15 s margin.
        assert_eq!(
            deploy::plan_registry(&spec).unwrap().function_timeout_secs,
            55
        );
    }

    #[test]
    fn policy_scope_refuses_what_would_not_name_the_stack() {
        assert!(policy_scope("squall", "123456789012", "eu-west-1", "aws").is_ok());
        for (stack, account, region) in [
            ("squall*", "123456789012", "eu-west-1"),
            ("1squall", "123456789012", "eu-west-1"),
            (&"s".repeat(40) as &str, "123456789012", "eu-west-1"),
            ("squall", "12345", "eu-west-1"),
            ("squall", "123456789012", "eu-west-1:x"),
        ] {
            assert!(
                policy_scope(stack, account, region, "aws").is_err(),
                "{stack} {account} {region}"
            );
        }
    }
}
