//! The Slack side: Web API client, Socket Mode and Events API intake, mrkdwn, root-message
//! effects, and how the bridge connects to Slack and probes it. Slack's field names stay in
//! here.
//!
//! - [`api`]: the Web API client (pacing, `Retry-After`, error classes).
//! - [`intake`]: event payloads → chat events, shared by [`socket`] (Socket Mode) and
//!   [`events`] (Events API over HTTP).
//! - [`mrkdwn`]: mrkdwn ⇄ the core's document.
//! - [`adapter`]: root messages for feed posts ([`adapter::SlackChat`]).
//! - [`config`]: the `slack:` section of `bridge.yaml`.
//! - [`connect`] and [`probe`]: what the assembly and `check` call.

pub mod adapter;
pub mod api;
pub mod catch_up;
pub mod config;
pub mod events;
pub mod intake;
pub mod mrkdwn;
pub mod people;
pub mod socket;

use std::collections::BTreeMap;
use std::sync::Arc;

use livefeed_core::metrics::Metrics;
use livefeed_core::model::Platform;
use livefeed_core::route::Served;
use tracing::info;

use crate::assembly::{ChatSide, Shared};
use crate::check::Report;
use crate::config::Config;
use crate::reload::Retune;
use crate::upstream::Repeat;
use adapter::SlackChat;
use api::{Body, SlackApi, SlackError};
use catch_up::CatchUp;
use config::{SlackConfig, SlackIntake as IntakeMode};
use events::EventsApi;
use intake::{Identity, SlackIntake};
use people::People;
use socket::SocketMode;
use tokio::sync::mpsc;

/// Slack's name in keys, labels and `/readyz`.
pub const PLATFORM: Platform = Platform::new("slack");
/// Slack's name for people.
pub const DISPLAY_NAME: &str = "Slack";

/// Why the bridge could not connect to Slack.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The HTTP client could not be built (TLS roots, proxy settings).
    #[error("cannot build an HTTP client: {0}")]
    Client(reqwest::Error),
    /// `auth.test` failed: the bot token is wrong or revoked, or Slack is unreachable.
    #[error("auth.test failed: {0}")]
    AuthTest(#[from] SlackError),
}

fn client(
    cfg: &SlackConfig,
    metrics: &Arc<Metrics>,
    paced: bool,
) -> Result<SlackApi, ConnectError> {
    SlackApi::new(
        cfg.api_base.clone(),
        cfg.bot_token.clone(),
        if paced { cfg.post_rate } else { None },
        cfg.request_timeout,
        metrics.clone(),
    )
    .map_err(|e| ConnectError::Client(e.without_url()))
}

/// Connect as the bot: learn who it is (`auth.test`), then build the root-message adapter and
/// the intake for the mapped `channels` (Socket Mode, or the Events API on `http.listen`).
pub async fn connect(
    cfg: &SlackConfig,
    channels: &[String],
    shared: &Shared,
) -> Result<ChatSide, ConnectError> {
    let api = client(cfg, &shared.metrics, true)?.keeping_limits_in(shared.store.clone());
    let auth = api.auth_test().await?;
    info!(team = %auth.team, bot_user = %auth.user_id, "Slack bot identified");
    let served = Served::new(shared.routing.clone(), PLATFORM);
    let people = People::new(api.clone(), shared.store.clone());
    let own = Identity::from(&auth);
    let intake = SlackIntake::new(
        shared.journal.clone(),
        own.clone(),
        served.clone(),
        people.clone(),
    );
    let adapter = SlackChat::new(
        api.clone(),
        auth.bot_id.clone(),
        people.clone(),
        shared.store.clone(),
    );
    let catch_up = CatchUp::new(
        api.clone(),
        shared.journal.clone(),
        own,
        served,
        people,
        (cfg.catch_up_window, cfg.catch_up_rate),
    );
    let catch_up_pacing = catch_up.pacing();
    let paced = api.clone();
    let retune: Retune = Box::new(move |config: &Config| {
        let Some(new) = &config.slack else { return };
        if let Some(rate) = new.post_rate {
            paced.set_post_rate(rate);
        }
        if let (Some(bucket), Some(rate)) = (&catch_up_pacing, new.catch_up_rate) {
            bucket.set_rate(rate);
        }
    });
    let (trigger, triggers) = mpsc::channel(1);
    let mut side = ChatSide {
        adapter: Arc::new(adapter),
        rooms: channels
            .iter()
            .map(|c| (c.clone(), c.clone()))
            .collect::<BTreeMap<_, _>>(),
        tasks: vec![Box::pin(catch_up.run(triggers, shared.cancel.clone()))],
        routes: None,
        resolve: None,
        retune: Some(retune),
    };
    match &cfg.intake {
        IntakeMode::SocketMode { app_token } => {
            // Every `hello` asks for a catch-up: Slack may have given up events meanwhile.
            let socket = SocketMode::new(
                api,
                app_token.clone(),
                intake,
                shared.health.clone(),
                trigger,
            );
            side.tasks.push(Box::pin(socket.run(shared.cancel.clone())));
        }
        IntakeMode::EventsApi { signing_secret } => {
            // Nothing to connect: Slack calls us. The side is up as soon as we listen, and
            // what Slack gave up while the bridge was down is read once now.
            shared.health.ok(PLATFORM.as_str());
            let _ = trigger.try_send(());
            let events = EventsApi {
                signing_secret: signing_secret.clone(),
                intake,
            };
            side.routes = Some(events.routes());
        }
    }
    Ok(side)
}

