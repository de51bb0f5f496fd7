//! The application registry's record: one application as stored, and how a queue names it.
//!
//! An application is data: its settings are the body of what would be its `[apps.ID]` table,
//! stored as TOML text beside a version and a tier, and validated against the deployment's
//! `[app_defaults]` when read ([`AppRecord::app_config`]), with the same errors a file's table
//! gets. The engine's registry backends (the configuration file, a DynamoDB table) store and
//! fetch records; this module decides what a record means.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, Config, ConfigError};

/// A queue's identity as both an event source ARN and a queue URL can name it:
/// (account id, queue name). `arn:aws:sqs:eu-west-1:123456789012:billing` and
/// `https://sqs.eu-west-1.amazonaws.com/123456789012/billing` give the same key, written
/// `123456789012/billing`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    /// AWS account id (moto uses `123456789012`).
    pub account: String,
    /// Queue name.
    pub name: String,
}

impl QueueKey {
    /// From an SQS ARN `arn:<partition>:sqs:<region>:<account>:<name>`.
    pub fn from_arn(arn: &str) -> Option<QueueKey> {
        let parts: Vec<&str> = arn.split(':').collect();
        match parts.as_slice() {
            ["arn", _partition, "sqs", _region, account, name]
                if !account.is_empty() && !name.is_empty() =>
            {
                Some(QueueKey {
                    account: account.to_string(),
                    name: name.to_string(),
                })
            }
            _ => None,
        }
    }

    /// From a queue URL `<scheme>://<host>/<account>/<name>`.
    pub fn from_url(url: &str) -> Option<QueueKey> {
        let parsed = url::Url::parse(url).ok()?;
        let mut segments = parsed.path_segments()?.filter(|s| !s.is_empty());
        let account = segments.next()?;
        let name = segments.next()?;
        if segments.next().is_some() {
            return None;
        }
        Some(QueueKey {
            account: account.to_string(),
            name: name.to_string(),
        })
    }

    /// From its written form `account/name` (the registry's index attribute).
    pub fn parse(text: &str) -> Option<QueueKey> {
        let (account, name) = text.split_once('/')?;
        (!account.is_empty() && !name.is_empty() && !name.contains('/')).then(|| QueueKey {
            account: account.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account, self.name)
    }
}

/// How long after an application left the shared tier its events on the shared queue are
/// still delivered: 14 days, SQS's longest retention (nothing sent before the move can be on
/// the queue later).
pub const SHARED_DRAIN_MS: u64 = 14 * 24 * 3600 * 1000;

/// How an application's events reach the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A queue and event source mapping of its own.
    #[default]
    Dedicated,
    /// No queue of its own: its events are on the stack's shared queue (`sqs.shared_queue_url`)
    /// with `MessageGroupId = app_id`, and the engine finds it by the envelope's `app_id`.
    Shared,
}

impl Tier {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Dedicated => "dedicated",
            Tier::Shared => "shared",
        }
    }

    /// From its stored form.
    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "dedicated" => Some(Tier::Dedicated),
            "shared" => Some(Tier::Shared),
            _ => None,
        }
    }
}

/// One application as the registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// Application id.
    pub id: String,
    /// Incremented by every write; a cache compares it to know whether settings changed.
    pub version: u64,
    /// Dedicated or shared.
    pub tier: Tier,
    /// The application's queue (what the record is found by), `account/name`. A shared
    /// application moved from the dedicated tier keeps its old queue here (and its `queue_url`
    /// in the settings) until that queue is drained and retired: the engine serves both.
    pub queue: Option<QueueKey>,
    /// When a dedicated application moved from the shared tier (Unix ms): for
    /// [`SHARED_DRAIN_MS`] after it, its events still on the shared queue are delivered, not
    /// dead-lettered.
    pub left_shared_ms: Option<u64>,
    /// The body of the application's `[apps.ID]` table, as TOML text. Holds secret
    /// *references* (`ssm:NAME`, `env:NAME`), never a secret.
    pub settings: String,
    /// The application's endpoints: id and the TOML body of each (`url`, `enabled`,
    /// `signing_key`, `headers`), written by `squall endpoints` apart from the settings (a
    /// change to one is not a new version of the application: the engine picks it up at its
    /// next registry read without rebuilding anything).
    pub endpoints: std::collections::BTreeMap<String, String>,
}

