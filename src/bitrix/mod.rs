//! The Bitrix24 side: the REST client, the poll intake, BBCode, authors, the comment effects,
//! and how the bridge connects to the portal and probes it. Bitrix24 field names stay in here.
//!
//! - [`client`]: REST over the incoming webhook (`batch`, the leaky bucket, error classes,
//!   `OPERATION_TIME_LIMIT` pauses).
//! - [`intake`]: the poll intake: feed pages → feed events.
//! - [`bbcode`]: the feed's BBCode ⇄ the core's document.
//! - [`people`]: authors' names and photos (`user.get`), cached.
//! - [`adapter`]: comments the bridge writes and deletes ([`adapter::BitrixFeed`]).
//! - [`config`]: the `bitrix24:` section of `bridge.yaml`.
//! - [`connect`] and [`probe`]: what the assembly and `check` call.

pub mod adapter;
pub mod bbcode;
pub mod client;
pub mod config;
pub mod intake;
pub mod people;

use std::sync::Arc;
use std::time::Duration;

use livefeed_core::metrics::Metrics;
use livefeed_core::model::{Audience, Platform};
use serde_json::{Value, json};

use crate::assembly::{FeedSide, Shared};
use crate::check::Report;
use crate::upstream::{Backoff, Repeat};
use adapter::BitrixFeed;
use client::{BitrixClient, as_list, value_text};
use config::BitrixConfig;
use intake::PollIntake;
use people::People;

/// Bitrix24's name in keys, labels and `/readyz`.
pub const PLATFORM: Platform = Platform::new("bitrix24");
/// Bitrix24's name for people ("Open in Bitrix24").
pub const DISPLAY_NAME: &str = "Bitrix24";

/// Why the bridge could not connect to the portal.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The HTTP client could not be built (TLS roots, proxy settings).
    #[error("cannot build an HTTP client: {0}")]
    Client(reqwest::Error),
}

fn client(
    cfg: &BitrixConfig,
    metrics: &Arc<Metrics>,
    paced: bool,
) -> Result<BitrixClient, ConnectError> {
    BitrixClient::new(
        cfg.webhook_url.clone(),
        if paced { cfg.rate_limit } else { None },
        cfg.request_timeout,
        metrics.clone(),
    )
    .map_err(|e| ConnectError::Client(e.without_url()))
}

/// Build the comment adapter and the poll intake watching `audiences`. `backoff` overrides the
/// client's retries (tests shorten them).
pub fn connect(
    cfg: &BitrixConfig,
    audiences: Vec<Audience>,
    backoff: Option<Backoff>,
    shared: &Shared,
) -> Result<FeedSide, ConnectError> {
    let mut client = client(cfg, &shared.metrics, true)?.keeping_limits_in(shared.store.clone());
    if let Some(backoff) = backoff {
        client = client.with_backoff(backoff);
    }
    let people = People::new(client.clone(), shared.store.clone());
    let poll = PollIntake::new(
        client.clone(),
        shared.journal.clone(),
        people,
        audiences,
        cfg,
        shared.health.clone(),
    );
    Ok(FeedSide {
        adapter: Arc::new(BitrixFeed::new(client, shared.store.clone())),
        tasks: vec![Box::pin(poll.run(shared.cancel.clone()))],
        routes: None,
    })
}

/// `check`: the webhook works (`profile`), and it has the scopes the bridge needs (`scope`).
pub async fn probe(cfg: &BitrixConfig, metrics: &Arc<Metrics>, report: &mut Report) {
    let client = match client(cfg, metrics, false) {
        Ok(c) => c.with_backoff(Backoff {
            first: Duration::from_millis(300),
            max: Duration::from_secs(2),
            retries: 2,
        }),
        Err(e) => return report.fail(format!("Bitrix24: {e}")),
    };
    let portal = &cfg.portal_url;
    match client.call("profile", json!({}), Repeat::Safe).await {
        Ok(resp) => {
            let r = &resp.result;
            let name = [r.get("NAME"), r.get("LAST_NAME")]
                .into_iter()
                .flatten()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(" ");
            let admin = r.get("ADMIN").and_then(Value::as_bool).unwrap_or(false);
            report.ok(format!(
                "Bitrix24 {portal}: webhook user {} ({}){}",
                r.get("ID").map(value_text).unwrap_or_default(),
                name.trim(),
                if admin { ", portal admin" } else { "" }
            ));
        }
        Err(e) => {
            return report.fail(format!(
                "Bitrix24 {portal}: profile failed: {e} — check the webhook URL and that the webhook is active"
            ));
        }
    }
    let scopes: Vec<String> = match client.call("scope", json!({}), Repeat::Safe).await {
        Ok(resp) => as_list(&resp.result).into_iter().map(value_text).collect(),
        Err(e) => return report.fail(format!("Bitrix24: scope failed: {e}")),
    };
    let has = |s: &str| scopes.iter().any(|x| x == s);
    let mut missing = Vec::new();
    if !has("log") {
        missing.push("log");
    }
    if !(has("user") || has("user_brief") || has("user_basic")) {
        missing.push("user");
    }
    if missing.is_empty() {
        report.ok(format!("Bitrix24 scopes: {}", scopes.join(", ")));
        let verify: Vec<&str> = ["sonet_group", "department"]
            .into_iter()
            .filter(|s| !has(s))
            .collect();
        if !verify.is_empty() {
            report.warn(format!(
                "Bitrix24 webhook lacks scope(s) {}: a vanished group or department post is then verified by its audience's feed alone, so deleting a group's last post is held for an operator — tick them to verify by membership",
                verify.join(", ")
            ));
        }
    } else {
        report.fail(format!(
            "Bitrix24 webhook lacks scope(s): {} (has: {}) — edit the incoming webhook and tick them",
            missing.join(", "),
            scopes.join(", ")
        ));
    }
}
