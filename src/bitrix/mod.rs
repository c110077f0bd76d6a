//! The Bitrix24 side: the REST client, the intakes, BBCode, authors, the comment effects,
//! and how the bridge connects to the portal and probes it. Bitrix24 field names stay in here.
//!
//! - [`client`]: REST over the incoming webhook or the app's OAuth grant (`batch`, the leaky
//!   bucket, error classes, `OPERATION_TIME_LIMIT` pauses).
//! - [`oauth`]: the app's tokens, refreshed and rotated durably; `authorize`.
//! - [`intake`]: the poll intake: feed pages → feed events (in the event modes, the safety net).
//! - [`events`]: feed events → touched posts → the poll intake's reading; the offline queue.
//! - [`push`]: the HTTP endpoint for pushed events.
//! - [`bbcode`]: the feed's BBCode ⇄ the core's document.
//! - [`people`]: authors' names and photos (`user.get`), cached.
//! - [`adapter`]: comments the bridge writes and deletes ([`adapter::BitrixFeed`]).
//! - [`config`]: the `bitrix24:` section of `bridge.yaml`.
//! - [`connect`] and [`probe`]: what the assembly and `check` call.

pub mod adapter;
pub mod bbcode;
pub mod client;
pub mod config;
pub mod events;
pub mod intake;
pub mod oauth;
pub mod people;
pub mod push;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use livefeed_core::metrics::Metrics;
use livefeed_core::model::Platform;
use serde_json::{Value, json};

use crate::assembly::{FeedSide, Shared};
use crate::check::Report;
use crate::config::{Config, ImportantConfig};
use crate::reload::{Live, Retune};
use crate::upstream::{Backoff, Repeat};
use adapter::BitrixFeed;
use client::{BitrixClient, Credentials, as_list, value_text};
use config::{BitrixConfig, IntakeMode};
use events::{EventWorker, OfflineIntake, Touched};
use intake::PollIntake;
use livefeed_core::store::{Store, StoreError};
use oauth::Tokens;
use people::People;
use push::PushEndpoint;

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
    /// The OAuth grant could not be read from the store.
    #[error("cannot read the OAuth grant: {0}")]
    Grant(StoreError),
}

/// The credentials REST calls use: the webhook in poll mode when there is one, else the
/// app's grant (kept in `store`).
fn credentials(cfg: &BitrixConfig, store: &Store) -> Result<Credentials, ConnectError> {
    match (&cfg.webhook_url, cfg.webhook_user, &cfg.oauth) {
        (Some(url), Some(user), _) if !cfg.uses_oauth() => {
            Ok(Credentials::Webhook(url.clone(), user))
        }
        (_, _, Some(oauth)) => Tokens::load(oauth, store.clone(), cfg.request_timeout)
            .map(Credentials::App)
            .map_err(ConnectError::Grant),
        _ => unreachable!("config validation requires a webhook or an oauth section"),
    }
}

fn client(
    cfg: &BitrixConfig,
    store: &Store,
    metrics: &Arc<Metrics>,
    paced: bool,
) -> Result<BitrixClient, ConnectError> {
    BitrixClient::new(
        credentials(cfg, store)?,
        if paced { cfg.rate_limit } else { None },
        cfg.request_timeout,
        metrics.clone(),
    )
    .map_err(|e| ConnectError::Client(e.without_url()))
}

