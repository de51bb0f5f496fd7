//! `squall endpoints`: an application's registered endpoints, created, changed, enabled,
//! disabled, deleted, listed and shown.
//!
//! On a DynamoDB registry every write is one conditional `UpdateItem` of one entry of the
//! application item's `endpoints` map (`DynamoStore::put_endpoint`): the whole application,
//! with the endpoint changed, is validated first exactly as the engine will read it (URL rules,
//! headers, a `signing_key` the application has a secret for), so nothing the engine would
//! refuse is stored. The engine applies the change at its next registry read of the application
//! (within `registry.ttl_secs`) to every event not yet being attempted: queued, waiting for a
//! retry, or redriven later.
//!
//! On a file registry the endpoints are `[apps.NAME.endpoints.ID]` tables of the configuration:
//! `list` and `show` read them; the write verbs are refused with the way to do it (edit the file,
//! restart).
//!
//! Endpoint health (issue 20) is per origin (`scheme://host:port`), whether events name it by
//! URL or by endpoint id: [`Endpoints::health`] lists the states the engine shared in the
//! application's item, and [`Endpoints::set_origin`] enables (or disables) an origin for every
//! process, with an `endpoint.enabled` (`endpoint.disabled`) event on the metrics queue.

use std::collections::BTreeMap;

use super::now_ms;
use crate::config::{Config, RegistryBackend};
use crate::endpoints::{Endpoint, EndpointError};
use crate::registry::{self, AppRecord, DynamoStore, ReadCounts, RegistryError};

/// Why an endpoints verb stopped.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// The application is not registered (or not in the file).
    #[error("no application {app} in {source_name}")]
    NoApp {
        /// The application.
        app: String,
        /// The table or file looked in.
        source_name: String,
    },
    /// The endpoint does not exist.
    #[error("application {app} has no endpoint {endpoint} (squall endpoints --app {app} list)")]
    NoEndpoint {
        /// The application.
        app: String,
        /// The endpoint.
        endpoint: String,
    },
    /// `create` of an endpoint that exists.
    #[error(
        "endpoint {endpoint} of application {app} exists: change it with `squall endpoints --app {app} update {endpoint}`"
    )]
    Exists {
        /// The application.
        app: String,
        /// The endpoint.
        endpoint: String,
    },
    /// A write on a file registry.
    #[error(
        "{config}: registry.backend is \"file\": endpoints are the [apps.{app}.endpoints.ID] tables of the file; edit it and restart `squall run` (or use a DynamoDB registry, docs/config.md)"
    )]
    FileBackend {
        /// The config file.
        config: String,
        /// The application.
        app: String,
    },
    /// The endpoint's settings are invalid.
    #[error("endpoint {endpoint} of application {app}: {source}")]
    Invalid {
        /// The application.
        app: String,
        /// The endpoint.
        endpoint: String,
        /// The field and why.
        source: EndpointError,
    },
    /// The application with the endpoint changed would not be valid (a signing key with no
    /// secret, too many endpoints): the message names the key.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The registry said no.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Not an origin or URL with a host.
    #[error("{given:?}: not an endpoint origin (scheme://host[:port]) or URL")]
    NotAnOrigin {
        /// What was given.
        given: String,
    },
    /// Endpoint health on a file registry: kept in each `squall run` process.
    #[error(
        "{config}: registry.backend is \"file\": endpoint health is kept in each squall run process, not shared; a disabled origin is enabled again by restarting it (a DynamoDB registry shares it, docs/config.md)"
    )]
    HealthNotShared {
        /// The config file.
        config: String,
    },
}

/// What [`Endpoints::set_origin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSet {
    /// The origin, `scheme://host:port`.
    pub origin: String,
    /// Its state before (`None`: no shared state).
    pub before: Option<crate::health::SharedKind>,
    /// Whether the operational event reached the metrics queue (`false`: none configured, or
    /// the send failed, logged).
    pub event_sent: bool,
}

/// What `update` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// A new URL.
    pub url: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// `Some(Some(k))`: sign with key `k`; `Some(None)`: the application's `signing_key`.
    pub signing_key: Option<Option<String>>,
    /// Replace every extra header with these.
    pub headers: Option<Vec<(String, String)>>,
}

