//! The AWS infrastructure as a CloudFormation template, generated from the Squall config:
//! one queue and one Lambda event source mapping per application, the shared dead-letter
//! and metrics queues, the function, the alarms and a least-privilege role.
//!
//! Two steps, both plain functions: [`plan`] turns per-application settings into the
//! numbers AWS needs (function timeout, visibility timeout, `MaximumConcurrency`,
//! retention), checking them against the SQS and Lambda limits; [`template`] renders a plan
//! as CloudFormation JSON (`serde_json::Value`; cfn-lint and `aws cloudformation deploy`
//! accept JSON). Nothing here talks to AWS.
//!
//! With [`Egress::FixedIps`] both templates also hold a VPC of the stack's own: the function
//! runs in its private subnets, which reach the internet through one NAT gateway with an
//! Elastic IP per availability zone, so every request to the internet leaves from those
//! addresses (the `EgressIps` output), which subscribers can allow-list.
//!
//! The function finds its queues through environment variables set by the template
//! (`SQUALL__APPS__<APP>__QUEUE_URL`, `SQUALL__SQS__DEAD_LETTER_QUEUE_URL`,
//! `SQUALL__SQS__METRICS_QUEUE_URL`), which overlay the bundled config file, so the same
//! config file serves `squall run` and the deployed stack.

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// SQS: the longest retention, seconds (14 days).
pub const MAX_RETENTION_SECS: u64 = 14 * 24 * 3600;
/// SQS: the longest visibility timeout, seconds (12 h).
pub const MAX_VISIBILITY_SECS: u64 = 43_200;
/// Lambda: the longest function timeout, seconds.
pub const MAX_FUNCTION_TIMEOUT_SECS: u64 = 900;
/// Event source mapping: `ScalingConfig.MaximumConcurrency` range.
pub const MAXIMUM_CONCURRENCY_RANGE: (u32, u32) = (2, 1000);
/// Event source mapping: the largest SQS batch.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// Event source mapping: the longest batching window, seconds.
pub const MAX_BATCHING_WINDOW_SECS: u32 = 300;
/// Redrive policy `maxReceiveCount` on application queues: the safety net for messages that
/// crash the function repeatedly (the retry mechanism re-sends every 5th receive, see
/// ARCHITECTURE.md, so a healthy retry never reaches it).
pub const MAX_RECEIVE_COUNT: u32 = 10;
/// Seconds added to the longest delivery round when sizing the function timeout: plugin
/// calls, SQS actions and the metrics flush.
pub const FUNCTION_TIMEOUT_MARGIN_SECS: u64 = 15;
/// The shortest function timeout the generator produces, seconds.
pub const MIN_FUNCTION_TIMEOUT_SECS: u64 = 30;
/// Where the packaged config file sits inside the function (`/var/task` is the zip's root).
pub const PACKAGED_CONFIG_PATH: &str = "/var/task/squall.toml";
/// The registry table's index by queue (the engine's `DynamoStore` queries it).
pub const REGISTRY_QUEUE_INDEX: &str = "queue_key-index";

/// CPU architecture of the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// AWS Graviton (the default: cheaper per GB-s).
    Arm64,
    /// Intel/AMD.
    X86_64,
}

impl Architecture {
    /// The name CloudFormation uses (`arm64`, `x86_64`).
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Arm64 => "arm64",
            Architecture::X86_64 => "x86_64",
        }
    }
}

/// What the template needs to know about one application, read from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    /// Application id (the key under `[apps]`).
    pub id: String,
    /// Concurrent deliveries allowed for the application in all (`max_concurrency`).
    pub max_concurrency: u32,
    /// Total HTTP timeout of one delivery, ms (`timeout_ms`).
    pub delivery_timeout_ms: u64,
    /// Retry horizon, seconds (`retry.horizon_secs`): the queue keeps messages this long at least.
    pub retry_horizon_secs: u64,
    /// Messages per Lambda invocation (event source mapping `BatchSize`).
    pub batch_size: u32,
    /// Event source mapping `MaximumBatchingWindowInSeconds`.
    pub batching_window_secs: u32,
    /// Alarm when the oldest message in the queue is older than this, seconds.
    pub age_alarm_secs: u64,
}

/// How the function reaches endpoints (`[lambda] egress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Egress {
    /// Lambda's own networking, no VPC: requests leave from AWS's addresses, shared and
    /// changing.
    #[default]
    Default,
    /// In a VPC of the stack's own: one public and one private subnet per availability zone,
    /// the private ones routed through their zone's NAT gateway, which has an Elastic IP.
    /// Requests leave from those addresses (the `EgressIps` output).
    FixedIps {
        /// Availability zones, each with a NAT gateway and its address
        /// (1..=[`MAX_EGRESS_AZS`]).
        azs: u8,
    },
}

/// The most availability zones (so NAT gateways and addresses) of [`Egress::FixedIps`]: most
/// regions offer an account 3 or more (`Fn::GetAZs` must list as many as asked for), and each
/// zone adds a NAT gateway's hourly price.
pub const MAX_EGRESS_AZS: u8 = 3;

/// The address range of the egress VPC: private, and used by nothing else in the stack (the
/// VPC has no peering, so it cannot clash with a network the function must reach).
pub const EGRESS_VPC_CIDR: &str = "10.192.0.0/16";

/// Function-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSettings {
    /// Default of the template's `Architecture` parameter.
    pub architecture: Architecture,
    /// Default of the template's `MemorySize` parameter, MB.
    pub memory_mb: u32,
    /// Function timeout, seconds; `None` derives it from the applications (see [`plan`]).
    pub timeout_secs: Option<u64>,
    /// Retention of the function's log group, days.
    pub log_retention_days: u32,
    /// How the function reaches endpoints.
    pub egress: Egress,
}

impl Default for FunctionSettings {
    fn default() -> Self {
        FunctionSettings {
            architecture: Architecture::Arm64,
            memory_mb: 512,
            timeout_secs: None,
            log_retention_days: 30,
            egress: Egress::Default,
        }
    }
}

/// Everything the generator reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploySpec {
    /// The applications, in config order.
    pub apps: Vec<AppSettings>,
    /// The function.
    pub function: FunctionSettings,
    /// Environment variables named by `env:NAME` secret references: each becomes a `NoEcho`
    /// template parameter passed to the function, so no secret value is in the template.
    pub secret_env_vars: Vec<String>,
}

/// A spec that AWS would refuse, or that could not work. Each names the application and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// No application is configured.
    #[error("the config has no application under [apps]: nothing to deploy")]
    NoApps,
    /// An application id cannot be turned into CloudFormation names.
    #[error(
        "apps.{app}: the id must be 1-40 characters of a-z, A-Z, 0-9, '_' or '-' to name its queue and resources"
    )]
    BadAppId {
        /// The id.
        app: String,
    },
    /// Two application ids map to the same resource name.
    #[error(
        "apps.{first} and apps.{second} both map to CloudFormation names '{logical}'; rename one"
    )]
    NameClash {
        /// First id.
        first: String,
        /// Second id.
        second: String,
        /// The shared logical name.
        logical: String,
    },
    /// A setting is outside what AWS accepts.
    #[error("{key} = {value}: {reason}")]
    OutOfRange {
        /// Key path, for example `apps.billing.batch_size`.
        key: String,
        /// The value given.
        value: String,
        /// The accepted range or rule.
        reason: String,
    },
    /// A secret environment variable name cannot be passed through a template parameter.
    #[error(
        "secret reference env:{name}: the variable name must be letters, digits and '_' (starting with a letter) to be passed to the function"
    )]
    BadSecretEnvVar {
        /// The variable name.
        name: String,
    },
}

/// The derived numbers for one application.
#[derive(Debug, Clone, PartialEq)]
pub struct AppPlan {
    /// The settings it came from.
    pub settings: AppSettings,
    /// Alphanumeric CloudFormation name stem, for example `Billing` for `billing`.
    pub logical: String,
    /// Upper-case form used in environment variable names, for example `BILLING`.
    pub env_key: String,
    /// `ScalingConfig.MaximumConcurrency`: invocations of the function at once for this app.
    pub maximum_concurrency: u32,
    /// Deliveries one invocation runs at once (`min(batch_size, max_concurrency)`).
    pub per_invocation_concurrency: u32,
    /// Queue `MessageRetentionPeriod`, seconds.
    pub retention_secs: u64,
}

/// The derived numbers for the whole stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Per application, in config order.
    pub apps: Vec<AppPlan>,
    /// Function settings.
    pub function: FunctionSettings,
    /// Function timeout, seconds.
    pub function_timeout_secs: u64,
    /// Visibility timeout of every application queue: 6 x the function timeout (AWS advice).
    pub visibility_timeout_secs: u64,
    /// Secret env vars with their template parameter names.
    pub secret_params: Vec<(String, String)>,
}

