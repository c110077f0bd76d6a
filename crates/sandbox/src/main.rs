//! `livefeed-sandbox`: a fake Bitrix24 portal and a fake Slack workspace on 127.0.0.1, seeded
//! for a demo, plus a bridge config that points at them. Run the bridge with that config in a
//! second terminal and follow the printed `curl` lines.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use livefeed_sandbox::demo;

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
    /// Address the fakes listen on: 0.0.0.0 in a container, so published ports reach them.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Port of the fake Bitrix24 portal.
    #[arg(long, default_value_t = 18024)]
    port: u16,
    /// Port of the fake Slack Web API (its Socket Mode server takes a free port).
    #[arg(long, default_value_t = 18025)]
    slack_port: u16,
    /// `store.path` in the generated config.
    #[arg(long, default_value = "./sandbox-data")]
    store_path: String,
    /// `http.listen` in the generated config.
    #[arg(long, default_value = "127.0.0.1:18080")]
    bridge_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = demo::Options {
        config_path: cli.write_config,
        portal: SocketAddr::new(cli.listen, cli.port),
        slack: SocketAddr::new(cli.listen, cli.slack_port),
        store_path: cli.store_path,
        bridge_listen: cli.bridge_listen,
    };
    demo::run(&options).await
}
