//! `squall demo` (to be written).

/// Arguments of `squall demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn main(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("squall demo is not implemented yet")
}