fn out_of_range(key: String, value: impl ToString, reason: &str) -> DeployError {
    DeployError::OutOfRange {
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// `billing-eu` -> `BillingEu`; `None` if the id is empty, too long or has other characters.
pub fn logical_name(app_id: &str) -> Option<String> {
    if app_id.is_empty()
        || app_id.len() > 40
        || !app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    let mut out = String::with_capacity(app_id.len());
    for part in app_id.split(['-', '_']).filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// `billing-eu` -> `BILLING_EU`: the app's segment in `SQUALL__APPS__<APP>__...` variables.
pub fn env_key(app_id: &str) -> String {
    app_id.to_ascii_uppercase().replace('-', "_")
}

/// `ceil(a / b)` for b > 0.
fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// One application's derived numbers, checked against the SQS and Lambda limits (see [`plan`]
/// for the rules). `squall apps create` sizes a queue and mapping made at run time with it, as
/// the file-backend template does at deploy time.
pub fn plan_app(app: &AppSettings) -> Result<AppPlan, DeployError> {
    let key = |k: &str| format!("apps.{}.{k}", app.id);
    let logical = logical_name(&app.id).ok_or_else(|| DeployError::BadAppId {
        app: app.id.clone(),
    })?;
    if app.batch_size == 0 || app.batch_size > MAX_BATCH_SIZE {
        return Err(out_of_range(
            key("batch_size"),
            app.batch_size,
            "must be 1..=10000 (SQS event source mapping)",
        ));
    }
    if app.batching_window_secs > MAX_BATCHING_WINDOW_SECS {
        return Err(out_of_range(
            key("batching_window_secs"),
            app.batching_window_secs,
            "must be 0..=300",
        ));
    }
    if app.batch_size > 10 && app.batching_window_secs == 0 {
        return Err(out_of_range(
            key("batching_window_secs"),
            0,
            "a batch size above 10 needs a batching window of at least 1 s (AWS rule)",
        ));
    }
    if app.max_concurrency == 0 {
        return Err(out_of_range(
            key("max_concurrency"),
            0,
            "must be at least 1",
        ));
    }
    if app.delivery_timeout_ms == 0 {
        return Err(out_of_range(key("timeout_ms"), 0, "must be at least 1"));
    }
    if app.retry_horizon_secs > MAX_RETENTION_SECS {
        return Err(out_of_range(
            key("retry.horizon_secs"),
            app.retry_horizon_secs,
            "must fit in the SQS retention of 14 days (1209600 s)",
        ));
    }
    let per_invocation = app.batch_size.min(app.max_concurrency);
    let (lo, hi) = MAXIMUM_CONCURRENCY_RANGE;
    let maximum_concurrency = (app.max_concurrency / per_invocation).clamp(lo, hi);
    let retention_secs =
        (app.retry_horizon_secs + 24 * 3600).clamp(4 * 24 * 3600, MAX_RETENTION_SECS);
    Ok(AppPlan {
        settings: app.clone(),
        logical,
        env_key: env_key(&app.id),
        maximum_concurrency,
        per_invocation_concurrency: per_invocation,
        retention_secs,
    })
}

impl AppPlan {
    /// The longest time one invocation spends delivering this application's batch, seconds:
    /// `ceil(batch / per-invocation concurrency)` rounds x the delivery timeout.
    pub fn round_secs(&self) -> u64 {
        let rounds = div_ceil(
            self.settings.batch_size as u64,
            self.per_invocation_concurrency as u64,
        );
        rounds * div_ceil(self.settings.delivery_timeout_ms, 1000)
    }
}

/// The function timeout: `function.timeout_secs` when given, else the longest delivery round
/// plus a margin (30..=900 s); checked against Lambda's limits and the 12 h visibility limit
/// (queues get 6 x the function timeout). Also checks the memory size and the egress zones.
fn function_timeout(
    function: &FunctionSettings,
    longest_round_secs: u64,
) -> Result<u64, DeployError> {
    let function_timeout_secs = match function.timeout_secs {
        Some(t) => {
            if !(1..=MAX_FUNCTION_TIMEOUT_SECS).contains(&t) {
                return Err(out_of_range(
                    "function timeout".to_string(),
                    t,
                    "must be 1..=900 s (Lambda)",
                ));
            }
            t
        }
        None => (longest_round_secs + FUNCTION_TIMEOUT_MARGIN_SECS)
            .clamp(MIN_FUNCTION_TIMEOUT_SECS, MAX_FUNCTION_TIMEOUT_SECS),
    };
    if function_timeout_secs * 6 > MAX_VISIBILITY_SECS {
        return Err(out_of_range(
            "function timeout".to_string(),
            function_timeout_secs,
            "6 x the function timeout must fit in the 12 h SQS visibility limit",
        ));
    }
    if !(128..=10_240).contains(&function.memory_mb) {
        return Err(out_of_range(
            "function memory".to_string(),
            function.memory_mb,
            "must be 128..=10240 MB (Lambda)",
        ));
    }
    if let Egress::FixedIps { azs } = function.egress
        && !(1..=MAX_EGRESS_AZS).contains(&azs)
    {
        return Err(out_of_range(
            "lambda.egress_azs".to_string(),
            azs,
            "must be 1..=3 (one NAT gateway and Elastic IP per availability zone)",
        ));
    }
    Ok(function_timeout_secs)
}

/// Derive every number of the stack and check it against the AWS limits.
///
/// - Per invocation, a batch runs with up to `min(batch_size, max_concurrency)` deliveries at
///   once, so `MaximumConcurrency = max_concurrency / that`, kept within 2..=1000 (2 is the
///   event source mapping's minimum, so an app with `max_concurrency` below 2 x its per-batch
///   concurrency can reach twice its limit: documented in docs/deploy.md).
/// - Function timeout (unless given): the longest app's `ceil(batch / per-invocation
///   concurrency)` delivery rounds x its delivery timeout, plus a margin, at least 30 s,
///   at most 900 s.
/// - Visibility timeout of the queues: 6 x the function timeout, at most 12 h.
/// - Retention: the retry horizon plus one day, at least the SQS default of 4 days, at most
///   14 days; the dead-letter queue always keeps 14 days.
pub fn plan(spec: &DeploySpec) -> Result<Plan, DeployError> {
    if spec.apps.is_empty() {
        return Err(DeployError::NoApps);
    }
    let mut apps: Vec<AppPlan> = Vec::with_capacity(spec.apps.len());
    let mut longest_round_secs = 0u64;
    for app in &spec.apps {
        let planned = plan_app(app)?;
        if let Some(other) = apps.iter().find(|p| {
            p.logical.eq_ignore_ascii_case(&planned.logical) || p.env_key == planned.env_key
        }) {
            return Err(DeployError::NameClash {
                first: other.settings.id.clone(),
                second: app.id.clone(),
                logical: planned.logical,
            });
        }
        longest_round_secs = longest_round_secs.max(planned.round_secs());
        apps.push(planned);
    }
    let function_timeout_secs = function_timeout(&spec.function, longest_round_secs)?;
    let mut secret_params = Vec::new();
    let mut seen = BTreeSet::new();
    for name in &spec.secret_env_vars {
        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(DeployError::BadSecretEnvVar { name: name.clone() });
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        let param = format!("Secret{}", name.replace('_', ""));
        if secret_params.iter().any(|(_, p)| p == &param) {
            return Err(DeployError::BadSecretEnvVar { name: name.clone() });
        }
        secret_params.push((name.clone(), param));
    }
    Ok(Plan {
        apps,
        function: spec.function.clone(),
        function_timeout_secs,
        visibility_timeout_secs: function_timeout_secs * 6,
        secret_params,
    })
}

/// The SQS actions the function needs on an application queue to consume it.
pub const CONSUME_ACTIONS: [&str; 4] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
];

fn arn(logical: &str) -> Value {
    json!({ "Fn::GetAtt": [logical, "Arn"] })
}

fn queue_logical(app: &AppPlan) -> String {
    format!("{}Queue", app.logical)
}

fn alarm_actions() -> Value {
    json!({ "Fn::If": ["HasAlarmTopic", [{ "Ref": "AlarmTopicArn" }], { "Ref": "AWS::NoValue" }] })
}

/// Render a plan as a CloudFormation template (JSON).
pub fn template(plan: &Plan) -> Value {
    let mut parameters = common_parameters(&plan.function);
    for (var, param) in &plan.secret_params {
        parameters.insert(
            param.clone(),
            json!({ "Type": "String", "NoEcho": true,
                    "Description": format!("Value of the secret environment variable {var} (a config env: reference).") }),
        );
    }

    let mut resources = serde_json::Map::new();
    shared_resources(&plan.function, &mut resources);

    let mut env = shared_env();
    for (var, param) in &plan.secret_params {
        env.insert(var.clone(), json!({ "Ref": param }));
    }

    let mut outputs = serde_json::Map::new();
    for app in &plan.apps {
        let q = queue_logical(app);
        resources.insert(
            q.clone(),
            json!({
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "QueueName": { "Fn::Sub": format!("${{AWS::StackName}}-{}", app.settings.id) },
                    "VisibilityTimeout": plan.visibility_timeout_secs,
                    "MessageRetentionPeriod": app.retention_secs,
                    "RedrivePolicy": {
                        "deadLetterTargetArn": arn("DeadLetterQueue"),
                        "maxReceiveCount": MAX_RECEIVE_COUNT
                    }
                }
            }),
        );
        let mut mapping = json!({
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "EventSourceArn": arn(&q),
                "FunctionName": { "Ref": "Function" },
                "Enabled": true,
                "BatchSize": app.settings.batch_size,
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "ScalingConfig": { "MaximumConcurrency": app.maximum_concurrency }
            }
        });
        if app.settings.batching_window_secs > 0 {
            mapping["Properties"]["MaximumBatchingWindowInSeconds"] =
                json!(app.settings.batching_window_secs);
        }
        resources.insert(format!("{}Mapping", app.logical), mapping);
        resources.insert(
            format!("{}OldestMessageAlarm", app.logical),
            json!({
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "AlarmDescription": format!(
                        "Squall app {}: a message has waited more than {} s in its queue (deliveries stalled or too slow).",
                        app.settings.id, app.settings.age_alarm_secs),
                    "Namespace": "AWS/SQS",
                    "MetricName": "ApproximateAgeOfOldestMessage",
                    "Dimensions": [{ "Name": "QueueName", "Value": { "Fn::GetAtt": [q, "QueueName"] } }],
                    "Statistic": "Maximum",
                    "Period": 60,
                    "EvaluationPeriods": 5,
                    "Threshold": app.settings.age_alarm_secs,
                    "ComparisonOperator": "GreaterThanThreshold",
                    "TreatMissingData": "notBreaching",
                    "AlarmActions": alarm_actions()
                }
            }),
        );
        env.insert(
            format!("SQUALL__APPS__{}__QUEUE_URL", app.env_key),
            json!({ "Ref": q }),
        );
        outputs.insert(
            format!("{}QueueUrl", app.logical),
            json!({ "Description": format!("Queue of app {} (producers send envelopes here).", app.settings.id),
                    "Value": { "Ref": q } }),
        );
    }
    let app_arns: Vec<Value> = plan.apps.iter().map(|a| arn(&queue_logical(a))).collect();
    let mut send_arns = app_arns.clone();
    send_arns.push(arn("DeadLetterQueue"));
    send_arns.push(arn("MetricsQueue"));
    let vpc = match plan.function.egress {
        Egress::Default => None,
        Egress::FixedIps { azs } => Some(egress_vpc(azs, &mut resources, &mut outputs)),
    };
    let mut statements = vec![
        json!({ "Sid": "ConsumeAppQueues", "Effect": "Allow",
                "Action": CONSUME_ACTIONS, "Resource": app_arns }),
        json!({ "Sid": "SendRetriesDeadLettersMetrics", "Effect": "Allow",
                "Action": ["sqs:SendMessage"], "Resource": send_arns }),
        json!({ "Sid": "WriteLogs", "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [{ "Fn::GetAtt": ["LogGroup", "Arn"] }] }),
    ];
    if vpc.is_some() {
        statements.extend(vpc_role_statements());
    }
    resources.insert("FunctionRole".into(), function_role(json!(statements)));
    resources.insert(
        "Function".into(),
        function_resource(plan.function_timeout_secs, env, vpc.as_ref()),
    );
    outputs.insert(
        "DeadLetterQueueUrl".into(),
        json!({ "Description": "Shared dead-letter queue.", "Value": { "Ref": "DeadLetterQueue" } }),
    );
    outputs.insert(
        "MetricsQueueUrl".into(),
        json!({ "Description": "Shared metrics queue (one JSON record per attempt).", "Value": { "Ref": "MetricsQueue" } }),
    );
    outputs.insert(
        "FunctionName".into(),
        json!({ "Description": "The Squall function.", "Value": { "Ref": "Function" } }),
    );

    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "Squall webhook delivery: {} application queue(s), shared DLQ and metrics queue, one Lambda function{}. Generated by `squall deploy template`; do not edit by hand.",
            plan.apps.len(), egress_description(plan.function.egress)),
        "Parameters": parameters,
        "Conditions": {
            "HasAlarmTopic": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "AlarmTopicArn" }, ""] }] }
        },
        "Resources": resources,
        "Outputs": outputs
    })
}

/// The template description's words for the egress VPC, if any.
fn egress_description(egress: Egress) -> String {
    match egress {
        Egress::Default => String::new(),
        Egress::FixedIps { azs } => format!(
            " in a VPC whose requests leave through {azs} NAT gateway(s) with fixed Elastic IPs (output EgressIps)"
        ),
    }
}

/// Queue-name suffixes the stack itself uses (`<stack>-dlq`, `<stack>-metrics`, the registry
/// template's `<stack>-shared`): no application may have these ids, or its queue would be one
/// of the stack's.
pub const RESERVED_APP_IDS: [&str; 3] = ["dlq", "metrics", "shared"];

/// The longest stack name whose queues fit SQS's 80-character queue names for every valid
/// application id (`<stack>-<id>`, ids up to 40 characters).
pub const MAX_REGISTRY_STACK_NAME: usize = 80 - 1 - 40;

/// The queue name of application `app_id` in stack `stack`: `<stack>-<app id>`. The registry
/// template's role may consume only queues named `<stack>-*`, so `squall apps create` must
/// name queues with this.
pub fn app_queue_name(stack: &str, app_id: &str) -> Result<String, DeployError> {
    if logical_name(app_id).is_none() || RESERVED_APP_IDS.contains(&app_id) {
        return Err(DeployError::BadAppId {
            app: app_id.to_string(),
        });
    }
    let name = format!("{stack}-{app_id}");
    if stack.is_empty() || name.len() > 80 {
        return Err(out_of_range(
            "stack name".into(),
            stack,
            "queues are named <stack>-<app id> in at most 80 characters: keep the stack name within 39",
        ));
    }
    Ok(name)
}

