//! `cargo xtask bench`: the end-to-end load harness.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet built")
}
