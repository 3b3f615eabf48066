//! The `tollgate` command line. Errors end here as anyhow reports.

use clap::Parser;

fn main() {
    let cli = tollgate::cli::Cli::parse();
    tollgate::telemetry::init_logging();
    if let Err(e) = tollgate::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