/// What the template of a registry deployment (`registry.backend = "dynamodb"`) reads: nothing
/// per application.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrySpec {
    /// The function.
    pub function: FunctionSettings,
    /// `[app_defaults]` as an application: sizes the function timeout when `[lambda]
    /// timeout_secs` is not set (applications are not known at deploy time).
    pub defaults: AppSettings,
    /// The registry's DynamoDB table name (`registry.table`).
    pub table: String,
    /// The SSM path of the applications' secrets (`registry.secret_path`, `/.../`).
    pub secret_path: String,
}

/// The derived numbers of a registry deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryPlan {
    /// Function settings.
    pub function: FunctionSettings,
    /// Function timeout, seconds: `[lambda] timeout_secs`, else derived from `[app_defaults]`
    /// as [`plan`] derives it from the applications. `squall apps create` gives each queue a
    /// visibility timeout of 6 x this (the stack's `FunctionTimeout` output).
    pub function_timeout_secs: u64,
    /// The registry table.
    pub table: String,
    /// The secrets' SSM path.
    pub secret_path: String,
    /// The shared queue's numbers, from `[app_defaults]`: its retention (the longest, 14
    /// days: a tier move counts on it) and its mapping's batch size and batching window.
    pub shared: AppPlan,
}

/// Plan a registry deployment: the function and the shared parts only.
pub fn plan_registry(spec: &RegistrySpec) -> Result<RegistryPlan, DeployError> {
    let defaults = plan_app(&spec.defaults)?;
    let function_timeout_secs = function_timeout(&spec.function, defaults.round_secs())?;
    let table_ok = (3..=255).contains(&spec.table.len())
        && spec
            .table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !table_ok {
        return Err(out_of_range(
            "registry.table".into(),
            &spec.table,
            "a DynamoDB table name is 3-255 letters, digits, '_', '-' or '.'",
        ));
    }
    let path_ok = spec.secret_path.starts_with('/')
        && spec.secret_path.ends_with('/')
        && spec
            .secret_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
    if !path_ok {
        return Err(out_of_range(
            "registry.secret_path".into(),
            &spec.secret_path,
            "must be an SSM path starting and ending with '/'",
        ));
    }
    Ok(RegistryPlan {
        function: spec.function.clone(),
        function_timeout_secs,
        table: spec.table.clone(),
        secret_path: spec.secret_path.clone(),
        shared: defaults,
    })
}

/// The SQS actions the registry function needs on the stack's queues: consume the
/// applications' queues, and send re-sends, dead letters and metrics records.
pub const REGISTRY_QUEUE_ACTIONS: [&str; 5] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:SendMessage",
    "sqs:GetQueueAttributes",
];

/// The DynamoDB actions the registry function needs (find by queue, read one, list).
pub const REGISTRY_READ_ACTIONS: [&str; 3] =
    ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan"];

/// `arn:<partition>:<service>:<region>:<account>:<rest>`, in `Fn::Sub` syntax.
fn sub_arn(service: &str, rest: &str) -> String {
    format!("arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{rest}")
}

/// The permissions `squall apps` needs: exactly the calls its verbs make (`ops::apps`; the
/// receive, delete and send on the queues are `delete --drain`'s), as policy statements whose
/// strings use `Fn::Sub` syntax (`${AWS::StackName}`, `${AWS::Region}`...). [`apps_policy`] fills them in for a
/// given stack; the registry template wraps them in `Fn::Sub`.
fn apps_policy_statements(table: &str, secret_path: &str) -> Value {
    let function = sub_arn("lambda", "function:${AWS::StackName}-squall");
    let table_arn = sub_arn("dynamodb", &format!("table/{table}"));
    json!([
        { "Sid": "ManageAppQueues", "Effect": "Allow",
          "Action": ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueUrl",
                     "sqs:GetQueueAttributes", "sqs:SetQueueAttributes",
                     "sqs:TagQueue", "sqs:UntagQueue", "sqs:ListQueueTags",
                     "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"],
          "Resource": [sub_arn("sqs", "${AWS::StackName}-*")] },
        { "Sid": "ReadFunction", "Effect": "Allow",
          "Action": ["lambda:GetFunctionConfiguration"],
          "Resource": [function.clone(), format!("{function}:*")] },
        { "Sid": "DescribeAlarms", "Effect": "Allow",
          "Action": ["cloudwatch:DescribeAlarms"],
          "Resource": ["*"] },
        { "Sid": "CreateListMappings", "Effect": "Allow",
          "Action": ["lambda:CreateEventSourceMapping", "lambda:ListEventSourceMappings"],
          "Resource": ["*"],
          "Condition": { "StringEquals": { "lambda:FunctionArn": function } } },
        { "Sid": "ChangeMappings", "Effect": "Allow",
          "Action": ["lambda:GetEventSourceMapping", "lambda:UpdateEventSourceMapping",
                     "lambda:DeleteEventSourceMapping"],
          "Resource": [sub_arn("lambda", "event-source-mapping:*")],
          "Condition": { "StringEquals": { "lambda:FunctionArn": function } } },
        { "Sid": "ManageAppAlarms", "Effect": "Allow",
          "Action": ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"],
          "Resource": [sub_arn("cloudwatch", "alarm:${AWS::StackName}-*")] },
        { "Sid": "WriteRegistry", "Effect": "Allow",
          "Action": ["dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:DeleteItem",
                     "dynamodb:Query", "dynamodb:Scan"],
          "Resource": [table_arn.clone(), format!("{table_arn}/index/*")] },
        { "Sid": "CheckSecretReferences", "Effect": "Allow",
          "Action": ["ssm:GetParameters"],
          "Resource": [sub_arn("ssm", &format!("parameter{secret_path}*"))] }
    ])
}

/// Where the `squall apps` policy applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyScope {
    /// AWS partition (`aws`, `aws-cn`, `aws-us-gov`).
    pub partition: String,
    /// Region of the stack.
    pub region: String,
    /// Account id of the stack.
    pub account: String,
    /// Stack name (the queue, alarm and function name prefix).
    pub stack: String,
}

/// The IAM policy document an operator attaches to whoever runs `squall apps` against the
/// stack `scope.stack` (`squall deploy policy`): queues and alarms named `<stack>-*`, the
/// stack function's event source mappings, the registry table, the secrets' path (read).
pub fn apps_policy(plan: &RegistryPlan, scope: &PolicyScope) -> Value {
    let mut statements = apps_policy_statements(&plan.table, &plan.secret_path);
    let fill = |s: &str| {
        s.replace("${AWS::Partition}", &scope.partition)
            .replace("${AWS::Region}", &scope.region)
            .replace("${AWS::AccountId}", &scope.account)
            .replace("${AWS::StackName}", &scope.stack)
    };
    map_strings(&mut statements, &|s| Value::String(fill(s)));
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// Replace every string in `v` (not object keys) by `f(string)`.
fn map_strings(v: &mut Value, f: &dyn Fn(&str) -> Value) {
    match v {
        Value::String(s) => *v = f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| map_strings(i, f)),
        Value::Object(map) => map.values_mut().for_each(|i| map_strings(i, f)),
        _ => {}
    }
}

/// The function's role: Lambda may assume it; `statements` are its one inline policy's.
fn function_role(statements: Value) -> Value {
    json!({
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": { "Service": "lambda.amazonaws.com" },
                    "Action": "sts:AssumeRole"
                }]
            },
            "Policies": [{
                "PolicyName": "squall-function",
                "PolicyDocument": { "Version": "2012-10-17", "Statement": statements }
            }]
        }
    })
}

/// The parameters both templates share.
fn common_parameters(function: &FunctionSettings) -> serde_json::Map<String, Value> {
    let mut parameters = serde_json::Map::new();
    parameters.insert(
        "Architecture".into(),
        json!({
            "Type": "String",
            "Default": function.architecture.as_str(),
            "AllowedValues": ["arm64", "x86_64"],
            "Description": "CPU architecture of the function; the deployment zip must be built for it (scripts/package-lambda --arch)."
        }),
    );
    parameters.insert(
        "CodeS3Bucket".into(),
        json!({ "Type": "String", "Description": "S3 bucket holding the deployment zip." }),
    );
    parameters.insert(
        "CodeS3Key".into(),
        json!({ "Type": "String", "Description": "S3 key of the deployment zip (change it to roll out a new build)." }),
    );
    parameters.insert(
        "MemorySize".into(),
        json!({ "Type": "Number", "Default": function.memory_mb, "MinValue": 128, "MaxValue": 10240,
                "Description": "Function memory, MB (CPU scales with it)." }),
    );
    parameters.insert(
        "AlarmTopicArn".into(),
        json!({ "Type": "String", "Default": "", "Description": "SNS topic notified by the alarms; empty for none." }),
    );
    parameters
}

/// The shared dead-letter and metrics queues, the DLQ-depth alarm and the function's log
/// group: in both templates.
fn shared_resources(function: &FunctionSettings, resources: &mut serde_json::Map<String, Value>) {
    resources.insert(
        "DeadLetterQueue".into(),
        json!({
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": { "Fn::Sub": "${AWS::StackName}-dlq" },
                "MessageRetentionPeriod": MAX_RETENTION_SECS
            }
        }),
    );
    resources.insert(
        "MetricsQueue".into(),
        json!({
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": { "Fn::Sub": "${AWS::StackName}-metrics" },
                "MessageRetentionPeriod": 4 * 24 * 3600
            }
        }),
    );
    resources.insert(
        "DeadLetterQueueDepthAlarm".into(),
        json!({
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmDescription": "Squall: events were dead-lettered; inspect the DLQ (reasons are in the message attributes).",
                "Namespace": "AWS/SQS",
                "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [{ "Name": "QueueName", "Value": { "Fn::GetAtt": ["DeadLetterQueue", "QueueName"] } }],
                "Statistic": "Maximum",
                "Period": 60,
                "EvaluationPeriods": 1,
                "Threshold": 0,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
                "AlarmActions": alarm_actions()
            }
        }),
    );
    resources.insert(
        "LogGroup".into(),
        json!({
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": { "Fn::Sub": "/aws/lambda/${AWS::StackName}-squall" },
                "RetentionInDays": function.log_retention_days
            }
        }),
    );
}

/// The function resource, with these environment variables and role; in the egress VPC when
/// `vpc` is given.
fn function_resource(
    function_timeout_secs: u64,
    env: serde_json::Map<String, Value>,
    vpc: Option<&EgressVpc>,
) -> Value {
    let mut function = json!({
        "Type": "AWS::Lambda::Function",
        "Properties": {
            "FunctionName": { "Fn::Sub": "${AWS::StackName}-squall" },
            "Description": "Squall webhook delivery",
            "Runtime": "provided.al2023",
            "Handler": "bootstrap",
            "Architectures": [{ "Ref": "Architecture" }],
            "Code": { "S3Bucket": { "Ref": "CodeS3Bucket" }, "S3Key": { "Ref": "CodeS3Key" } },
            "MemorySize": { "Ref": "MemorySize" },
            "Timeout": function_timeout_secs,
            "Role": { "Fn::GetAtt": ["FunctionRole", "Arn"] },
            "LoggingConfig": { "LogGroup": { "Ref": "LogGroup" }, "LogFormat": "Text" },
            "Environment": { "Variables": env }
        }
    });
    if let Some(vpc) = vpc {
        function["Properties"]["VpcConfig"] = vpc.vpc_config.clone();
        // Not before its subnets can reach the internet: the mappings start invoking it as
        // soon as it exists, and every delivery would fail.
        function["DependsOn"] = json!(vpc.private_routes);
    }
    function
}

