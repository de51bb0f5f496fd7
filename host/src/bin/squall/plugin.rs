//! `squall plugin ...` (to be written).

/// Plugin subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Validate a plugin's exports, imports and WIT version.
    Check {
        /// Path to the component (.wasm).
        path: std::path::PathBuf,
    },
}

pub fn main(_cmd: PluginCommand) -> anyhow::Result<()> {
    anyhow::bail!("squall plugin is not implemented yet")
}
