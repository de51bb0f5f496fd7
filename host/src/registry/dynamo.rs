//! The registry in a DynamoDB table: one item per application.
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `app_id` | S | partition key: the application id |
//! | `queue_key` | S | `account/queue-name` of its queue; the `queue_key-index` GSI finds it |
//! | `version` | N | incremented by every write (conditional writes refuse a stale one) |
//! | `tier` | S | `dedicated` or `shared` (no queue of its own; found by id on the shared queue) |
//! | `left_shared_ms` | N | when a dedicated application left the shared tier (its events there are delivered for 14 days more) |
//! | `settings` | S | the body of its `[apps.ID]` table, TOML text (secret references only) |
//! | `endpoints` | M | endpoint id -> S, the TOML body of `[apps.ID.endpoints.EID]` (written by `squall endpoints`) |
//! | `health` | M | endpoint origin -> S, its latest shared health transition (JSON, `squall_core::health::SharedState`; written by the engine and `squall endpoints enable/disable ORIGIN`) |
//! | `updated_ms` | N | when the item was last written (Unix ms) |
//!
//! Finding an application by its queue is one `Query` on the index; listing them is a `Scan`.
//!
//! Endpoints live in the application's item, each under its own map key, so an endpoint write
//! is one `UpdateItem` of one map entry (conditional on the entry read, so a concurrent change to
//! the same endpoint is refused, not lost) and leaves the application's `version` alone: the
//! engine picks the change up at its next read of the item (within `registry.ttl_secs`) without
//! rebuilding the application. An application write (`put`) sets its own attributes only and
//! never touches `endpoints`. The item's 400 KB limit bounds an application to about 1,000
//! endpoints of typical size (`squall_core::endpoints::MAX_ENDPOINTS_PER_APP` is enforced).

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};

use super::{AppRecord, QueueKey, ReadCounts, RegistryError, Tier};

/// The index that finds an application by its queue.
pub const QUEUE_INDEX: &str = "queue_key-index";

/// The registry's table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The item did not exist.
    Created,
    /// The item existed with other settings; its version was incremented.
    Updated,
    /// The item already held these settings: nothing written.
    Unchanged,
}

pub(crate) fn store_err<E: ProvideErrorMetadata + std::fmt::Debug>(
    operation: &'static str,
    target: &str,
    e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> RegistryError {
    let message = match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("error"),
            se.message().unwrap_or("(no message)")
        ),
        None => format!("{e}"),
    };
    RegistryError::Store {
        operation,
        target: target.to_string(),
        message,
    }
}

