//! Layering and provenance: the defaults, the user's file and the `SQUALL__` environment
//! merged into one TOML table, remembering where each key came from so that errors name it.

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::{ConfigError, ENV_PREFIX};

/// Where each value came from, to name it in errors.
pub(super) struct Origins {
    pub(super) file: String,
    /// Key paths set by environment variables, with the variable.
    pub(super) env: Vec<(String, String)>,
}

impl Origins {
    pub(super) fn of(&self, key: &str) -> String {
        for (path, var) in &self.env {
            let hit = key == path
                || key.starts_with(&format!("{path}."))
                || key.starts_with(&format!("{path}["))
                || path.starts_with(&format!("{key}."));
            if hit {
                return format!("environment variable {var}");
            }
        }
        self.file.clone()
    }

    pub(super) fn invalid(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            origin: self.of(&key),
            key,
            message: message.into(),
        }
    }
}

/// Lay `over` onto `base`: tables merge key by key, anything else replaces.
pub(super) fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Normalise a key as environment variable names spell it.
pub(super) fn env_form(key: &str) -> String {
    key.to_ascii_uppercase().replace('-', "_")
}

/// Apply `SQUALL__A__B=value` to the table. Returns the dotted key path set.
pub(super) fn apply_env(root: &mut Table, var: &str, raw: &str) -> Result<String, ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let rest = &var[ENV_PREFIX.len()..];
    let segments: Vec<&str> = rest.split("__").collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(env_err(
            "empty key segment (use SQUALL__SECTION__KEY, double underscores between levels)"
                .into(),
        ));
    }
    let value = parse_env_value(raw);
    let mut table = root;
    let mut path = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        // Match an existing key the way env var names spell it (BILLING_EU matches billing-eu).
        let key = table
            .keys()
            .find(|k| env_form(k) == seg.to_ascii_uppercase())
            .cloned()
            .unwrap_or_else(|| seg.to_ascii_lowercase());
        path.push(key.clone());
        if i + 1 == segments.len() {
            table.insert(key, value);
            break;
        }
        let entry = table
            .entry(key)
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(t) => table = t,
            _ => {
                return Err(env_err(format!(
                    "{} is a value, not a table: cannot set a key inside it",
                    path.join(".")
                )));
            }
        }
    }
    Ok(path.join("."))
}

/// A TOML value if the text parses as one, else the text as a string.
pub(super) fn parse_env_value(raw: &str) -> Value {
    if let Ok(mut t) = format!("v = {raw}").parse::<Table>()
        && t.len() == 1
        && let Some(v) = t.remove("v")
    {
        return v;
    }
    Value::String(raw.to_string())
}

pub(super) fn parse_table(text: &str, origin: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Deserialize `value` as `T`, naming the key path (`prefix` + the path inside) on error.
pub(super) fn typed<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    origins: &Origins,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let key = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => "(top level)".to_string(),
            (true, _) => inner,
            (false, ".") => prefix.to_string(),
            (false, _) => format!("{prefix}.{inner}"),
        };
        // toml appends "in `key`" lines; the key path is already in front.
        let message = e.into_inner().to_string();
        let message: Vec<&str> = message
            .lines()
            .filter(|l| !l.trim_start().starts_with("in `"))
            .collect();
        origins.invalid(key, message.join(" "))
    })
}
