//! Project helpers: `cargo xtask <command>`. One module and one variant per subcommand.

mod bench;
mod demo;
mod fuzz;
mod image;
mod pgo;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Tollgate build, test and bench helpers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the tests need (when missing) and run the whole test suite.
    Test(test::Args),
    /// Build release binaries and run `tollgate demo` (two simulator replicas + the agent).
    Demo(demo::Args),
    /// Run the end-to-end load harness and write a markdown table under benches/results/.
    Bench(bench::Args),
    /// Fuzz the agent's parsers with cargo-fuzz and write a markdown table under benches/results/.
    Fuzz(fuzz::Args),
    /// Build the agent with profile-guided optimisation (trained on the bench's load) into target/pgo/.
    Pgo(pgo::Args),
    /// Build the container image (docker or podman; says why not where no engine runs).
    Image(image::Args),
    /// Mixed traffic for 30 min while the agent is SIGKILLed and restarted; checks the ledger, RSS, fds.
    Soak(soak::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Image(args) => image::run(args),
        Command::Pgo(args) => pgo::run(args),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("xtask has no parent directory"))
}
