//! `squall apps`: applications of a registry deployment (`registry.backend = "dynamodb"`)
//! created, changed, listed and removed at run time.
//!
//! What each application gets is decided by `squall_core::provision` (the template's numbers
//! for one application); this module makes the calls, one resource at a time, and reports
//! each as a [`Step`] (created / updated / unchanged / deleted / absent). Every verb reads
//! before it writes, so running it again changes nothing and says so.
//!
//! Order, so that a failure half-way leaves nothing a rerun cannot finish:
//! - create / update / import: queue, registry item, event source mapping, alarm. An item is
//!   written only once its queue exists; a mapping only once the item exists (so the function
//!   finds the application of every record it is given).
//! - delete: mapping (the function stops receiving), [drain], alarm, queue, item. The item
//!   goes last, so a rerun still knows the queue; with the item gone, every other part is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::types::{EventSourceMappingConfiguration, FunctionResponseType, ScalingConfig};
use aws_sdk_sqs::types::QueueAttributeName;

use super::cloudwatch::{CloudWatch, CloudWatchError};
use super::{Inspect, now_ms};
use crate::actor::{ActMode, Actor};
use crate::config::{Config, ConfigError, RegistryBackend};
use crate::deploy::DeployError;
use crate::pipeline::{
    Action, DeadLetterFacts, LastFailure, attempt_state, dead_letter_attributes,
};
use crate::provision::{
    self, AppResources, Change, DRAIN_REASON, MappingSpec, MappingState, Placement, QueueSpec, Step,
};
use crate::queue::QueueError;
use crate::queue::sqs::{SqsQueues, SqsSettings, from_sdk, sdk_config};
use crate::registry::{
    self, AppRecord, DynamoStore, PutOutcome, QueueKey, ReadCounts, RegistryError, Tier, app_tables,
};

/// Why a verb stopped. Every variant names the application or resource; what was done before
/// the failure was printed, and rerunning the verb finishes the rest.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// The configuration does not name a DynamoDB registry.
    #[error(
        "{config}: registry.backend is \"file\": `squall apps` works on a DynamoDB registry; set [registry] backend = \"dynamodb\" and table = \"...\" (docs/config.md)"
    )]
    NotDynamodb {
        /// The config file.
        config: String,
    },
    /// A setting or settings file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The application's numbers fall outside what AWS accepts.
    #[error("application {app}: {source}")]
    Deploy {
        /// The application.
        app: String,
        /// What is wrong.
        source: DeployError,
    },
    /// The registry table said no.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An SQS call failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A Lambda call failed.
    #[error("Lambda {operation} on {target}: {message}")]
    Lambda {
        /// The API call.
        operation: &'static str,
        /// Function or queue ARN.
        target: String,
        /// Code and message.
        message: String,
    },
    /// A CloudWatch call failed.
    #[error(transparent)]
    CloudWatch(#[from] CloudWatchError),
    /// The stack's name is needed and could not be found.
    #[error(
        "no stack name: give --stack (or SQUALL_STACK); it is read from sqs.dead_letter_queue_url only when that queue is named <stack>-dlq"
    )]
    NoStack,
    /// The deployment's dead-letter queue is not configured.
    #[error("sqs.dead_letter_queue_url is not set: application queues redrive to it")]
    NoDeadLetterQueue,
    /// `create` or `import` over an application of the other tier (only `update` moves one).
    #[error(
        "application {id} is of the {} tier: move it with `squall apps update {id} --tier ...` (docs/operations.md, \"Tiers\")", from.as_str()
    )]
    TierMove {
        /// The application.
        id: String,
        /// Its current tier.
        from: Tier,
    },
    /// `create` of an id registered with other settings.
    #[error(
        "application {id} exists (version {version}) with other settings: use `squall apps update {id} --settings FILE`"
    )]
    Exists {
        /// The application.
        id: String,
        /// Its current version.
        version: u64,
    },
    /// The queue already belongs to another registered application.
    #[error(
        "application {id}: queue {queue} is already the queue of application {owner}; give {id} its own queue_url (or none, for <prefix>{id})"
    )]
    QueueTaken {
        /// The application.
        id: String,
        /// The queue (`account/name`).
        queue: String,
        /// The application it belongs to.
        owner: String,
    },
    /// The application is not registered.
    #[error("application {id} is not in the registry table {table}")]
    NotFound {
        /// The application.
        id: String,
        /// The table.
        table: String,
    },
    /// `update --expect-version` did not match.
    #[error(
        "application {id} is at version {found}, not {expected}: someone changed it; `squall apps show {id}` and retry"
    )]
    VersionMismatch {
        /// The application.
        id: String,
        /// The version the caller expected.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// `delete` of an application whose queue holds messages, without `--drain` or `--force`.
    #[error(
        "application {id}: queue {queue} holds messages ({visible} waiting, {in_flight} in flight, {delayed} delayed): nothing changed; --drain moves them to the dead-letter queue first, --force deletes them with the queue"
    )]
    NotEmpty {
        /// The application.
        id: String,
        /// The queue.
        queue: String,
        /// Visible.
        visible: u64,
        /// In flight.
        in_flight: u64,
        /// Delayed.
        delayed: u64,
    },
    /// `delete --drain` gave up waiting for messages in flight or delayed.
    #[error(
        "application {id}: queue {queue} still holds {remaining} message(s) in flight or delayed after {waited_secs} s of draining; the mapping is removed, the queue and item are kept: rerun `squall apps delete {id} --drain` later"
    )]
    DrainIncomplete {
        /// The application.
        id: String,
        /// The queue.
        queue: String,
        /// Messages left.
        remaining: u64,
        /// Seconds waited.
        waited_secs: u64,
    },
}

