//! `squall keys ...`: Standard Webhooks asymmetric signing keys (`v1a`, ed25519). `generate`
//! makes a key pair; `public` prints the public keys (`whpk_...`) of an application's signing
//! key, read from the secret store as the engine reads it, for subscribers to pin.

use std::path::PathBuf;

use anyhow::Context;
use squall::secrets::SecretKey;

/// `squall keys`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a new ed25519 signing key: `whsk_...` (a secret: put it in the secret store and
    /// name it in the application's `secrets`) and its public key `whpk_...` (for the
    /// subscriber). Nothing is stored.
    Generate {
        /// One JSON object instead of two lines.
        #[arg(long)]
        json: bool,
    },
    /// The public keys (`whpk_...`) of an application's signing key, newest first: what its
    /// subscribers pin to verify `v1a` signatures. HMAC secrets (`whsec_`) have none.
    Public {
        /// The deployment's Squall config.
        #[arg(long, env = "SQUALL_CONFIG", default_value = "squall.toml")]
        config: PathBuf,
        /// The application.
        #[arg(long)]
        app: String,
        /// The key name in the application's `secrets` (default: its `signing_key`).
        #[arg(long)]
        key: Option<String>,
    },
}

pub fn main(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { json } => {
            let (secret, public) = SecretKey::generate_ed25519();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"signing_key": secret, "public_key": public})
                );
            } else {
                println!("signing key (secret: store it, e.g. an SSM SecureString): {secret}");
                println!("public key (give it to the subscriber):                  {public}");
            }
            Ok(())
        }
        KeysCommand::Public { config, app, key } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(public(config, app, key))
        }
    }
}

async fn public(path: PathBuf, app_id: String, key: Option<String>) -> anyhow::Result<()> {
    let config = squall::config::load(Some(&path))
        .with_context(|| format!("loading config {}", path.display()))?;
    let config = squall::registry::with_registered_apps(config).await?;
    let app = config
        .app(&app_id)
        .ok_or_else(|| anyhow::anyhow!("no application {app_id} in {}", path.display()))?;
    let settings = squall::registry::aws_settings(&config);
    let sdk = squall::queue::sqs::sdk_config(&settings).await;
    let store = squall::registry::SecretStore::new(aws_sdk_ssm::Client::new(&sdk));
    let resolved = store
        .resolve(app, &squall::registry::ReadCounts::default())
        .await?;
    let name = key.unwrap_or_else(|| app.signing_key.to_string());
    let keys = resolved.secrets.get(&name).ok_or_else(|| {
        anyhow::anyhow!("application {app_id} has no secret named {name:?} (its `secrets` table)")
    })?;
    for (i, k) in keys.iter().enumerate() {
        match k.public_key() {
            Some(public) => println!("{app_id} {name} [{i}] v1a {public}"),
            None => println!(
                "{app_id} {name} [{i}] v1  (an HMAC secret: no public key; subscribers verify with the shared secret)"
            ),
        }
    }
    Ok(())
}