impl AppRecord {
    /// A record of `id` with these settings (a TOML table body), version 1, queue taken from
    /// its `queue_url`. The settings are checked against `config` now, so nothing invalid is
    /// stored.
    pub fn new(config: &Config, id: &str, settings: &str) -> Result<AppRecord, ConfigError> {
        let app = config.app_from_toml(id, settings, &format!("settings of application {id}"))?;
        Ok(AppRecord {
            id: id.to_string(),
            version: 1,
            tier: Tier::Dedicated,
            queue: app.queue_url.as_deref().and_then(QueueKey::from_url),
            left_shared_ms: None,
            settings: settings.to_string(),
            endpoints: Default::default(),
        })
    }

    /// A shared-tier record of `id` with these settings, version 1, no queue. The settings are
    /// checked against `config` now; a `queue_url` is refused (the application's events are on
    /// the shared queue).
    pub fn shared(config: &Config, id: &str, settings: &str) -> Result<AppRecord, ConfigError> {
        let origin = format!("settings of application {id}");
        let app = config.app_from_toml(id, settings, &origin)?;
        if app.queue_url.is_some() {
            return Err(ConfigError::Invalid {
                origin,
                key: format!("apps.{id}.queue_url"),
                message: "a shared application has no queue of its own (its events go to \
                          sqs.shared_queue_url with MessageGroupId = its id): remove queue_url"
                    .into(),
            });
        }
        Ok(AppRecord {
            id: id.to_string(),
            version: 1,
            tier: Tier::Shared,
            queue: None,
            left_shared_ms: None,
            settings: settings.to_string(),
            endpoints: Default::default(),
        })
    }

    /// Whether the engine serves this application's events on the shared queue at `now_ms`:
    /// a shared application, or a dedicated one within [`SHARED_DRAIN_MS`] of leaving the
    /// shared tier (its events sent there before the move are still delivered).
    pub fn served_on_shared_queue(&self, now_ms: u64) -> bool {
        match self.tier {
            Tier::Shared => true,
            Tier::Dedicated => self
                .left_shared_ms
                .is_some_and(|t| now_ms < t.saturating_add(SHARED_DRAIN_MS)),
        }
    }

    /// The application's settings, laid over `config`'s `[app_defaults]` and validated; errors
    /// name the record (`registry item ID (version N)`) and the key. A shared application's
    /// `tier` says so (its queue is the deployment's `sqs.shared_queue_url`).
    pub fn app_config(&self, config: &Config) -> Result<AppConfig, ConfigError> {
        let mut app = config.app_from_toml_with_endpoints(
            &self.id,
            &self.settings,
            &self.endpoints,
            &self.origin(),
        )?;
        app.tier = self.tier;
        Ok(app)
    }

    /// How errors name this record.
    pub fn origin(&self) -> String {
        format!("registry item {} (version {})", self.id, self.version)
    }
}

/// One `[apps.ID]` table of a configuration file, as a registry record's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTable {
    /// Application id.
    pub id: String,
    /// The table without its endpoints, as TOML text (the record's settings).
    pub settings: String,
    /// Its `[apps.ID.endpoints.EID]` tables: id and TOML body of each.
    pub endpoints: std::collections::BTreeMap<String, String>,
}

