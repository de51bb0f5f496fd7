//! Operations subcommands: `squall status | peek | redrive | delete | send | metrics | rollout`.
//! The logic lives in `squall::ops`; this file parses flags, loads the config, prints.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use squall::config::Config;
use squall::ops::redrive::{self, RedriveOptions};
use squall::ops::scan::{self, Filter, MessageView, ScanLimits};
use squall::ops::send::{self, EventSource};
use squall::ops::status::{self, Status};
use squall::ops::{self as ops_lib, parse_duration, parse_when};
use squall::queue::Queue;
use squall::queue::sqs::{SqsQueues, SqsSettings};

/// Operations commands (flattened into the top-level command list).
#[derive(Debug, clap::Subcommand)]
pub enum OpsCommand {
    /// Queue counts and age of the oldest message per application; dead letters by reason.
    Status(StatusArgs),
    /// Show messages of an application queue or the dead-letter queue, leaving them queued.
    Peek(PeekArgs),
    /// Send dead letters back to their application queue (attempt count reset), then delete
    /// them from the dead-letter queue.
    Redrive(RedriveArgs),
    /// Delete messages of an application queue (or the dead-letter queue) for good.
    Delete(DeleteArgs),
    /// Put one event on an application's queue.
    Send(SendArgs),
    /// Drain the metrics queue and aggregate per application and endpoint host; optionally
    /// serve Prometheus text on --listen.
    Metrics(MetricsArgs),
    /// Upload a deployment zip to every matching Lambda function, publish a version and move
    /// an alias to it.
    Rollout(RolloutArgs),
}

/// Arguments of `squall rollout`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("select").required(true).args(["prefix", "tag"])))]
pub struct RolloutArgs {
    /// The deployment zip (bootstrap + config + plugins).
    #[arg(long)]
    zip: PathBuf,
    /// Functions whose name starts with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Functions tagged KEY=VALUE.
    #[arg(long)]
    tag: Option<String>,
    /// The alias to move to the new version (created if missing).
    #[arg(long, default_value = "live")]
    alias: String,
    /// List the functions and their alias versions; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Region (default: the AWS default chain).
    #[arg(long, env = "AWS_REGION", default_value = "")]
    region: String,
    /// Lambda endpoint override (a local server).
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Give up waiting for one function's code update after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    wait: Duration,
}

/// Output format of `squall metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsFormat {
    /// A text table per window.
    Table,
    /// One JSON object per window.
    Json,
    /// Prometheus text exposition per window.
    Prometheus,
    /// CloudWatch Embedded Metric Format lines.
    Emf,
}

/// Arguments of `squall metrics`.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Window length: drain, aggregate and print this often.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = MetricsFormat::Table)]
    format: MetricsFormat,
    /// Serve Prometheus text on this address at /metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Drain once, print one window and exit.
    #[arg(long)]
    once: bool,
    /// Stop after this many windows (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    windows: u64,
    /// An endpoint is failing after this many failed attempts in a row...
    #[arg(long, default_value_t = 10)]
    fail_after: u32,
    /// ...or after failing with no success for this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    fail_for: Duration,
    /// Read at most this many records per window.
    #[arg(long, default_value_t = 100_000)]
    max_per_window: usize,
    /// Rows per endpoint host (`host`), or also per registered endpoint id (`endpoint-id`:
    /// events sent by endpoint_id get a row per id and host).
    #[arg(long, value_enum, default_value_t = MetricsGrouping::Host)]
    by: MetricsGrouping,
}

/// How `squall metrics` splits an application's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsGrouping {
    /// Per endpoint host.
    Host,
    /// Per registered endpoint id (and host).
    EndpointId,
}

/// Where the config comes from.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The Squall config file.
    #[arg(long, env = "SQUALL_CONFIG", default_value = "squall.toml")]
    pub config: PathBuf,
}

impl ConfigArg {
    /// The config file, with the registry's applications when it names a registry.
    async fn load(&self) -> anyhow::Result<Config> {
        let config = squall::config::load(Some(&self.config))
            .with_context(|| format!("loading config {}", self.config.display()))?;
        squall::registry::with_registered_apps(config)
            .await
            .context("reading the application registry")
    }
}

/// How long scanned messages stay hidden and how many are scanned.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// How long a scanned message stays hidden if this process dies before making it visible
    /// again (it is made visible at once when the scan ends).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Scan at most this many messages.
    #[arg(long, default_value_t = 10_000)]
    pub scan_limit: usize,
}

