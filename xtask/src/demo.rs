//! `cargo xtask demo`: builds the agent and the simulator (release) and runs `tollgate demo`,
//! passing any further arguments through (e.g. `-- --listen 127.0.0.1:4100`).

use std::process::Command;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for `tollgate demo`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root()?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--release", "-p", "tollgate", "-p", "tollgate-sim"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let bin = root.join("target/release/tollgate");
    let status = Command::new(&bin)
        .arg("demo")
        .args(&args.rest)
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("tollgate demo exited with {status}");
    }
    Ok(())
}
