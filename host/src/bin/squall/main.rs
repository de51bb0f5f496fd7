//! The `squall` command: run the engine, run the demo, test plugins.

use clap::{Parser, Subcommand};

/// mimalloc: the engine allocates per event (envelope, request, metrics record) from many
/// threads; glibc malloc was about a fifth of its CPU profile (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod apps;
mod demo;
mod deploy;
mod endpoints;
mod keys;
mod ops;
mod plugin;
mod run;

/// Squall webhook delivery engine.
#[derive(Debug, Parser)]
#[command(name = "squall", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Long-poll every configured application queue and deliver (local, ECS, k8s).
    Run(run::RunArgs),
    /// Deliver real webhooks to a local receiver with the embedded in-process queue.
    Demo(demo::DemoArgs),
    /// Check and exercise plugins exactly as production loads them.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Generate the AWS deployment (CloudFormation template) from the config file.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Applications of a registry deployment (registry.backend = "dynamodb"): init, list,
    /// show, create, update, delete, import.
    Apps(apps::AppsArgs),
    /// An application's registered endpoints (envelopes name them by endpoint_id): list, show,
    /// create, update, enable, disable, delete.
    Endpoints(endpoints::EndpointsArgs),
    /// Standard Webhooks ed25519 signing keys (v1a): generate a pair, print an application's
    /// public keys for its subscribers.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    #[command(flatten)]
    Ops(ops::OpsCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Plugin(cmd) => plugin::main(cmd),
        Command::Deploy(cmd) => deploy::main(cmd),
        Command::Apps(args) => apps::main(args),
        Command::Endpoints(args) => endpoints::main(args),
        Command::Keys(cmd) => keys::main(cmd),
        Command::Ops(cmd) => ops::main(cmd),
    }
}