fn lambda_err<E: ProvideErrorMetadata + std::fmt::Display>(
    operation: &'static str,
    target: &str,
    e: E,
) -> AppsError {
    let message = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => e.to_string(),
    };
    AppsError::Lambda {
        operation,
        target: target.to_string(),
        message,
    }
}

/// Where the deployment's applications go: from flags, else derived (docs/operations.md).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The stack (tag `squall:stack`); `None` = from the dead-letter queue's name `<stack>-dlq`.
    pub stack: Option<String>,
    /// Prefix of queue names made for applications; `None` = `<stack>-`.
    pub queue_prefix: Option<String>,
    /// The function whose event source mappings `create` makes; `None` = no mapping on
    /// create (update and import keep using the function of an existing mapping).
    pub function: Option<String>,
    /// SNS topic the oldest-message alarms notify.
    pub alarm_topic: Option<String>,
}

fn not_dynamodb(config: &Config) -> AppsError {
    AppsError::NotDynamodb {
        config: config
            .path
            .as_ref()
            .map_or("config".into(), |p| p.display().to_string()),
    }
}

fn stack_of(config: &Config, target: &Target) -> Result<String, AppsError> {
    if let Some(s) = &target.stack {
        return Ok(s.clone());
    }
    config
        .sqs
        .dead_letter_queue_url
        .as_deref()
        .and_then(provision::stack_from_dead_letter_queue)
        .ok_or(AppsError::NoStack)
}

/// `delete`'s handling of waiting messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// Refuse while the queue holds messages.
    Refuse,
    /// Move them to the dead-letter queue (`squall-reason application-deleted`), waiting up to
    /// this long for messages in flight or delayed.
    Drain(Duration),
    /// Delete them with the queue.
    Force,
}

/// How a write treats an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    /// Refuse an existing item with other settings.
    Create,
    /// Require an existing item (optionally at this version).
    Update(Option<u64>),
    /// Create or update.
    Import,
}

/// The deployment `squall apps` works on: its config, registry table and AWS clients.
pub struct Apps {
    config: Config,
    target: Target,
    store: DynamoStore,
    queues: Arc<SqsQueues>,
    lambda: aws_sdk_lambda::Client,
    cloudwatch: CloudWatch,
    reads: ReadCounts,
}

impl Apps {
    /// Connect to the registry table, SQS, Lambda and CloudWatch of `config` (its
    /// `sqs.endpoint_url` serves SQS, Lambda and CloudWatch; `registry.endpoint_url` the table).
    pub async fn connect(config: Config, target: Target) -> Result<Apps, AppsError> {
        if config.registry.backend != RegistryBackend::Dynamodb {
            return Err(not_dynamodb(&config));
        }
        let (store, _secrets) =
            registry::connect(&config, &registry::aws_settings(&config)).await?;
        let settings = SqsSettings::from_config(&config);
        let sdk = sdk_config(&settings).await;
        let queues = Arc::new(SqsQueues::connect(&settings).await);
        Ok(Apps {
            lambda: aws_sdk_lambda::Client::new(&sdk),
            cloudwatch: CloudWatch::new(&sdk, settings.endpoint_url.as_deref()),
            config,
            target,
            store,
            queues,
            reads: ReadCounts::default(),
        })
    }

    /// The registry table.
    pub fn table(&self) -> &str {
        self.store.table()
    }

    fn stack(&self) -> Result<String, AppsError> {
        stack_of(&self.config, &self.target)
    }

    fn queue_prefix(&self) -> Result<String, AppsError> {
        match &self.target.queue_prefix {
            Some(p) => Ok(p.clone()),
            None => Ok(format!("{}-", self.stack()?)),
        }
    }

    /// `apps init`: the registry table, unless it exists.
    pub async fn init(&self) -> Result<Vec<Step>, AppsError> {
        let created = self.store.create_table().await?;
        Ok(vec![Step {
            resource: "table",
            name: self.store.table().to_string(),
            change: if created {
                Change::Created
            } else {
                Change::Unchanged
            },
        }])
    }

    /// `apps list`: every record, by id.
    pub async fn list(&self) -> Result<Vec<AppRecord>, AppsError> {
        Ok(self.store.list(&self.reads).await?)
    }

    /// `apps show ID`.
    pub async fn show(&self, id: &str) -> Result<AppRecord, AppsError> {
        self.store
            .get(id, &self.reads)
            .await?
            .ok_or_else(|| self.not_found(id))
    }

