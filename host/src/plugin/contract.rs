//! Load-time checks of a component against the WIT contract: which hooks it exports,
//! which WIT version it was built for, and whether every import is one the host offers.
//! Everything is decided from the component's type, before any instance exists.

use std::fmt;
use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

/// WIT package versions of `squall:plugin` this host links, newest first (`wit/README.md`:
/// a released version is frozen and stays supported).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.2.0", "0.1.0"];
const PACKAGE: &str = "squall:plugin/";

/// One of the three hooks a plugin can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `squall:plugin/transform`.
    Transform,
    /// `squall:plugin/signer`.
    Signer,
    /// `squall:plugin/retry-policy`.
    RetryPolicy,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 3] = [Hook::Transform, Hook::Signer, Hook::RetryPolicy];

    /// The WIT interface name, without package or version.
    pub fn interface(self) -> &'static str {
        match self {
            Hook::Transform => "transform",
            Hook::Signer => "signer",
            Hook::RetryPolicy => "retry-policy",
        }
    }

    /// The fully qualified export name of this hook in WIT version `version`.
    pub fn export_name(self, version: &str) -> String {
        format!("{PACKAGE}{}@{version}", self.interface())
    }

    /// Every export name this host accepts for the hook, newest first, joined by "or".
    pub fn export_names(self) -> String {
        let names: Vec<String> = SUPPORTED_VERSIONS
            .iter()
            .map(|v| self.export_name(v))
            .collect();
        names.join(" or ")
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// What a component offers and needs, as read from its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// Every import name, for example `squall:plugin/host@0.1.0` or `wasi:io/streams@0.2.6`.
    pub imports: Vec<String>,
    /// Every export name.
    pub exports: Vec<String>,
    /// The hooks it exports in a supported version.
    pub hooks: Vec<Hook>,
    /// The `squall:plugin` versions it references.
    pub wit_versions: Vec<String>,
}

/// Read a component's imports and exports and check them against the contract:
/// every `squall:plugin` item must be of a supported version, and every import must be
/// `squall:plugin/host`, `squall:plugin/types` or a WASI interface.
pub fn inspect(
    engine: &Engine,
    component: &Component,
    path: &Path,
) -> Result<ComponentInfo, PluginError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let mut wit_versions = Vec::new();
    for name in imports.iter().chain(&exports) {
        if let Some((_, version)) = split_squall(name) {
            let version = version.unwrap_or("").to_string();
            if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
                return Err(PluginError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    item: name.clone(),
                    supported: SUPPORTED_VERSIONS.join(", "),
                });
            }
            if !wit_versions.contains(&version) {
                wit_versions.push(version);
            }
        }
    }
    for name in &imports {
        let known = match split_squall(name) {
            Some((iface, _)) => matches!(iface, "host" | "types"),
            None => name.starts_with("wasi:"),
        };
        if !known {
            return Err(PluginError::UnknownImport {
                path: path.to_path_buf(),
                import: name.clone(),
            });
        }
    }
    let mut info = ComponentInfo {
        imports,
        exports,
        hooks: Vec::new(),
        wit_versions,
    };
    info.hooks = Hook::ALL
        .into_iter()
        .filter(|h| info.hook_version(*h).is_some())
        .collect();
    Ok(info)
}

impl ComponentInfo {
    /// The newest supported WIT version in which the component exports `hook`, if any.
    pub fn hook_version(&self, hook: Hook) -> Option<&'static str> {
        SUPPORTED_VERSIONS
            .iter()
            .copied()
            .find(|v| self.exports.contains(&hook.export_name(v)))
    }
}

/// Fail with a [`PluginError::MissingExport`] naming the hook when it is not exported.
pub fn require(info: &ComponentInfo, hook: Hook, path: &Path) -> Result<(), PluginError> {
    if info.hooks.contains(&hook) {
        return Ok(());
    }
    Err(PluginError::MissingExport {
        path: path.to_path_buf(),
        export: hook.export_names(),
        found: if info.exports.is_empty() {
            "nothing".to_string()
        } else {
            info.exports.join(", ")
        },
    })
}

/// `squall:plugin/<iface>@<version>` -> (iface, version).
fn split_squall(name: &str) -> Option<(&str, Option<&str>)> {
    let rest = name.strip_prefix(PACKAGE)?;
    Some(match rest.split_once('@') {
        Some((iface, version)) => (iface, Some(version)),
        None => (rest, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split() {
        assert_eq!(
            split_squall("squall:plugin/host@0.1.0"),
            Some(("host", Some("0.1.0")))
        );
        assert_eq!(split_squall("squall:plugin/host"), Some(("host", None)));
        assert_eq!(split_squall("wasi:io/streams@0.2.0"), None);
        assert_eq!(
            Hook::RetryPolicy.export_name("0.1.0"),
            "squall:plugin/retry-policy@0.1.0"
        );
        assert_eq!(
            Hook::Signer.export_names(),
            "squall:plugin/signer@0.3.0 or squall:plugin/signer@0.2.0 or squall:plugin/signer@0.1.0"
        );
    }
}
