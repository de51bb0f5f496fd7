//! What `squall apps` makes for one application, decided from its settings: the queue (name,
//! visibility timeout, retention, redrive policy, tags), the event source mapping (batch size,
//! window, `MaximumConcurrency`) and the oldest-message alarm, and how a run reports each
//! resource. Plain functions over values; the engine's `ops::apps` makes the AWS calls.
//!
//! The numbers come from [`deploy::plan`] run over the one application, so a queue created at
//! run time gets exactly what the template gives a queue it declares (6 x the function timeout,
//! the retry horizon plus a day of retention, `maxReceiveCount` 10, the same clamping of
//! `MaximumConcurrency`). These helpers live here rather than in `deploy` so the template's
//! module keeps to the template.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{AppConfig, Config};
use crate::deploy::{self, DeployError, DeploySpec, FunctionSettings};

/// Tag naming the application on its queue.
pub const TAG_APP: &str = "squall:app";
/// Tag naming the deployment (stack) on its queue.
pub const TAG_STACK: &str = "squall:stack";
/// The `squall-reason` of messages `apps delete --drain` moves to the dead-letter queue.
pub const DRAIN_REASON: &str = "application-deleted";
/// SQS: the longest queue name.
pub const MAX_QUEUE_NAME: usize = 80;

/// The application's queue as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// `VisibilityTimeout`, seconds: 6 x the function timeout.
    pub visibility_timeout_secs: u64,
    /// `MessageRetentionPeriod`, seconds.
    pub retention_secs: u64,
    /// Redrive policy `maxReceiveCount` to the shared dead-letter queue.
    pub max_receive_count: u32,
    /// Tags: `squall:app`, `squall:stack`.
    pub tags: BTreeMap<String, String>,
}

/// The event source mapping as it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingSpec {
    /// `BatchSize`.
    pub batch_size: u32,
    /// `MaximumBatchingWindowInSeconds` (0 = not set, as the template leaves it).
    pub batching_window_secs: u32,
    /// `ScalingConfig.MaximumConcurrency` (2..=1000).
    pub maximum_concurrency: u32,
}

/// The oldest-message alarm as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmSpec {
    /// Alarm name: `<queue name>-oldest-message`.
    pub name: String,
    /// Its description.
    pub description: String,
    /// The queue it watches (dimension `QueueName`).
    pub queue_name: String,
    /// `ApproximateAgeOfOldestMessage` above this many seconds alarms.
    pub threshold_secs: u64,
    /// SNS topics notified (empty: none).
    pub actions: Vec<String>,
}

/// Everything one application gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppResources {
    /// Its queue.
    pub queue: QueueSpec,
    /// Its event source mapping (made only when a function is named).
    pub mapping: MappingSpec,
    /// Its alarm.
    pub alarm: AlarmSpec,
}

/// Where the application sits in the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The stack (tag `squall:stack`).
    pub stack: &'a str,
    /// Its queue's name (`queue_url`'s last segment, else `<prefix><id>`).
    pub queue_name: &'a str,
    /// The function's timeout in seconds when the function is known (its configuration);
    /// `None` derives it as the template does (`lambda.timeout_secs`, else from the app).
    pub function_timeout_secs: Option<u64>,
    /// SNS topic for the alarm.
    pub alarm_topic: Option<&'a str>,
}

/// The stack a deployment's dead-letter queue names: the template calls it `<stack>-dlq`.
pub fn stack_from_dead_letter_queue(dlq_url: &str) -> Option<String> {
    let name = dlq_url.trim_end_matches('/').rsplit('/').next()?;
    let stack = name.strip_suffix("-dlq")?;
    (!stack.is_empty()).then(|| stack.to_string())
}

/// The name of the queue created for `id` when its settings name none.
pub fn default_queue_name(prefix: &str, id: &str) -> Result<String, DeployError> {
    let name = format!("{prefix}{id}");
    let ok = name.len() <= MAX_QUEUE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok && deploy::logical_name(id).is_some() {
        Ok(name)
    } else {
        Err(DeployError::OutOfRange {
            key: format!("apps.{id}"),
            value: name,
            reason: "the queue name (prefix + id) must be 1-80 of a-z, A-Z, 0-9, '-', '_'".into(),
        })
    }
}