impl DynamoStore {
    /// The table `table` through `client`.
    pub fn new(client: Client, table: String) -> DynamoStore {
        DynamoStore { client, table }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Create the table with its index (on-demand billing), unless it exists: for local
    /// servers and tests (`squall apps init`); the deployment template creates it in AWS.
    /// Returns whether it was created.
    pub async fn create_table(&self) -> Result<bool, RegistryError> {
        let s = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type set")
        };
        let hash = |name: &str| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(KeyType::Hash)
                .build()
                .expect("name and type set")
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(QUEUE_INDEX)
            .key_schema(hash("queue_key"))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .expect("index fields set");
        let r = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(s("app_id"))
            .attribute_definitions(s("queue_key"))
            .key_schema(hash("app_id"))
            .global_secondary_indexes(index)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(store_err("CreateTable", &self.table, e)),
        }
    }

    /// The application reading `queue` (one `Query` on the index), if one is registered.
    pub async fn by_queue(
        &self,
        queue: &QueueKey,
        reads: &ReadCounts,
    ) -> Result<Option<AppRecord>, RegistryError> {
        reads.registry_read();
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(QUEUE_INDEX)
            .key_condition_expression("queue_key = :q")
            .expression_attribute_values(":q", AttributeValue::S(queue.to_string()))
            .send()
            .await
            .map_err(|e| store_err("Query", &self.table, e))?;
        let mut records = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| record_from_item(&item))
            .collect::<Result<Vec<_>, _>>()?;
        match records.len() {
            0 => Ok(None),
            1 => Ok(records.pop()),
            _ => Err(RegistryError::SharedQueue {
                first: records[0].id.clone(),
                second: records[1].id.clone(),
                queue: queue.to_string(),
            }),
        }
    }

    /// The application `id` (one strongly consistent `GetItem`).
    pub async fn get(
        &self,
        id: &str,
        reads: &ReadCounts,
    ) -> Result<Option<AppRecord>, RegistryError> {
        reads.registry_read();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(id.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_err("GetItem", &self.table, e))?;
        out.item.as_ref().map(record_from_item).transpose()
    }

    /// Every application, by id (a paginated `Scan`; each page counts one read).
    pub async fn list(&self, reads: &ReadCounts) -> Result<Vec<AppRecord>, RegistryError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            reads.registry_read();
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_err("Scan", &self.table, e))?;
            for item in page.items.unwrap_or_default() {
                out.push(record_from_item(&item)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Write `record`'s settings and tier: created when absent, updated (version + 1) when
    /// they differ, left alone when equal. The write is conditional on the version read, so a
    /// concurrent writer makes it fail with [`RegistryError::Conflict`] rather than be lost.
    pub async fn put(
        &self,
        record: &AppRecord,
        now_ms: u64,
        reads: &ReadCounts,
    ) -> Result<(PutOutcome, AppRecord), RegistryError> {
        let existing = self.get(&record.id, reads).await?;
        let (outcome, version, condition) = match &existing {
            None => (
                PutOutcome::Created,
                1,
                "attribute_not_exists(app_id)".to_string(),
            ),
            Some(old)
                if old.settings == record.settings
                    && old.tier == record.tier
                    && old.queue == record.queue
                    && old.left_shared_ms == record.left_shared_ms =>
            {
                return Ok((PutOutcome::Unchanged, old.clone()));
            }
            Some(old) => (
                PutOutcome::Updated,
                old.version + 1,
                "version = :expected".to_string(),
            ),
        };
        // An update of the application's own attributes: its endpoints (written apart, by
        // `put_endpoint`) are kept as they are, and an item made now starts with none.
        let mut set = vec![
            "version = :version",
            "tier = :tier",
            "settings = :settings",
            "updated_ms = :updated",
            "endpoints = if_not_exists(endpoints, :no_endpoints)",
            "health = if_not_exists(health, :no_endpoints)",
        ];
        let mut remove = Vec::new();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(record.id.clone()))
            .expression_attribute_values(":version", AttributeValue::N(version.to_string()))
            .expression_attribute_values(":tier", AttributeValue::S(record.tier.as_str().into()))
            .expression_attribute_values(":settings", AttributeValue::S(record.settings.clone()))
            .expression_attribute_values(":updated", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":no_endpoints", AttributeValue::M(HashMap::new()))
            .condition_expression(condition);
        match &record.queue {
            Some(q) => {
                set.push("queue_key = :queue");
                req = req.expression_attribute_values(":queue", AttributeValue::S(q.to_string()));
            }
            None => remove.push("queue_key"),
        }
        match record.left_shared_ms {
            Some(t) => {
                set.push("left_shared_ms = :left");
                req = req.expression_attribute_values(":left", AttributeValue::N(t.to_string()));
            }
            None => remove.push("left_shared_ms"),
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        req = req.update_expression(expression);
        if let Some(old) = &existing {
            req = req.expression_attribute_values(
                ":expected",
                AttributeValue::N(old.version.to_string()),
            );
        }
        match req.send().await {
            Ok(_) => Ok((
                outcome,
                AppRecord {
                    version,
                    endpoints: existing.map(|o| o.endpoints).unwrap_or_default(),
                    ..record.clone()
                },
            )),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(RegistryError::Conflict {
                    id: record.id.clone(),
                    expected: existing.map_or(0, |o| o.version),
                })
            }
            Err(e) => Err(store_err("UpdateItem", &self.table, e)),
        }
    }

    /// Write endpoint `eid` of application `app_id` (`body`: the TOML body of its table).
    /// `expected` is the body read before (`None`: the endpoint must not exist yet); a
    /// concurrent change to the same endpoint makes the write fail with
    /// [`RegistryError::Conflict`]. The application must exist.
    pub async fn put_endpoint(
        &self,
        app_id: &str,
        eid: &str,
        body: &str,
        expected: Option<&str>,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(app_id.to_string()))
            .expression_attribute_names("#e", eid)
            .expression_attribute_values(":body", AttributeValue::S(body.to_string()))
            .expression_attribute_values(":updated", AttributeValue::N(now_ms.to_string()))
            .update_expression("SET endpoints.#e = :body, updated_ms = :updated");
        req = match expected {
            None => req.condition_expression(
                "attribute_exists(app_id) AND attribute_exists(endpoints) AND attribute_not_exists(endpoints.#e)",
            ),
            Some(old) => req
                .condition_expression("endpoints.#e = :old")
                .expression_attribute_values(":old", AttributeValue::S(old.to_string())),
        };
        self.endpoint_write(req.send().await, app_id, eid)
    }

    /// Remove endpoint `eid` of application `app_id`, which must still read `expected`.
    pub async fn delete_endpoint(
        &self,
        app_id: &str,
        eid: &str,
        expected: &str,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(app_id.to_string()))
            .expression_attribute_names("#e", eid)
            .expression_attribute_values(":old", AttributeValue::S(expected.to_string()))
            .expression_attribute_values(":updated", AttributeValue::N(now_ms.to_string()))
            .update_expression("REMOVE endpoints.#e SET updated_ms = :updated")
            .condition_expression("endpoints.#e = :old")
            .send()
            .await;
        self.endpoint_write(r, app_id, eid)
    }

    /// Give an item written before endpoints existed its empty `endpoints` map (a map entry
    /// can only be set inside an existing map).
    pub async fn ensure_endpoints_map(&self, app_id: &str) -> Result<(), RegistryError> {
        self.ensure_map(app_id, "endpoints").await
    }

    /// The application's shared endpoint health states, origin -> text (one eventually
    /// consistent `GetItem` of the `health` attribute; empty when the item has none).
    pub async fn read_health(&self, app_id: &str) -> Result<Vec<(String, String)>, RegistryError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(app_id.to_string()))
            .projection_expression("health")
            .send()
            .await
            .map_err(|e| store_err("GetItem", &self.table, e))?;
        let Some(AttributeValue::M(m)) = out.item.and_then(|mut i| i.remove("health")) else {
            return Ok(Vec::new());
        };
        let mut states: Vec<(String, String)> = m
            .into_iter()
            .filter_map(|(origin, v)| match v {
                AttributeValue::S(text) => Some((origin, text)),
                _ => None,
            })
            .collect();
        states.sort();
        Ok(states)
    }

    /// Write endpoint `origin`'s shared health state `text` in application `app_id`'s item.
    /// `unless_disabled`: not over a disabled state (the write is then skipped: `Ok(false)`).
    /// An item that has no `health` map yet is given one.
    pub async fn put_health(
        &self,
        app_id: &str,
        origin: &str,
        text: &str,
        unless_disabled: bool,
    ) -> Result<bool, RegistryError> {
        for first in [true, false] {
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("app_id", AttributeValue::S(app_id.to_string()))
                .expression_attribute_names("#o", origin)
                .expression_attribute_values(":s", AttributeValue::S(text.to_string()))
                .update_expression("SET health.#o = :s");
            req = if unless_disabled {
                req.condition_expression(
                    "attribute_exists(app_id) AND (attribute_not_exists(health.#o) OR NOT begins_with(health.#o, :disabled))",
                )
                .expression_attribute_values(
                    ":disabled",
                    AttributeValue::S(squall_core::health::SHARED_DISABLED_PREFIX.into()),
                )
            } else {
                req.condition_expression("attribute_exists(app_id)")
            };
            match req.send().await {
                Ok(_) => return Ok(true),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
                {
                    return Ok(false);
                }
                // No `health` map in an item written before it existed: make it, once.
                Err(e)
                    if first
                        && e.as_service_error()
                            .is_some_and(|se| se.code() == Some("ValidationException")) =>
                {
                    self.ensure_map(app_id, "health").await?;
                }
                Err(e) => return Err(store_err("UpdateItem", &self.table, e)),
            }
        }
        Ok(false)
    }

    /// Give the item an empty map attribute `name` if it has none.
    async fn ensure_map(&self, app_id: &str, name: &str) -> Result<(), RegistryError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(app_id.to_string()))
            .expression_attribute_names("#m", name)
            .expression_attribute_values(":none", AttributeValue::M(HashMap::new()))
            .update_expression("SET #m = if_not_exists(#m, :none)")
            .condition_expression("attribute_exists(app_id)")
            .send()
            .await
            .map_err(|e| store_err("UpdateItem", &self.table, e))?;
        Ok(())
    }

    fn endpoint_write<T>(
        &self,
        r: Result<
            T,
            SdkError<
                aws_sdk_dynamodb::operation::update_item::UpdateItemError,
                aws_sdk_dynamodb::config::http::HttpResponse,
            >,
        >,
        app_id: &str,
        eid: &str,
    ) -> Result<(), RegistryError> {
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(RegistryError::EndpointConflict {
                    app: app_id.to_string(),
                    endpoint: eid.to_string(),
                })
            }
            Err(e) => Err(store_err("UpdateItem", &self.table, e)),
        }
    }

    /// Remove the application's item; whether there was one.
    pub async fn delete(&self, id: &str) -> Result<bool, RegistryError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("app_id", AttributeValue::S(id.to_string()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| store_err("DeleteItem", &self.table, e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }
}

/// One item as a record; a missing or mistyped attribute is named.
fn record_from_item(item: &HashMap<String, AttributeValue>) -> Result<AppRecord, RegistryError> {
    let id = match item.get("app_id") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => {
            return Err(RegistryError::Malformed {
                id: "?".into(),
                message: "app_id (string) is missing".into(),
            });
        }
    };
    let bad = |message: String| RegistryError::Malformed {
        id: id.clone(),
        message,
    };
    let string = |name: &str| match item.get(name) {
        Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
        None => Ok(None),
        Some(_) => Err(bad(format!("{name} must be a string"))),
    };
    let version = match item.get("version") {
        Some(AttributeValue::N(n)) => n
            .parse::<u64>()
            .map_err(|_| bad(format!("version {n:?} is not a whole number")))?,
        _ => return Err(bad("version (number) is missing".into())),
    };
    let tier = match string("tier")? {
        None => Tier::Dedicated,
        Some(t) => Tier::parse(&t)
            .ok_or_else(|| bad(format!("tier {t:?}: must be \"dedicated\" or \"shared\"")))?,
    };
    let queue = match string("queue_key")? {
        None => None,
        Some(q) => Some(
            QueueKey::parse(&q)
                .ok_or_else(|| bad(format!("queue_key {q:?}: must be account/queue-name")))?,
        ),
    };
    let settings = string("settings")?.ok_or_else(|| bad("settings (string) is missing".into()))?;
    let left_shared_ms = match item.get("left_shared_ms") {
        None => None,
        Some(AttributeValue::N(n)) => Some(
            n.parse::<u64>()
                .map_err(|_| bad(format!("left_shared_ms {n:?} is not a whole number")))?,
        ),
        Some(_) => return Err(bad("left_shared_ms must be a number".into())),
    };
    let endpoints = match item.get("endpoints") {
        None => Default::default(),
        Some(AttributeValue::M(m)) => m
            .iter()
            .map(|(eid, v)| match v {
                AttributeValue::S(body) => Ok((eid.clone(), body.clone())),
                _ => Err(bad(format!("endpoints.{eid} must be a string (TOML text)"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("endpoints must be a map".into())),
    };
    Ok(AppRecord {
        id: id.clone(),
        version,
        tier,
        queue,
        left_shared_ms,
        settings,
        endpoints,
    })
}
