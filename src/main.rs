//! The `livefeed-bridge` command line: `run`, `check`, `health`, `dead-letters`,
//! `bitrix24 authorize`, `version`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use livefeed_bridge::assembly::{self, Options};
use livefeed_bridge::check;
use livefeed_bridge::config::Config;
use livefeed_bridge::dead_letters::{self, Outcome, Target};
use tracing_subscriber::EnvFilter;

/// Exit codes: 0 fine, 1 runtime failure or a failed probe, 2 configuration error.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "livefeed-bridge",
    version,
    about = "Bridges the Bitrix24 Live Feed with Slack and Matrix"
)]
struct Cli {
    /// Log format on stderr: `auto` is human on a terminal and JSON otherwise (containers,
    /// journald, files).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto, global = true, env = "LIVEFEED_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
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
    /// Ask the running bridge whether it is ready (`/readyz` on `http.listen`): exit 0 when
    /// ready or degraded, 1 otherwise. Made for container health checks, which have no curl.
    Health {
        #[arg(long, env = "LIVEFEED_BRIDGE_CONFIG", default_value = "./bridge.yaml")]
        config: PathBuf,
        /// Probe this URL instead of the one derived from the config.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
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
    /// Bitrix24 app setup.
    Bitrix24 {
        #[arg(
            long,
            env = "LIVEFEED_BRIDGE_CONFIG",
            default_value = "./bridge.yaml",
            global = true
        )]
        config: PathBuf,
        #[command(subcommand)]
        action: BitrixAction,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum BitrixAction {
    /// Get the local app's OAuth grant without a public URL: open the printed link as a portal
    /// administrator, then paste the address the browser ends up on (or just its `code`).
    /// The grant is kept in the store; run it while the bridge is stopped.
    Authorize {
        /// The code (or the whole redirect address), instead of asking for it.
        #[arg(long)]
        code: Option<String>,
    },
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
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Auto if terminal => builder.init(),
        LogFormat::Auto | LogFormat::Json => builder.json().init(),
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
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Health {
            config,
            url,
            timeout,
        } => {
            let url = match url {
                Some(url) => url,
                None => match load(&config) {
                    Ok(c) => c.http.local_url("/readyz"),
                    Err(code) => return code,
                },
            };
            health(&url, Duration::from_secs(timeout)).await
        }
        Command::Bitrix24 {
            config,
            action: BitrixAction::Authorize { code },
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            authorize(&config, code).await
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
    let running = match assembly::start(&config, Options::default()).await {
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

/// `bitrix24 authorize`: the authorization link, the pasted code, the grant into the store.
async fn authorize(config: &Config, code: Option<String>) -> ExitCode {
    use livefeed_bridge::bitrix::oauth;
    use livefeed_core::store::{Store, StoreError};
    let Some(app) = &config.bitrix24.oauth else {
        eprintln!(
            "error: bridge.yaml has no bitrix24.oauth section; add the local app's portal, client_id and client_secret first"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let state = format!("{:016x}", fastrand::u64(..));
    let asked = code.is_none();
    let pasted = match code {
        Some(code) => code,
        None => {
            println!(
                "1. As a portal administrator, open:\n\n   {}\n",
                oauth::authorize_url(app, &state)
            );
            println!(
                "2. Bitrix24 sends the browser to the app's redirect address. It may not load; that is fine."
            );
            println!(
                "   Within 30 seconds, paste that address (or just its code) here and press Enter:"
            );
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("error: nothing was pasted");
                return ExitCode::FAILURE;
            }
            line
        }
    };
    let Some((code, pasted_state)) = oauth::code_from(&pasted) else {
        eprintln!("error: that is neither an address with a `code` nor a code");
        return ExitCode::FAILURE;
    };
    if asked && pasted_state.as_deref().is_some_and(|s| s != state) {
        eprintln!(
            "error: that address belongs to an earlier attempt (its state differs); open the new link"
        );
        return ExitCode::FAILURE;
    }
    let store = match Store::open(&config.store.path) {
        Ok(s) => s,
        Err(e @ StoreError::Locked { .. }) => {
            eprintln!("error: {e}; stop the bridge first, then authorize");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = oauth::authorize(app, &store, &code, config.bitrix24.request_timeout).await;
    let _ = store.close_cleanly();
    match outcome {
        Ok((user, scope)) => {
            println!(
                "Authorized: the app acts as user {user} with scopes {scope}. The grant is kept in {}; bitrix24.oauth.refresh_token may stay unset.",
                config.store.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: the portal refused the code: {} {} (a code is valid for 30 seconds and once)",
                e.code, e.description
            );
            ExitCode::FAILURE
        }
    }
}

/// One GET of `/readyz`. Degraded counts as healthy: the bridge is working, and restarting
/// it would not release held deletions.
async fn health(url: &str, timeout: Duration) -> ExitCode {
    let answer = async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        let response = client.get(url).send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await.unwrap_or_default()))
    };
    match answer.await {
        Ok((status, body)) => {
            println!("{} {}", status.as_u16(), body.trim());
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("unreachable: {}", e.without_url());
            ExitCode::FAILURE
        }
    }
}

async fn dead_letters(config: &Config, action: DeadLetterAction) -> ExitCode {
    let target = match action {
        DeadLetterAction::List => None,
        DeadLetterAction::Retry { id: Some(id), .. } => Some(Target::One(id)),
        DeadLetterAction::Retry {
            id: None,
            all: true,
        } => Some(Target::All),
        DeadLetterAction::Retry { .. } => {
            eprintln!("error: name a dead letter id or pass --all");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match dead_letters::run(config, target).await {
        Ok(Outcome::Listed(letters)) => {
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in &letters {
                println!("{}\t{}\t{}\t{}", l.id, l.at_ms, l.action, l.error);
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Retried { retried, missing }) => {
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
