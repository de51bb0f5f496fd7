//! `squall rollout`: put a new deployment zip on every Squall function, then move an alias.
//!
//! Per function, in order: UpdateFunctionCode (the zip), wait until `LastUpdateStatus` is
//! `Successful` (a `Failed` update stops with Lambda's reason), PublishVersion, then
//! UpdateAlias to that version (CreateAlias if the alias does not exist yet). Functions are
//! found by name prefix or by a tag `key=value` ([`select`], a pure function over the listing).
//! Rollout never invokes a function. A failure stops at that function: the ones before it are
//! on the new version, the ones after it untouched, and the report says which.

use std::collections::BTreeMap;
use std::time::Duration;

pub use aws_sdk_lambda as sdk;
use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::LastUpdateStatus;
use serde::Serialize;

use crate::queue::sqs::SqsSettings;

/// Why a rollout step failed, naming the function.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A Lambda API call failed.
    #[error("function {function}: {operation} failed: {message}")]
    Api {
        /// Function name (or `*` for the listing).
        function: String,
        /// Lambda operation.
        operation: &'static str,
        /// Code and message from the service, or the transport error.
        message: String,
    },
    /// The code update ended in `Failed`.
    #[error("function {function}: code update failed: {reason}")]
    UpdateFailed {
        /// Function name.
        function: String,
        /// Lambda's LastUpdateStatusReason.
        reason: String,
    },
    /// The code update did not finish in time.
    #[error("function {function}: code update still {status} after {secs} s")]
    Timeout {
        /// Function name.
        function: String,
        /// Last status seen.
        status: String,
        /// Seconds waited.
        secs: u64,
    },
}

fn api<E: ProvideErrorMetadata + std::fmt::Display>(
    function: &str,
    operation: &'static str,
    e: E,
) -> RolloutError {
    let message = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => e.to_string(),
    };
    RolloutError::Api {
        function: function.to_string(),
        operation,
        message,
    }
}

/// Which functions to roll out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Function names starting with this.
    Prefix(String),
    /// Functions tagged `key=value`.
    Tag(String, String),
}

impl Selector {
    /// Parse `k=v` for `--tag`.
    pub fn tag(s: &str) -> Result<Selector, String> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(Selector::Tag(k.to_string(), v.to_string())),
            _ => Err(format!("--tag {s:?}: expected KEY=VALUE")),
        }
    }
}

/// A function as listed: name and tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listed {
    /// Function name.
    pub name: String,
    /// ARN.
    pub arn: String,
    /// Tags (only fetched when selecting by tag).
    pub tags: BTreeMap<String, String>,
}

/// The functions a selector picks, sorted by name.
pub fn select(functions: &[Listed], selector: &Selector) -> Vec<String> {
    let mut out: Vec<String> = functions
        .iter()
        .filter(|f| match selector {
            Selector::Prefix(p) => f.name.starts_with(p.as_str()),
            Selector::Tag(k, v) => f.tags.get(k) == Some(v),
        })
        .map(|f| f.name.clone())
        .collect();
    out.sort();
    out
}

/// The Lambda client, built like the SQS client (rustls + ring, region, endpoint override,
/// optional static credentials).
pub async fn connect(settings: &SqsSettings) -> Client {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if !settings.region.is_empty() {
        loader = loader.region(aws_config::Region::new(settings.region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some((id, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "squall-static",
        ));
    }
    Client::new(&loader.load().await)
}

/// Every function of the account/region, with tags when `with_tags`.
pub async fn list(client: &Client, with_tags: bool) -> Result<Vec<Listed>, RolloutError> {
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_functions()
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| api("*", "ListFunctions", e.into_service_error()))?;
        for f in page.functions() {
            out.push(Listed {
                name: f.function_name().unwrap_or_default().to_string(),
                arn: f.function_arn().unwrap_or_default().to_string(),
                tags: BTreeMap::new(),
            });
        }
        marker = page.next_marker().map(str::to_string);
        if marker.is_none() {
            break;
        }
    }
    if with_tags {
        for f in &mut out {
            let t = client
                .list_tags()
                .resource(&f.arn)
                .send()
                .await
                .map_err(|e| api(&f.name, "ListTags", e.into_service_error()))?;
            f.tags = t.tags().cloned().unwrap_or_default().into_iter().collect();
        }
    }
    Ok(out)
}

