//! `cargo xtask image`: builds the container image from the `Dockerfile` with docker or podman,
//! whichever has a running engine. Where none does (a docker client without a daemon, as on
//! the CI machines), it says so and fails; `cargo xtask test` skips its image step instead.

use std::path::Path;
use std::process::{Command, Stdio};

#[derive(clap::Args)]
pub struct Args {
    /// The image tag.
    #[arg(long, default_value = "tollgate:dev")]
    tag: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root()?;
    match engine() {
        Ok(engine) => build(&root, engine, &args.tag),
        Err(why) => anyhow::bail!("no container image built: {why}"),
    }
}

/// A container tool whose engine answers, or why there is none.
pub fn engine() -> Result<&'static str, String> {
    let mut reasons = Vec::new();
    for tool in ["docker", "podman"] {
        match Command::new(tool)
            .arg("info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) if o.status.success() => return Ok(tool),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                reasons.push(format!(
                    "`{tool} info` failed ({}): {}",
                    o.status,
                    first.trim()
                ));
            }
            Err(_) => reasons.push(format!("{tool} is not installed")),
        }
    }
    Err(reasons.join("; "))
}

pub fn build(root: &Path, engine: &str, tag: &str) -> anyhow::Result<()> {
    println!("xtask image: {engine} build -t {tag} .");
    let status = Command::new(engine)
        .current_dir(root)
        .args(["build", "-t", tag, "."])
        .env("DOCKER_BUILDKIT", "1")
        .stdin(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{engine} build failed ({status})");
    Ok(())
}
