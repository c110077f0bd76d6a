//! The `livefeed-bridge` command line: `run`, `check`, `dead-letters`, `version`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use livefeed_bridge::bridge::{self, Options};
use livefeed_bridge::check;
use livefeed_bridge::config::Config;
use livefeed_core::store::Store;
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
    /// List or retry actions that failed permanently. Works on a stopped bridge's store, and
    /// through the running bridge's loopback admin API while it holds the store.
    DeadLetters {
        #[arg(
            long,
            env = "LIVEFEED_BRIDGE_CONFIG",
            default_value = "./bridge.yaml",
            global = true
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: DeadLetterAction,
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
            dead_letters(&config, action).await
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

/// Works on a stopped store directly, and through the running bridge's loopback admin API
/// when the bridge holds the store's lock.
async fn dead_letters(config: &Config, action: DeadLetterAction) -> ExitCode {
    let ids = match &action {
        DeadLetterAction::List => None,
        DeadLetterAction::Retry { id: Some(id), .. } => Some(RetryTarget::One(*id)),
        DeadLetterAction::Retry {
            id: None,
            all: true,
        } => Some(RetryTarget::All),
        DeadLetterAction::Retry { .. } => {
            eprintln!("error: name a dead letter id or pass --all");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let outcome = match Store::open(&config.store.path) {
        Ok(store) => dead_letters_local(&store, ids),
        Err(open_error) => match dead_letters_remote(config, ids).await {
            Ok(outcome) => outcome,
            Err(remote_error) => {
                eprintln!(
                    "error: cannot open the store at {} ({open_error}), and the running bridge's admin API at {} did not answer ({remote_error})",
                    config.store.path.display(),
                    admin_base(config),
                );
                return ExitCode::FAILURE;
            }
        },
    };
    match outcome {
        Ok(DeadLetterOutcome::Listed(letters)) => {
            if letters.is_empty() {
                println!("no dead letters");
            }
            for (id, at_ms, action, error) in &letters {
                println!("{id}\t{at_ms}\t{action}\t{error}");
            }
            ExitCode::SUCCESS
        }
        Ok(DeadLetterOutcome::Retried { retried, missing }) => {
            for id in &retried {
                println!("{id}: queued for retry");
            }
            for id in &missing {
                eprintln!("{id}: no such dead letter");
            }
            if missing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy)]
enum RetryTarget {
    One(u64),
    All,
}

enum DeadLetterOutcome {
    /// id, time (unix ms), action, error.
    Listed(Vec<(u64, i64, String, String)>),
    Retried {
        retried: Vec<u64>,
        missing: Vec<u64>,
    },
}

fn dead_letters_local(
    store: &Store,
    target: Option<RetryTarget>,
) -> Result<DeadLetterOutcome, String> {
    let letters = store.dead_letters().map_err(|e| e.to_string())?;
    let Some(target) = target else {
        return Ok(DeadLetterOutcome::Listed(
            letters
                .into_iter()
                .map(|l| (l.id, l.at_ms, l.action, l.error))
                .collect(),
        ));
    };
    let ids: Vec<u64> = match target {
        RetryTarget::One(id) => vec![id],
        RetryTarget::All => letters.iter().map(|l| l.id).collect(),
    };
    let (mut retried, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        match store.retry_dead_letter(id) {
            Ok(true) => retried.push(id),
            Ok(false) => missing.push(id),
            Err(e) => return Err(format!("{id}: {e}")),
        }
    }
    store.flush_blocking().map_err(|e| e.to_string())?;
    Ok(DeadLetterOutcome::Retried { retried, missing })
}

/// `http.listen` as seen from this machine: a wildcard address is reached on loopback.
fn admin_base(config: &Config) -> String {
    let mut addr = config.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}/admin/dead-letters")
}

async fn dead_letters_remote(
    config: &Config,
    target: Option<RetryTarget>,
) -> Result<Result<DeadLetterOutcome, String>, String> {
    let base = admin_base(config);
    {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let request = match target {
            None => client.get(&base),
            Some(RetryTarget::One(id)) => client.post(format!("{base}/retry?id={id}")),
            Some(RetryTarget::All) => client.post(format!("{base}/retry?all=true")),
        };
        let response = request
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("no reason given");
            return Ok(Err(format!(
                "the running bridge answered {status}: {error}"
            )));
        }
        let ids = |key: &str| -> Vec<u64> {
            body[key]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
                .unwrap_or_default()
        };
        Ok(Ok(match target {
            None => DeadLetterOutcome::Listed(
                body["dead_letters"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|l| {
                                (
                                    l["id"].as_u64().unwrap_or_default(),
                                    l["at_ms"].as_i64().unwrap_or_default(),
                                    l["action"].as_str().unwrap_or_default().to_owned(),
                                    l["error"].as_str().unwrap_or_default().to_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Some(_) => DeadLetterOutcome::Retried {
                retried: ids("retried"),
                missing: ids("missing"),
            },
        }))
    }
}