impl ScanArgs {
    fn limits(&self) -> ScanLimits {
        ScanLimits {
            hold: self.hold,
            max_scanned: self.scan_limit,
            ..ScanLimits::default()
        }
    }
}

/// Arguments of `squall status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Peek at most this many visible messages per application queue for the oldest-age
    /// estimate (each peek counts as one receive of the message); 0 = no estimate.
    #[arg(long, default_value_t = 20)]
    age_sample: usize,
    /// Scan at most this many dead letters for the breakdown by reason; 0 = counts only.
    #[arg(long, default_value_t = 1000)]
    dlq_scan: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "60s", value_parser = parse_duration, hide = true)]
    hold: Duration,
}

/// Filters shared by peek, redrive and delete.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only this event id.
    #[arg(long)]
    event_id: Option<String>,
    /// Only this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only dead letters whose squall-reason contains this (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// Only messages dead-lettered (else sent) at or after this time: RFC 3339 or a duration
    /// ago (`2h`).
    #[arg(long)]
    since: Option<String>,
    /// Only messages dead-lettered (else sent) before this time.
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self, app: Option<&str>) -> anyhow::Result<Filter> {
        let now = ops_lib::now_ms();
        let when = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<u64>> {
            v.as_deref()
                .map(|s| parse_when(s, now).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                .transpose()
        };
        Ok(Filter {
            app: app.map(str::to_string),
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            reason: self.reason.clone(),
            since_ms: when("--since", &self.since)?,
            until_ms: when("--until", &self.until)?,
        })
    }
}

/// Arguments of `squall peek`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("queue").required(true).args(["app", "dlq"])))]
pub struct PeekArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Peek this application's queue.
    #[arg(long)]
    app: Option<String>,
    /// Peek the dead-letter queue.
    #[arg(long)]
    dlq: bool,
    /// With --dlq: only dead letters of this application.
    #[arg(long, requires = "dlq")]
    of_app: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Show at most this many messages.
    #[arg(long, default_value_t = 20)]
    max: usize,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scan: ScanArgs,
}

/// Arguments of `squall redrive`.
#[derive(Debug, clap::Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only dead letters of this application.
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Show what would be redriven; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Move at most this many messages per second (0 = as fast as SQS allows), so that a
    /// recovering endpoint is not flooded.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scan: ScanArgs,
}

/// Arguments of `squall delete`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["event_id", "event_type"])))]
pub struct DeleteArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The application whose messages to delete.
    #[arg(long)]
    app: String,
    /// Delete from the dead-letter queue (that app's dead letters) instead of the app queue.
    #[arg(long)]
    dlq: bool,
    /// Messages of this event id.
    #[arg(long)]
    event_id: Option<String>,
    /// Messages of this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    scan: ScanArgs,
}

/// Arguments of `squall send`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "event_type"])))]
pub struct SendArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The application.
    #[arg(long)]
    app: String,
    /// A complete envelope (JSON), sent byte for byte.
    #[arg(long, conflicts_with_all = ["event_type", "endpoint", "payload", "id"])]
    file: Option<PathBuf>,
    /// Event type (with --endpoint and --payload).
    #[arg(long = "type", requires_all = ["endpoint", "payload"])]
    event_type: Option<String>,
    /// Endpoint URL.
    #[arg(long)]
    endpoint: Option<String>,
    /// JSON payload.
    #[arg(long)]
    payload: Option<String>,
    /// Event id (default: evt_ + 16 random hex digits).
    #[arg(long)]
    id: Option<String>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn connect(config: &Config) -> anyhow::Result<SqsQueues> {
    Ok(SqsQueues::connect(&SqsSettings::from_config(config)).await)
}

/// Run one operations command.
pub fn main(cmd: OpsCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        OpsCommand::Status(a) => rt.block_on(status_cmd(a)),
        OpsCommand::Peek(a) => rt.block_on(peek_cmd(a)),
        OpsCommand::Redrive(a) => rt.block_on(redrive_cmd(a)),
        OpsCommand::Delete(a) => rt.block_on(delete_cmd(a)),
        OpsCommand::Send(a) => rt.block_on(send_cmd(a)),
        OpsCommand::Metrics(a) => rt.block_on(metrics_cmd(a)),
        OpsCommand::Rollout(a) => rt.block_on(rollout_cmd(a)),
    }
}

