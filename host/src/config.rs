//! The configuration as the engine loads it: the model, defaults and validation are
//! `squall_core::config` (re-exported here); this module reads what the core may not: the file,
//! the process's `SQUALL__` environment, `env:` secrets, and whether plugin files exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use squall_core::config::*;

use crate::secrets::Secrets;

/// Load the defaults, the file at `path` (if any) and the process environment, and check that
/// every plugin file exists.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(path, process_env()?)
}

/// [`load`] with an explicit environment (tests, or a caller that filtered it).
pub fn load_with_env(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let config = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                path: p.to_path_buf(),
                message: e.to_string(),
            })?;
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            // Absolute, so plugin paths and messages do not depend on the working directory.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            Config::from_file(p, &text, &dir, env)?
        }
        None => Config::from_toml_str("", Path::new("."), env)?,
    };
    config.check_plugin_files(&|p| p.is_file())?;
    Ok(config)
}

/// [`Config::from_toml_str`] (demos, tests), then the plugin files checked on disk.
pub fn from_toml_str(
    text: &str,
    base_dir: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let config = Config::from_toml_str(text, base_dir, env)?;
    config.check_plugin_files(&|p| p.is_file())?;
    Ok(config)
}

/// Every application's secrets from the process environment, keyed by application id.
pub fn resolve_secrets(config: &Config) -> Result<BTreeMap<String, Arc<Secrets>>, ConfigError> {
    config.resolve_secrets_with(&|name| std::env::var(name).ok())
}

/// The process's `SQUALL__` variables.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if !k.starts_with(ENV_PREFIX) {
            continue;
        }
        let v = v.into_string().map_err(|_| ConfigError::Env {
            var: k.to_string(),
            message: "value is not valid UTF-8".into(),
        })?;
        out.push((k.to_string(), v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a directory with the example config and stand-in plugin files, and loads it.
    #[test]
    fn the_example_config_loads() {
        let dir = std::env::temp_dir().join(format!("squall-config-test-{}", std::process::id()));
        let examples = dir.join("examples");
        std::fs::create_dir_all(&examples).unwrap();
        let text = include_str!("../../examples/squall.toml");
        std::fs::write(examples.join("squall.toml"), text).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("path = \"") {
                let p = examples.join(rest.trim_end_matches('"'));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, b"").unwrap();
            }
        }
        let c = load_with_env(Some(&examples.join("squall.toml")), Vec::new());
        std::fs::remove_dir_all(&dir).unwrap();
        let c = c.unwrap();
        assert_eq!(c.apps.len(), 2, "{c:?}");
        c.require_queues().unwrap();
        let with_plugins = c
            .apps
            .iter()
            .find(|a| a.plugins.transform.is_some())
            .expect("an app with a transform plugin");
        let t = with_plugins.plugins.transform.as_ref().unwrap();
        assert!(t.path.is_absolute() || t.path.starts_with(&dir));
        assert!(!t.config.is_empty());
    }

    #[test]
    fn a_missing_plugin_file_is_refused_with_its_key() {
        let text = "[apps.a]\nsecrets = { default = \"env:X\" }\n[apps.a.plugins.transform]\npath = \"no/such.wasm\"";
        let e = from_toml_str(text, Path::new("."), Vec::new())
            .unwrap_err()
            .to_string();
        for part in [
            "apps.a.plugins.transform.path",
            "plugin file not found",
            "no/such.wasm",
        ] {
            assert!(e.contains(part), "{e}");
        }
        // The core alone does not look at the file system.
        Config::from_toml_str(text, Path::new("."), Vec::new()).unwrap();
    }
}
