//! `squall endpoints ...`: an application's registered endpoints (envelopes name them by
//! `endpoint_id`). The work is in `squall::ops::endpoints`; this file parses flags and prints.

use std::path::PathBuf;

use anyhow::Context;
use squall::endpoints::Endpoint;
use squall::ops::endpoints::{Change, Endpoints, Written};

/// `squall endpoints` and the options every verb shares.
#[derive(Debug, clap::Args)]
pub struct EndpointsArgs {
    /// The deployment's Squall config (a DynamoDB registry for the write verbs; with a file
    /// registry, list and show read its [apps.NAME.endpoints.ID] tables).
    #[arg(
        long,
        env = "SQUALL_CONFIG",
        default_value = "squall.toml",
        global = true
    )]
    config: PathBuf,
    /// The application whose endpoints these are (before the verb).
    #[arg(long)]
    app: String,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// The application's endpoints: id, enabled, URL.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One endpoint's settings.
    Show {
        /// Endpoint id.
        id: String,
    },
    /// Register an endpoint (running it again with the same settings changes nothing).
    Create {
        /// Endpoint id (1-64 of a-z, A-Z, 0-9, '_', '-'), what envelopes name as endpoint_id.
        id: String,
        /// Its URL (http or https).
        #[arg(long)]
        url: String,
        /// Sign its events with this key name of the application's secrets (default: the
        /// application's signing_key; an envelope's signing_key still wins).
        #[arg(long)]
        signing_key: Option<String>,
        /// An extra header, `name: value` (repeat for more); not for secrets.
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Create it disabled (its events are dead-lettered with endpoint-disabled).
        #[arg(long)]
        disabled: bool,
    },
    /// Change an endpoint: applies to every event not yet being attempted (queued, waiting for
    /// a retry, redriven later) from the engine's next registry read.
    Update {
        /// Endpoint id.
        id: String,
        /// A new URL.
        #[arg(long)]
        url: Option<String>,
        /// Sign with this key name.
        #[arg(long, conflicts_with = "default_signing_key")]
        signing_key: Option<String>,
        /// Sign with the application's signing_key.
        #[arg(long)]
        default_signing_key: bool,
        /// Replace the extra headers with these (`name: value`, repeat for more).
        #[arg(long = "header", value_parser = parse_header, conflicts_with = "no_headers")]
        headers: Vec<(String, String)>,
        /// Remove every extra header.
        #[arg(long)]
        no_headers: bool,
    },
    /// Enable an endpoint: its events are delivered again (redrive the ones dead-lettered
    /// while it was disabled: `squall redrive --app APP --reason endpoint-disabled`). Given an
    /// origin (`https://host[:port]`, or any URL at it): enable an origin that endpoint health
    /// disabled, in every process serving the application (endpoint.enabled on the metrics
    /// queue).
    Enable {
        /// Endpoint id, or an origin / URL.
        id: String,
    },
    /// Disable an endpoint: its events are dead-lettered with reason endpoint-disabled,
    /// redrivable once it is enabled. Given an origin or URL: disable that origin, whatever
    /// endpoint id or URL an event names.
    Disable {
        /// Endpoint id, or an origin / URL.
        id: String,
    },
    /// Endpoint health shared by the engine's processes (DynamoDB registry): each origin's
    /// latest transition (opened, closed, paused, disabled, enabled).
    Health {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint: events still naming it are dead-lettered (unknown endpoint_id).
    Delete {
        /// Endpoint id.
        id: String,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected `name: value`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

pub fn main(args: EndpointsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn print_written(app: &str, verb: &str, w: &Written) {
    match w {
        Written::Done(e) => println!("{app}: endpoint {} {verb}", e.id),
        Written::Unchanged(e) => println!("{app}: endpoint {} unchanged", e.id),
    }
}

fn print_origin(app: &str, verb: &str, set: &squall::ops::endpoints::OriginSet) {
    let before = set.before.map_or("no shared state".into(), |k| {
        format!("{k:?}").to_lowercase()
    });
    println!(
        "{app}: endpoint origin {} {verb} (was: {before}); every process applies it within endpoint_health.shared_ttl_secs{}",
        set.origin,
        if set.event_sent {
            "; event sent to the metrics queue"
        } else {
            ""
        }
    );
    if verb == "enabled" {
        println!(
            "  redrive what was dead-lettered meanwhile: squall redrive --app {app} --reason endpoint-disabled"
        );
    }
}

fn state(e: &Endpoint) -> &'static str {
    if e.enabled { "enabled" } else { "disabled" }
}

async fn run(args: EndpointsArgs) -> anyhow::Result<()> {
    let config = squall::config::load(Some(&args.config))
        .with_context(|| format!("loading config {}", args.config.display()))?;
    let eps = Endpoints::connect(config).await?;
    let app = args.app.as_str();
    match args.verb {
        Verb::List { json } => {
            let list = eps.list(app).await?;
            if json {
                for e in &list {
                    println!(
                        "{}",
                        serde_json::json!({
                            "app_id": app, "id": e.id, "enabled": e.enabled, "url": e.url,
                            "signing_key": e.signing_key,
                        })
                    );
                }
            } else {
                println!("{:<24} {:<9} URL", "ID", "STATE");
                for e in &list {
                    println!("{:<24} {:<9} {}", e.id, state(e), e.url);
                }
            }
        }
        Verb::Show { id } => {
            let e = eps.show(app, &id).await?;
            println!("app_id      = {app}");
            println!("id          = {}", e.id);
            println!("state       = {}", state(&e));
            println!("url         = {}", e.url);
            println!(
                "signing_key = {}",
                e.signing_key
                    .as_deref()
                    .unwrap_or("(the application's signing_key)")
            );
            for (n, v) in &e.headers {
                println!("header      = {n}: {v}");
            }
        }
        Verb::Create {
            id,
            url,
            signing_key,
            headers,
            disabled,
        } => {
            let e = Endpoint::new(&id, &url, !disabled, signing_key.as_deref(), &headers)
                .map_err(|e| anyhow::anyhow!("endpoint {id} of application {app}: {e}"))?;
            print_written(app, "created", &eps.create(app, e).await?);
        }
        Verb::Update {
            id,
            url,
            signing_key,
            default_signing_key,
            headers,
            no_headers,
        } => {
            let change = Change {
                url,
                enabled: None,
                signing_key: match (signing_key, default_signing_key) {
                    (Some(k), _) => Some(Some(k)),
                    (None, true) => Some(None),
                    (None, false) => None,
                },
                headers: if no_headers {
                    Some(Vec::new())
                } else if headers.is_empty() {
                    None
                } else {
                    Some(headers)
                },
            };
            print_written(app, "updated", &eps.update(app, &id, &change).await?);
        }
        Verb::Enable { id } if id.contains("://") => {
            print_origin(app, "enabled", &eps.set_origin(app, &id, true).await?);
        }
        Verb::Disable { id } if id.contains("://") => {
            print_origin(app, "disabled", &eps.set_origin(app, &id, false).await?);
        }
        Verb::Health { json } => {
            let states = eps.health(app).await?;
            if json {
                for (origin, s) in &states {
                    println!(
                        "{}",
                        serde_json::json!({"app_id": app, "endpoint": origin, "shared": s})
                    );
                }
            } else {
                println!(
                    "{:<40} {:<9} {:<24} {:<24} REASON",
                    "ORIGIN", "STATE", "AT", "UNTIL"
                );
                for (origin, s) in &states {
                    println!(
                        "{:<40} {:<9} {:<24} {:<24} {}",
                        origin,
                        format!("{:?}", s.state).to_lowercase(),
                        squall::envelope::format_rfc3339_ms(s.at_ms),
                        s.until_ms
                            .map_or("-".into(), squall::envelope::format_rfc3339_ms),
                        s.reason
                    );
                }
            }
        }
        Verb::Enable { id } => {
            let change = Change {
                enabled: Some(true),
                ..Change::default()
            };
            print_written(app, "enabled", &eps.update(app, &id, &change).await?);
        }
        Verb::Disable { id } => {
            let change = Change {
                enabled: Some(false),
                ..Change::default()
            };
            print_written(app, "disabled", &eps.update(app, &id, &change).await?);
        }
        Verb::Delete { id } => print_written(app, "deleted", &eps.delete(app, &id).await?),
    }
    Ok(())
}