async fn status_cmd(a: StatusArgs) -> anyhow::Result<()> {
    let config = a.config.load().await?;
    let q = connect(&config).await;
    let q = q?;
    // Short polls: an estimate does not need every SQS server asked.
    let limits = ScanLimits {
        hold: a.hold,
        wait: Duration::ZERO,
        empty_receives: 3,
        ..ScanLimits::default()
    };
    let now = ops_lib::now_ms();
    let mut apps = Vec::new();
    for app in &config.apps {
        let Some(url) = app.queue_url.as_deref() else {
            continue;
        };
        apps.push(
            status::app_status(&q, &app.id, url, a.age_sample, limits, now)
                .await
                .with_context(|| format!("application {}", app.id))?,
        );
    }
    let dead_letter = match config.sqs.dead_letter_queue_url.as_deref() {
        Some(url) => Some(
            status::dead_letter_status(&q, url, a.dlq_scan, limits)
                .await
                .context("dead-letter queue")?,
        ),
        None => None,
    };
    // The shared queue: counts for all its applications, and per application what a scan of
    // the visible messages saw (SQS counts per queue, not per group).
    let shared = match config.sqs.shared_queue_url.as_deref() {
        Some(url) => Some(
            status::shared_status(&q, url, a.dlq_scan, limits, now)
                .await
                .context("shared queue")?,
        ),
        None => None,
    };
    let s = Status {
        at_ms: now,
        apps,
        dead_letter,
        shared,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", status::render_table(&s));
    }
    Ok(())
}

fn peek_table(views: &[MessageView], dlq: bool) -> String {
    let mut out = String::new();
    if dlq {
        out.push_str(&format!(
            "{:<22} {:<10} {:<16} {:<21} {:>3} {:<11} {}\n",
            "EVENT-ID", "APP", "TYPE", "DEAD-LETTERED", "ATT", "LAST", "REASON"
        ));
    } else {
        out.push_str(&format!(
            "{:<22} {:<16} {:<21} {:>4} {:>7} {}\n",
            "EVENT-ID", "TYPE", "SENT", "RECV", "BYTES", "ENDPOINT"
        ));
    }
    let dash = || "-".to_string();
    for v in views {
        let when = squall::envelope::format_rfc3339_ms(v.at_ms);
        let when = format!("{}Z", when.get(..19).unwrap_or(&when));
        if dlq {
            out.push_str(&format!(
                "{:<22} {:<10} {:<16} {:<21} {:>3} {:<11} {}\n",
                v.event_id.clone().unwrap_or_else(dash),
                v.app_id.clone().unwrap_or_else(dash),
                v.event_type.clone().unwrap_or_else(dash),
                when,
                v.attempts.map(|n| n.to_string()).unwrap_or_else(dash),
                v.last.clone().unwrap_or_else(dash),
                v.reason.clone().unwrap_or_else(dash),
            ));
        } else {
            out.push_str(&format!(
                "{:<22} {:<16} {:<21} {:>4} {:>7} {}\n",
                v.event_id.clone().unwrap_or_else(dash),
                v.event_type.clone().unwrap_or_else(dash),
                when,
                v.receive_count,
                v.body_bytes,
                v.endpoint.clone().unwrap_or_else(dash),
            ));
        }
    }
    out
}

async fn peek_cmd(a: PeekArgs) -> anyhow::Result<()> {
    let config = a.config.load().await?;
    let (queue, app_filter) = match &a.app {
        // A shared application's messages are those of the shared queue naming it.
        Some(app) => match ops_lib::app_destination(&config, app)? {
            (queue, Some(_)) => (queue.to_string(), Some(app.as_str())),
            (queue, None) => (queue.to_string(), None),
        },
        None => (
            ops_lib::dead_letter_queue_url(&config)?.to_string(),
            a.of_app.as_deref(),
        ),
    };
    let filter = a.filter.filter(app_filter)?;
    let q = connect(&config).await?;
    let views = scan::peek(&q, &queue, &filter, a.scan.limits(), a.max).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print!("{}", peek_table(&views, a.dlq));
        println!("{} message(s) shown; all left in the queue", views.len());
    }
    Ok(())
}

