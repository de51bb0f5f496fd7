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