/// What the bot token's scopes allow, for `check`: each optional feature and the scope it
/// needs (slack-app-manifest.yaml asks for all of them).
fn scopes_report(granted: &[String], report: &mut Report) {
    const FEATURES: [(&str, &str, &str); 4] = [
        (
            "pins:write",
            "important posts are pinned",
            "important posts are not pinned",
        ),
        (
            "files:write",
            "a post's files are uploaded into its thread",
            "a post's files are not uploaded",
        ),
        (
            "files:read",
            "files in replies are attached to their comments",
            "files in replies stay in Slack (comments carry their text only)",
        ),
        (
            "users:read.email",
            "people are linked to Bitrix24 users by e-mail (mentions notify)",
            "people are linked only by people.links in the config (mentions of others stay names)",
        ),
    ];
    for (scope, works, missing) in FEATURES {
        if granted.iter().any(|s| s == scope) {
            report.ok(format!("Slack: {scope} granted: {works}"));
        } else {
            report.warn(format!(
                "Slack: the bot token lacks {scope}, so {missing} — add the scope (slack-app-manifest.yaml has it) and reinstall the app"
            ));
        }
    }
}

/// `check`: the bot token, the intake's credentials, and every mapped channel (exists, bot is
/// a member, not archived).
pub async fn probe(
    cfg: &SlackConfig,
    channels: &[String],
    listen: std::net::SocketAddr,
    metrics: &Arc<Metrics>,
    report: &mut Report,
) {
    let api = match client(cfg, metrics, false) {
        Ok(api) => api,
        Err(e) => return report.fail(format!("Slack: {e}")),
    };
    match api.auth_test().await {
        Ok(a) => {
            report.ok(format!(
                "Slack: bot {} ({}) in team {}",
                a.user, a.user_id, a.team
            ));
            if let Some(granted) = api.scopes() {
                scopes_report(&granted, report);
            }
        }
        Err(e) => {
            return report.fail(format!(
                "Slack: auth.test failed: {e} — check SLACK_BOT_TOKEN and that the app is installed"
            ));
        }
    }
    match &cfg.intake {
        IntakeMode::SocketMode { app_token } => {
            let opened = api
                .call_with(
                    "apps.connections.open",
                    None,
                    Body::Form(Vec::new()),
                    Repeat::Safe,
                    app_token,
                )
                .await;
            match opened {
                Ok(_) => report.ok("Slack: app-level token opens Socket Mode connections"),
                Err(e) => report.fail(format!(
                    "Slack: apps.connections.open failed: {e} — the app token needs connections:write and Socket Mode must be on"
                )),
            }
        }
        IntakeMode::EventsApi { .. } => report.ok(format!(
            "Slack: Events API on http://{listen}{} (signing secret set)",
            events::PATH
        )),
    }
    for channel in channels {
        probe_channel(&api, channel, report).await;
    }
}

async fn probe_channel(api: &SlackApi, channel: &str, report: &mut Report) {
    let info = match api.conversations_info(channel).await {
        Ok(v) => v,
        Err(e) => {
            return report.fail(format!(
                "Slack channel {channel}: {e} — private channels are invisible until the bot is invited"
            ));
        }
    };
    let ch = &info["channel"];
    let name = ch["name"].as_str().unwrap_or("?");
    if ch["is_archived"].as_bool().unwrap_or(false) {
        report.fail(format!(
            "Slack channel {channel} (#{name}) is archived — unarchive it or change the mapping"
        ));
    } else if !ch["is_member"].as_bool().unwrap_or(false) {
        report.fail(format!(
            "Slack channel {channel} (#{name}): the bot is not a member — type /invite @<bot> in #{name}"
        ));
    } else {
        report.ok(format!(
            "Slack channel {channel} (#{name}): bot is a member"
        ));
    }
}
