//! `squall run` (to be written).

/// Arguments of `squall run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

pub fn main(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("squall run is not implemented yet")
}