/// The `[apps.ID]` tables of a TOML configuration text, each as the parts of a record
/// (`squall apps import`), in id order.
pub fn app_tables(text: &str, origin: &str) -> Result<Vec<AppTable>, ConfigError> {
    let root: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
    let Some(apps) = root.get("apps") else {
        return Ok(Vec::new());
    };
    let Some(apps) = apps.as_table() else {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            key: "apps".into(),
            message: "must be a table of [apps.NAME] tables".into(),
        });
    };
    let invalid = |key: String, message: &str| ConfigError::Invalid {
        origin: origin.to_string(),
        key,
        message: message.into(),
    };
    let mut out = Vec::with_capacity(apps.len());
    for (id, table) in apps {
        let Some(table) = table.as_table() else {
            return Err(invalid(format!("apps.{id}"), "must be a table"));
        };
        let mut table = table.clone();
        let mut endpoints = std::collections::BTreeMap::new();
        if let Some(e) = table.remove("endpoints") {
            let Some(e) = e.as_table() else {
                return Err(invalid(
                    format!("apps.{id}.endpoints"),
                    "must be a table of [apps.NAME.endpoints.ID] tables",
                ));
            };
            for (eid, body) in e {
                let Some(body) = body.as_table() else {
                    return Err(invalid(
                        format!("apps.{id}.endpoints.{eid}"),
                        "must be a table",
                    ));
                };
                endpoints.insert(
                    eid.clone(),
                    toml::to_string(body).expect("a TOML table serializes"),
                );
            }
        }
        out.push(AppTable {
            id: id.clone(),
            settings: toml::to_string(&table).expect("a TOML table serializes"),
            endpoints,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const QUEUE: &str = "http://127.0.0.1:5000/123456789012/billing";

    fn config() -> Config {
        Config::from_toml_str(
            "[app_defaults]\ntimeout_ms = 9000\n",
            Path::new("/srv"),
            Vec::<(String, String)>::new(),
        )
        .unwrap()
    }

    #[test]
    fn queue_keys_match_between_arns_and_urls_and_print_as_stored() {
        let k = QueueKey::from_arn("arn:aws:sqs:us-east-1:123456789012:billing").unwrap();
        assert_eq!(
            k,
            QueueKey::from_url("https://sqs.us-east-1.amazonaws.com/123456789012/billing").unwrap()
        );
        assert_eq!(k, QueueKey::from_url(QUEUE).unwrap());
        assert_eq!(
            k,
            QueueKey::from_arn("arn:aws-cn:sqs:cn-north-1:123456789012:billing").unwrap()
        );
        assert_ne!(
            k,
            QueueKey::from_arn("arn:aws:sqs:us-east-1:999999999999:billing").unwrap()
        );
        assert_eq!(
            QueueKey::from_arn("arn:aws:sns:us-east-1:123456789012:billing"),
            None
        );
        assert_eq!(QueueKey::from_arn("billing"), None);
        assert_eq!(QueueKey::from_url("http://127.0.0.1:5000/billing"), None);
        assert_eq!(QueueKey::from_url("not a url"), None);
        assert_eq!(k.to_string(), "123456789012/billing");
        assert_eq!(QueueKey::parse(&k.to_string()), Some(k));
        assert_eq!(QueueKey::parse("billing"), None);
        assert_eq!(QueueKey::parse("1/a/b"), None);
    }

    #[test]
    fn a_record_is_its_table_laid_over_the_deployments_defaults() {
        let c = config();
        let settings = format!(
            "queue_url = \"{QUEUE}\"\nsecrets = {{ default = \"ssm:/squall/billing/signing\" }}\n\
             [retry]\nmax_attempts = 3\n"
        );
        let r = AppRecord::new(&c, "billing", &settings).unwrap();
        assert_eq!(
            r.queue.as_ref().unwrap().to_string(),
            "123456789012/billing"
        );
        let app = r.app_config(&c).unwrap();
        assert_eq!(app.timeout_ms, 9000, "the deployment's app_defaults apply");
        assert_eq!(app.retry_limits.max_attempts, 3);
        assert_eq!(
            app.secret_ssm_names().collect::<Vec<_>>(),
            ["/squall/billing/signing"]
        );
    }

    #[test]
    fn a_bad_record_names_the_item_and_the_key() {
        let c = config();
        let r = AppRecord {
            id: "billing".into(),
            version: 7,
            tier: Tier::Dedicated,
            queue: None,
            left_shared_ms: None,
            settings: "secrets = { default = \"env:X\" }\n[retry]\nmax_attempts = 0\n".into(),
            endpoints: Default::default(),
        };
        let e = r.app_config(&c).unwrap_err().to_string();
        assert!(e.contains("registry item billing (version 7)"), "{e}");
        assert!(e.contains("apps.billing.retry.max_attempts"), "{e}");
        let e = AppRecord::new(
            &c,
            "billing",
            "bogus = 1\nsecrets = { default = \"env:X\" }",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("apps.billing") && e.contains("bogus"), "{e}");
        let e = AppRecord::new(&c, "billing", "secrets = { default = \"ssm:no//pe\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apps.billing.secrets.default[0]"), "{e}");
    }

    #[test]
    fn a_shared_record_has_no_queue_and_says_its_tier() {
        let c = config();
        let r = AppRecord::shared(&c, "tiny", "secrets = { default = \"env:X\" }\n").unwrap();
        assert_eq!((r.tier, r.queue.clone()), (Tier::Shared, None));
        let app = r.app_config(&c).unwrap();
        assert_eq!(app.tier, Tier::Shared);
        assert_eq!(app.queue_url, None);
        let e = AppRecord::shared(
            &c,
            "tiny",
            &format!("queue_url = \"{QUEUE}\"\nsecrets = {{ default = \"env:X\" }}\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("apps.tiny.queue_url") && e.contains("shared"),
            "{e}"
        );
        assert!(r.served_on_shared_queue(0));
        let mut d = AppRecord::new(&c, "big", "secrets = { default = \"env:X\" }\n").unwrap();
        assert_eq!(d.app_config(&c).unwrap().tier, Tier::Dedicated);
        assert!(!d.served_on_shared_queue(0));
        // Moved from the shared tier at 1,000: served there for 14 days, not after.
        d.left_shared_ms = Some(1_000);
        assert!(d.served_on_shared_queue(1_000 + SHARED_DRAIN_MS - 1));
        assert!(!d.served_on_shared_queue(1_000 + SHARED_DRAIN_MS));
    }

    #[test]
    fn app_tables_split_a_file_into_records() {
        let text = format!(
            "[sqs]\nregion = \"x\"\n[apps.billing]\nqueue_url = \"{QUEUE}\"\n\
             secrets = {{ default = \"env:B\" }}\n[apps.billing.retry]\nmax_attempts = 4\n\
             [apps.billing.endpoints.E]\nurl = \"https://hooks.example.com/in\"\n\
             [apps.crm]\nsecrets = {{ default = \"env:C\" }}\n"
        );
        let tables = app_tables(&text, "f.toml").unwrap();
        assert_eq!(
            tables.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["billing", "crm"]
        );
        let c = config();
        let mut r = AppRecord::new(&c, "billing", &tables[0].settings).unwrap();
        assert_eq!(r.app_config(&c).unwrap().retry_limits.max_attempts, 4);
        // Endpoints come apart from the settings and are read back as the engine reads them.
        assert!(!tables[0].settings.contains("endpoints"));
        r.endpoints = tables[0].endpoints.clone();
        let app = r.app_config(&c).unwrap();
        assert_eq!(
            app.endpoints.get("E").unwrap().url,
            "https://hooks.example.com/in"
        );
        // Settings text holding endpoints is refused: they are kept apart.
        let e = AppRecord::new(
            &c,
            "billing",
            "[endpoints.E]\nurl = \"https://x.example\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("apps.billing.endpoints") && e.contains("squall endpoints"),
            "{e}"
        );
        assert!(app_tables("[apps]\nx = 1\n", "f").is_err());
    }
}
