//! `cargo xtask test`: installs what the suite needs, then runs it.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet built")
}
