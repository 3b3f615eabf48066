//! The `tollgate` command line. Errors end here as anyhow reports.

use clap::Parser;

/// jemalloc, configured in `tollgate::alloc` (why: see there).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = tollgate::cli::Cli::parse();
    tollgate::telemetry::init_logging();
    if let Err(e) = tollgate::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