/// What the template reads from an application's settings.
pub fn deploy_settings(app: &AppConfig) -> deploy::AppSettings {
    deploy::AppSettings {
        id: app.id.clone(),
        max_concurrency: app.max_concurrency,
        delivery_timeout_ms: app.timeout_ms,
        retry_horizon_secs: app.retry_limits.horizon_secs,
        batch_size: app.lambda.batch_size,
        batching_window_secs: app.lambda.batching_window_secs,
        age_alarm_secs: app.lambda.age_alarm_secs,
    }
}

/// The application's resources, derived as the template derives them.
pub fn resources(
    config: &Config,
    app: &AppConfig,
    at: &Placement<'_>,
) -> Result<AppResources, DeployError> {
    let spec = DeploySpec {
        apps: vec![deploy_settings(app)],
        function: FunctionSettings {
            timeout_secs: at.function_timeout_secs.or(config.lambda.timeout_secs),
            memory_mb: config.lambda.memory_mb,
            log_retention_days: config.lambda.log_retention_days,
            ..FunctionSettings::default()
        },
        secret_env_vars: Vec::new(),
    };
    let plan = deploy::plan(&spec)?;
    let one = &plan.apps[0];
    let tags = BTreeMap::from([
        (TAG_APP.to_string(), app.id.clone()),
        (TAG_STACK.to_string(), at.stack.to_string()),
    ]);
    Ok(AppResources {
        queue: QueueSpec {
            name: at.queue_name.to_string(),
            visibility_timeout_secs: plan.visibility_timeout_secs,
            retention_secs: one.retention_secs,
            max_receive_count: deploy::MAX_RECEIVE_COUNT,
            tags,
        },
        mapping: MappingSpec {
            batch_size: one.settings.batch_size,
            batching_window_secs: one.settings.batching_window_secs,
            maximum_concurrency: one.maximum_concurrency,
        },
        alarm: AlarmSpec {
            name: alarm_name(at.queue_name),
            description: format!(
                "Squall app {}: a message has waited more than {} s in its queue (deliveries stalled or too slow).",
                app.id, one.settings.age_alarm_secs
            ),
            queue_name: at.queue_name.to_string(),
            threshold_secs: one.settings.age_alarm_secs,
            actions: at.alarm_topic.map(str::to_string).into_iter().collect(),
        },
    })
}

/// The alarm of the queue named `queue_name`.
pub fn alarm_name(queue_name: &str) -> String {
    format!("{queue_name}-oldest-message")
}

/// The queue's `RedrivePolicy` attribute.
pub fn redrive_policy(dead_letter_arn: &str, max_receive_count: u32) -> String {
    serde_json::json!({
        "deadLetterTargetArn": dead_letter_arn,
        "maxReceiveCount": max_receive_count,
    })
    .to_string()
}

/// Whether a queue's `RedrivePolicy` attribute says what [`redrive_policy`] would (SQS and
/// local servers write `maxReceiveCount` as a number or a string).
pub fn redrive_policy_matches(
    current: &str,
    dead_letter_arn: &str,
    max_receive_count: u32,
) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(current) else {
        return false;
    };
    let count = match &v["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    };
    v["deadLetterTargetArn"].as_str() == Some(dead_letter_arn)
        && count == Some(u64::from(max_receive_count))
}

/// The attributes that differ between what the queue has and `spec` (name, wanted value):
/// empty when the queue is as it should be.
pub fn queue_attribute_changes(
    current: &BTreeMap<String, String>,
    spec: &QueueSpec,
    dead_letter_arn: &str,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let want_num = |name: &'static str, v: u64, out: &mut Vec<(&'static str, String)>| {
        if current.get(name).and_then(|s| s.parse::<u64>().ok()) != Some(v) {
            out.push((name, v.to_string()));
        }
    };
    want_num("VisibilityTimeout", spec.visibility_timeout_secs, &mut out);
    want_num("MessageRetentionPeriod", spec.retention_secs, &mut out);
    let redrive_ok = current
        .get("RedrivePolicy")
        .is_some_and(|p| redrive_policy_matches(p, dead_letter_arn, spec.max_receive_count));
    if !redrive_ok {
        out.push((
            "RedrivePolicy",
            redrive_policy(dead_letter_arn, spec.max_receive_count),
        ));
    }
    out
}