/// What the egress VPC gives the rest of a template.
struct EgressVpc {
    /// The function's `VpcConfig`: the private subnets and the function's security group.
    vpc_config: Value,
    /// The private subnets' default routes (through their zone's NAT gateway).
    private_routes: Vec<String>,
    /// The private subnets' route tables (a gateway endpoint is added to them).
    private_route_tables: Vec<String>,
}

/// The EC2 actions Lambda takes with the function's role to attach the function to its VPC
/// (the Hyperplane network interfaces it creates in the private subnets): those of the AWS
/// managed policy `AWSLambdaVPCAccessExecutionRole`, without its logs actions. These two take
/// no resource ARN (`Resource: *`).
pub const VPC_DESCRIBE_ACTIONS: [&str; 2] =
    ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"];

/// The network-interface actions of `AWSLambdaVPCAccessExecutionRole`, granted on the stack's
/// account and region only (the managed policy grants them on `*`).
pub const VPC_NETWORK_INTERFACE_ACTIONS: [&str; 4] = [
    "ec2:CreateNetworkInterface",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
];

/// The role statements a function in a VPC needs (see [`VPC_DESCRIBE_ACTIONS`]).
fn vpc_role_statements() -> [Value; 2] {
    [
        json!({ "Sid": "DescribeVpcNetwork", "Effect": "Allow",
                "Action": VPC_DESCRIBE_ACTIONS, "Resource": ["*"] }),
        json!({ "Sid": "AttachToVpc", "Effect": "Allow",
                "Action": VPC_NETWORK_INTERFACE_ACTIONS,
                "Resource": [{ "Fn::Sub": sub_arn("ec2", "*/*") }] }),
    ]
}

/// A `Name` tag `<stack>-<suffix>`: the console lists the parts of every VPC in the account
/// together.
fn name_tag(suffix: &str) -> Value {
    json!([{ "Key": "Name", "Value": { "Fn::Sub": format!("${{AWS::StackName}}-{suffix}") } }])
}

/// The public subnet of zone `i` (0-based): a /24 at the start of the VPC's range (it holds
/// only the zone's NAT gateway).
fn public_subnet_cidr(i: u8) -> String {
    format!("10.192.{i}.0/24")
}

/// The private subnet of zone `i` (0-based): a /20 (4,091 addresses) after the public ones;
/// Lambda's network interfaces take their addresses from it.
fn private_subnet_cidr(i: u8) -> String {
    format!("10.192.{}.0/20", 16 * (u32::from(i) + 1))
}

/// The egress VPC (see [`Egress::FixedIps`]): its resources and the `EgressIps` output go into
/// `resources` and `outputs`. Zone `i` is the region's `i`-th (`Fn::GetAZs`), so the region
/// must offer `azs` zones to the account.
fn egress_vpc(
    azs: u8,
    resources: &mut serde_json::Map<String, Value>,
    outputs: &mut serde_json::Map<String, Value>,
) -> EgressVpc {
    let vpc = json!({ "Ref": "EgressVpc" });
    resources.insert(
        "EgressVpc".into(),
        json!({
            "Type": "AWS::EC2::VPC",
            "Properties": {
                "CidrBlock": EGRESS_VPC_CIDR,
                // The function resolves endpoint names with the VPC's resolver.
                "EnableDnsSupport": true,
                "EnableDnsHostnames": true,
                "Tags": name_tag("egress")
            }
        }),
    );
    resources.insert(
        "EgressInternetGateway".into(),
        json!({ "Type": "AWS::EC2::InternetGateway",
                "Properties": { "Tags": name_tag("egress") } }),
    );
    resources.insert(
        "EgressGatewayAttachment".into(),
        json!({
            "Type": "AWS::EC2::VPCGatewayAttachment",
            "Properties": { "VpcId": vpc, "InternetGatewayId": { "Ref": "EgressInternetGateway" } }
        }),
    );
    resources.insert(
        "EgressPublicRouteTable".into(),
        json!({ "Type": "AWS::EC2::RouteTable",
                "Properties": { "VpcId": vpc, "Tags": name_tag("egress-public") } }),
    );
    resources.insert(
        "EgressPublicDefaultRoute".into(),
        json!({
            "Type": "AWS::EC2::Route",
            "DependsOn": "EgressGatewayAttachment",
            "Properties": {
                "RouteTableId": { "Ref": "EgressPublicRouteTable" },
                "DestinationCidrBlock": "0.0.0.0/0",
                "GatewayId": { "Ref": "EgressInternetGateway" }
            }
        }),
    );
    let mut private_subnets = Vec::new();
    let mut private_routes = Vec::new();
    let mut private_route_tables = Vec::new();
    let mut ips = Vec::new();
    for i in 0..azs {
        let n = i + 1;
        let zone = json!({ "Fn::Select": [i, { "Fn::GetAZs": "" }] });
        let public = format!("EgressPublicSubnet{n}");
        resources.insert(
            public.clone(),
            json!({
                "Type": "AWS::EC2::Subnet",
                "Properties": {
                    "VpcId": vpc,
                    "AvailabilityZone": zone,
                    "CidrBlock": public_subnet_cidr(i),
                    "Tags": name_tag(&format!("egress-public-{n}"))
                }
            }),
        );
        resources.insert(
            format!("{public}Routes"),
            json!({
                "Type": "AWS::EC2::SubnetRouteTableAssociation",
                "Properties": { "SubnetId": { "Ref": public }, "RouteTableId": { "Ref": "EgressPublicRouteTable" } }
            }),
        );
        let ip = format!("EgressIp{n}");
        resources.insert(
            ip.clone(),
            json!({
                "Type": "AWS::EC2::EIP",
                // An address for a VPC is usable once the VPC has its internet gateway.
                "DependsOn": "EgressGatewayAttachment",
                "Properties": { "Domain": "vpc", "Tags": name_tag(&format!("egress-{n}")) }
            }),
        );
        let nat = format!("EgressNat{n}");
        resources.insert(
            nat.clone(),
            json!({
                "Type": "AWS::EC2::NatGateway",
                "Properties": {
                    "AllocationId": { "Fn::GetAtt": [ip.clone(), "AllocationId"] },
                    "SubnetId": { "Ref": public },
                    "Tags": name_tag(&format!("egress-{n}"))
                }
            }),
        );
        let private = format!("EgressPrivateSubnet{n}");
        resources.insert(
            private.clone(),
            json!({
                "Type": "AWS::EC2::Subnet",
                "Properties": {
                    "VpcId": vpc,
                    "AvailabilityZone": zone,
                    "CidrBlock": private_subnet_cidr(i),
                    "Tags": name_tag(&format!("egress-private-{n}"))
                }
            }),
        );
        // One route table per private subnet: its default route goes to its own zone's NAT
        // gateway, so a zone's outage takes only that zone's egress with it.
        let table = format!("EgressPrivateRouteTable{n}");
        resources.insert(
            table.clone(),
            json!({ "Type": "AWS::EC2::RouteTable",
                    "Properties": { "VpcId": vpc, "Tags": name_tag(&format!("egress-private-{n}")) } }),
        );
        let route = format!("EgressPrivateDefaultRoute{n}");
        resources.insert(
            route.clone(),
            json!({
                "Type": "AWS::EC2::Route",
                "Properties": {
                    "RouteTableId": { "Ref": table },
                    "DestinationCidrBlock": "0.0.0.0/0",
                    "NatGatewayId": { "Ref": nat }
                }
            }),
        );
        resources.insert(
            format!("{private}Routes"),
            json!({
                "Type": "AWS::EC2::SubnetRouteTableAssociation",
                "Properties": { "SubnetId": { "Ref": private }, "RouteTableId": { "Ref": table } }
            }),
        );
        private_subnets.push(json!({ "Ref": private }));
        private_routes.push(route);
        private_route_tables.push(table);
        ips.push(json!({ "Ref": ip }));
    }
    resources.insert(
        "FunctionSecurityGroup".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Squall function: outbound TCP only, nothing inbound",
                "VpcId": vpc,
                // No ingress rule: nothing connects to the function. Outbound TCP to any
                // address and port (endpoints name their own ports; the SSRF guard, not the
                // network, decides which addresses are allowed). DNS to the VPC's resolver is
                // not filtered by security groups.
                "SecurityGroupEgress": [{
                    "Description": "Deliveries and AWS API calls",
                    "IpProtocol": "tcp",
                    "FromPort": 0,
                    "ToPort": 65535,
                    "CidrIp": "0.0.0.0/0"
                }],
                "Tags": name_tag("function")
            }
        }),
    );
    outputs.insert(
        "EgressIps".into(),
        json!({
            "Description": "The addresses the function's requests to the internet leave from (the NAT gateways' Elastic IPs, one per availability zone), comma-separated: subscribers allow-list these.",
            "Value": { "Fn::Join": [",", ips] }
        }),
    );
    EgressVpc {
        vpc_config: json!({
            "SubnetIds": private_subnets,
            "SecurityGroupIds": [{ "Fn::GetAtt": ["FunctionSecurityGroup", "GroupId"] }]
        }),
        private_routes,
        private_route_tables,
    }
}

/// The environment every deployed function gets: the packaged config, the region, the
/// shared queues.
fn shared_env() -> serde_json::Map<String, Value> {
    let mut env = serde_json::Map::new();
    env.insert("SQUALL_CONFIG".into(), json!(PACKAGED_CONFIG_PATH));
    env.insert(
        "SQUALL__SQS__REGION".into(),
        json!({ "Ref": "AWS::Region" }),
    );
    env.insert(
        "SQUALL__SQS__DEAD_LETTER_QUEUE_URL".into(),
        json!({ "Ref": "DeadLetterQueue" }),
    );
    env.insert(
        "SQUALL__SQS__METRICS_QUEUE_URL".into(),
        json!({ "Ref": "MetricsQueue" }),
    );
    env
}

/// An alarm on one of the function's `AWS/Lambda` metrics (sum over 5 minutes above 0).
fn function_alarm(metric: &str, what: &str) -> Value {
    json!({
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": format!("Squall: the function {what} (sum of {metric} over 5 minutes above 0)."),
            "Namespace": "AWS/Lambda",
            "MetricName": metric,
            "Dimensions": [{ "Name": "FunctionName", "Value": { "Ref": "Function" } }],
            "Statistic": "Sum",
            "Period": 300,
            "EvaluationPeriods": 1,
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions": alarm_actions()
        }
    })
}

