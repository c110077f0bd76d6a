//! The `livefeed-bridge` command line: `run`, `check`, `dead-letters`, `sandbox`, `version`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use livefeed_bridge::bridge::{self, Options};
use livefeed_bridge::check;
use livefeed_bridge::config::Config;
use livefeed_bridge::core::store::Store;
use tracing_subscriber::EnvFilter;

/// Exit codes: 0 fine, 1 runtime failure or a failed probe, 2 configuration error.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "livefeed-bridge",
    version,
    about = "Bridges the Bitrix24 Live Feed with Slack"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, env = "LIVEFEED_BRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge until SIGTERM or SIGINT.
    Run {
        #[arg(long, env = "LIVEFEED_BRIDGE_CONFIG", default_value = "./bridge.yaml")]
        config: PathBuf,
    },
    /// Validate the config and probe every credential and mapped target.
    Check {
        #[arg(long, env = "LIVEFEED_BRIDGE_CONFIG", default_value = "./bridge.yaml")]
        config: PathBuf,
        /// Only validate the file; do not contact Bitrix24 or Slack.
        #[arg(long)]
        offline: bool,
    },
    /// List or retry actions that failed permanently (on a stopped bridge's store).
    DeadLetters {
        #[arg(long, env = "LIVEFEED_BRIDGE_CONFIG", default_value = "./bridge.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Start a fake Bitrix24 portal and a fake Slack workspace on 127.0.0.1 and write a
    /// bridge config for them, to try the bridge without accounts.
    Sandbox {
        /// Where to write the generated config.
        #[arg(long, default_value = "./sandbox.bridge.yaml")]
        write_config: PathBuf,
        /// Port of the fake Bitrix24 portal (the fake Slack uses the next two).
        #[arg(long, default_value_t = 18024)]
        port: u16,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum DeadLetterAction {
    List,
    Retry {
        /// The dead letter to retry.
        id: Option<u64>,
        /// Retry every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: container logs and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("livefeed-bridge {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run(config).await
        }
        Command::Check { config, offline } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if offline {
                println!(
                    "config {} is valid: {} mapping(s), {} room(s)",
                    config.path.display(),
                    config.mappings.len(),
                    config.rooms().len()
                );
                return ExitCode::SUCCESS;
            }
            let report = check::probe(&config).await;
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::DeadLetters { config, action } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            dead_letters(&config, action)
        }
        Command::Sandbox { write_config, port } => {
            livefeed_bridge::sandbox::demo::run(&write_config, port).await
        }
    }
}

async fn run(config: Config) -> ExitCode {
    // Listen for signals before starting: a SIGTERM during start-up still stops gracefully.
    let stop = tokio::spawn(wait_for_signal());
    let running = match bridge::start(&config, Options::default()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let _ = stop.await;
    tracing::info!("stopping");
    running.shutdown(Duration::from_secs(8)).await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn dead_letters(config: &Config, action: DeadLetterAction) -> ExitCode {
    let store = match Store::open(&config.store.path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot open the store at {} ({e}); stop the bridge first",
                config.store.path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let letters = match store.dead_letters() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match action {
        DeadLetterAction::List => {
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in &letters {
                println!("{}\t{}\t{}\t{}", l.id, l.at_ms, l.action, l.error);
            }
            ExitCode::SUCCESS
        }
        DeadLetterAction::Retry { id, all } => {
            let ids: Vec<u64> = match (id, all) {
                (Some(id), _) => vec![id],
                (None, true) => letters.iter().map(|l| l.id).collect(),
                (None, false) => {
                    eprintln!("error: name a dead letter id or pass --all");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let mut missing = false;
            for id in ids {
                match store.retry_dead_letter(id) {
                    Ok(true) => println!("{id}: queued for retry"),
                    Ok(false) => {
                        eprintln!("{id}: no such dead letter");
                        missing = true;
                    }
                    Err(e) => {
                        eprintln!("{id}: {e}");
                        missing = true;
                    }
                }
            }
            let _ = store.flush_blocking();
            if missing {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