/// Build the comment adapter and the intake watching the mapped audiences: the poll, or in an
/// event mode the event reader plus the poll as a slow safety net. `backoff` overrides the
/// client's retries (tests shorten them).
pub fn connect(
    cfg: &BitrixConfig,
    important: &ImportantConfig,
    backoff: Option<Backoff>,
    shared: &Shared,
) -> Result<FeedSide, ConnectError> {
    let mut client =
        client(cfg, &shared.store, &shared.metrics, true)?.keeping_limits_in(shared.store.clone());
    if let Some(backoff) = backoff {
        client = client.with_backoff(backoff);
    }
    let people = People::new(client.clone(), shared.store.clone());
    let poll_cfg = Live::new(cfg.poll);
    let offline_cfg = Live::new(cfg.offline);
    let poll = Arc::new(PollIntake::new(
        client.clone(),
        shared.journal.clone(),
        people.clone(),
        shared.routing.clone(),
        poll_cfg.clone(),
        cfg,
        shared.health.clone(),
    ));
    let cancel = shared.cancel.clone();
    let mut tasks: Vec<crate::assembly::Task> = vec![
        Box::pin(poll.clone().run(cancel.clone())),
        Box::pin(poll.clone().run_importance(
            important.readers,
            important.readers_interval,
            cancel.clone(),
        )),
    ];
    let mut routes = None;
    if cfg.intake != IntakeMode::Poll {
        let touched = Touched::new(shared.journal.clone());
        let worker = EventWorker::new(poll.clone(), touched.clone(), shared.health.clone());
        tasks.push(Box::pin(worker.run(cancel.clone())));
        // Only an app can bind; an outgoing webhook's pushes are bound in the portal's UI.
        if cfg.uses_oauth() {
            let (mode, handler) = (
                cfg.intake,
                cfg.push.as_ref().and_then(|p| p.handler_url.clone()),
            );
            let (binder, baseline) = (client.clone(), poll.clone());
            tasks.push(Box::pin(async move {
                if let Err(e) = baseline.baselined().await {
                    tracing::warn!(error = %e, "cannot read the poll state; feed events are not bound");
                    return;
                }
                if let Err(e) = events::bind(&binder, mode, handler.as_deref()).await {
                    tracing::warn!(error = %e, "cannot bind the Bitrix24 feed events; `livefeed-bridge check` shows what is missing");
                }
            }));
        }
        match (cfg.intake, &cfg.push) {
            (IntakeMode::Offline, _) => {
                let offline = OfflineIntake::new(
                    client.clone(),
                    touched,
                    offline_cfg.clone(),
                    shared.health.clone(),
                );
                tasks.push(Box::pin(offline.run(cancel)));
            }
            (IntakeMode::Push, Some(push)) => {
                routes = Some(
                    PushEndpoint {
                        path: push.path.clone(),
                        application_token: push.application_token.clone(),
                        touched,
                    }
                    .routes(),
                );
            }
            _ => {}
        }
    }
    let paced = client.clone();
    let retune: Retune = Box::new(move |config: &Config| {
        let new = &config.bitrix24;
        poll_cfg.set(new.poll);
        offline_cfg.set(new.offline);
        if let Some(rate) = new.rate_limit {
            paced.set_rate(rate);
        }
    });
    Ok(FeedSide {
        adapter: Arc::new(BitrixFeed::new(client, shared.store.clone()).with_directory(people)),
        tasks,
        routes,
        retune: Some(retune),
    })
}

/// `check`: the credentials work (`profile`), they have the scopes the bridge needs
/// (`scope`), and in an event mode, what the mode needs: a grant that refreshes, admin rights
/// and `rest_offline_extended` (offline), the event bindings.
pub async fn probe(
    cfg: &BitrixConfig,
    store_path: &Path,
    metrics: &Arc<Metrics>,
    report: &mut Report,
) {
    if let (Some(url), Some(user)) = (&cfg.webhook_url, cfg.webhook_user) {
        match rest_client(Credentials::Webhook(url.clone(), user), cfg, metrics) {
            Ok(client) => {
                probe_rest(&client, "webhook", &cfg.portal_url, report).await;
            }
            Err(e) => report.fail(format!("Bitrix24: {e}")),
        }
    }
    let Some(oauth) = &cfg.oauth else {
        if let (IntakeMode::Push, Some(push)) = (cfg.intake, &cfg.push) {
            report.ok(format!(
                "Bitrix24 intake push: events come from an outgoing webhook set up in the portal; they are taken at {} with its application_token (the portal's side cannot be probed from here)",
                push.path
            ));
        }
        return;
    };
    // The grant lives in the store; a running bridge holds it, and refreshing it here would
    // rotate the refresh token under the bridge's feet.
    let store = match Store::open(store_path) {
        Ok(s) => s,
        Err(StoreError::Locked { .. }) => {
            return report.warn(format!(
                "Bitrix24 app: the running bridge holds the OAuth grant in {}; its /readyz shows whether the token refreshes (stop the bridge to probe the app here)",
                store_path.display()
            ));
        }
        Err(e) => return report.fail(format!("Bitrix24 app: {e}")),
    };
    let tokens = match Tokens::load(oauth, store.clone(), cfg.request_timeout) {
        Ok(t) => t,
        Err(e) => return report.fail(format!("Bitrix24 app: {e}")),
    };
    match tokens.refresh_now().await {
        Ok(_) => report
            .ok("Bitrix24 app: the OAuth grant refreshes (the rotated token is kept in the store)"),
        Err(e) => {
            let _ = store.close_cleanly();
            return report.fail(format!(
                "Bitrix24 app: the OAuth grant does not refresh: {} {} — run `livefeed-bridge bitrix24 authorize`",
                e.code, e.description
            ));
        }
    }
    match rest_client(Credentials::App(tokens), cfg, metrics) {
        Ok(client) => {
            if let Some(admin) = probe_rest(&client, "app", &oauth.portal, report).await {
                probe_events(&client, cfg, admin, report).await;
            }
        }
        Err(e) => report.fail(format!("Bitrix24 app: {e}")),
    }
    let _ = store.close_cleanly();
}

fn rest_client(
    credentials: Credentials,
    cfg: &BitrixConfig,
    metrics: &Arc<Metrics>,
) -> Result<BitrixClient, ConnectError> {
    BitrixClient::new(credentials, None, cfg.request_timeout, metrics.clone())
        .map(|c| {
            c.with_backoff(Backoff {
                first: Duration::from_millis(300),
                max: Duration::from_secs(2),
                retries: 2,
            })
        })
        .map_err(|e| ConnectError::Client(e.without_url()))
}

