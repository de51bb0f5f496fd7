//! `squall deploy ...`: the CloudFormation template generated from the config file.

use std::path::PathBuf;

use anyhow::{Context, bail};
use squall::deploy::{self, AppSettings, Architecture, DeploySpec, FunctionSettings};

/// Deployment subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Print the CloudFormation template (JSON) for the applications in the config file.
    Template(TemplateArgs),
}

/// Arguments of `squall deploy template`.
#[derive(Debug, clap::Args)]
pub struct TemplateArgs {
    /// The Squall config file (the one bundled into the deployment zip).
    #[arg(long, default_value = "squall.toml")]
    pub config: PathBuf,
    /// Default CPU architecture of the function (a template parameter, overridable at deploy time).
    #[arg(long, value_parser = ["arm64", "x86_64"], default_value = "arm64")]
    pub arch: String,
    /// Default function memory, MB (a template parameter).
    #[arg(long, default_value_t = 512)]
    pub memory_mb: u32,
    /// Function timeout, seconds; derived from the applications' delivery timeouts if absent.
    #[arg(long)]
    pub function_timeout_secs: Option<u64>,
    /// Messages per invocation for apps that do not set `lambda_batch_size`.
    #[arg(long, default_value_t = 10)]
    pub batch_size: u32,
    /// Batching window, seconds, for apps that do not set `lambda_batching_window_secs`.
    #[arg(long, default_value_t = 0)]
    pub batching_window_secs: u32,
    /// Alarm when a queue's oldest message is older than this, seconds.
    #[arg(long, default_value_t = 1800)]
    pub age_alarm_secs: u64,
    /// Retention of the function's log group, days.
    #[arg(long, default_value_t = 30)]
    pub log_retention_days: u32,
}

pub fn main(cmd: DeployCommand) -> anyhow::Result<()> {
    match cmd {
        DeployCommand::Template(args) => {
            let text = std::fs::read_to_string(&args.config)
                .with_context(|| format!("reading config file {}", args.config.display()))?;
            let spec = spec_from_toml(&text, &args)
                .with_context(|| format!("in config file {}", args.config.display()))?;
            let plan = deploy::plan(&spec)
                .with_context(|| format!("in config file {}", args.config.display()))?;
            let out = serde_json::to_string_pretty(&deploy::template(&plan))?;
            println!("{out}");
            Ok(())
        }
    }
}

fn get<'a>(v: &'a toml::Value, path: &[&str]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// A per-app key: `apps.ID.<path>`, else `app_defaults.<path>`, else `default`.
fn app_u64(root: &toml::Value, app: &str, path: &[&str], default: u64) -> anyhow::Result<u64> {
    let mut app_path = vec!["apps", app];
    app_path.extend_from_slice(path);
    let mut def_path = vec!["app_defaults"];
    def_path.extend_from_slice(path);
    let (key, value) = match get(root, &app_path) {
        Some(v) => (app_path.join("."), v),
        None => match get(root, &def_path) {
            Some(v) => (def_path.join("."), v),
            None => return Ok(default),
        },
    };
    value
        .as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .with_context(|| format!("{key}: expected a non-negative integer, found {value}"))
}

/// The deployment view of a config file. It reads only the keys the template depends on
/// (defaults as in host/config.default.toml); the engine's own loader validates the rest.
fn spec_from_toml(text: &str, args: &TemplateArgs) -> anyhow::Result<DeploySpec> {
    let root: toml::Value = toml::from_str(text).context("not valid TOML")?;
    let Some(apps) = root.get("apps").and_then(|a| a.as_table()) else {
        bail!("no [apps] table: nothing to deploy");
    };
    let mut out = Vec::new();
    let mut secret_env_vars = Vec::new();
    for (id, app) in apps {
        let narrow = |k: &str, v: u64| -> anyhow::Result<u32> {
            u32::try_from(v).with_context(|| format!("apps.{id}.{k}: {v} is too large"))
        };
        out.push(AppSettings {
            id: id.clone(),
            max_concurrency: narrow(
                "max_concurrency",
                app_u64(&root, id, &["max_concurrency"], 64)?,
            )?,
            delivery_timeout_ms: app_u64(&root, id, &["timeout_ms"], 15_000)?,
            retry_horizon_secs: app_u64(&root, id, &["retry", "horizon_secs"], 259_200)?,
            batch_size: narrow(
                "lambda_batch_size",
                app_u64(&root, id, &["lambda_batch_size"], args.batch_size.into())?,
            )?,
            batching_window_secs: narrow(
                "lambda_batching_window_secs",
                app_u64(
                    &root,
                    id,
                    &["lambda_batching_window_secs"],
                    args.batching_window_secs.into(),
                )?,
            )?,
            age_alarm_secs: args.age_alarm_secs,
        });
        if let Some(secrets) = app.get("secrets").and_then(|s| s.as_table()) {
            for (name, refs) in secrets {
                let refs: Vec<&toml::Value> = match refs {
                    toml::Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for r in refs {
                    let Some(r) = r.as_str() else {
                        bail!(
                            "apps.{id}.secrets.{name}: expected a string reference like \"env:NAME\""
                        );
                    };
                    if let Some(var) = r.strip_prefix("env:") {
                        secret_env_vars.push(var.to_string());
                    }
                }
            }
        }
    }
    Ok(DeploySpec {
        apps: out,
        function: FunctionSettings {
            architecture: if args.arch == "x86_64" {
                Architecture::X86_64
            } else {
                Architecture::Arm64
            },
            memory_mb: args.memory_mb,
            timeout_secs: args.function_timeout_secs,
            log_retention_days: args.log_retention_days,
        },
        secret_env_vars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: TemplateArgs,
    }

    #[test]
    fn reads_apps_defaults_and_secret_references() {
        let args = T::parse_from(["t"]).args;
        let spec = spec_from_toml(
            r#"
            [app_defaults]
            max_concurrency = 32
            [apps.billing]
            queue_url = "https://sqs.eu-west-1.amazonaws.com/1/billing"
            timeout_ms = 5000
            secrets = { default = ["env:BILLING_SECRET", "env:BILLING_SECRET_OLD"] }
            [apps.shipping]
            max_concurrency = 4
            lambda_batch_size = 100
            lambda_batching_window_secs = 5
            [apps.shipping.retry]
            horizon_secs = 86400
            "#,
            &args,
        )
        .unwrap();
        let billing = &spec.apps[0];
        assert_eq!(
            (
                billing.id.as_str(),
                billing.max_concurrency,
                billing.delivery_timeout_ms
            ),
            ("billing", 32, 5000)
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
        let err = spec_from_toml("[apps.a]\ntimeout_ms = \"x\"", &args).unwrap_err();
        assert!(format!("{err:#}").contains("apps.a.timeout_ms"), "{err:#}");
    }
}