/// Render a registry plan as a CloudFormation template (JSON): the function, the shared DLQ
/// and metrics queue, the registry table, alarms on the shared parts, the function's role and
/// the `squall apps` operator policy. Nothing in it depends on the applications: they are
/// created at run time by `squall apps create`, each with a queue named `<stack>-<app id>`
/// (the stack name is the prefix; see [`app_queue_name`]).
pub fn registry_template(plan: &RegistryPlan) -> Value {
    let mut parameters = common_parameters(&plan.function);
    parameters.insert(
        "SharedQueueConcurrency".into(),
        json!({ "Type": "Number", "Default": 10, "MinValue": 2, "MaxValue": 1000,
                "Description": "The shared queue's mapping: invocations of the function at once for all shared applications together (ScalingConfig.MaximumConcurrency)." }),
    );
    let mut resources = serde_json::Map::new();
    shared_resources(&plan.function, &mut resources);
    resources.insert(
        "RegistryTable".into(),
        json!({
            "Type": "AWS::DynamoDB::Table",
            // The registry is the applications' only record: keep it if the stack goes.
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": plan.table,
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [
                    { "AttributeName": "app_id", "AttributeType": "S" },
                    { "AttributeName": "queue_key", "AttributeType": "S" }
                ],
                "KeySchema": [{ "AttributeName": "app_id", "KeyType": "HASH" }],
                "GlobalSecondaryIndexes": [{
                    "IndexName": REGISTRY_QUEUE_INDEX,
                    "KeySchema": [{ "AttributeName": "queue_key", "KeyType": "HASH" }],
                    "Projection": { "ProjectionType": "ALL" }
                }],
                "PointInTimeRecoverySpecification": { "PointInTimeRecoveryEnabled": true }
            }
        }),
    );
    // The shared tier's one queue and its mapping (ARCHITECTURE.md, "The shared queue").
    let mut shared_mapping = json!({
        "Type": "AWS::Lambda::EventSourceMapping",
        "Properties": {
            "EventSourceArn": { "Fn::GetAtt": ["SharedQueue", "Arn"] },
            "FunctionName": { "Ref": "Function" },
            "Enabled": true,
            "BatchSize": plan.shared.settings.batch_size,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": { "MaximumConcurrency": { "Ref": "SharedQueueConcurrency" } }
        }
    });
    if plan.shared.settings.batching_window_secs > 0 {
        shared_mapping["Properties"]["MaximumBatchingWindowInSeconds"] =
            json!(plan.shared.settings.batching_window_secs);
    }
    resources.insert(
        "SharedQueue".into(),
        json!({
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": { "Fn::Sub": "${AWS::StackName}-shared" },
                "VisibilityTimeout": plan.function_timeout_secs * 6,
                "MessageRetentionPeriod": MAX_RETENTION_SECS,
                "RedrivePolicy": {
                    "deadLetterTargetArn": { "Fn::GetAtt": ["DeadLetterQueue", "Arn"] },
                    "maxReceiveCount": 10
                }
            }
        }),
    );
    resources.insert("SharedQueueMapping".into(), shared_mapping);
    resources.insert(
        "FunctionErrorsAlarm".into(),
        function_alarm("Errors", "failed invocations (crash or timeout)"),
    );
    resources.insert(
        "FunctionThrottlesAlarm".into(),
        function_alarm(
            "Throttles",
            "was throttled (account or reserved concurrency reached)",
        ),
    );
    let secret_arn = sub_arn("ssm", &format!("parameter{}*", plan.secret_path));
    let mut outputs = serde_json::Map::new();
    let vpc = match plan.function.egress {
        Egress::Default => None,
        Egress::FixedIps { azs } => Some(egress_vpc(azs, &mut resources, &mut outputs)),
    };
    if let Some(vpc) = &vpc {
        // The registry's reads and the health writes go to DynamoDB through a gateway
        // endpoint rather than the NAT gateways: it costs nothing, and they pay per GB.
        resources.insert(
            "EgressDynamoDbEndpoint".into(),
            json!({
                "Type": "AWS::EC2::VPCEndpoint",
                "Properties": {
                    "VpcEndpointType": "Gateway",
                    "ServiceName": { "Fn::Sub": "com.amazonaws.${AWS::Region}.dynamodb" },
                    "VpcId": { "Ref": "EgressVpc" },
                    "RouteTableIds": vpc.private_route_tables.iter()
                        .map(|t| json!({ "Ref": t })).collect::<Vec<_>>()
                }
            }),
        );
    }
    let mut statements = json!([
                            { "Sid": "StackQueues", "Effect": "Allow",
                              "Action": REGISTRY_QUEUE_ACTIONS,
                              "Resource": [{ "Fn::Sub": sub_arn("sqs", "${AWS::StackName}-*") }] },
                            { "Sid": "ReadRegistry", "Effect": "Allow",
                              "Action": REGISTRY_READ_ACTIONS,
                              "Resource": [
                                  { "Fn::GetAtt": ["RegistryTable", "Arn"] },
                                  { "Fn::Sub": format!("${{RegistryTable.Arn}}/index/{REGISTRY_QUEUE_INDEX}") }
                              ] },
                            // Endpoint health transitions, shared between instances: an
                            // update of the item's `health` attribute only.
                            { "Sid": "ShareEndpointHealth", "Effect": "Allow",
                              "Action": ["dynamodb:UpdateItem"],
                              "Resource": [{ "Fn::GetAtt": ["RegistryTable", "Arn"] }],
                              "Condition": {
                                  "ForAllValues:StringEquals": {
                                      "dynamodb:Attributes": ["app_id", "health"]
                                  }
                              } },
                            { "Sid": "ReadSecrets", "Effect": "Allow",
                              "Action": ["ssm:GetParameters"],
                              "Resource": [{ "Fn::Sub": secret_arn }] },
                            { "Sid": "DecryptSecretsThroughSsm", "Effect": "Allow",
                              "Action": ["kms:Decrypt"],
                              "Resource": [{ "Fn::Sub": sub_arn("kms", "key/*") }],
                              // Only through SSM, which checks ssm:GetParameters above (the
                              // secret path) before it decrypts.
                              "Condition": {
                                  "StringEquals": { "kms:ViaService": { "Fn::Sub": "ssm.${AWS::Region}.amazonaws.com" } }
                              } },
                            { "Sid": "WriteLogs", "Effect": "Allow",
                              "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                              "Resource": [{ "Fn::GetAtt": ["LogGroup", "Arn"] }] }
    ]);
    if vpc.is_some() {
        let list = statements.as_array_mut().expect("an array");
        list.extend(vpc_role_statements());
    }
    resources.insert("FunctionRole".into(), function_role(statements));
    let mut env = shared_env();
    env.insert(
        "SQUALL__SQS__SHARED_QUEUE_URL".into(),
        json!({ "Ref": "SharedQueue" }),
    );
    env.insert("SQUALL__REGISTRY__BACKEND".into(), json!("dynamodb"));
    env.insert(
        "SQUALL__REGISTRY__TABLE".into(),
        json!({ "Ref": "RegistryTable" }),
    );
    resources.insert(
        "Function".into(),
        function_resource(plan.function_timeout_secs, env, vpc.as_ref()),
    );
    let mut statements = apps_policy_statements(&plan.table, &plan.secret_path);
    map_strings(&mut statements, &|s| {
        if s.contains("${") {
            json!({ "Fn::Sub": s })
        } else {
            json!(s)
        }
    });
    resources.insert(
        "AppsOperatorPolicy".into(),
        json!({
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "Description": "What `squall apps` needs on this stack: attach it to the operators' role (not attached by the stack).",
                "PolicyDocument": { "Version": "2012-10-17", "Statement": statements }
            }
        }),
    );

    let mut output = |name: &str, description: &str, value: Value| {
        outputs.insert(
            name.into(),
            json!({ "Description": description, "Value": value }),
        );
    };
    output(
        "DeadLetterQueueUrl",
        "Shared dead-letter queue.",
        json!({ "Ref": "DeadLetterQueue" }),
    );
    output(
        "DeadLetterQueueArn",
        "Shared dead-letter queue (the redrive target of every application queue).",
        json!({ "Fn::GetAtt": ["DeadLetterQueue", "Arn"] }),
    );
    output(
        "MetricsQueueUrl",
        "Shared metrics queue (one JSON record per attempt).",
        json!({ "Ref": "MetricsQueue" }),
    );
    output(
        "SharedQueueUrl",
        "The shared tier's queue (sqs.shared_queue_url): send a shared application's events here with MessageGroupId = its id.",
        json!({ "Ref": "SharedQueue" }),
    );
    output(
        "FunctionName",
        "The Squall function.",
        json!({ "Ref": "Function" }),
    );
    output(
        "FunctionTimeout",
        "Function timeout, seconds: application queues get 6 x this as visibility timeout.",
        json!(plan.function_timeout_secs.to_string()),
    );
    output(
        "QueueNamePrefix",
        "Application queues must be named <prefix><app id> (squall apps create does).",
        json!({ "Fn::Sub": "${AWS::StackName}-" }),
    );
    output(
        "RegistryTableName",
        "The application registry.",
        json!({ "Ref": "RegistryTable" }),
    );
    output(
        "AppsOperatorPolicyArn",
        "Managed policy with what `squall apps` needs on this stack.",
        json!({ "Ref": "AppsOperatorPolicy" }),
    );

    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "Squall webhook delivery with an application registry: one Lambda function{}, shared DLQ and metrics queue, the registry table; application queues are created at run time by `squall apps create`. Generated by `squall deploy template`; do not edit by hand.",
            egress_description(plan.function.egress)),
        "Parameters": parameters,
        "Conditions": {
            "HasAlarmTopic": { "Fn::Not": [{ "Fn::Equals": [{ "Ref": "AlarmTopicArn" }, ""] }] }
        },
        "Resources": resources,
        "Outputs": outputs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, max_concurrency: u32) -> AppSettings {
        AppSettings {
            id: id.to_string(),
            max_concurrency,
            delivery_timeout_ms: 15_000,
            retry_horizon_secs: 3 * 24 * 3600,
            batch_size: 10,
            batching_window_secs: 0,
            age_alarm_secs: 1800,
        }
    }

    fn spec(apps: Vec<AppSettings>) -> DeploySpec {
        DeploySpec {
            apps,
            function: FunctionSettings::default(),
            secret_env_vars: vec!["BILLING_SECRET".into()],
        }
    }

    #[test]
    fn names_follow_app_ids() {
        assert_eq!(logical_name("billing").as_deref(), Some("Billing"));
        assert_eq!(logical_name("billing-eu_2").as_deref(), Some("BillingEu2"));
        assert_eq!(logical_name(""), None);
        assert_eq!(logical_name("a.b"), None);
        assert_eq!(logical_name("--"), None);
        assert_eq!(env_key("billing-eu"), "BILLING_EU");
    }

    #[test]
    fn derived_numbers() {
        let p = plan(&spec(vec![
            app("billing", 64),
            app("tiny", 1),
            app("huge", 50_000),
        ]))
        .unwrap();
        // 64 deliveries / 10 per invocation -> 6 invocations.
        assert_eq!(p.apps[0].maximum_concurrency, 6);
        // below the AWS minimum: clamped to 2.
        assert_eq!(p.apps[1].maximum_concurrency, 2);
        assert_eq!(p.apps[1].per_invocation_concurrency, 1);
        // above the AWS maximum: clamped to 1000.
        assert_eq!(p.apps[2].maximum_concurrency, 1000);
        // "tiny" runs its 10 messages one at a time: 10 rounds x 15 s + 15 s margin.
        assert_eq!(p.function_timeout_secs, 165);
        assert_eq!(p.visibility_timeout_secs, 990);
        assert_eq!(p.apps[0].retention_secs, 4 * 24 * 3600);
        assert_eq!(
            p.secret_params,
            vec![("BILLING_SECRET".into(), "SecretBILLINGSECRET".into())]
        );
    }

    #[test]
    fn function_timeout_has_a_floor_and_visibility_is_six_times() {
        let mut a = app("billing", 64);
        a.delivery_timeout_ms = 1000;
        let p = plan(&spec(vec![a])).unwrap();
        assert_eq!(p.function_timeout_secs, MIN_FUNCTION_TIMEOUT_SECS);
        assert_eq!(p.visibility_timeout_secs, 6 * MIN_FUNCTION_TIMEOUT_SECS);
    }

    #[test]
    fn refuses_what_aws_refuses() {
        let err = |mut a: AppSettings, f: &dyn Fn(&mut AppSettings)| {
            f(&mut a);
            plan(&spec(vec![a])).unwrap_err().to_string()
        };
        let base = app("billing", 64);
        assert!(
            err(base.clone(), &|a| a.batch_size = 0).starts_with("apps.billing.batch_size = 0")
        );
        assert!(err(base.clone(), &|a| a.batch_size = 20).contains("batching window"));
        assert!(err(base.clone(), &|a| a.batching_window_secs = 301).contains("0..=300"));
        assert!(
            err(base.clone(), &|a| a.retry_horizon_secs = 15 * 24 * 3600)
                .contains("retry.horizon_secs")
        );
        assert!(err(base.clone(), &|a| a.id = "bad id".into()).contains("apps.bad id"));
        let clash = plan(&spec(vec![app("a-b", 4), app("a_b", 4)])).unwrap_err();
        assert!(matches!(clash, DeployError::NameClash { .. }), "{clash}");
        assert_eq!(plan(&spec(vec![])).unwrap_err(), DeployError::NoApps);
        let mut s = spec(vec![base]);
        s.secret_env_vars = vec!["1BAD".into()];
        assert!(matches!(
            plan(&s).unwrap_err(),
            DeployError::BadSecretEnvVar { .. }
        ));
    }

    fn resources_of_type<'a>(t: &'a Value, ty: &str) -> Vec<(&'a String, &'a Value)> {
        t["Resources"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["Type"] == ty)
            .collect()
    }

    /// The logical ids a `Resource` list (GetAtt Arn only) points at.
    fn arn_targets(resources: &Value) -> BTreeSet<String> {
        resources
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let getatt = r["Fn::GetAtt"].as_array().expect("resources are GetAtt");
                assert_eq!(getatt[1], "Arn");
                getatt[0].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn every_app_has_a_queue_and_a_mapping_and_iam_is_least_privilege() {
        let p = plan(&spec(vec![app("billing", 64), app("shipping-eu", 8)])).unwrap();
        // Round-trip through text: what lands in deploy/ is what we check.
        let text = serde_json::to_string_pretty(&template(&p)).unwrap();
        let t: Value = serde_json::from_str(&text).unwrap();

        let queues = resources_of_type(&t, "AWS::SQS::Queue");
        assert_eq!(queues.len(), 4, "2 app queues + DLQ + metrics");
        let mappings = resources_of_type(&t, "AWS::Lambda::EventSourceMapping");
        assert_eq!(mappings.len(), 2);
        for (a, want_max) in [("billing", 6), ("shipping-eu", 2)] {
            let q = format!("{}Queue", logical_name(a).unwrap());
            let queue = &t["Resources"][&q];
            assert_eq!(queue["Type"], "AWS::SQS::Queue", "{a} has a queue");
            assert_eq!(
                queue["Properties"]["VisibilityTimeout"],
                json!(6 * p.function_timeout_secs)
            );
            assert_eq!(queue["Properties"]["RedrivePolicy"]["maxReceiveCount"], 10);
            let (_, m) = mappings
                .iter()
                .find(|(_, m)| m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0] == q.as_str())
                .unwrap_or_else(|| panic!("{a} has a mapping"));
            assert_eq!(
                m["Properties"]["FunctionResponseTypes"],
                json!(["ReportBatchItemFailures"])
            );
            assert_eq!(
                m["Properties"]["ScalingConfig"]["MaximumConcurrency"],
                want_max
            );
            assert_eq!(m["Properties"]["BatchSize"], 10);
            let env = &t["Resources"]["Function"]["Properties"]["Environment"]["Variables"];
            assert_eq!(
                env[format!("SQUALL__APPS__{}__QUEUE_URL", env_key(a))]["Ref"],
                q.as_str()
            );
        }
        assert_eq!(
            t["Resources"]["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"],
            1_209_600
        );

        // IAM: exactly these statements, these actions, these resources; nothing else.
        let roles = resources_of_type(&t, "AWS::IAM::Role");
        assert_eq!(roles.len(), 1);
        let policies = roles[0].1["Properties"]["Policies"].as_array().unwrap();
        assert_eq!(policies.len(), 1);
        assert!(roles[0].1["Properties"].get("ManagedPolicyArns").is_none());
        let statements = policies[0]["PolicyDocument"]["Statement"]
            .as_array()
            .unwrap();
        let app_queues: BTreeSet<String> =
            ["BillingQueue", "ShippingEuQueue"].map(String::from).into();
        let mut seen_actions = BTreeSet::new();
        for s in statements {
            assert_eq!(s["Effect"], "Allow");
            let actions: BTreeSet<&str> = s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            for a in &actions {
                assert!(!a.contains('*'), "no wildcard action: {a}");
                assert!(seen_actions.insert(a.to_string()), "{a} granted twice");
            }
            match s["Sid"].as_str().unwrap() {
                "ConsumeAppQueues" => {
                    assert_eq!(actions, CONSUME_ACTIONS.into_iter().collect());
                    assert_eq!(arn_targets(&s["Resource"]), app_queues);
                }
                "SendRetriesDeadLettersMetrics" => {
                    assert_eq!(actions, ["sqs:SendMessage"].into());
                    let mut want = app_queues.clone();
                    want.insert("DeadLetterQueue".into());
                    want.insert("MetricsQueue".into());
                    assert_eq!(arn_targets(&s["Resource"]), want);
                }
                "WriteLogs" => {
                    assert_eq!(
                        actions,
                        ["logs:CreateLogStream", "logs:PutLogEvents"].into()
                    );
                    assert_eq!(arn_targets(&s["Resource"]), ["LogGroup".to_string()].into());
                }
                other => panic!("unexpected statement {other}"),
            }
        }
        assert_eq!(seen_actions.len(), 7);

        // Alarms: DLQ depth, and oldest-message age per app queue.
        let alarms = resources_of_type(&t, "AWS::CloudWatch::Alarm");
        assert_eq!(alarms.len(), 3);
        let dlq = &t["Resources"]["DeadLetterQueueDepthAlarm"]["Properties"];
        assert_eq!(dlq["MetricName"], "ApproximateNumberOfMessagesVisible");
        assert_eq!(dlq["Threshold"], 0);
        assert_eq!(dlq["ComparisonOperator"], "GreaterThanThreshold");
        let age = &t["Resources"]["BillingOldestMessageAlarm"]["Properties"];
        assert_eq!(age["MetricName"], "ApproximateAgeOfOldestMessage");
        assert_eq!(
            age["Dimensions"][0]["Value"]["Fn::GetAtt"][0],
            "BillingQueue"
        );

        // The secret is a NoEcho parameter; its value is never in the template.
        assert_eq!(t["Parameters"]["SecretBILLINGSECRET"]["NoEcho"], true);
        let f = &t["Resources"]["Function"]["Properties"];
        assert_eq!(f["Runtime"], "provided.al2023");
        assert_eq!(t["Parameters"]["Architecture"]["Default"], "arm64");
    }
    fn registry_spec() -> RegistrySpec {
        RegistrySpec {
            function: FunctionSettings::default(),
            defaults: app("defaults", 64),
            table: "squall-registry".into(),
            secret_path: "/squall/".into(),
        }
    }

    fn registry_text() -> (RegistryPlan, Value) {
        let p = plan_registry(&registry_spec()).unwrap();
        let text = serde_json::to_string_pretty(&registry_template(&p)).unwrap();
        (p, serde_json::from_str(&text).unwrap())
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn registry_template_holds_the_shared_parts_only() {
        let (p, t) = registry_text();
        // 15 s deliveries, 10 per batch, 10 at once: one round + 15 s margin = 30 s.
        assert_eq!(p.function_timeout_secs, 30);
        assert_eq!(
            keys(&t["Resources"]),
            set(&[
                "AppsOperatorPolicy",
                "DeadLetterQueue",
                "DeadLetterQueueDepthAlarm",
                "Function",
                "FunctionErrorsAlarm",
                "FunctionRole",
                "FunctionThrottlesAlarm",
                "LogGroup",
                "MetricsQueue",
                "RegistryTable",
                "SharedQueue",
                "SharedQueueMapping",
            ])
        );
        // One mapping: the shared queue's (each dedicated application's is made at run time).
        assert_eq!(
            resources_of_type(&t, "AWS::Lambda::EventSourceMapping").len(),
            1
        );
        assert_eq!(resources_of_type(&t, "AWS::SQS::Queue").len(), 3);
        let shared = &t["Resources"]["SharedQueue"]["Properties"];
        assert_eq!(shared["QueueName"]["Fn::Sub"], "${AWS::StackName}-shared");
        assert_eq!(shared["VisibilityTimeout"], 6 * 30);
        assert_eq!(shared["MessageRetentionPeriod"], 14 * 24 * 3600);
        assert_eq!(shared["RedrivePolicy"]["maxReceiveCount"], 10);
        let m = &t["Resources"]["SharedQueueMapping"]["Properties"];
        assert_eq!(m["EventSourceArn"]["Fn::GetAtt"][0], "SharedQueue");
        assert_eq!(m["FunctionResponseTypes"][0], "ReportBatchItemFailures");
        assert_eq!(
            m["ScalingConfig"]["MaximumConcurrency"]["Ref"],
            "SharedQueueConcurrency"
        );
        assert_eq!(
            keys(&t["Parameters"]),
            set(&[
                "AlarmTopicArn",
                "Architecture",
                "CodeS3Bucket",
                "CodeS3Key",
                "MemorySize",
                "SharedQueueConcurrency"
            ])
        );
        let env = &t["Resources"]["Function"]["Properties"]["Environment"]["Variables"];
        assert_eq!(
            keys(env),
            set(&[
                "SQUALL_CONFIG",
                "SQUALL__REGISTRY__BACKEND",
                "SQUALL__REGISTRY__TABLE",
                "SQUALL__SQS__DEAD_LETTER_QUEUE_URL",
                "SQUALL__SQS__METRICS_QUEUE_URL",
                "SQUALL__SQS__REGION",
                "SQUALL__SQS__SHARED_QUEUE_URL",
            ])
        );
        assert_eq!(env["SQUALL__SQS__SHARED_QUEUE_URL"]["Ref"], "SharedQueue");
        assert_eq!(env["SQUALL__REGISTRY__BACKEND"], "dynamodb");
        assert_eq!(env["SQUALL__REGISTRY__TABLE"]["Ref"], "RegistryTable");

        // The table: as the engine's DynamoStore::create_table makes it.
        let table = &t["Resources"]["RegistryTable"];
        assert_eq!(table["DeletionPolicy"], "Retain");
        let tp = &table["Properties"];
        assert_eq!(tp["TableName"], "squall-registry");
        assert_eq!(tp["BillingMode"], "PAY_PER_REQUEST");
        assert_eq!(
            tp["KeySchema"],
            json!([{ "AttributeName": "app_id", "KeyType": "HASH" }])
        );
        assert_eq!(
            tp["GlobalSecondaryIndexes"],
            json!([{ "IndexName": "queue_key-index",
                     "KeySchema": [{ "AttributeName": "queue_key", "KeyType": "HASH" }],
                     "Projection": { "ProjectionType": "ALL" } }])
        );
        assert_eq!(
            tp["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
            true
        );

        // Alarms on the shared parts only.
        let alarms: BTreeSet<String> = resources_of_type(&t, "AWS::CloudWatch::Alarm")
            .into_iter()
            .map(|(name, a)| format!("{name}:{}", a["Properties"]["MetricName"].as_str().unwrap()))
            .collect();
        assert_eq!(
            alarms,
            set(&[
                "DeadLetterQueueDepthAlarm:ApproximateNumberOfMessagesVisible",
                "FunctionErrorsAlarm:Errors",
                "FunctionThrottlesAlarm:Throttles",
            ])
        );
        assert_eq!(
            keys(&t["Outputs"]),
            set(&[
                "AppsOperatorPolicyArn",
                "DeadLetterQueueArn",
                "DeadLetterQueueUrl",
                "FunctionName",
                "FunctionTimeout",
                "MetricsQueueUrl",
                "QueueNamePrefix",
                "RegistryTableName",
                "SharedQueueUrl",
            ])
        );
        assert_eq!(t["Outputs"]["FunctionTimeout"]["Value"], "30");
    }

    #[test]
    fn registry_role_is_limited_to_the_stack_the_table_and_the_secret_path() {
        let (_, t) = registry_text();
        registry_role_grants_exactly(&t, false);
        let mut spec = registry_spec();
        spec.function.egress = Egress::FixedIps { azs: 2 };
        let t = registry_template(&plan_registry(&spec).unwrap());
        registry_role_grants_exactly(&t, true);
    }

    /// The registry function's role: these statements and no others (the VPC ones when
    /// `in_vpc`).
    fn registry_role_grants_exactly(t: &Value, in_vpc: bool) {
        let role = &t["Resources"]["FunctionRole"]["Properties"];
        assert!(role.get("ManagedPolicyArns").is_none());
        let statements = role["Policies"][0]["PolicyDocument"]["Statement"]
            .as_array()
            .unwrap();
        let mut seen = BTreeSet::new();
        for s in statements {
            assert_eq!(s["Effect"], "Allow");
            let actions: BTreeSet<String> = s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            for a in &actions {
                assert!(!a.contains('*'), "no wildcard action: {a}");
                assert!(seen.insert(a.clone()), "{a} granted twice");
            }
            let resources = serde_json::to_string(&s["Resource"]).unwrap();
            match s["Sid"].as_str().unwrap() {
                "StackQueues" => {
                    assert_eq!(actions, set(&REGISTRY_QUEUE_ACTIONS));
                    assert_eq!(
                        s["Resource"],
                        json!([{ "Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}-*" }])
                    );
                }
                "ReadRegistry" => {
                    assert_eq!(actions, set(&REGISTRY_READ_ACTIONS));
                    assert_eq!(
                        s["Resource"],
                        json!([{ "Fn::GetAtt": ["RegistryTable", "Arn"] },
                               { "Fn::Sub": "${RegistryTable.Arn}/index/queue_key-index" }])
                    );
                }
                "ShareEndpointHealth" => {
                    assert_eq!(actions, set(&["dynamodb:UpdateItem"]));
                    assert_eq!(
                        s["Resource"],
                        json!([{ "Fn::GetAtt": ["RegistryTable", "Arn"] }])
                    );
                    assert_eq!(
                        s["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"],
                        json!(["app_id", "health"])
                    );
                }
                "ReadSecrets" => {
                    assert_eq!(actions, set(&["ssm:GetParameters"]));
                    assert_eq!(
                        s["Resource"],
                        json!([{ "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/squall/*" }])
                    );
                }
                "DecryptSecretsThroughSsm" => {
                    assert_eq!(actions, set(&["kms:Decrypt"]));
                    assert_eq!(
                        s["Condition"]["StringEquals"]["kms:ViaService"]["Fn::Sub"],
                        "ssm.${AWS::Region}.amazonaws.com"
                    );
                    assert!(resources.contains(":key/*"), "{resources}");
                }
                "WriteLogs" => {
                    assert_eq!(actions, set(&["logs:CreateLogStream", "logs:PutLogEvents"]));
                    assert_eq!(arn_targets(&s["Resource"]), set(&["LogGroup"]));
                }
                "DescribeVpcNetwork" | "AttachToVpc" if in_vpc => {
                    vpc_statement_is_exact(s);
                }
                other => panic!("unexpected statement {other}"),
            }
        }
        assert_eq!(seen.len(), if in_vpc { 13 + 6 } else { 13 });
    }

    /// The two VPC statements of a function role: exactly `AWSLambdaVPCAccessExecutionRole`'s
    /// EC2 actions, the network-interface ones on the stack's account and region only.
    fn vpc_statement_is_exact(s: &Value) {
        let actions: BTreeSet<String> = s["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        match s["Sid"].as_str().unwrap() {
            "DescribeVpcNetwork" => {
                assert_eq!(actions, set(&VPC_DESCRIBE_ACTIONS));
                // Describe calls take no resource ARN.
                assert_eq!(s["Resource"], json!(["*"]));
            }
            "AttachToVpc" => {
                assert_eq!(actions, set(&VPC_NETWORK_INTERFACE_ACTIONS));
                assert_eq!(
                    s["Resource"],
                    json!([{ "Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:*/*" }])
                );
            }
            other => panic!("not a VPC statement: {other}"),
        }
    }

    /// Resolve a template value as CloudFormation would, for the environment test.
    fn resolve(v: &Value, refs: &dyn Fn(&str) -> String) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Object(m) if m.contains_key("Ref") => refs(m["Ref"].as_str().unwrap()),
            other => panic!("unexpected environment value {other}"),
        }
    }

    #[test]
    fn registry_function_environment_fits_in_4_kb_whatever_the_names() {
        let mut spec = registry_spec();
        // The longest names AWS allows: a 255-character table, a stack name as long as a
        // queue name allows (`<stack>-metrics` within 80), the longest region in the longest
        // SQS domain (China), a 12-digit account.
        spec.table = "t".repeat(255);
        let p = plan_registry(&spec).unwrap();
        let t = registry_template(&p);
        let stack = "s".repeat(80 - "-metrics".len());
        let region = "ap-southeast-7";
        let url = |suffix: &str| {
            format!("https://sqs.{region}.amazonaws.com.cn/123456789012/{stack}-{suffix}")
        };
        let refs = |name: &str| match name {
            "AWS::Region" => region.to_string(),
            "DeadLetterQueue" => url("dlq"),
            "MetricsQueue" => url("metrics"),
            "SharedQueue" => url("shared"),
            "RegistryTable" => spec.table.clone(),
            other => panic!("unexpected Ref {other} in the environment"),
        };
        let env = t["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
            .as_object()
            .unwrap();
        let resolved: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), json!(resolve(v, &refs))))
            .collect();
        // Lambda counts keys and values; the JSON form (quotes, colons, commas) is an upper
        // bound of that.
        let keys_and_values: usize = resolved
            .iter()
            .map(|(k, v)| k.len() + v.as_str().unwrap().len())
            .sum();
        let as_json = serde_json::to_string(&resolved).unwrap().len();
        assert!(keys_and_values <= as_json);
        assert!(as_json < 4096, "resolved environment is {as_json} bytes");
        // Recorded in docs/deploy.md: 877 bytes of keys and values, 920 as JSON.
        assert_eq!((keys_and_values, as_json), (877, 920));
    }

    #[test]
    fn registry_template_is_within_cloudformation_limits() {
        let (_, t) = registry_text();
        let count = |k: &str| t[k].as_object().unwrap().len();
        assert!(count("Resources") <= 500, "{}", count("Resources"));
        assert!(count("Parameters") <= 200);
        assert!(count("Outputs") <= 200);
        assert_eq!(
            (count("Resources"), count("Parameters"), count("Outputs")),
            (12, 6, 9)
        );
        // Fixed egress IPs in the most zones: 5 shared VPC parts, the function's security
        // group and the DynamoDB endpoint, 8 per zone; one output.
        let mut with_vpc = registry_spec();
        with_vpc.function.egress = Egress::FixedIps {
            azs: MAX_EGRESS_AZS,
        };
        let vpc = registry_template(&plan_registry(&with_vpc).unwrap());
        let n = |k: &str| vpc[k].as_object().unwrap().len();
        assert_eq!(
            (n("Resources"), n("Parameters"), n("Outputs")),
            (12 + 7 + 8 * 3, 6, 10)
        );
        let text = serde_json::to_string_pretty(&vpc).unwrap();
        assert!(text.len() < 51_200, "{}", text.len());
        // A template body passed inline must fit 51,200 bytes (S3: 1 MB).
        let text = serde_json::to_string_pretty(&t).unwrap();
        assert!(text.len() < 51_200, "{}", text.len());

        // For contrast: the file-backend template for 300 applications is over every limit.
        let apps = (0..300).map(|i| app(&format!("app{i}"), 64)).collect();
        let big = template(&plan(&spec(apps)).unwrap());
        let n = |k: &str| big[k].as_object().unwrap().len();
        assert!(
            n("Resources") > 500 && n("Outputs") > 200,
            "{}",
            n("Resources")
        );
    }

    #[test]
    fn file_template_with_fixed_ips_is_within_cloudformation_limits() {
        // 25 applications: about what the function's 4 KB environment holds (docs/deploy.md).
        let apps = (0..25).map(|i| app(&format!("app{i}"), 64)).collect();
        let mut s = spec(apps);
        s.function.egress = Egress::FixedIps {
            azs: MAX_EGRESS_AZS,
        };
        let t = template(&plan(&s).unwrap());
        let n = |k: &str| t[k].as_object().unwrap().len();
        // 6 shared, 3 per application, 6 + 8 per zone for the VPC; an output per
        // application, 3 shared, EgressIps.
        assert_eq!(
            (n("Resources"), n("Parameters"), n("Outputs")),
            (6 + 3 * 25 + 6 + 8 * 3, 6, 25 + 3 + 1)
        );
        assert!(n("Resources") <= 500 && n("Parameters") <= 200 && n("Outputs") <= 200);
    }

    #[test]
    fn registry_plan_refuses_bad_names_and_sizes_the_function_from_the_defaults() {
        let mut s = registry_spec();
        s.table = "a b".into();
        assert!(
            plan_registry(&s)
                .unwrap_err()
                .to_string()
                .contains("registry.table")
        );
        let mut s = registry_spec();
        s.secret_path = "squall".into();
        assert!(
            plan_registry(&s)
                .unwrap_err()
                .to_string()
                .contains("registry.secret_path")
        );
        let mut s = registry_spec();
        s.defaults.delivery_timeout_ms = 60_000;
        assert_eq!(plan_registry(&s).unwrap().function_timeout_secs, 75);
        s.function.timeout_secs = Some(120);
        assert_eq!(plan_registry(&s).unwrap().function_timeout_secs, 120);
    }

    #[test]
    fn app_queues_are_named_after_the_stack() {
        assert_eq!(
            app_queue_name("squall", "billing").unwrap(),
            "squall-billing"
        );
        for reserved in RESERVED_APP_IDS {
            assert!(app_queue_name("squall", reserved).is_err(), "{reserved}");
        }
        assert!(app_queue_name("squall", "a.b").is_err());
        let stack = "s".repeat(MAX_REGISTRY_STACK_NAME);
        assert!(app_queue_name(&stack, &"a".repeat(40)).is_ok());
        assert!(app_queue_name(&format!("{stack}s"), &"a".repeat(40)).is_err());
    }

    #[test]
    fn apps_policy_is_filled_in_for_one_stack() {
        let p = plan_registry(&registry_spec()).unwrap();
        let scope = PolicyScope {
            partition: "aws".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            stack: "squall".into(),
        };
        let doc = apps_policy(&p, &scope);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("${"), "unfilled placeholder: {text}");
        let statements = doc["Statement"].as_array().unwrap();
        let by_sid = |sid: &str| {
            statements
                .iter()
                .find(|s| s["Sid"] == sid)
                .unwrap_or_else(|| panic!("{sid}"))
        };
        assert_eq!(
            by_sid("ManageAppQueues")["Resource"],
            json!(["arn:aws:sqs:eu-west-1:123456789012:squall-*"])
        );
        assert_eq!(
            by_sid("ManageAppAlarms")["Resource"],
            json!(["arn:aws:cloudwatch:eu-west-1:123456789012:alarm:squall-*"])
        );
        for sid in ["CreateListMappings", "ChangeMappings"] {
            assert_eq!(
                by_sid(sid)["Condition"]["StringEquals"]["lambda:FunctionArn"],
                "arn:aws:lambda:eu-west-1:123456789012:function:squall-squall"
            );
        }
        assert_eq!(
            by_sid("WriteRegistry")["Resource"],
            json!([
                "arn:aws:dynamodb:eu-west-1:123456789012:table/squall-registry",
                "arn:aws:dynamodb:eu-west-1:123456789012:table/squall-registry/index/*"
            ])
        );
        assert_eq!(
            by_sid("CheckSecretReferences")["Resource"],
            json!(["arn:aws:ssm:eu-west-1:123456789012:parameter/squall/*"])
        );
        // The template's managed policy is the same document, in Fn::Sub form.
        let t = registry_template(&p);
        let in_template = &t["Resources"]["AppsOperatorPolicy"]["Properties"]["PolicyDocument"];
        assert_eq!(
            in_template["Statement"].as_array().unwrap().len(),
            statements.len()
        );
        assert_eq!(
            in_template["Statement"][0]["Resource"][0]["Fn::Sub"],
            "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}-*"
        );
    }

    /// Both templates for `egress`, round-tripped through text: (file, registry).
    fn both_templates(egress: Egress) -> [Value; 2] {
        let mut file = spec(vec![app("billing", 64), app("shipping-eu", 8)]);
        file.function.egress = egress;
        let mut registry = registry_spec();
        registry.function.egress = egress;
        [
            template(&plan(&file).unwrap()),
            registry_template(&plan_registry(&registry).unwrap()),
        ]
        .map(|t| serde_json::from_str(&serde_json::to_string_pretty(&t).unwrap()).unwrap())
    }

    /// The logical id a `{ "Ref": id }` names.
    fn ref_of(v: &Value) -> &str {
        v["Ref"]
            .as_str()
            .unwrap_or_else(|| panic!("not a Ref: {v}"))
    }

    /// The route table associated with `subnet`, and the routes in it.
    fn routes_of<'a>(t: &'a Value, subnet: &str) -> (String, Vec<&'a Value>) {
        let tables: Vec<&str> = resources_of_type(t, "AWS::EC2::SubnetRouteTableAssociation")
            .into_iter()
            .filter(|(_, a)| ref_of(&a["Properties"]["SubnetId"]) == subnet)
            .map(|(_, a)| ref_of(&a["Properties"]["RouteTableId"]))
            .collect();
        assert_eq!(tables.len(), 1, "{subnet} has one route table: {tables:?}");
        let table = tables[0].to_string();
        let routes = resources_of_type(t, "AWS::EC2::Route")
            .into_iter()
            .filter(|(_, r)| ref_of(&r["Properties"]["RouteTableId"]) == table)
            .map(|(_, r)| &r["Properties"])
            .collect();
        (table, routes)
    }

    fn type_counts(t: &Value) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for r in t["Resources"].as_object().unwrap().values() {
            *counts
                .entry(r["Type"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn the_vpc_is_there_only_with_fixed_ips() {
        for t in both_templates(Egress::Default) {
            let text = serde_json::to_string(&t).unwrap();
            assert!(!text.contains("AWS::EC2::"), "no VPC part by default");
            assert!(!text.contains("ec2:"), "no EC2 permission by default");
            assert!(
                t["Resources"]["Function"]["Properties"]
                    .get("VpcConfig")
                    .is_none()
            );
            assert!(t["Resources"]["Function"].get("DependsOn").is_none());
            assert!(t["Outputs"].get("EgressIps").is_none());
        }
        for azs in 1..=MAX_EGRESS_AZS {
            let z = azs as usize;
            let [file, registry] = both_templates(Egress::FixedIps { azs });
            for (t, dynamodb_endpoint) in [(&file, false), (&registry, true)] {
                let counts = type_counts(t);
                let count = |ty: &str| counts.get(ty).copied().unwrap_or(0);
                assert_eq!(count("AWS::EC2::VPC"), 1);
                assert_eq!(count("AWS::EC2::InternetGateway"), 1);
                assert_eq!(count("AWS::EC2::VPCGatewayAttachment"), 1);
                assert_eq!(
                    count("AWS::EC2::Subnet"),
                    2 * z,
                    "a public and a private per zone"
                );
                assert_eq!(count("AWS::EC2::EIP"), z);
                assert_eq!(count("AWS::EC2::NatGateway"), z);
                assert_eq!(
                    count("AWS::EC2::RouteTable"),
                    1 + z,
                    "one public, one per private"
                );
                assert_eq!(count("AWS::EC2::Route"), 1 + z);
                assert_eq!(count("AWS::EC2::SubnetRouteTableAssociation"), 2 * z);
                assert_eq!(count("AWS::EC2::SecurityGroup"), 1);
                assert_eq!(
                    count("AWS::EC2::VPCEndpoint"),
                    usize::from(dynamodb_endpoint)
                );
                let ec2 = counts
                    .keys()
                    .filter(|k| k.starts_with("AWS::EC2::"))
                    .count();
                assert_eq!(ec2, 10 + usize::from(dynamodb_endpoint), "{counts:?}");
                // Each zone is the region's next one.
                for n in 1..=azs {
                    for kind in ["Public", "Private"] {
                        let subnet = &t["Resources"][format!("Egress{kind}Subnet{n}")];
                        assert_eq!(
                            subnet["Properties"]["AvailabilityZone"],
                            json!({ "Fn::Select": [n - 1, { "Fn::GetAZs": "" }] })
                        );
                    }
                }
            }
            assert!(
                file["Description"]
                    .as_str()
                    .unwrap()
                    .contains("fixed Elastic IPs")
            );
        }
    }

    #[test]
    fn every_nat_gateway_address_is_in_the_egress_ips_output() {
        for azs in 1..=MAX_EGRESS_AZS {
            for t in both_templates(Egress::FixedIps { azs }) {
                let joined = &t["Outputs"]["EgressIps"]["Value"]["Fn::Join"];
                assert_eq!(joined[0], ",");
                let listed: BTreeSet<String> = joined[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| ref_of(v).to_string())
                    .collect();
                let addresses: BTreeSet<String> = resources_of_type(&t, "AWS::EC2::EIP")
                    .into_iter()
                    .map(|(name, ip)| {
                        assert_eq!(ip["Properties"]["Domain"], "vpc");
                        name.clone()
                    })
                    .collect();
                let of_nats: BTreeSet<String> = resources_of_type(&t, "AWS::EC2::NatGateway")
                    .into_iter()
                    .map(|(_, nat)| {
                        let allocation = &nat["Properties"]["AllocationId"]["Fn::GetAtt"];
                        assert_eq!(allocation[1], "AllocationId");
                        allocation[0].as_str().unwrap().to_string()
                    })
                    .collect();
                assert_eq!(listed.len(), azs as usize);
                assert_eq!(listed, addresses, "every address is listed");
                assert_eq!(of_nats, addresses, "one address per NAT gateway");
            }
        }
    }

    #[test]
    fn private_subnets_route_through_their_own_zones_nat_gateway() {
        for t in both_templates(Egress::FixedIps {
            azs: MAX_EGRESS_AZS,
        }) {
            let mut nats_used = BTreeSet::new();
            for n in 1..=MAX_EGRESS_AZS {
                let private = format!("EgressPrivateSubnet{n}");
                let (table, routes) = routes_of(&t, &private);
                assert_eq!(table, format!("EgressPrivateRouteTable{n}"));
                assert_eq!(routes.len(), 1, "{private}: the default route only");
                assert_eq!(routes[0]["DestinationCidrBlock"], "0.0.0.0/0");
                assert!(routes[0].get("GatewayId").is_none(), "no internet gateway");
                let nat = ref_of(&routes[0]["NatGatewayId"]);
                assert!(nats_used.insert(nat.to_string()), "{nat} serves one zone");
                // That NAT gateway sits in the same zone, in a public subnet.
                let public = ref_of(&t["Resources"][nat]["Properties"]["SubnetId"]);
                assert_eq!(
                    t["Resources"][public]["Properties"]["AvailabilityZone"],
                    t["Resources"][&private]["Properties"]["AvailabilityZone"],
                    "{private} and its NAT gateway {nat}"
                );
                let (_, public_routes) = routes_of(&t, public);
                assert_eq!(public_routes.len(), 1);
                assert_eq!(public_routes[0]["DestinationCidrBlock"], "0.0.0.0/0");
                assert_eq!(
                    ref_of(&public_routes[0]["GatewayId"]),
                    "EgressInternetGateway"
                );
            }
            // Subnets lie in the VPC's range and do not overlap.
            let vpc: ipnet::Ipv4Net = EGRESS_VPC_CIDR.parse().unwrap();
            assert_eq!(
                t["Resources"]["EgressVpc"]["Properties"]["CidrBlock"],
                EGRESS_VPC_CIDR
            );
            let subnets: Vec<ipnet::Ipv4Net> = resources_of_type(&t, "AWS::EC2::Subnet")
                .into_iter()
                .map(|(_, s)| {
                    s["Properties"]["CidrBlock"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            for (i, a) in subnets.iter().enumerate() {
                assert!(vpc.contains(a), "{a} in {vpc}");
                for b in &subnets[i + 1..] {
                    assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
                }
            }
        }
    }

    #[test]
    fn the_function_runs_in_the_private_subnets_with_no_inbound_rule() {
        for (i, t) in both_templates(Egress::FixedIps { azs: 2 })
            .into_iter()
            .enumerate()
        {
            let function = &t["Resources"]["Function"];
            let vpc_config = &function["Properties"]["VpcConfig"];
            assert_eq!(
                vpc_config["SubnetIds"],
                json!([{ "Ref": "EgressPrivateSubnet1" }, { "Ref": "EgressPrivateSubnet2" }])
            );
            assert_eq!(
                vpc_config["SecurityGroupIds"],
                json!([{ "Fn::GetAtt": ["FunctionSecurityGroup", "GroupId"] }])
            );
            // It starts once its subnets can reach the internet.
            assert_eq!(
                function["DependsOn"],
                json!(["EgressPrivateDefaultRoute1", "EgressPrivateDefaultRoute2"])
            );
            let group = &t["Resources"]["FunctionSecurityGroup"]["Properties"];
            assert_eq!(group["VpcId"]["Ref"], "EgressVpc");
            assert!(
                group.get("SecurityGroupIngress").is_none(),
                "no inbound rule"
            );
            assert!(resources_of_type(&t, "AWS::EC2::SecurityGroupIngress").is_empty());
            assert_eq!(
                group["SecurityGroupEgress"],
                json!([{ "Description": "Deliveries and AWS API calls", "IpProtocol": "tcp",
                         "FromPort": 0, "ToPort": 65535, "CidrIp": "0.0.0.0/0" }])
            );
            // The file template's role: its own statements plus the two VPC ones.
            if i == 0 {
                let statements = t["Resources"]["FunctionRole"]["Properties"]["Policies"][0]
                    ["PolicyDocument"]["Statement"]
                    .as_array()
                    .unwrap();
                let sids: Vec<&str> = statements
                    .iter()
                    .map(|s| s["Sid"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    sids,
                    [
                        "ConsumeAppQueues",
                        "SendRetriesDeadLettersMetrics",
                        "WriteLogs",
                        "DescribeVpcNetwork",
                        "AttachToVpc"
                    ]
                );
                statements[3..].iter().for_each(vpc_statement_is_exact);
            } else {
                // The registry's DynamoDB calls skip the NAT gateways.
                let endpoint = &t["Resources"]["EgressDynamoDbEndpoint"]["Properties"];
                assert_eq!(endpoint["VpcEndpointType"], "Gateway");
                assert_eq!(
                    endpoint["ServiceName"]["Fn::Sub"],
                    "com.amazonaws.${AWS::Region}.dynamodb"
                );
                assert_eq!(
                    endpoint["RouteTableIds"],
                    json!([{ "Ref": "EgressPrivateRouteTable1" }, { "Ref": "EgressPrivateRouteTable2" }])
                );
            }
        }
    }

    #[test]
    fn egress_zones_are_one_to_three() {
        for azs in [0, MAX_EGRESS_AZS + 1] {
            let mut s = spec(vec![app("billing", 64)]);
            s.function.egress = Egress::FixedIps { azs };
            let e = plan(&s).unwrap_err().to_string();
            assert!(e.starts_with(&format!("lambda.egress_azs = {azs}")), "{e}");
            let mut r = registry_spec();
            r.function.egress = Egress::FixedIps { azs };
            assert!(plan_registry(&r).is_err());
        }
    }
}