/// `profile` and `scope` through `client`; whether its user is a portal administrator
/// (`None`: `profile` failed).
async fn probe_rest(
    client: &BitrixClient,
    kind: &str,
    portal: &str,
    report: &mut Report,
) -> Option<bool> {
    let admin = match client.call("profile", json!({}), Repeat::Safe).await {
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
                "Bitrix24 {portal}: {kind} user {} ({}){}",
                r.get("ID").map(value_text).unwrap_or_default(),
                name.trim(),
                if admin { ", portal admin" } else { "" }
            ));
            report.ok(if admin {
                format!("Bitrix24: comments as their author possible: the {kind} user is an administrator, so a linked person's reply becomes their own comment (people.comments_as_author)")
            } else {
                format!("Bitrix24: comments carry the chat author's name: the {kind} user is not an administrator, so the bridge cannot write as other users")
            });
            admin
        }
        Err(e) => {
            report.fail(format!(
                "Bitrix24 {portal}: profile through the {kind} failed: {e} — check the credentials and that the {kind} is active"
            ));
            return None;
        }
    };
    let scopes: Vec<String> = match client.call("scope", json!({}), Repeat::Safe).await {
        Ok(resp) => as_list(&resp.result).into_iter().map(value_text).collect(),
        Err(e) => {
            report.fail(format!("Bitrix24: scope failed: {e}"));
            return Some(admin);
        }
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
        report.ok(format!("Bitrix24 {kind} scopes: {}", scopes.join(", ")));
        let verify: Vec<&str> = ["sonet_group", "department"]
            .into_iter()
            .filter(|s| !has(s))
            .collect();
        if !verify.is_empty() {
            report.warn(format!(
                "Bitrix24 {kind} lacks scope(s) {}: a vanished group or department post is then verified by its audience's feed alone, so deleting a group's last post is held for an operator — tick them to verify by membership",
                verify.join(", ")
            ));
        }
        if !has("disk") {
            report.warn(format!(
                "Bitrix24 {kind} lacks scope disk: a post's attached files cannot be described or downloaded, so they do not reach chat — tick `disk` to carry them"
            ));
        }
        if !has("user") {
            report.warn(format!(
                "Bitrix24 {kind} has no full `user` scope, so users' e-mail addresses are hidden: people are linked only by people.links in the config — tick `user` to link by e-mail"
            ));
        }
    } else {
        report.fail(format!(
            "Bitrix24 {kind} lacks scope(s): {} (has: {}) — edit the {kind} and tick them",
            missing.join(", "),
            scopes.join(", ")
        ));
    }
    Some(admin)
}

/// What the event mode needs from the portal.
async fn probe_events(client: &BitrixClient, cfg: &BitrixConfig, admin: bool, report: &mut Report) {
    let mode = cfg.intake;
    if mode == IntakeMode::Poll {
        return;
    }
    if mode == IntakeMode::Offline {
        if !admin {
            report.fail("Bitrix24 intake offline: the app's user is not a portal administrator; offline events need one — authorize the app as an administrator");
        }
        match client
            .call("feature.get", json!({ "CODE": "rest_offline_extended" }), Repeat::Safe)
            .await
        {
            Ok(r) if r.result.get("value").map(value_text).as_deref() == Some("Y") => {
                report.ok("Bitrix24 intake offline: rest_offline_extended is available")
            }
            Ok(_) => report.fail("Bitrix24 intake offline: the portal's plan lacks rest_offline_extended (reserving rows with clear=0); use intake: push, or poll"),
            Err(e) => report.warn(format!("Bitrix24 intake offline: feature.get failed: {e}")),
        }
    }
    let bound = match events::bindings(client).await {
        Ok(b) => b,
        Err(e) => {
            return report.fail(format!(
                "Bitrix24 intake {}: event.get failed: {e}",
                mode.as_str()
            ));
        }
    };
    let handler = cfg.push.as_ref().and_then(|p| p.handler_url.as_deref());
    let missing: Vec<&str> = events::FEED_EVENTS
        .into_iter()
        .filter(|e| {
            !bound.iter().any(|b| {
                &b.event == e
                    && b.offline == (mode == IntakeMode::Offline)
                    && (handler.is_none() || b.handler.as_deref() == handler)
            })
        })
        .collect();
    let can_bind = match mode {
        IntakeMode::Offline => admin,
        _ => handler.is_some(),
    };
    match (missing.is_empty(), can_bind) {
        (true, _) => report.ok(format!(
            "Bitrix24 intake {}: the feed events are bound",
            mode.as_str()
        )),
        (false, true) => report.ok(format!(
            "Bitrix24 intake {}: {} will be bound at start",
            mode.as_str(),
            missing.join(", ")
        )),
        (false, false) => report.fail(format!(
            "Bitrix24 intake push: {} not bound to a handler — set bitrix24.push.handler_url to the public HTTPS URL of {} so the bridge binds them, or bind them yourself",
            missing.join(", "),
            cfg.push.as_ref().map(|p| p.path.as_str()).unwrap_or("the push path")
        )),
    }
}
