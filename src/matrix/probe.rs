//! `check` for Matrix: the session (`whoami`), then each mapped room: the bot's membership, its
//! power level against what posting needs, and encryption.
//!
//! The probes speak the plain client-server API over HTTP instead of going through matrix-sdk:
//! the SDK would open the bridge's state and crypto store (locked by a running bridge) or, with
//! a fresh in-memory store, could upload new device keys for the bridge's device. `check` must
//! never disturb the running bridge's session.

use serde_json::{Value, json};

use super::config::{MatrixAuth, MatrixConfig};
use crate::check::Report;

/// A client-server API session for probing: the homeserver, a token, and whether the token is
/// a temporary login to log out of afterwards.
struct Probe {
    http: reqwest::Client,
    homeserver: String,
    token: String,
    temporary: bool,
}

/// Probe the session and every mapped room.
pub async fn probe(cfg: &MatrixConfig, rooms: &[String], report: &mut Report) {
    let probe = match Probe::sign_in(cfg).await {
        Ok(p) => p,
        Err(e) => return report.fail(e),
    };
    if probe.whoami(cfg, report).await {
        let joined = probe.joined_rooms().await;
        let invited = probe.invited_rooms().await;
        for room in rooms {
            probe.room(cfg, room, &joined, &invited, report).await;
        }
    }
    probe.sign_out().await;
}

impl Probe {
    /// Use the configured token, or log in once with the password (logged out at the end).
    async fn sign_in(cfg: &MatrixConfig) -> Result<Probe, String> {
        let hs = &cfg.homeserver;
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|e| format!("Matrix: cannot build a client: {}", e.without_url()))?;
        let mut probe = Probe {
            http,
            homeserver: hs.clone(),
            token: String::new(),
            temporary: false,
        };
        match &cfg.auth {
            MatrixAuth::Token { access_token, .. } => {
                probe.token = access_token.expose().to_string();
            }
            MatrixAuth::Password { password, .. } => {
                let body = json!({"type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": cfg.user_id},
                    "password": password.expose(),
                    "initial_device_display_name": "livefeed-bridge check"});
                let v = probe
                    .call(reqwest::Method::POST, "/login", Some(body))
                    .await
                    .map_err(|e| format!("Matrix {hs}: password login failed: {e}"))?;
                probe.token = v["access_token"].as_str().unwrap_or_default().to_string();
                probe.temporary = true;
            }
        }
        Ok(probe)
    }

    /// Whether the token belongs to the configured bot.
    async fn whoami(&self, cfg: &MatrixConfig, report: &mut Report) -> bool {
        let hs = &self.homeserver;
        match self.get("/account/whoami").await {
            Ok(v) if v["user_id"] == cfg.user_id => {
                report.ok(format!(
                    "Matrix {hs}: signed in as {} (device {})",
                    cfg.user_id,
                    v["device_id"].as_str().unwrap_or("?")
                ));
                true
            }
            Ok(v) => {
                report.fail(format!(
                    "Matrix: the token belongs to {}, not to matrix.user_id {}",
                    v["user_id"], cfg.user_id
                ));
                false
            }
            Err(e) => {
                report.fail(format!(
                    "Matrix {hs}: whoami failed: {e} — check the access token"
                ));
                false
            }
        }
    }

    /// The rooms the bot is in. An invited user cannot read a room's state, so memberships
    /// come from the bot's own lists.
    async fn joined_rooms(&self) -> Vec<String> {
        let v = self.get("/joined_rooms").await.unwrap_or_default();
        strings(&v["joined_rooms"])
    }

    /// The rooms the bot is invited to (a sync without timelines).
    async fn invited_rooms(&self) -> Vec<String> {
        let no_timeline = urlencode(
            r#"{"room":{"timeline":{"limit":0},"state":{"types":[]},"ephemeral":{"types":[]},"account_data":{"types":[]}},"presence":{"types":[]},"account_data":{"types":[]}}"#,
        );
        let v = self
            .get(&format!("/sync?timeout=0&filter={no_timeline}"))
            .await
            .unwrap_or_default();
        v["rooms"]["invite"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn room(
        &self,
        cfg: &MatrixConfig,
        room: &str,
        joined: &[String],
        invited: &[String],
        report: &mut Report,
    ) {
        let id = if room.starts_with('#') {
            match self
                .get(&format!("/directory/room/{}", urlencode(room)))
                .await
            {
                Ok(v) => v["room_id"].as_str().unwrap_or_default().to_string(),
                Err(e) => {
                    return report.fail(format!(
                        "Matrix room {room}: the alias does not resolve: {e}"
                    ));
                }
            }
        } else {
            room.to_string()
        };
        if invited.contains(&id) {
            return report.warn(format!(
                "Matrix room {room}: the bot is invited; it joins when the bridge runs"
            ));
        }
        if !joined.contains(&id) {
            return report.fail(format!(
                "Matrix room {room}: the bot is not a member — invite {} to the room",
                cfg.user_id
            ));
        }
        let levels = self
            .state(&id, "m.room.power_levels")
            .await
            .unwrap_or_default();
        let own = levels["users"][&cfg.user_id]
            .as_i64()
            .or(levels["users_default"].as_i64())
            .unwrap_or(0);
        let needed = levels["events"]["m.room.message"]
            .as_i64()
            .or(levels["events_default"].as_i64())
            .unwrap_or(0);
        let encrypted = self.state(&id, "m.room.encryption").await.is_ok();
        if own < needed {
            report.fail(format!(
                "Matrix room {room}: the bot's power level {own} is below the {needed} needed to post"
            ));
        } else if encrypted && !cfg.encryption {
            report.fail(format!(
                "Matrix room {room} is encrypted but matrix.encryption is false — set it to true"
            ));
        } else {
            report.ok(format!(
                "Matrix room {room}: bot joined, power level {own}{}",
                if encrypted { ", encrypted" } else { "" }
            ));
            // Pinning is a state event: `state_default` (50) unless the room says otherwise.
            let pin_needed = levels["events"]["m.room.pinned_events"]
                .as_i64()
                .or(levels["state_default"].as_i64())
                .unwrap_or(50);
            if own < pin_needed {
                report.warn(format!(
                    "Matrix room {room}: the bot's power level {own} is below the {pin_needed} needed to pin, so important posts are not pinned there — raise it or lower m.room.pinned_events"
                ));
            }
        }
    }

    async fn state(&self, room: &str, kind: &str) -> Result<Value, String> {
        self.get(&format!("/rooms/{}/state/{kind}/", urlencode(room)))
            .await
    }

    async fn sign_out(self) {
        if self.temporary {
            let _ = self
                .call(reqwest::Method::POST, "/logout", Some(json!({})))
                .await;
        }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// One call to `/_matrix/client/v3{path}`; errors say the status and `errcode` only.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/_matrix/client/v3{path}", self.homeserver);
        let mut req = self.http.request(method, url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
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
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
