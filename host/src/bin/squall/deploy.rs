//! `squall deploy ...`: the CloudFormation template generated from the config file.

use std::path::PathBuf;

use anyhow::Context;
use squall::config::{self, Config};
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
    /// The Squall config file (the one bundled into the deployment zip). Its `[lambda]` and
    /// `[app_defaults.lambda]` / `[apps.NAME.lambda]` tables hold the deployment settings.
    #[arg(long, default_value = "squall.toml")]
    pub config: PathBuf,
}

pub fn main(cmd: DeployCommand) -> anyhow::Result<()> {
    match cmd {
        DeployCommand::Template(args) => {
            let config = Config::load(Some(&args.config))?;
            let spec = spec_from_config(&config);
            let plan = deploy::plan(&spec)
                .with_context(|| format!("in config file {}", args.config.display()))?;
            let out = serde_json::to_string_pretty(&deploy::template(&plan))?;
            println!("{out}");
            Ok(())
        }
    }
}

/// The deployment view of a loaded config.
pub fn spec_from_config(config: &Config) -> DeploySpec {
    let apps = config
        .apps
        .iter()
        .map(|a| AppSettings {
            id: a.id.clone(),
            max_concurrency: a.max_concurrency,
            delivery_timeout_ms: a.timeout_ms,
            retry_horizon_secs: a.retry_limits.horizon_secs,
            batch_size: a.lambda.batch_size,
            batching_window_secs: a.lambda.batching_window_secs,
            age_alarm_secs: a.lambda.age_alarm_secs,
        })
        .collect();
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
        function: FunctionSettings {
            architecture: match config.lambda.architecture {
                config::Architecture::Arm64 => Architecture::Arm64,
                config::Architecture::X86_64 => Architecture::X86_64,
            },
            memory_mb: config.lambda.memory_mb,
            timeout_secs: config.lambda.timeout_secs,
            log_retention_days: config.lambda.log_retention_days,
        },
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
}
