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
    /// The plain release build instead of the profile-guided one (half the build time).
    #[arg(long)]
    plain: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root()?;
    match engine() {
        Ok(engine) => build(&root, engine, &args.tag, !args.plain),
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

/// Builds the image as `tag`; `pgo` chooses the profile-guided agent (the Dockerfile's `PGO`).
pub fn build(root: &Path, engine: &str, tag: &str, pgo: bool) -> anyhow::Result<()> {
    let arg = build_arg(pgo);
    println!("xtask image: {engine} build --build-arg {arg} -t {tag} .");
    let status = Command::new(engine)
        .current_dir(root)
        .args(["build", "--build-arg", &arg, "-t", tag, "."])
        .env("DOCKER_BUILDKIT", "1")
        .stdin(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "{engine} build failed ({status})");
    Ok(())
}

fn build_arg(pgo: bool) -> String {
    format!("PGO={}", u8::from(pgo))
}

#[cfg(test)]
mod tests {
    /// The Dockerfile reads `PGO` as 1 or 0; the flag must map onto exactly those.
    #[test]
    fn the_build_arg_is_what_the_dockerfile_tests() {
        assert_eq!(super::build_arg(true), "PGO=1");
        assert_eq!(super::build_arg(false), "PGO=0");
        let dockerfile = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"),
        )
        .expect("the Dockerfile");
        assert!(
            dockerfile.contains("ARG PGO=1"),
            "the default is the profiled build"
        );
        assert!(dockerfile.contains(r#"if [ "$PGO" = 1 ]"#));
    }
}