impl Change {
    /// `endpoint` with this change applied, validated.
    pub fn apply(&self, endpoint: &Endpoint) -> Result<Endpoint, EndpointError> {
        Endpoint::new(
            &endpoint.id,
            self.url.as_deref().unwrap_or(&endpoint.url),
            self.enabled.unwrap_or(endpoint.enabled),
            match &self.signing_key {
                Some(k) => k.as_deref(),
                None => endpoint.signing_key.as_deref(),
            },
            self.headers.as_deref().unwrap_or(&endpoint.headers),
        )
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Stored (created, changed or deleted).
    Done(Endpoint),
    /// The endpoint already held these settings: nothing written.
    Unchanged(Endpoint),
}

/// The endpoints of one deployment's applications.
pub struct Endpoints {
    config: Config,
    store: Option<DynamoStore>,
    reads: ReadCounts,
}

impl Endpoints {
    /// On `config`'s registry: its DynamoDB table, or (file backend) its `[apps.*]` tables.
    pub async fn connect(config: Config) -> Result<Endpoints, EndpointsError> {
        let store = match config.registry.backend {
            RegistryBackend::Dynamodb => Some(
                registry::connect(&config, &registry::aws_settings(&config))
                    .await?
                    .0,
            ),
            RegistryBackend::File => None,
        };
        Ok(Endpoints {
            config,
            store,
            reads: ReadCounts::default(),
        })
    }

    fn source_name(&self) -> String {
        match &self.store {
            Some(s) => format!("registry table {}", s.table()),
            None => self
                .config
                .path
                .as_ref()
                .map_or("the configuration".into(), |p| p.display().to_string()),
        }
    }

    /// Every endpoint of `app`, by id.
    pub async fn list(&self, app: &str) -> Result<Vec<Endpoint>, EndpointsError> {
        let table = match &self.store {
            None => self
                .config
                .app(app)
                .ok_or_else(|| self.no_app(app))?
                .endpoints
                .clone(),
            Some(_) => {
                let record = self.record(app).await?;
                record.app_config(&self.config)?.endpoints
            }
        };
        Ok(table.iter().map(|e| (**e).clone()).collect())
    }

    /// Endpoint `eid` of `app`.
    pub async fn show(&self, app: &str, eid: &str) -> Result<Endpoint, EndpointsError> {
        self.list(app)
            .await?
            .into_iter()
            .find(|e| e.id == eid)
            .ok_or_else(|| EndpointsError::NoEndpoint {
                app: app.into(),
                endpoint: eid.into(),
            })
    }

    /// Register `endpoint` for `app`; running it again with the same settings changes nothing.
    pub async fn create(&self, app: &str, endpoint: Endpoint) -> Result<Written, EndpointsError> {
        let (store, record) = self.writable(app).await?;
        let eid = endpoint.id.clone();
        if let Some(old) = record.endpoints.get(&eid) {
            let existing = self.parse(&record, &eid, old)?;
            if existing == endpoint {
                return Ok(Written::Unchanged(existing));
            }
            return Err(EndpointsError::Exists {
                app: app.into(),
                endpoint: eid,
            });
        }
        let body = endpoint.to_toml();
        self.check(&record, &eid, &body)?;
        if record.endpoints.is_empty() {
            // Items written before endpoints existed have no map to add an entry to.
            store.ensure_endpoints_map(app).await?;
        }
        store.put_endpoint(app, &eid, &body, None, now_ms()).await?;
        Ok(Written::Done(endpoint))
    }

    /// Change endpoint `eid` of `app`.
    pub async fn update(
        &self,
        app: &str,
        eid: &str,
        change: &Change,
    ) -> Result<Written, EndpointsError> {
        let (store, record, old_body, old) = self.existing(app, eid).await?;
        let new = change
            .apply(&old)
            .map_err(|source| EndpointsError::Invalid {
                app: app.into(),
                endpoint: eid.into(),
                source,
            })?;
        if new == old {
            return Ok(Written::Unchanged(old));
        }
        let body = new.to_toml();
        self.check(&record, eid, &body)?;
        store
            .put_endpoint(app, eid, &body, Some(&old_body), now_ms())
            .await?;
        Ok(Written::Done(new))
    }

    /// Remove endpoint `eid` of `app`: events still naming it are dead-lettered as naming an
    /// unknown endpoint (disable it instead to keep them redrivable to it).
    pub async fn delete(&self, app: &str, eid: &str) -> Result<Written, EndpointsError> {
        let (store, _, old_body, old) = self.existing(app, eid).await?;
        store.delete_endpoint(app, eid, &old_body, now_ms()).await?;
        Ok(Written::Done(old))
    }

    /// `app`'s shared endpoint health states (DynamoDB registry), by origin.
    pub async fn health(
        &self,
        app: &str,
    ) -> Result<Vec<(String, crate::health::SharedState)>, EndpointsError> {
        let store = self.health_store()?;
        self.record(app).await?;
        Ok(store
            .read_health(app)
            .await?
            .into_iter()
            .filter_map(|(o, text)| Some((o, crate::health::SharedState::parse(&text)?)))
            .collect())
    }