    fn not_found(&self, id: &str) -> AppsError {
        AppsError::NotFound {
            id: id.to_string(),
            table: self.store.table().to_string(),
        }
    }

    /// `apps create ID --settings FILE`: queue, item, mapping (with a function), alarm.
    pub async fn create(&self, id: &str, settings: &str) -> Result<Vec<Step>, AppsError> {
        self.write(id, settings, WriteMode::Create).await
    }

    /// `apps create ID --tier shared`: the registry item only (no queue, mapping or alarm: its
    /// events go to the shared queue with `MessageGroupId = ID`).
    pub async fn create_shared(&self, id: &str, settings: &str) -> Result<Vec<Step>, AppsError> {
        self.write_shared(id, settings, WriteMode::Create).await
    }

    /// `apps update ID --tier shared`: a shared application's new settings (item only), or a
    /// dedicated one moved to the shared tier (its queue kept and served until a later update
    /// finds it empty and removes it).
    pub async fn update_shared(
        &self,
        id: &str,
        settings: &str,
        expect_version: Option<u64>,
    ) -> Result<Vec<Step>, AppsError> {
        self.write_shared(id, settings, WriteMode::Update(expect_version))
            .await
    }

    async fn write_shared(
        &self,
        id: &str,
        settings: &str,
        mode: WriteMode,
    ) -> Result<Vec<Step>, AppsError> {
        let mut record = AppRecord::shared(&self.config, id, settings)?;
        if self.config.sqs.shared_queue_url.is_none() {
            return Err(ConfigError::Invalid {
                origin: "config".into(),
                key: "sqs.shared_queue_url".into(),
                message: "is empty: a shared application's events go to the stack's shared queue"
                    .into(),
            }
            .into());
        }
        let app = record.app_config(&self.config)?;
        let outside = provision::secrets_outside_path(&app, &self.config.registry.secret_path);
        if let Some(name) = outside.first() {
            return Err(ConfigError::Invalid {
                origin: format!("settings of application {id}"),
                key: format!("apps.{id}.secrets"),
                message: format!(
                    "ssm:{name} is outside registry.secret_path {:?}: the function may read only parameters below it",
                    self.config.registry.secret_path
                ),
            }
            .into());
        }
        let existing = self.store.get(id, &self.reads).await?;
        match (mode, &existing) {
            (WriteMode::Update(_), None) => return Err(self.not_found(id)),
            (WriteMode::Update(Some(expected)), Some(old)) if old.version != expected => {
                return Err(AppsError::VersionMismatch {
                    id: id.to_string(),
                    expected,
                    found: old.version,
                });
            }
            // Only `update` moves an application between tiers.
            (WriteMode::Create | WriteMode::Import, Some(old)) if old.tier != Tier::Shared => {
                return Err(AppsError::TierMove {
                    id: id.to_string(),
                    from: old.tier,
                });
            }
            (WriteMode::Create, Some(old)) => {
                let injected = old
                    .settings
                    .strip_prefix("queue_url = ")
                    .and_then(|r| r.split_once('\n'))
                    .map(|(_, rest)| rest);
                if old.settings != settings && injected != Some(settings) {
                    return Err(AppsError::Exists {
                        id: id.to_string(),
                        version: old.version,
                    });
                }
            }
            _ => {}
        }
        let mut steps = Vec::new();
        // The queue it had as a dedicated application: kept (and served) while the move is
        // fresh or it holds messages, removed by a later update once it is empty.
        if let Some(old) = &existing
            && let Some(key) = &old.queue
        {
            let moving = old.tier == Tier::Dedicated;
            match self.queue_url(&key.name, Some(&key.account)).await? {
                Some(url) => {
                    let d = self.queues.depth(&url).await?;
                    let waiting = d.visible + d.in_flight + d.delayed;
                    if moving || waiting > 0 {
                        record.queue = Some(key.clone());
                        record.settings = provision::settings_with_queue_url(settings, false, &url);
                        steps.push(Step {
                            resource: "queue",
                            name: key.name.clone(),
                            change: Change::Skipped(format!(
                                "kept while it drains ({waiting} messages; still served): run \
                                 `squall apps update {id} --tier shared` again once it is empty \
                                 to remove it, its mapping and its alarm"
                            )),
                        });
                    } else {
                        steps.extend(self.delete_mappings(&key.name, &url).await?);
                        steps.push(self.delete_alarm(&key.name).await?);
                        steps.push(self.delete_queue(&key.name, Some(&url)).await?);
                    }
                }
                None => steps.push(Step {
                    resource: "queue",
                    name: key.name.clone(),
                    change: Change::Absent,
                }),
            }
        }
        let (outcome, written) = self.store.put(&record, now_ms(), &self.reads).await?;
        steps.push(Step {
            resource: "item",
            name: id.to_string(),
            change: match outcome {
                PutOutcome::Created => Change::Created,
                PutOutcome::Updated => Change::Updated(format!("version {}", written.version)),
                PutOutcome::Unchanged => Change::Unchanged,
            },
        });
        Ok(steps)
    }

