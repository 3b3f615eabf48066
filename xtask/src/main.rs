//! Project helpers: `cargo xtask <command>`. One module and one variant per subcommand.

mod bench;
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
    /// Run the end-to-end load harness and write a markdown table under benches/results/.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