    /// Enable (`enable`) or disable endpoint origin `target` (an origin or any URL at it) of
    /// `app` for every process serving it, from their next shared read; an `endpoint.enabled`
    /// or `endpoint.disabled` event goes to the metrics queue if one is configured.
    pub async fn set_origin(
        &self,
        app: &str,
        target: &str,
        enable: bool,
    ) -> Result<OriginSet, EndpointsError> {
        use crate::health::{OperationalEvent, SharedKind, SharedState};
        let store = self.health_store()?;
        self.record(app).await?;
        let origin =
            crate::health::origin_of(target).ok_or_else(|| EndpointsError::NotAnOrigin {
                given: target.into(),
            })?;
        let before = store
            .read_health(app)
            .await?
            .into_iter()
            .find(|(o, _)| *o == origin)
            .and_then(|(_, t)| SharedState::parse(&t))
            .map(|s| s.state);
        let at_ms = now_ms();
        let (state, kind) = if enable {
            (SharedKind::Enabled, "endpoint.enabled")
        } else {
            (SharedKind::Disabled, "endpoint.disabled")
        };
        let reason = "by an operator (squall endpoints)";
        let shared = SharedState {
            state,
            at_ms,
            until_ms: None,
            failing_since_ms: (!enable).then_some(at_ms),
            reason: reason.into(),
        };
        store
            .put_health(app, &origin, &shared.to_json(), false)
            .await?;
        let event = OperationalEvent::by_operator(kind, app, &origin, reason, at_ms);
        let event_sent = match self.config.sqs.metrics_queue_url.as_deref() {
            None => false,
            Some(url) => {
                use crate::queue::{Attributes, Outgoing, Queue};
                let settings = crate::queue::sqs::SqsSettings::from_config(&self.config);
                let queues = crate::queue::sqs::SqsQueues::connect(&settings).await;
                let message = Outgoing {
                    body: event.to_json(),
                    delay_secs: 0,
                    attributes: Attributes::new(),
                    group_id: None,
                };
                match queues.send_batch(url, &[message]).await.pop() {
                    Some(Ok(())) => true,
                    other => {
                        tracing::warn!(app_id = app, endpoint = %origin, kind, result = ?other, "operational event not sent to the metrics queue");
                        false
                    }
                }
            }
        };
        Ok(OriginSet {
            origin,
            before,
            event_sent,
        })
    }

    fn health_store(&self) -> Result<&DynamoStore, EndpointsError> {
        self.store
            .as_ref()
            .ok_or_else(|| EndpointsError::HealthNotShared {
                config: self.source_name(),
            })
    }

    /// Endpoint `eid` of `app` as stored (its TOML body) and parsed, for a write.
    async fn existing(
        &self,
        app: &str,
        eid: &str,
    ) -> Result<(&DynamoStore, AppRecord, String, Endpoint), EndpointsError> {
        let (store, record) = self.writable(app).await?;
        let body = record
            .endpoints
            .get(eid)
            .ok_or_else(|| EndpointsError::NoEndpoint {
                app: app.into(),
                endpoint: eid.into(),
            })?
            .clone();
        let endpoint = self.parse(&record, eid, &body)?;
        Ok((store, record, body, endpoint))
    }

    /// The application's record, for a write.
    async fn writable(&self, app: &str) -> Result<(&DynamoStore, AppRecord), EndpointsError> {
        let Some(store) = &self.store else {
            return Err(EndpointsError::FileBackend {
                config: self.source_name(),
                app: app.into(),
            });
        };
        Ok((store, self.record(app).await?))
    }

    async fn record(&self, app: &str) -> Result<AppRecord, EndpointsError> {
        let store = self.store.as_ref().expect("a registry");
        store
            .get(app, &self.reads)
            .await?
            .ok_or_else(|| self.no_app(app))
    }

    fn no_app(&self, app: &str) -> EndpointsError {
        EndpointsError::NoApp {
            app: app.into(),
            source_name: self.source_name(),
        }
    }

    /// One stored endpoint, parsed.
    fn parse(&self, record: &AppRecord, eid: &str, body: &str) -> Result<Endpoint, EndpointsError> {
        let only = AppRecord {
            endpoints: BTreeMap::from([(eid.to_string(), body.to_string())]),
            ..record.clone()
        };
        let app = only.app_config(&self.config)?;
        Ok((**app.endpoints.get(eid).expect("the one endpoint given")).clone())
    }

    /// The application as the engine would read it with endpoint `eid` set to `body`: refused
    /// here if the engine would refuse it.
    fn check(&self, record: &AppRecord, eid: &str, body: &str) -> Result<(), EndpointsError> {
        let mut next = record.clone();
        next.endpoints.insert(eid.to_string(), body.to_string());
        next.app_config(&self.config)?;
        Ok(())
    }
}