async fn redrive_cmd(a: RedriveArgs) -> anyhow::Result<()> {
    let config = a.config.load().await?;
    if let Some(app) = &a.app
        && config.app(app).is_none()
    {
        ops_lib::app_queue_url(&config, app)?;
    }
    let dlq = ops_lib::dead_letter_queue_url(&config)?.to_string();
    let filter = a.filter.filter(a.app.as_deref())?;
    let q = connect(&config).await?;
    // Where a dead letter without squall-source-queue goes: its application's queue, the
    // shared queue for a shared application (the copy keeps its MessageGroupId).
    let lookup = |app: &str| {
        ops_lib::app_destination(&config, app)
            .ok()
            .map(|(q, _)| q.to_string())
    };
    let opts = RedriveOptions {
        dry_run: a.dry_run,
        rate_per_sec: a.rate,
        limits: a.scan.limits(),
    };
    let report = redrive::redrive(&q, &dlq, &filter, &lookup, opts, |r| {
        eprintln!(
            "progress: scanned {} matched {} sent {} deleted {}",
            r.scanned, r.matched, r.sent, r.deleted
        );
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if a.dry_run { "would send" } else { "sent" };
    println!(
        "scanned {}, matched {}, {verb} {}, deleted from DLQ {}, in both places {}, left in DLQ {}",
        report.scanned,
        report.matched,
        if a.dry_run {
            report.by_destination.values().sum()
        } else {
            report.sent
        },
        report.deleted,
        report.in_both,
        report.left
    );
    for (dest, n) in &report.by_destination {
        println!("  {n:>6} -> {dest}");
    }
    for (why, n) in &report.problems {
        println!("  {n:>6} left: {why}");
    }
    Ok(())
}

async fn delete_cmd(a: DeleteArgs) -> anyhow::Result<()> {
    let config = a.config.load().await?;
    // A shared application's messages: the shared queue's naming it (the filter's app).
    let app_queue = ops_lib::app_destination(&config, &a.app)?.0.to_string();
    let queue = if a.dlq {
        ops_lib::dead_letter_queue_url(&config)?.to_string()
    } else {
        app_queue
    };
    let filter = Filter {
        app: Some(a.app.clone()),
        event_id: a.event_id.clone(),
        event_type: a.event_type.clone(),
        ..Filter::default()
    };
    let q = connect(&config).await?;
    let held = redrive::select(&q, &queue, &filter, a.scan.limits()).await?;
    let n = held.matched.len();
    if n == 0 {
        println!("no matching message in {queue}");
        return Ok(());
    }
    if !a.yes {
        eprint!(
            "delete {n} message(s) of app {} from {queue} for good? [y/N] ",
            a.app
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            scan::release_all(&q, &queue, &held).await;
            println!("nothing deleted; {n} message(s) made visible again");
            return Ok(());
        }
    }
    let (deleted, failed) = redrive::delete_held(&q, &queue, &held).await;
    println!("deleted {deleted} message(s) from {queue}");
    if failed > 0 {
        bail!("{failed} message(s) could not be deleted (they stay in the queue)");
    }
    Ok(())
}

async fn send_cmd(a: SendArgs) -> anyhow::Result<()> {
    let config = a.config.load().await?;
    let (queue, group_id) = ops_lib::app_destination(&config, &a.app)?;
    let queue = queue.to_string();
    let limits = config
        .app(&a.app)
        .map(|c| c.envelope_limits())
        .unwrap_or_default();
    let source = match &a.file {
        Some(path) => EventSource::File {
            path: path.display().to_string(),
            bytes: std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        },
        None => EventSource::Parts {
            id: a.id.clone(),
            event_type: a.event_type.clone().unwrap_or_default(),
            endpoint: a.endpoint.clone().unwrap_or_default(),
            payload: a.payload.clone().unwrap_or_default(),
        },
    };
    let random = format!("{:016x}", fastrand::u64(..));
    let (body, env) = send::build_body(&a.app, &source, &limits, ops_lib::now_ms(), &random)?;
    let q = connect(&config).await?;
    let result = q
        .send_batch(
            &queue,
            &[squall::queue::Outgoing {
                body,
                delay_secs: 0,
                attributes: Default::default(),
                group_id,
            }],
        )
        .await
        .remove(0);
    result.with_context(|| format!("sending event {} to {queue}", env.id))?;
    println!("sent event {} ({}) to {queue}", env.id, env.event_type);
    Ok(())
}

async fn metrics_cmd(a: MetricsArgs) -> anyhow::Result<()> {
    use squall::ops::exporter;
    use squall::ops::metrics::{self as agg, Aggregator, Thresholds};

    let config = a.config.load().await?;
    let queue = ops_lib::metrics_queue_url(&config)?.to_string();
    let q = connect(&config).await?;
    let mut aggregator = Aggregator::new(Thresholds {
        consecutive_failures: a.fail_after,
        failing_for_ms: a.fail_for.as_millis() as u64,
    });
    if a.by == MetricsGrouping::EndpointId {
        aggregator = aggregator.by_endpoint_id();
    }
    let exposition = exporter::Exposition::default();
    if let Some(addr) = a.listen {
        exposition.publish(agg::prometheus_text(&aggregator.snapshot()));
        let bound = exporter::serve(addr, exposition.clone())
            .await
            .with_context(|| format!("--listen {addr}"))?;
        eprintln!("serving Prometheus text on http://{bound}/metrics");
    }
    let mut window = 0u64;
    let mut next = tokio::time::Instant::now();
    loop {
        window += 1;
        let drained = agg::drain(&q, &queue, a.max_per_window)
            .await
            .with_context(|| format!("draining the metrics queue {queue}"))?;
        aggregator.malformed(drained.malformed);
        aggregator.ingest(&drained.records);
        aggregator.ingest_events(&drained.events);
        let snap = aggregator.snapshot();
        exposition.publish(agg::prometheus_text(&snap));
        match a.format {
            MetricsFormat::Table => {
                println!(
                    "window {window}: {} record(s) read",
                    drained.records.len() as u64 + drained.malformed
                );
                print!("{}", agg::render_table(&snap));
                for e in &drained.events {
                    let until = e
                        .until_ms
                        .map(|t| format!(" until {}", squall::envelope::format_rfc3339_ms(t)))
                        .unwrap_or_default();
                    println!(
                        "{} {} {} {}: {}{until}",
                        squall::envelope::format_rfc3339_ms(e.at_ms),
                        e.kind,
                        e.app_id,
                        e.endpoint,
                        e.reason
                    );
                }
            }
            MetricsFormat::Json => println!("{}", serde_json::to_string(&snap)?),
            MetricsFormat::Prometheus => print!("{}", agg::prometheus_text(&snap)),
            MetricsFormat::Emf => {
                for line in agg::emf_lines(&snap, "Squall", ops_lib::now_ms()) {
                    println!("{line}");
                }
            }
        }
        std::io::stdout().flush().ok();
        aggregator.end_window();
        if a.once || (a.windows > 0 && window >= a.windows) {
            return Ok(());
        }
        next += a.interval;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn rollout_cmd(a: RolloutArgs) -> anyhow::Result<()> {
    use squall::ops::rollout::{self, Selector};

    let zip =
        std::fs::read(&a.zip).with_context(|| format!("reading --zip {}", a.zip.display()))?;
    if !zip.starts_with(b"PK") {
        bail!("--zip {}: not a zip file", a.zip.display());
    }
    let selector = match (&a.prefix, &a.tag) {
        (Some(p), _) => Selector::Prefix(p.clone()),
        (None, Some(t)) => Selector::tag(t).map_err(anyhow::Error::msg)?,
        (None, None) => bail!("give --prefix or --tag"),
    };
    let client = rollout::connect(&squall::queue::sqs::SqsSettings {
        region: a.region.clone(),
        endpoint_url: a.endpoint_url.clone(),
        static_credentials: None,
    })
    .await;
    let listed = rollout::list(&client, matches!(selector, Selector::Tag(..))).await?;
    let names = rollout::select(&listed, &selector);
    if names.is_empty() {
        bail!(
            "no function matches {selector:?} (of {} listed)",
            listed.len()
        );
    }
    for name in &names {
        if a.dry_run {
            let v = rollout::alias_version(&client, name, &a.alias).await?;
            println!(
                "would update {name}: alias {} now -> {}",
                a.alias,
                v.as_deref().unwrap_or("(none: would be created)")
            );
            continue;
        }
        let r = rollout::roll_one(&client, name, &zip, &a.alias, a.wait)
            .await
            .with_context(|| {
                format!("rollout stopped at {name}; functions after it are unchanged")
            })?;
        println!(
            "{name}: published version {}, alias {} {} -> {} (code sha256 {})",
            r.version.as_deref().unwrap_or("?"),
            a.alias,
            r.previous.as_deref().unwrap_or("(new)"),
            r.version.as_deref().unwrap_or("?"),
            r.code_sha256.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
