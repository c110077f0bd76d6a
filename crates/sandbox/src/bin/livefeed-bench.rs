//! `livefeed-bench`: the performance harness (docs/performance.md). Drives the release
//! `livefeed-bridge` binary against the fakes and prints one table, also written as JSON.
//!
//! ```sh
//! cargo build --release --locked --workspace --bins && target/release/livefeed-bench  # all
//! target/release/livefeed-bench --only idle --smoke                         # one, short
//! ```
//!
//! With `MATRIX_HOMESERVER` and `MATRIX_ADMIN_TOKEN` set (the lines `scripts/synapse.sh start`
//! prints), the catch-up also mirrors into an encrypted room on that Synapse.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use livefeed_sandbox::bench::{self, Report};

#[derive(Parser)]
#[command(
    name = "livefeed-bench",
    version,
    about = "Performance harness for livefeed-bridge"
)]
struct Cli {
    /// Run only this scenario (idle, catch-up, latency, scale).
    #[arg(long)]
    only: Option<String>,
    /// Short runs that prove the harness works, not figures to quote (CI).
    #[arg(long)]
    smoke: bool,
    /// Idle: how much faster simulated time runs (intervals are divided by it).
    #[arg(long, default_value_t = 20)]
    idle_scale: u32,
    /// Idle: real seconds counted per intake mode.
    #[arg(long, default_value_t = 180)]
    idle_seconds: u64,
    /// Catch-up: posts in the backlog (two replies each come back).
    #[arg(long, default_value_t = 2000)]
    catchup_posts: usize,
    /// Catch-up: how many times faster the platforms' limits (and the bridge's pacing) run.
    #[arg(long, default_value_t = 20)]
    scale: u32,
    /// Latency: posts measured.
    #[arg(long, default_value_t = 1000)]
    latency_posts: usize,
    /// Scale: mapped posts in the store.
    #[arg(long, default_value_t = 100_000)]
    scale_posts: usize,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let wants = |name: &str| cli.only.as_deref().is_none_or(|o| o == name);
    let mut report = Report::default();
    if wants("idle") {
        // One simulated hour per mode by default (intervals ÷ 20, counted over 180 s). A
        // larger scale is quicker but overweights each request's own latency.
        let seconds = if cli.smoke { 3 } else { cli.idle_seconds };
        bench::idle::run(&mut report, cli.idle_scale, seconds).await;
    }
    if wants("catch-up") {
        let posts = if cli.smoke { 40 } else { cli.catchup_posts };
        bench::catchup::run(&mut report, posts, cli.scale).await;
    }
    if wants("scale") {
        let posts = if cli.smoke { 300 } else { cli.scale_posts };
        bench::scale::run(&mut report, posts).await;
    }
    if wants("latency") {
        let posts = if cli.smoke { 20 } else { cli.latency_posts };
        bench::latency::run(&mut report, posts).await;
    }
    print!("{}", report.table());
    if let Err(e) = report.write_json(&cli.json) {
        eprintln!("error: cannot write {}: {e}", cli.json.display());
        return ExitCode::FAILURE;
    }
    println!("figures written to {}", cli.json.display());
    ExitCode::SUCCESS
}
