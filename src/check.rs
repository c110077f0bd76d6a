//! `livefeed-bridge check`: validate the config, then probe every credential and target, and
//! say in plain words what is wrong and how to fix it.

use std::fmt;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::bitrix::client::{BitrixClient, Repeat as BitrixRepeat, as_list, value_text};
use crate::config::{Config, MatrixAuth, SlackIntake};
use crate::slack::api::{Body, Repeat as SlackRepeat, SlackApi};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::Platform;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, status: Status, text: impl Into<String>) {
        self.lines.push(Line {
            status,
            text: text.into(),
        });
    }

    pub fn ok(&self) -> bool {
        self.lines.iter().all(|l| l.status != Status::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            let mark = match l.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            writeln!(f, "[{mark}] {}", l.text)?;
        }
        let fails = self
            .lines
            .iter()
            .filter(|l| l.status == Status::Fail)
            .count();
        if fails == 0 {
            writeln!(f, "all checks passed")
        } else {
            writeln!(f, "{fails} check(s) failed")
        }
    }
}

/// Probe everything the config names.
pub async fn probe(config: &Config) -> Report {
    let mut report = Report::default();
    report.push(
        Status::Ok,
        format!(
            "config {}: {} mapping(s), {} room(s)",
            config.path.display(),
            config.mappings.len(),
            config.rooms().len()
        ),
    );
    let metrics = Arc::new(Metrics::new());
    probe_bitrix(config, &metrics, &mut report).await;
    if config.slack.is_some() {
        probe_slack(config, &metrics, &mut report).await;
    }
    if config.matrix.is_some() {
        probe_matrix(config, &mut report).await;
    }
    report
}