/// The tags `spec` wants that the queue lacks or has with another value.
pub fn missing_tags(
    current: &BTreeMap<String, String>,
    spec: &QueueSpec,
) -> BTreeMap<String, String> {
    spec.tags
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// An existing mapping's settings as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MappingState {
    /// `BatchSize`.
    pub batch_size: Option<u32>,
    /// `MaximumBatchingWindowInSeconds` (absent = 0).
    pub batching_window_secs: Option<u32>,
    /// `ScalingConfig.MaximumConcurrency`.
    pub maximum_concurrency: Option<u32>,
    /// `FunctionResponseTypes` holds `ReportBatchItemFailures`.
    pub reports_batch_item_failures: bool,
}

impl MappingSpec {
    /// Whether `state` already is this mapping.
    pub fn is_met_by(&self, state: &MappingState) -> bool {
        state.batch_size == Some(self.batch_size)
            && state.batching_window_secs.unwrap_or(0) == self.batching_window_secs
            && state.maximum_concurrency == Some(self.maximum_concurrency)
            && state.reports_batch_item_failures
    }
}

/// The settings text stored for the application: `settings` as given, with a `queue_url` line
/// in front when it names no queue (so the engine finds the queue made for it).
pub fn settings_with_queue_url(settings: &str, has_queue_url: bool, queue_url: &str) -> String {
    if has_queue_url {
        return settings.to_string();
    }
    let quoted = toml::Value::String(queue_url.to_string()).to_string();
    format!("queue_url = {quoted}\n{settings}")
}

/// The `ssm:` secret references of `app` outside `secret_path` (the deployed function may read
/// only below it, so such an application could never get its secrets).
pub fn secrets_outside_path<'a>(app: &'a AppConfig, secret_path: &str) -> Vec<&'a str> {
    app.secret_ssm_names()
        .filter(|name| !name.starts_with(secret_path))
        .collect()
}

/// What a step did to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It did not exist and was made.
    Created,
    /// It existed and was changed (what changed).
    Updated(String),
    /// It already was as it should be.
    Unchanged,
    /// It existed and was removed.
    Deleted,
    /// It did not exist (nothing to remove).
    Absent,
    /// Not done, and why.
    Skipped(String),
    /// This many waiting messages were moved to the dead-letter queue (`apps delete --drain`).
    Drained(u64),
}