/// What happened to one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rolled {
    /// Function name.
    pub function: String,
    /// The version published (`None` in a dry run).
    pub version: Option<String>,
    /// The alias's version before (`None`: it did not exist).
    pub previous: Option<String>,
    /// SHA-256 of the new code, as Lambda reports it.
    pub code_sha256: Option<String>,
}

/// The version an alias points to, if the alias exists.
pub async fn alias_version(
    client: &Client,
    function: &str,
    alias: &str,
) -> Result<Option<String>, RolloutError> {
    match client
        .get_alias()
        .function_name(function)
        .name(alias)
        .send()
        .await
    {
        Ok(a) => Ok(a.function_version().map(str::to_string)),
        Err(e) => {
            let e = e.into_service_error();
            if e.is_resource_not_found_exception() {
                Ok(None)
            } else {
                Err(api(function, "GetAlias", e))
            }
        }
    }
}

/// Roll out `zip` to one function and point `alias` at the new version.
pub async fn roll_one(
    client: &Client,
    function: &str,
    zip: &[u8],
    alias: &str,
    wait_max: Duration,
) -> Result<Rolled, RolloutError> {
    let previous = alias_version(client, function, alias).await?;
    let updated = client
        .update_function_code()
        .function_name(function)
        .zip_file(Blob::new(zip.to_vec()))
        .send()
        .await
        .map_err(|e| api(function, "UpdateFunctionCode", e.into_service_error()))?;
    let started = tokio::time::Instant::now();
    let mut status = updated.last_update_status().cloned();
    loop {
        match &status {
            Some(LastUpdateStatus::Successful) | None => break,
            Some(LastUpdateStatus::Failed) => {
                let c = client
                    .get_function_configuration()
                    .function_name(function)
                    .send()
                    .await
                    .map_err(|e| {
                        api(function, "GetFunctionConfiguration", e.into_service_error())
                    })?;
                return Err(RolloutError::UpdateFailed {
                    function: function.to_string(),
                    reason: c
                        .last_update_status_reason()
                        .unwrap_or("(no reason given)")
                        .to_string(),
                });
            }
            Some(other) => {
                if started.elapsed() > wait_max {
                    return Err(RolloutError::Timeout {
                        function: function.to_string(),
                        status: other.as_str().to_string(),
                        secs: wait_max.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                status = client
                    .get_function_configuration()
                    .function_name(function)
                    .send()
                    .await
                    .map_err(|e| api(function, "GetFunctionConfiguration", e.into_service_error()))?
                    .last_update_status()
                    .cloned();
            }
        }
    }
    let published = client
        .publish_version()
        .function_name(function)
        .set_code_sha256(updated.code_sha256().map(str::to_string))
        .send()
        .await
        .map_err(|e| api(function, "PublishVersion", e.into_service_error()))?;
    let version = published.version().unwrap_or("$LATEST").to_string();
    if previous.is_some() {
        client
            .update_alias()
            .function_name(function)
            .name(alias)
            .function_version(&version)
            .send()
            .await
            .map_err(|e| api(function, "UpdateAlias", e.into_service_error()))?;
    } else {
        client
            .create_alias()
            .function_name(function)
            .name(alias)
            .function_version(&version)
            .send()
            .await
            .map_err(|e| api(function, "CreateAlias", e.into_service_error()))?;
    }
    Ok(Rolled {
        function: function.to_string(),
        version: Some(version),
        previous,
        code_sha256: published.code_sha256().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_prefix_or_tag() {
        let f = |name: &str, tags: &[(&str, &str)]| Listed {
            name: name.into(),
            arn: format!("arn:{name}"),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let fns = [
            f("squall-prod-b", &[("app", "squall")]),
            f("squall-prod-a", &[("app", "squall"), ("env", "prod")]),
            f("other", &[("app", "other")]),
            f("xsquall-prod", &[]),
        ];
        assert_eq!(
            select(&fns, &Selector::Prefix("squall-prod".into())),
            ["squall-prod-a", "squall-prod-b"]
        );
        assert_eq!(
            select(&fns, &Selector::tag("env=prod").unwrap()),
            ["squall-prod-a"]
        );
        assert_eq!(select(&fns, &Selector::tag("app=squall").unwrap()).len(), 2);
        assert!(select(&fns, &Selector::tag("app=").unwrap()).is_empty());
        assert!(Selector::tag("novalue").is_err());
        assert!(Selector::tag("=x").is_err());
    }
}
