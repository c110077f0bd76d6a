//! `livefeed-bridge dead-letters`: list actions that failed permanently, or put them back into
//! the journal. sled allows one process per store, so on a stopped bridge the command opens
//! the store itself, and on a running one it asks the bridge's loopback admin API
//! (`/admin/dead-letters` on `http.listen`).

use livefeed_core::store::{Store, StoreError};
use serde_json::Value;

use crate::config::Config;

/// Which dead letters to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The one with this id.
    One(u64),
    /// Every one.
    All,
}

/// A dead letter as the command shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// Its id.
    pub id: u64,
    /// When it failed (unix ms).
    pub at_ms: i64,
    /// What the bridge tried.
    pub action: String,
    /// Why it failed.
    pub error: String,
}

/// What the command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The dead letters, oldest first.
    Listed(Vec<Letter>),
    /// Letters put back into the journal, and ids that named no letter.
    Retried {
        /// Re-journaled.
        retried: Vec<u64>,
        /// No such dead letter.
        missing: Vec<u64>,
    },
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is held by a running bridge whose admin API did not answer.
    #[error(
        "the store at {path} is in use by a running bridge, and its admin API at {url} did not answer ({reason})"
    )]
    Unreachable {
        /// The store directory.
        path: String,
        /// The admin API.
        url: String,
        /// Why (the HTTP client's words, without the URL).
        reason: String,
    },
    /// The running bridge refused.
    #[error("the running bridge answered {status}: {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its `error`.
        reason: String,
    },
}

/// List (`target` none) or retry dead letters of the bridge `config` describes.
pub async fn run(config: &Config, target: Option<Target>) -> Result<Outcome, DeadLetterError> {
    match Store::open(&config.store.path) {
        Ok(store) => local(&store, target),
        Err(StoreError::Locked { path }) => remote(config, target).await.map_err(|e| match e {
            Remote::Unreachable(reason) => DeadLetterError::Unreachable {
                path,
                url: admin_url(config),
                reason,
            },
            Remote::Refused { status, reason } => DeadLetterError::Refused { status, reason },
        }),
        Err(e) => Err(e.into()),
    }
}

fn local(store: &Store, target: Option<Target>) -> Result<Outcome, DeadLetterError> {
    let letters = store.dead_letters()?;
    let Some(target) = target else {
        store.close_cleanly()?;
        return Ok(Outcome::Listed(
            letters
                .into_iter()
                .map(|l| Letter {
                    id: l.id,
                    at_ms: l.at_ms,
                    action: l.action,
                    error: l.error,
                })
                .collect(),
        ));
    };
    let ids: Vec<u64> = match target {
        Target::One(id) => vec![id],
        Target::All => letters.iter().map(|l| l.id).collect(),
    };
    let (mut retried, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        if store.retry_dead_letter(id)? {
            retried.push(id);
        } else {
            missing.push(id);
        }
    }
    store.flush_blocking()?;
    store.close_cleanly()?;
    Ok(Outcome::Retried { retried, missing })
}

fn admin_url(config: &Config) -> String {
    config.http.local_url("/admin/dead-letters")
}

enum Remote {
    Unreachable(String),
    Refused { status: u16, reason: String },
}

async fn remote(config: &Config, target: Option<Target>) -> Result<Outcome, Remote> {
    let base = admin_url(config);
    let unreachable = |e: reqwest::Error| Remote::Unreachable(e.without_url().to_string());
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(unreachable)?;
    let request = match target {
        None => client.get(&base),
        Some(Target::One(id)) => client.post(format!("{base}/retry?id={id}")),
        Some(Target::All) => client.post(format!("{base}/retry?all=true")),
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let body: Value = response.json().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(Remote::Refused {
            status: status.as_u16(),
            reason: body["error"].as_str().unwrap_or("no reason given").into(),
        });
    }
    let ids = |key: &str| -> Vec<u64> {
        body[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    Ok(match target {
        None => Outcome::Listed(
            body["dead_letters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| Letter {
                    id: l["id"].as_u64().unwrap_or_default(),
                    at_ms: l["at_ms"].as_i64().unwrap_or_default(),
                    action: l["action"].as_str().unwrap_or_default().to_owned(),
                    error: l["error"].as_str().unwrap_or_default().to_owned(),
                })
                .collect(),
        ),
        Some(_) => Outcome::Retried {
            retried: ids("retried"),
            missing: ids("missing"),
        },
    })
}