/// One line of a verb's report: `queue  acme-billing  created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `queue`, `item`, `mapping`, `alarm`, `table`, `messages`.
    pub resource: &'static str,
    /// Its name (queue name, application id, mapping UUID, alarm name).
    pub name: String,
    /// What happened.
    pub change: Change,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {} ", self.resource, self.name)?;
        match &self.change {
            Change::Created => write!(f, "created"),
            Change::Updated(what) => write!(f, "updated ({what})"),
            Change::Unchanged => write!(f, "unchanged"),
            Change::Deleted => write!(f, "deleted"),
            Change::Absent => write!(f, "absent"),
            Change::Skipped(why) => write!(f, "skipped ({why})"),
            Change::Drained(n) => write!(
                f,
                "{n} moved to the dead-letter queue (squall-reason {DRAIN_REASON})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml_str(extra, Path::new("/srv"), Vec::<(String, String)>::new()).unwrap()
    }

    fn app(config: &Config, body: &str) -> AppConfig {
        config
            .app_from_toml(
                "billing",
                &format!("secrets = {{ default = \"env:X\" }}\n{body}"),
                "t",
            )
            .unwrap()
    }

    fn at(timeout: Option<u64>) -> Placement<'static> {
        Placement {
            stack: "acme",
            queue_name: "acme-billing",
            function_timeout_secs: timeout,
            alarm_topic: None,
        }
    }

    #[test]
    fn resources_are_what_the_template_gives_the_same_app() {
        let c = config("[app_defaults]\ntimeout_ms = 10000\n");
        let a = app(
            &c,
            "max_concurrency = 100\n[retry]\nhorizon_secs = 432000\n",
        );
        let r = resources(&c, &a, &at(None)).unwrap();
        // The template's plan over the same app.
        let plan = deploy::plan(&DeploySpec {
            apps: vec![deploy_settings(&a)],
            function: FunctionSettings::default(),
            secret_env_vars: vec![],
        })
        .unwrap();
        assert_eq!(
            r.queue.visibility_timeout_secs,
            plan.visibility_timeout_secs
        );
        assert_eq!(r.queue.retention_secs, 6 * 24 * 3600);
        assert_eq!(r.queue.max_receive_count, 10);
        assert_eq!(r.mapping.maximum_concurrency, 10, "100 / batch of 10");
        assert_eq!(r.mapping.batch_size, 10);
        assert_eq!(r.alarm.name, "acme-billing-oldest-message");
        assert_eq!(r.alarm.threshold_secs, 3600);
        assert_eq!(r.queue.tags["squall:app"], "billing");
        assert_eq!(r.queue.tags["squall:stack"], "acme");
        // A known function's timeout wins: visibility is 6 x it.
        let r = resources(&c, &a, &at(Some(120))).unwrap();
        assert_eq!(r.queue.visibility_timeout_secs, 720);
        // MaximumConcurrency is clamped to 2..=1000.
        let small = app(&c, "max_concurrency = 1\nmax_per_endpoint = 1\n");
        assert_eq!(
            resources(&c, &small, &at(None))
                .unwrap()
                .mapping
                .maximum_concurrency,
            2
        );
    }

    #[test]
    fn names_and_stack() {
        assert_eq!(
            stack_from_dead_letter_queue("https://sqs.eu-west-1.amazonaws.com/1/acme-dlq"),
            Some("acme".into())
        );
        assert_eq!(stack_from_dead_letter_queue("http://h/1/dead"), None);
        assert_eq!(stack_from_dead_letter_queue("http://h/1/-dlq"), None);
        assert_eq!(
            default_queue_name("acme-", "billing").unwrap(),
            "acme-billing"
        );
        assert!(default_queue_name("acme-", "bad.id").is_err());
        assert!(default_queue_name(&"p".repeat(79), "ab").is_err());
    }

    #[test]
    fn queue_differences_are_found_and_none_when_equal() {
        let c = config("");
        let a = app(&c, "");
        let spec = resources(&c, &a, &at(Some(30))).unwrap().queue;
        let arn = "arn:aws:sqs:us-east-1:1:acme-dlq";
        let mut cur = BTreeMap::from([
            ("VisibilityTimeout".to_string(), "180".to_string()),
            (
                "MessageRetentionPeriod".to_string(),
                spec.retention_secs.to_string(),
            ),
            (
                "RedrivePolicy".to_string(),
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"10"}}"#),
            ),
        ]);
        assert_eq!(queue_attribute_changes(&cur, &spec, arn), vec![]);
        cur.insert("VisibilityTimeout".into(), "30".into());
        cur.remove("RedrivePolicy");
        let ch = queue_attribute_changes(&cur, &spec, arn);
        assert_eq!(ch[0], ("VisibilityTimeout", "180".to_string()));
        assert_eq!(ch[1].0, "RedrivePolicy");
        assert!(redrive_policy_matches(&ch[1].1, arn, 10));
        assert!(!redrive_policy_matches(&ch[1].1, "arn:other", 10));
        let tags = BTreeMap::from([("squall:app".to_string(), "billing".to_string())]);
        assert_eq!(
            missing_tags(&tags, &spec).into_keys().collect::<Vec<_>>(),
            ["squall:stack"]
        );
    }

    #[test]
    fn secrets_must_sit_below_the_secret_path() {
        let c = config("");
        let a = c
            .app_from_toml(
                "billing",
                "secrets = { default = [\"ssm:/squall/billing/new\", \"ssm:/other/old\", \"env:X\"] }",
                "t",
            )
            .unwrap();
        assert_eq!(secrets_outside_path(&a, "/squall/"), ["/other/old"]);
        assert!(secrets_outside_path(&a, "/").is_empty());
    }

    #[test]
    fn mapping_state_and_settings_text() {
        let m = MappingSpec {
            batch_size: 10,
            batching_window_secs: 0,
            maximum_concurrency: 6,
        };
        let mut s = MappingState {
            batch_size: Some(10),
            batching_window_secs: None,
            maximum_concurrency: Some(6),
            reports_batch_item_failures: true,
        };
        assert!(m.is_met_by(&s));
        s.maximum_concurrency = Some(7);
        assert!(!m.is_met_by(&s));
        let text = settings_with_queue_url("[retry]\nmax_attempts = 3\n", false, "http://q/1/a");
        assert_eq!(
            text,
            "queue_url = \"http://q/1/a\"\n[retry]\nmax_attempts = 3\n"
        );
        assert_eq!(settings_with_queue_url("x = 1\n", true, "u"), "x = 1\n");
        let step = Step {
            resource: "queue",
            name: "acme-billing".into(),
            change: Change::Updated("VisibilityTimeout".into()),
        };
        assert_eq!(
            step.to_string(),
            "queue    acme-billing updated (VisibilityTimeout)"
        );
    }
}