    /// `apps update ID --settings FILE`: the same steps on an existing application; the item's
    /// write is conditional on the version read (and on `expect_version` when given).
    pub async fn update(
        &self,
        id: &str,
        settings: &str,
        expect_version: Option<u64>,
    ) -> Result<Vec<Step>, AppsError> {
        self.write(id, settings, WriteMode::Update(expect_version))
            .await
    }

    /// `apps import`: every `[apps.ID]` table of `text` (a configuration file, named `origin`
    /// in errors), created or updated in id order; `each` sees each application's steps as
    /// they are done. Stops at the first failure (a rerun finishes).
    pub async fn import(
        &self,
        text: &str,
        origin: &str,
        mut each: impl FnMut(&str, &[Step]),
    ) -> Result<usize, AppsError> {
        let tables = app_tables(text, origin)?;
        // Validate them all, endpoints included, before changing anything.
        for t in &tables {
            let mut record = AppRecord::new(&self.config, &t.id, &t.settings)?;
            record.endpoints = t.endpoints.clone();
            record.app_config(&self.config)?;
        }
        for t in &tables {
            let mut steps = self.write(&t.id, &t.settings, WriteMode::Import).await?;
            steps.extend(self.import_endpoints(&t.id, &t.endpoints).await?);
            each(&t.id, &steps);
        }
        Ok(tables.len())
    }