/// Matrix probes over the plain client-server API: no SDK store is opened, so `check` never
/// disturbs a running bridge's session or crypto store.
async fn probe_matrix(config: &Config, report: &mut Report) {
    let Some(m) = &config.matrix else { return };
    let http = match reqwest::Client::builder()
        .timeout(m.request_timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            report.push(
                Status::Fail,
                format!("Matrix: cannot build a client: {}", e.without_url()),
            );
            return;
        }
    };
    let hs = &m.homeserver;
    let (token, temporary) = match &m.auth {
        MatrixAuth::Token { access_token, .. } => (access_token.expose().to_string(), false),
        MatrixAuth::Password { password, .. } => {
            let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": m.user_id},
                "password": password.expose(), "initial_device_display_name": "livefeed-bridge check"});
            match matrix_call(
                &http,
                reqwest::Method::POST,
                &format!("{hs}/_matrix/client/v3/login"),
                None,
                Some(body),
            )
            .await
            {
                Ok(v) => (
                    v["access_token"].as_str().unwrap_or_default().to_string(),
                    true,
                ),
                Err(e) => {
                    report.push(
                        Status::Fail,
                        format!("Matrix {hs}: password login failed: {e}"),
                    );
                    return;
                }
            }
        }
    };
    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        async move {
            matrix_call(
                &http,
                reqwest::Method::GET,
                &format!("{hs}/_matrix/client/v3{path}"),
                Some(&token),
                None,
            )
            .await
        }
    };
    match get("/account/whoami".into()).await {
        Ok(v) if v["user_id"] == m.user_id => report.push(
            Status::Ok,
            format!(
                "Matrix {hs}: signed in as {} (device {})",
                m.user_id,
                v["device_id"].as_str().unwrap_or("?")
            ),
        ),
        Ok(v) => report.push(
            Status::Fail,
            format!(
                "Matrix: the token belongs to {}, not to matrix.user_id {}",
                v["user_id"], m.user_id
            ),
        ),
        Err(e) => {
            report.push(
                Status::Fail,
                format!("Matrix {hs}: whoami failed: {e} — check the access token"),
            );
            return;
        }
    }
    // An invited user cannot read a room's state: learn memberships from the bot's own lists.
    let joined: Vec<String> = get("/joined_rooms".into())
        .await
        .map(|v| {
            v["joined_rooms"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let no_timeline = urlencode(
        r#"{"room":{"timeline":{"limit":0},"state":{"types":[]},"ephemeral":{"types":[]},"account_data":{"types":[]}},"presence":{"types":[]},"account_data":{"types":[]}}"#,
    );
    let invited: Vec<String> = get(format!("/sync?timeout=0&filter={no_timeline}"))
        .await
        .map(|v| {
            v["rooms"]["invite"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    for room in config
        .rooms()
        .into_iter()
        .filter(|r| r.platform == Platform::Matrix)
    {
        let id = if room.id.starts_with('#') {
            match get(format!("/directory/room/{}", urlencode(&room.id))).await {
                Ok(v) => v["room_id"].as_str().unwrap_or_default().to_string(),
                Err(e) => {
                    report.push(
                        Status::Fail,
                        format!("Matrix room {}: the alias does not resolve: {e}", room.id),
                    );
                    continue;
                }
            }
        } else {
            room.id.clone()
        };
        let state = |kind: &str, key: &str| {
            get(format!(
                "/rooms/{}/state/{kind}/{}",
                urlencode(&id),
                urlencode(key)
            ))
        };
        if invited.contains(&id) {
            report.push(
                Status::Warn,
                format!(
                    "Matrix room {}: the bot is invited; it joins when the bridge runs",
                    room.id
                ),
            );
            continue;
        }
        if !joined.contains(&id) {
            report.push(
                Status::Fail,
                format!(
                    "Matrix room {}: the bot is not a member — invite {} to the room",
                    room.id, m.user_id
                ),
            );
            continue;
        }
        let levels = state("m.room.power_levels", "").await.unwrap_or_default();
        let own = levels["users"][&m.user_id]
            .as_i64()
            .or(levels["users_default"].as_i64())
            .unwrap_or(0);
        let needed = levels["events"]["m.room.message"]
            .as_i64()
            .or(levels["events_default"].as_i64())
            .unwrap_or(0);
        let encrypted = state("m.room.encryption", "").await.is_ok();
        if own < needed {
            report.push(Status::Fail, format!("Matrix room {}: the bot's power level {own} is below the {needed} needed to post", room.id));
        } else if encrypted && !m.encryption {
            report.push(
                Status::Fail,
                format!(
                    "Matrix room {} is encrypted but matrix.encryption is false — set it to true",
                    room.id
                ),
            );
        } else {
            report.push(
                Status::Ok,
                format!(
                    "Matrix room {}: bot joined, power level {own}{}",
                    room.id,
                    if encrypted { ", encrypted" } else { "" }
                ),
            );
        }
    }
    if temporary {
        let _ = matrix_call(
            &http,
            reqwest::Method::POST,
            &format!("{hs}/_matrix/client/v3/logout"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    }
}

async fn matrix_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "HTTP {} {}",
            status.as_u16(),
            value["errcode"].as_str().unwrap_or("")
        ))
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn probe_bitrix(config: &Config, metrics: &Arc<Metrics>, report: &mut Report) {
    let b = &config.bitrix24;
    let client = match BitrixClient::new(
        b.webhook_url.clone(),
        None,
        b.request_timeout,
        metrics.clone(),
    ) {
        Ok(c) => c.with_backoff(
            std::time::Duration::from_millis(300),
            std::time::Duration::from_secs(2),
            2,
        ),
        Err(e) => {
            report.push(
                Status::Fail,
                format!("Bitrix24: cannot build a client: {}", e.without_url()),
            );
            return;
        }
    };
    match client.call("profile", json!({}), BitrixRepeat::Safe).await {
        Ok(resp) => {
            let r = &resp.result;
            let name = [r.get("NAME"), r.get("LAST_NAME")]
                .into_iter()
                .flatten()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(" ");
            let admin = r.get("ADMIN").and_then(Value::as_bool).unwrap_or(false);
            report.push(
                Status::Ok,
                format!(
                    "Bitrix24 {}: webhook user {} ({}){}",
                    b.portal_url,
                    r.get("ID").map(value_text).unwrap_or_default(),
                    name.trim(),
                    if admin { ", portal admin" } else { "" }
                ),
            );
        }
        Err(e) => {
            report.push(
                Status::Fail,
                format!("Bitrix24 {}: profile failed: {e} — check the webhook URL and that the webhook is active", b.portal_url),
            );
            return;
        }
    }
    match client.call("scope", json!({}), BitrixRepeat::Safe).await {
        Ok(resp) => {
            let scopes: Vec<String> = as_list(&resp.result).into_iter().map(value_text).collect();
            let has = |s: &str| scopes.iter().any(|x| x == s);
            let mut missing = Vec::new();
            if !has("log") {
                missing.push("log");
            }
            if !(has("user") || has("user_brief") || has("user_basic")) {
                missing.push("user");
            }
            if missing.is_empty() {
                report.push(
                    Status::Ok,
                    format!("Bitrix24 scopes: {}", scopes.join(", ")),
                );
            } else {
                report.push(
                    Status::Fail,
                    format!(
                        "Bitrix24 webhook lacks scope(s): {} (has: {}) — edit the incoming webhook and tick them",
                        missing.join(", "),
                        scopes.join(", ")
                    ),
                );
            }
        }
        Err(e) => report.push(Status::Fail, format!("Bitrix24: scope failed: {e}")),
    }
}

async fn probe_slack(config: &Config, metrics: &Arc<Metrics>, report: &mut Report) {
    let Some(s) = &config.slack else { return };
    let api = match SlackApi::new(
        s.api_base.clone(),
        s.bot_token.clone(),
        None,
        s.request_timeout,
        metrics.clone(),
    ) {
        Ok(a) => a,
        Err(e) => {
            report.push(
                Status::Fail,
                format!("Slack: cannot build a client: {}", e.without_url()),
            );
            return;
        }
    };
    match api.auth_test().await {
        Ok(v) => report.push(
            Status::Ok,
            format!(
                "Slack: bot {} ({}) in team {}",
                v.get("user").and_then(Value::as_str).unwrap_or("?"),
                v.get("user_id").and_then(Value::as_str).unwrap_or("?"),
                v.get("team").and_then(Value::as_str).unwrap_or("?")
            ),
        ),
        Err(e) => {
            report.push(Status::Fail, format!("Slack: auth.test failed: {e} — check SLACK_BOT_TOKEN and that the app is installed"));
            return;
        }
    }
    match &s.intake {
        SlackIntake::SocketMode { app_token } => {
            match api
                .call_with("apps.connections.open", None, Body::Form(Vec::new()), SlackRepeat::Safe, app_token)
                .await
            {
                Ok(_) => report.push(Status::Ok, "Slack: app-level token opens Socket Mode connections"),
                Err(e) => report.push(
                    Status::Fail,
                    format!("Slack: apps.connections.open failed: {e} — the app token needs connections:write and Socket Mode must be on"),
                ),
            }
        }
        SlackIntake::EventsApi { .. } => report.push(
            Status::Ok,
            format!(
                "Slack: Events API on http://{}/slack/events (signing secret set)",
                config.http.listen
            ),
        ),
    }
    for room in config
        .rooms()
        .into_iter()
        .filter(|r| r.platform == Platform::Slack)
    {
        match api.conversations_info(&room.id).await {
            Ok(v) => {
                let ch = &v["channel"];
                let name = ch.get("name").and_then(Value::as_str).unwrap_or("?");
                let member = ch.get("is_member").and_then(Value::as_bool).unwrap_or(false);
                let archived = ch.get("is_archived").and_then(Value::as_bool).unwrap_or(false);
                if archived {
                    report.push(Status::Fail, format!("Slack channel {} (#{name}) is archived — unarchive it or change the mapping", room.id));
                } else if !member {
                    report.push(Status::Fail, format!("Slack channel {} (#{name}): the bot is not a member — type /invite @<bot> in #{name}", room.id));
                } else {
                    report.push(Status::Ok, format!("Slack channel {} (#{name}): bot is a member", room.id));
                }
            }
            Err(e) => report.push(
                Status::Fail,
                format!("Slack channel {}: {e} — private channels are invisible until the bot is invited", room.id),
            ),
        }
    }
}
