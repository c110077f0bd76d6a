//! `livefeed-sandbox`: a fake Bitrix24 portal and a fake Slack workspace on 127.0.0.1, seeded
//! for a demo, plus a bridge config that points at them. Run the bridge with that config in a
//! second terminal and follow the printed `curl` lines.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "livefeed-sandbox",
    version,
    about = "Fake Bitrix24 portal and Slack workspace for trying livefeed-bridge without accounts"
)]
struct Cli {
    /// Where to write the generated bridge config.
    #[arg(long, default_value = "./sandbox.bridge.yaml")]
    write_config: PathBuf,
    /// Port of the fake Bitrix24 portal (the fake Slack workspace picks free ports).
    #[arg(long, default_value_t = 18024)]
    port: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    livefeed_sandbox::demo::run(&cli.write_config, cli.port).await
}
