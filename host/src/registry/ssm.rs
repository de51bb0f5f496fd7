//! Secrets of registry applications: `ssm:NAME` references read from SSM Parameter Store
//! (SecureString parameters, decrypted), `env:NAME` references from the environment.
//!
//! An application's `ssm:` references are read together: one `GetParameters` call for up to
//! ten names (the API's limit), so an application's first event costs one secret read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_ssm::Client;
use sha2::{Digest, Sha256};

use super::dynamo::store_err;
use super::{ReadCounts, RegistryError};
use crate::config::AppConfig;
use crate::secrets::Secrets;

/// GetParameters takes at most this many names.
const PER_CALL: usize = 10;

/// The secret store.
#[derive(Debug, Clone)]
pub struct SecretStore {
    client: Client,
}

/// An application's secrets, resolved, and a digest of their values (to tell a rotation from
/// an unchanged read without keeping or comparing the values themselves).
pub struct Resolved {
    /// The secrets.
    pub secrets: Arc<Secrets>,
    /// SHA-256 over the references and values, in key order.
    pub digest: [u8; 32],
}

impl SecretStore {
    /// Parameters through `client`.
    pub fn new(client: Client) -> SecretStore {
        SecretStore { client }
    }

    /// The client (tests put parameters with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Read `app`'s secrets: its `ssm:` parameters (decrypted) and its `env:` variables.
    /// A missing parameter or variable is a configuration error naming the key and the name.
    pub async fn resolve(
        &self,
        app: &AppConfig,
        reads: &ReadCounts,
    ) -> Result<Resolved, RegistryError> {
        let mut names: Vec<&str> = app.secret_ssm_names().collect();
        names.sort_unstable();
        names.dedup();
        let mut values: HashMap<String, String> = HashMap::new();
        for chunk in names.chunks(PER_CALL) {
            reads.secret_read();
            let out = self
                .client
                .get_parameters()
                .set_names(Some(chunk.iter().map(|n| n.to_string()).collect()))
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| store_err("GetParameters", chunk[0], e))?;
            for p in out.parameters.unwrap_or_default() {
                if let (Some(name), Some(value)) = (p.name, p.value) {
                    values.insert(name, value);
                }
            }
        }
        let env = |var: &str| std::env::var(var).ok();
        let secrets = app.resolve_secrets_from(&env, &|name| values.get(name).cloned())?;
        // The digest covers what the secrets were made of, in a fixed order.
        let mut h = Sha256::new();
        let mut inputs: BTreeMap<String, String> = BTreeMap::new();
        for refs in app.secrets.values() {
            for r in refs {
                let v = match r {
                    crate::config::SecretRef::Env(var) => env(var),
                    crate::config::SecretRef::Ssm(name) => values.get(name).cloned(),
                    crate::config::SecretRef::Literal(v) => Some(v.clone()),
                };
                inputs.insert(format!("{r:?}"), v.unwrap_or_default());
            }
        }
        for (k, v) in &inputs {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        Ok(Resolved {
            secrets: Arc::new(secrets),
            digest: h.finalize().into(),
        })
    }
}