    /// The file's endpoints of `id` written into its item (created or changed; endpoints the
    /// item has and the file does not are left alone).
    async fn import_endpoints(
        &self,
        id: &str,
        endpoints: &BTreeMap<String, String>,
    ) -> Result<Vec<Step>, AppsError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        let record = self.show(id).await?;
        let mut next = record.clone();
        next.endpoints.extend(endpoints.clone());
        // Stored in the form `squall endpoints` writes (normalised URL, lower-case headers).
        let table = next.app_config(&self.config)?.endpoints;
        self.store.ensure_endpoints_map(id).await?;
        let mut steps = Vec::with_capacity(endpoints.len());
        for eid in endpoints.keys() {
            let body = table.get(eid).expect("validated above").to_toml();
            let old = record.endpoints.get(eid);
            let change = match old {
                Some(o) if *o == body => Change::Unchanged,
                Some(_) => Change::Updated("settings".into()),
                None => Change::Created,
            };
            if change != Change::Unchanged {
                self.store
                    .put_endpoint(id, eid, &body, old.map(String::as_str), now_ms())
                    .await?;
            }
            steps.push(Step {
                resource: "endpoint",
                name: eid.clone(),
                change,
            });
        }
        Ok(steps)
    }

    async fn write(
        &self,
        id: &str,
        settings: &str,
        mode: WriteMode,
    ) -> Result<Vec<Step>, AppsError> {
        // Checked before anything is made: a bad file changes nothing.
        let app =
            self.config
                .app_from_toml(id, settings, &format!("settings of application {id}"))?;
        let outside = provision::secrets_outside_path(&app, &self.config.registry.secret_path);
        if let Some(name) = outside.first() {
            return Err(ConfigError::Invalid {
                origin: format!("settings of application {id}"),
                key: format!("apps.{id}.secrets"),
                message: format!(
                    "ssm:{name} is outside registry.secret_path {:?}: the function may read only parameters below it",
                    self.config.registry.secret_path
                ),
            }
            .into());
        }
        let existing = self.store.get(id, &self.reads).await?;
        // Only `update` moves a shared application to the dedicated tier.
        if let Some(old) = &existing
            && old.tier != Tier::Dedicated
            && !matches!(mode, WriteMode::Update(_))
        {
            return Err(AppsError::TierMove {
                id: id.to_string(),
                from: old.tier,
            });
        }
        let given_queue = app.queue_url.as_deref().map(QueueKey::from_url);
        let queue_name = match &given_queue {
            Some(Some(key)) => key.name.clone(),
            Some(None) => {
                return Err(ConfigError::Invalid {
                    origin: format!("settings of application {id}"),
                    key: format!("apps.{id}.queue_url"),
                    message: "must be an SQS queue URL <scheme>://<host>/<account>/<name>".into(),
                }
                .into());
            }
            None => {
                match existing.as_ref().and_then(|r| r.queue.clone()) {
                    // An application created without queue_url keeps the queue it was given.
                    Some(key) => key.name,
                    None => provision::default_queue_name(&self.queue_prefix()?, id).map_err(
                        |source| AppsError::Deploy {
                            app: id.to_string(),
                            source,
                        },
                    )?,
                }
            }
        };
        let account = given_queue.flatten().map(|k| k.account);
        // The queue is how the function finds the application: moving it would strand the old
        // queue, its mapping and its waiting events. Refused, naming the way to do it.
        if let Some(old) = existing.as_ref().and_then(|r| r.queue.as_ref()) {
            let moved =
                old.name != queue_name || account.as_ref().is_some_and(|a| *a != old.account);
            if moved {
                return Err(ConfigError::Invalid {
                    origin: format!("settings of application {id}"),
                    key: format!("apps.{id}.queue_url"),
                    message: format!(
                        "the application's queue is {old}; a queue cannot change (the function finds \
                         the application by it): keep queue_url, or delete the application \
                         (--drain) and create it again"
                    ),
                }
                .into());
            }
        }
        match (mode, &existing) {
            (WriteMode::Create, Some(old)) => {
                // The stored text is the file's, with the queue_url line made for it in front.
                let injected = old
                    .settings
                    .strip_prefix("queue_url = ")
                    .and_then(|r| r.split_once('\n'))
                    .map(|(_, rest)| rest);
                let same = old.settings == settings
                    || app.queue_url.is_none() && injected == Some(settings);
                if !same {
                    return Err(AppsError::Exists {
                        id: id.to_string(),
                        version: old.version,
                    });
                }
            }
            (WriteMode::Update(_), None) => return Err(self.not_found(id)),
            (WriteMode::Update(Some(expected)), Some(old)) if old.version != expected => {
                return Err(AppsError::VersionMismatch {
                    id: id.to_string(),
                    expected,
                    found: old.version,
                });
            }
            _ => {}
        }
        let dlq_url = self
            .config
            .sqs
            .dead_letter_queue_url
            .clone()
            .ok_or(AppsError::NoDeadLetterQueue)?;
        let stack = self.stack()?;

        // The function: named, else the one already mapped to the queue.
        let mut steps = Vec::new();
        let found = self.queue_url(&queue_name, account.as_deref()).await?;
        // One queue, one application: the engine finds an application by its queue.
        let key = found.as_deref().and_then(QueueKey::from_url);
        if let Some(key) = &key
            && let Some(owner) = self.store.by_queue(key, &self.reads).await?
            && owner.id != id
        {
            return Err(AppsError::QueueTaken {
                id: id.to_string(),
                queue: key.to_string(),
                owner: owner.id,
            });
        }
        let mappings = match &found {
            Some(url) => self.mappings(&self.queue_arn(url).await?).await?,
            None => Vec::new(),
        };
        let function = self.target.function.clone().or_else(|| {
            mappings
                .first()
                .and_then(|m| m.function_arn().map(str::to_string))
        });
        let function_timeout_secs = match &function {
            Some(f) => self.function_timeout(f).await?,
            None => None,
        };
        let resources = provision::resources(
            &self.config,
            &app,
            &Placement {
                stack: &stack,
                queue_name: &queue_name,
                function_timeout_secs,
                alarm_topic: self.target.alarm_topic.as_deref(),
            },
        )
        .map_err(|source| AppsError::Deploy {
            app: id.to_string(),
            source,
        })?;

        // 1. Queue.
        let dlq_arn = self.queue_arn(&dlq_url).await?;
        let (queue_url, queue_arn, change) =
            self.ensure_queue(found, &resources.queue, &dlq_arn).await?;
        steps.push(Step {
            resource: "queue",
            name: queue_name.clone(),
            change,
        });

        // 2. Item.
        let text =
            provision::settings_with_queue_url(settings, app.queue_url.is_some(), &queue_url);
        let mut record = AppRecord::new(&self.config, id, &text)?;
        // Moving from the shared tier: its events already there are still delivered.
        record.left_shared_ms = match &existing {
            Some(old) if old.tier == Tier::Shared => Some(now_ms()),
            Some(old) => old.left_shared_ms,
            None => None,
        };
        let (outcome, written) = self.store.put(&record, now_ms(), &self.reads).await?;
        steps.push(Step {
            resource: "item",
            name: id.to_string(),
            change: match outcome {
                PutOutcome::Created => Change::Created,
                PutOutcome::Updated => Change::Updated(format!("version {}", written.version)),
                PutOutcome::Unchanged => Change::Unchanged,
            },
        });

        // 3. Mapping.
        steps.push(match &function {
            Some(f) => {
                self.ensure_mapping(f, &queue_arn, &mappings, &resources)
                    .await?
            }
            None => Step {
                resource: "mapping",
                name: queue_name.clone(),
                change: Change::Skipped("no --function given and none mapped to the queue".into()),
            },
        });

        // 4. Alarm.
        let change = match self.cloudwatch.describe(&resources.alarm.name).await? {
            Some(view) if view.is(&resources.alarm) => Change::Unchanged,
            Some(_) => {
                self.cloudwatch.put(&resources.alarm).await?;
                Change::Updated("threshold, description or actions".into())
            }
            None => {
                self.cloudwatch.put(&resources.alarm).await?;
                Change::Created
            }
        };
        steps.push(Step {
            resource: "alarm",
            name: resources.alarm.name.clone(),
            change,
        });
        Ok(steps)
    }

    /// Delete every event source mapping of the queue `url` (named `queue_name` in the steps).
    async fn delete_mappings(&self, queue_name: &str, url: &str) -> Result<Vec<Step>, AppsError> {
        let arn = self.queue_arn(url).await?;
        let mappings = self.mappings(&arn).await?;
        let mut steps = Vec::new();
        if mappings.is_empty() {
            steps.push(Step {
                resource: "mapping",
                name: queue_name.to_string(),
                change: Change::Absent,
            });
        }
        for m in &mappings {
            let uuid = m.uuid().unwrap_or_default();
            let r = self
                .lambda
                .delete_event_source_mapping()
                .uuid(uuid)
                .send()
                .await;
            let change = match r {
                Ok(_) => Change::Deleted,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_resource_not_found_exception()) =>
                {
                    Change::Absent
                }
                Err(e) => return Err(lambda_err("DeleteEventSourceMapping", uuid, e)),
            };
            steps.push(Step {
                resource: "mapping",
                name: uuid.to_string(),
                change,
            });
        }
        Ok(steps)
    }

    /// Delete the oldest-message alarm of the queue `queue_name`.
    async fn delete_alarm(&self, queue_name: &str) -> Result<Step, AppsError> {
        let alarm = provision::alarm_name(queue_name);
        let change = if self.cloudwatch.describe(&alarm).await?.is_some() {
            self.cloudwatch.delete(&alarm).await?;
            Change::Deleted
        } else {
            Change::Absent
        };
        Ok(Step {
            resource: "alarm",
            name: alarm,
            change,
        })
    }

    /// Delete the queue `url` (`None`: not found, reported absent).
    async fn delete_queue(&self, queue_name: &str, url: Option<&str>) -> Result<Step, AppsError> {
        let change = match url {
            None => Change::Absent,
            Some(url) => {
                let r = self
                    .queues
                    .client()
                    .delete_queue()
                    .queue_url(url)
                    .send()
                    .await;
                match r.map_err(|e| from_sdk(url, "DeleteQueue", e)) {
                    Ok(_) => Change::Deleted,
                    Err(QueueError::QueueDoesNotExist { .. }) => Change::Absent,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(Step {
            resource: "queue",
            name: queue_name.to_string(),
            change,
        })
    }

    /// `apps delete ID`: mapping, [waiting messages], alarm, queue, item.
    pub async fn delete(&self, id: &str, mode: DeleteMode) -> Result<Vec<Step>, AppsError> {
        let existing = self.store.get(id, &self.reads).await?;
        // The queue: the item's, else (item already gone, or never written) the default name.
        let (queue_name, account) = match existing.as_ref().and_then(|r| r.queue.clone()) {
            Some(k) => (k.name, Some(k.account)),
            None => match provision::default_queue_name(&self.queue_prefix()?, id) {
                Ok(n) => (n, None),
                Err(source) => {
                    return Err(AppsError::Deploy {
                        app: id.to_string(),
                        source,
                    });
                }
            },
        };
        let mut found = self.queue_url(&queue_name, account.as_deref()).await?;
        let mut steps = Vec::new();
        let mut foreign_queue = false;
        // Without an item, a queue is removed only if it says it is this application's (a
        // create that stopped before its item); another queue of that name is left alone.
        if existing.is_none()
            && let Some(url) = &found
            && self.queue_tags(url).await?.get(provision::TAG_APP) != Some(&id.to_string())
        {
            steps.push(Step {
                resource: "queue",
                name: queue_name.clone(),
                change: Change::Skipped(format!(
                    "not registered and not tagged {}={id}: left alone",
                    provision::TAG_APP
                )),
            });
            found = None;
            foreign_queue = true;
        }
        if let Some(url) = &found {
            let d = self.queues.depth(url).await?;
            let total = d.visible + d.in_flight + d.delayed;
            if total > 0 && mode == DeleteMode::Refuse {
                return Err(AppsError::NotEmpty {
                    id: id.to_string(),
                    queue: queue_name,
                    visible: d.visible,
                    in_flight: d.in_flight,
                    delayed: d.delayed,
                });
            }
            // 1. Mappings: the function stops receiving from the queue.
            steps.extend(self.delete_mappings(&queue_name, url).await?);
            // 2. Waiting messages.
            if let DeleteMode::Drain(wait) = mode {
                let moved = self.drain(id, url, wait).await?;
                steps.push(Step {
                    resource: "messages",
                    name: queue_name.clone(),
                    change: Change::Drained(moved),
                });
            }
        } else {
            steps.push(Step {
                resource: "mapping",
                name: queue_name.clone(),
                change: Change::Absent,
            });
        }
        // 3. Alarm.
        steps.push(self.delete_alarm(&queue_name).await?);
        // 4. Queue.
        if !foreign_queue {
            steps.push(self.delete_queue(&queue_name, found.as_deref()).await?);
        }
        // 5. Item.
        let deleted = self.store.delete(id).await?;
        steps.push(Step {
            resource: "item",
            name: id.to_string(),
            change: if deleted {
                Change::Deleted
            } else {
                Change::Absent
            },
        });
        Ok(steps)
    }

    /// Move every message of `queue_url` to the dead-letter queue with the engine's
    /// dead-letter attributes (`squall-reason application-deleted`), through the same actor as
    /// the runner (send, then delete). Waits up to `wait` for messages in flight or delayed to
    /// come back. Returns how many were moved.
    async fn drain(&self, id: &str, queue_url: &str, wait: Duration) -> Result<u64, AppsError> {
        let dlq = self
            .config
            .sqs
            .dead_letter_queue_url
            .clone()
            .ok_or(AppsError::NoDeadLetterQueue)?;
        let actor = Actor::new(self.queues.clone(), dlq, ActMode::Runner);
        let started = Instant::now();
        let mut moved = 0u64;
        loop {
            let got = self
                .queues
                .receive_held(
                    queue_url,
                    10,
                    Duration::from_secs(60),
                    Duration::from_secs(1),
                )
                .await?;
            if got.is_empty() {
                let d = self.queues.depth(queue_url).await?;
                let left = d.visible + d.in_flight + d.delayed;
                if left == 0 {
                    return Ok(moved);
                }
                if started.elapsed() >= wait {
                    return Err(AppsError::DrainIncomplete {
                        id: id.to_string(),
                        queue: queue_url.to_string(),
                        remaining: left,
                        waited_secs: started.elapsed().as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let now = now_ms();
            let actions: Vec<Action> = got
                .iter()
                .map(|m| {
                    let state = attempt_state(m).ok();
                    let body = serde_json::from_str::<serde_json::Value>(&m.body).ok();
                    let field = |name: &str| {
                        body.as_ref()
                            .and_then(|v| v[name].as_str().map(str::to_string))
                    };
                    let (event_id, endpoint_id) = (field("id"), field("endpoint_id"));
                    let attributes = dead_letter_attributes(&DeadLetterFacts {
                        app_id: id,
                        event_id: event_id.as_deref(),
                        endpoint_id: endpoint_id.as_deref(),
                        reason: DRAIN_REASON,
                        last: LastFailure::Error(
                            "application deleted (squall apps delete --drain)".into(),
                        ),
                        // This receive was no attempt.
                        attempts: state.map_or(0, |s| s.attempt.saturating_sub(1)),
                        first_attempt_ms: state.map_or(m.sent_timestamp_ms, |s| s.first_attempt_ms),
                        source_queue: queue_url,
                        now_ms: now,
                    });
                    Action::DeadLetter {
                        reason: DRAIN_REASON.to_string(),
                        attributes,
                    }
                })
                .collect();
            let msgs: Vec<_> = got.iter().collect();
            let acts: Vec<_> = actions.iter().collect();
            for r in actor.apply(queue_url, &msgs, &acts).await {
                match r {
                    Ok(()) => moved += 1,
                    // Left in the queue: it comes back after the hold and is tried again.
                    Err(e) => tracing::warn!(app = id, error = %e, "drain: a message stays queued"),
                }
            }
        }
    }

    /// The URL of queue `name` (of `account` when given), if it exists.
    async fn queue_url(
        &self,
        name: &str,
        account: Option<&str>,
    ) -> Result<Option<String>, AppsError> {
        let r = self
            .queues
            .client()
            .get_queue_url()
            .queue_name(name)
            .set_queue_owner_aws_account_id(account.map(str::to_string))
            .send()
            .await;
        match r.map_err(|e| from_sdk(name, "GetQueueUrl", e)) {
            Ok(out) => Ok(out.queue_url),
            Err(QueueError::QueueDoesNotExist { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn queue_attributes(&self, url: &str) -> Result<BTreeMap<String, String>, AppsError> {
        let out = self
            .queues
            .client()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| from_sdk(url, "GetQueueAttributes", e))?;
        Ok(out
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_string(), v))
            .collect())
    }

    async fn queue_tags(&self, url: &str) -> Result<BTreeMap<String, String>, AppsError> {
        Ok(self
            .queues
            .client()
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| from_sdk(url, "ListQueueTags", e))?
            .tags
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    async fn queue_arn(&self, url: &str) -> Result<String, AppsError> {
        self.queue_attributes(url)
            .await?
            .remove("QueueArn")
            .ok_or_else(|| {
                QueueError::Service {
                    queue: url.to_string(),
                    operation: "GetQueueAttributes",
                    code: "NoQueueArn".into(),
                    message: "the answer has no QueueArn".into(),
                }
                .into()
            })
    }

    /// Create the queue, or bring an existing one to `spec`: (url, arn, what changed).
    async fn ensure_queue(
        &self,
        found: Option<String>,
        spec: &QueueSpec,
        dlq_arn: &str,
    ) -> Result<(String, String, Change), AppsError> {
        let client = self.queues.client();
        let Some(url) = found else {
            let out = client
                .create_queue()
                .queue_name(&spec.name)
                .attributes(
                    QueueAttributeName::VisibilityTimeout,
                    spec.visibility_timeout_secs.to_string(),
                )
                .attributes(
                    QueueAttributeName::MessageRetentionPeriod,
                    spec.retention_secs.to_string(),
                )
                .attributes(
                    QueueAttributeName::RedrivePolicy,
                    provision::redrive_policy(dlq_arn, spec.max_receive_count),
                )
                .set_tags(Some(spec.tags.clone().into_iter().collect()))
                .send()
                .await
                .map_err(|e| from_sdk(&spec.name, "CreateQueue", e))?;
            let url = out.queue_url.unwrap_or_default();
            let arn = self.queue_arn(&url).await?;
            return Ok((url, arn, Change::Created));
        };
        let current = self.queue_attributes(&url).await?;
        let arn = current.get("QueueArn").cloned().unwrap_or_default();
        let changes = provision::queue_attribute_changes(&current, spec, dlq_arn);
        let mut what: Vec<&str> = changes.iter().map(|(k, _)| *k).collect();
        if !changes.is_empty() {
            let mut req = client.set_queue_attributes().queue_url(&url);
            for (k, v) in &changes {
                req = req.attributes(QueueAttributeName::from(*k), v);
            }
            req.send()
                .await
                .map_err(|e| from_sdk(&url, "SetQueueAttributes", e))?;
        }
        let tags = self.queue_tags(&url).await?;
        let missing = provision::missing_tags(&tags, spec);
        if !missing.is_empty() {
            client
                .tag_queue()
                .queue_url(&url)
                .set_tags(Some(missing.into_iter().collect()))
                .send()
                .await
                .map_err(|e| from_sdk(&url, "TagQueue", e))?;
            what.push("tags");
        }
        let change = if what.is_empty() {
            Change::Unchanged
        } else {
            Change::Updated(what.join(", "))
        };
        Ok((url, arn, change))
    }

    /// The event source mappings reading `queue_arn`.
    async fn mappings(
        &self,
        queue_arn: &str,
    ) -> Result<Vec<EventSourceMappingConfiguration>, AppsError> {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .lambda
                .list_event_source_mappings()
                .event_source_arn(queue_arn)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| lambda_err("ListEventSourceMappings", queue_arn, e))?;
            out.extend(page.event_source_mappings.unwrap_or_default());
            match page.next_marker {
                Some(m) if !m.is_empty() => marker = Some(m),
                _ => return Ok(out),
            }
        }
    }

    /// The function's timeout, seconds.
    async fn function_timeout(&self, function: &str) -> Result<Option<u64>, AppsError> {
        let out = self
            .lambda
            .get_function_configuration()
            .function_name(function)
            .send()
            .await
            .map_err(|e| lambda_err("GetFunctionConfiguration", function, e))?;
        Ok(out.timeout.and_then(|t| u64::try_from(t).ok()))
    }

    async fn ensure_mapping(
        &self,
        function: &str,
        queue_arn: &str,
        existing: &[EventSourceMappingConfiguration],
        resources: &AppResources,
    ) -> Result<Step, AppsError> {
        let spec: MappingSpec = resources.mapping;
        let scaling = ScalingConfig::builder()
            .maximum_concurrency(spec.maximum_concurrency as i32)
            .build();
        let Some(m) = existing.first() else {
            let mut req = self
                .lambda
                .create_event_source_mapping()
                .function_name(function)
                .event_source_arn(queue_arn)
                .enabled(true)
                .batch_size(spec.batch_size as i32)
                .function_response_types(FunctionResponseType::ReportBatchItemFailures)
                .scaling_config(scaling);
            if spec.batching_window_secs > 0 {
                req = req.maximum_batching_window_in_seconds(spec.batching_window_secs as i32);
            }
            let out = req
                .send()
                .await
                .map_err(|e| lambda_err("CreateEventSourceMapping", function, e))?;
            return Ok(Step {
                resource: "mapping",
                name: out.uuid.unwrap_or_default(),
                change: Change::Created,
            });
        };
        let uuid = m.uuid().unwrap_or_default().to_string();
        let state = MappingState {
            batch_size: m.batch_size().and_then(|n| u32::try_from(n).ok()),
            batching_window_secs: m
                .maximum_batching_window_in_seconds()
                .and_then(|n| u32::try_from(n).ok()),
            maximum_concurrency: m
                .scaling_config()
                .and_then(|s| s.maximum_concurrency())
                .and_then(|n| u32::try_from(n).ok()),
            reports_batch_item_failures: m
                .function_response_types()
                .contains(&FunctionResponseType::ReportBatchItemFailures),
        };
        if spec.is_met_by(&state) {
            return Ok(Step {
                resource: "mapping",
                name: uuid,
                change: Change::Unchanged,
            });
        }
        self.lambda
            .update_event_source_mapping()
            .uuid(&uuid)
            .batch_size(spec.batch_size as i32)
            .maximum_batching_window_in_seconds(spec.batching_window_secs as i32)
            .function_response_types(FunctionResponseType::ReportBatchItemFailures)
            .scaling_config(scaling)
            .send()
            .await
            .map_err(|e| lambda_err("UpdateEventSourceMapping", &uuid, e))?;
        Ok(Step {
            resource: "mapping",
            name: uuid,
            change: Change::Updated(format!(
                "BatchSize {}, window {} s, MaximumConcurrency {}",
                spec.batch_size, spec.batching_window_secs, spec.maximum_concurrency
            )),
        })
    }
}
