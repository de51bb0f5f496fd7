//! `squall apps ...`: applications of a registry deployment, created, changed and removed at
//! run time. The work is in `squall::ops::apps`; this file parses flags, reads files, prints
//! one line per resource touched.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use squall::ops::apps::{Apps, DeleteMode, Target};
use squall::ops::parse_duration;
use squall::provision::Step;
use squall::registry::Tier;

/// `squall apps` and the options every verb shares.
#[derive(Debug, clap::Args)]
pub struct AppsArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    verb: Verb,
}

/// The deployment the verbs act on.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// The deployment's Squall config ([registry] backend = "dynamodb").
    #[arg(
        long,
        env = "SQUALL_CONFIG",
        default_value = "squall.toml",
        global = true
    )]
    config: PathBuf,
    /// The stack: tag squall:stack of the queues made, and their name prefix `<stack>-`.
    /// Default: read from sqs.dead_letter_queue_url when that queue is named `<stack>-dlq`
    /// (as the template names it).
    #[arg(long, env = "SQUALL_STACK", global = true)]
    stack: Option<String>,
    /// Name prefix of queues made for applications whose settings name no queue_url
    /// (default `<stack>-`; the template's role may consume only queues named so).
    #[arg(long, global = true)]
    queue_prefix: Option<String>,
    /// The function to map new queues to (event source mapping). Without it, `create` makes
    /// no mapping; `update` and `import` keep the function already mapped to the queue.
    #[arg(long, env = "SQUALL_FUNCTION", global = true)]
    function: Option<String>,
    /// SNS topic ARN the oldest-message alarms notify (default: none).
    #[arg(long, env = "SQUALL_ALARM_TOPIC", global = true)]
    alarm_topic: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Create the registry table if absent (local servers and tests; in AWS the template
    /// creates it).
    Init,
    /// List the registered applications: id, version, tier, queue.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one application's item: version, tier, queue and its settings text.
    Show {
        /// Application id.
        id: String,
    },
    /// Register an application: its queue, registry item, event source mapping and alarm.
    /// Running it again with the same settings changes nothing.
    Create {
        /// Application id.
        id: String,
        /// The body of its [apps.ID] table (TOML); queue_url may be omitted: the queue is
        /// then `<queue-prefix><ID>`, created.
        #[arg(long)]
        settings: PathBuf,
        /// `dedicated` (its own queue, mapping and alarm) or `shared` (the registry item only:
        /// its events go to sqs.shared_queue_url with MessageGroupId = ID).
        #[arg(long, default_value = "dedicated", value_parser = parse_tier)]
        tier: Tier,
    },
    /// Change an application's settings: the item (new version), and the queue attributes,
    /// mapping and alarm derived from them.
    Update {
        /// Application id.
        id: String,
        /// The new body of its [apps.ID] table.
        #[arg(long)]
        settings: PathBuf,
        /// Refuse unless the item is at this version (as `show` printed it).
        #[arg(long)]
        expect_version: Option<u64>,
        /// The application's tier, which must be its current one (default: its current one).
        #[arg(long, value_parser = parse_tier)]
        tier: Option<Tier>,
    },
    /// Remove an application: mapping, alarm, queue and item. Refused while its queue holds
    /// messages, unless --drain or --force.
    Delete {
        /// Application id.
        id: String,
        /// Move the waiting messages to the dead-letter queue first (squall-reason
        /// application-deleted), waiting up to --drain-wait for those in flight or delayed.
        #[arg(long, conflicts_with = "force")]
        drain: bool,
        /// Delete the waiting messages with the queue.
        #[arg(long)]
        force: bool,
        /// How long --drain waits for messages in flight or delayed to come back.
        #[arg(long, default_value = "20m", value_parser = parse_duration)]
        drain_wait: Duration,
    },
    /// Register every [apps.ID] table of a config file (default: the --config file itself);
    /// queue URLs are kept as written, their queues created if absent.
    Import {
        /// The file holding the [apps.ID] tables.
        #[arg(long)]
        from: Option<PathBuf>,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    Tier::parse(s).ok_or_else(|| format!("{s:?}: expected dedicated or shared"))
}

fn print_steps(id: &str, steps: &[Step]) {
    for s in steps {
        println!("{id}: {s}");
    }
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn main(args: AppsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: AppsArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let config = squall::config::load(Some(&t.config))
        .with_context(|| format!("loading config {}", t.config.display()))?;
    let target = Target {
        stack: t.stack.clone(),
        queue_prefix: t.queue_prefix.clone(),
        function: t.function.clone(),
        alarm_topic: t.alarm_topic.clone(),
    };
    let apps = Apps::connect(config, target).await?;
    match args.verb {
        Verb::Init => print_steps("registry", &apps.init().await?),
        Verb::List { json } => {
            let records = apps.list().await?;
            if json {
                for r in &records {
                    let queue = r.queue.as_ref().map(|q| q.to_string());
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": r.id, "version": r.version,
                            "tier": r.tier.as_str(), "queue": queue,
                        })
                    );
                }
            } else {
                println!("{:<24} {:>7} {:<10} QUEUE", "ID", "VERSION", "TIER");
                for r in &records {
                    let queue = r.queue.as_ref().map_or("-".into(), |q| q.to_string());
                    println!(
                        "{:<24} {:>7} {:<10} {queue}",
                        r.id,
                        r.version,
                        r.tier.as_str()
                    );
                }
            }
        }
        Verb::Show { id } => {
            let r = apps.show(&id).await?;
            println!("id      = {}", r.id);
            println!("version = {}", r.version);
            println!("tier    = {}", r.tier.as_str());
            println!(
                "queue   = {}",
                r.queue.as_ref().map_or("-".into(), |q| q.to_string())
            );
            println!("# settings ([apps.{}] body):", r.id);
            print!("{}", r.settings);
            if !r.settings.ends_with('\n') {
                println!();
            }
        }
        Verb::Create { id, settings, tier } => {
            let text = read(&settings)?;
            let steps = match tier {
                Tier::Dedicated => apps.create(&id, &text).await?,
                Tier::Shared => apps.create_shared(&id, &text).await?,
            };
            print_steps(&id, &steps);
        }
        Verb::Update {
            id,
            settings,
            expect_version,
            tier,
        } => {
            let text = read(&settings)?;
            let tier = match tier {
                Some(t) => t,
                None => apps.show(&id).await?.tier,
            };
            let steps = match tier {
                Tier::Dedicated => apps.update(&id, &text, expect_version).await?,
                Tier::Shared => apps.update_shared(&id, &text, expect_version).await?,
            };
            print_steps(&id, &steps);
        }
        Verb::Delete {
            id,
            drain,
            force,
            drain_wait,
        } => {
            let mode = match (drain, force) {
                (true, _) => DeleteMode::Drain(drain_wait),
                (_, true) => DeleteMode::Force,
                _ => DeleteMode::Refuse,
            };
            print_steps(&id, &apps.delete(&id, mode).await?);
        }
        Verb::Import { from } => {
            let path = from.unwrap_or_else(|| t.config.clone());
            let text = read(&path)?;
            let n = apps
                .import(&text, &path.display().to_string(), |id, steps| {
                    print_steps(id, steps)
                })
                .await?;
            println!("imported {n} application(s) into {}", apps.table());
        }
    }
    Ok(())
}
