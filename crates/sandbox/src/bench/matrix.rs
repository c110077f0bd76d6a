//! The Matrix part of the harness: a real Synapse (started by `scripts/synapse.sh`, found
//! through `MATRIX_HOMESERVER` and `MATRIX_ADMIN_TOKEN`), a bot and a person registered with
//! the admin API, and an encrypted room the person creates and invites the bot to. Synapse
//! limits the bot's sends like any user's (`override_ratelimit`, sped up like the fakes), and
//! the bridge paces itself to match (`matrix.send_rate`).

use serde_json::{Value, json};

/// Synapse's own limit on a user's sends, before scaling: 1 message/s with a burst of 3, the
/// same as Slack's per channel. (Synapse's default `rc_message` is 0.2/s with a burst of 10;
/// bridge bots are usually exempted.)
pub const PER_SEC: u32 = 1;
pub const BURST: u32 = 3;

/// The homeserver the environment names.
#[derive(Clone)]
pub struct Homeserver {
    url: String,
    admin_token: String,
    server_name: String,
    http: reqwest::Client,
}

/// A room ready for the bridge: the bot's credentials and the room.
pub struct MatrixRoom {
    pub hs: Homeserver,
    pub bot: String,
    pub bot_password: String,
    pub room: String,
}

impl Homeserver {
    /// `None` when no homeserver is configured (the Matrix figures are then skipped).
    pub fn from_env() -> Option<Homeserver> {
        let url = std::env::var("MATRIX_HOMESERVER").ok()?;
        let admin_token = std::env::var("MATRIX_ADMIN_TOKEN").ok()?;
        let server_name = std::env::var("MATRIX_SERVER_NAME").unwrap_or("localhost".into());
        Some(Homeserver {
            url,
            admin_token,
            server_name,
            http: reqwest::Client::new(),
        })
    }

    /// The client URL, for the bridge's config.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .expect("the homeserver answers");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// A new user: its id and password.
    async fn register(&self, prefix: &str) -> (String, String) {
        let user = format!(
            "@{prefix}{}x{}:{}",
            std::process::id(),
            fastrand::u32(..),
            self.server_name
        );
        let password = format!("pw-{}", fastrand::u64(..));
        self.admin(
            reqwest::Method::PUT,
            &format!("/_synapse/admin/v2/users/{user}"),
            json!({ "password": password, "admin": false }),
        )
        .await;
        (user, password)
    }

    async fn login(&self, user: &str, password: &str) -> String {
        let resp: Value = self
            .http
            .post(format!("{}/_matrix/client/v3/login", self.url))
            .json(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": password,
            }))
            .send()
            .await
            .expect("the homeserver answers")
            .json()
            .await
            .expect("a login answer");
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("login failed: {resp}"))
            .to_string()
    }

    /// A bot limited to `per_second` sends with `burst`, and an encrypted room a person
    /// created and invited it to.
    pub async fn room_for_bot(&self, per_second: u32, burst: u32) -> MatrixRoom {
        let (bot, bot_password) = self.register("benchbot").await;
        let (person, password) = self.register("benchperson").await;
        self.admin(
            reqwest::Method::POST,
            &format!("/_synapse/admin/v1/users/{bot}/override_ratelimit"),
            json!({ "messages_per_second": per_second, "burst_count": burst }),
        )
        .await;
        let token = self.login(&person, &password).await;
        let resp: Value = self
            .http
            .post(format!("{}/_matrix/client/v3/createRoom", self.url))
            .bearer_auth(&token)
            .json(&json!({
                "preset": "private_chat",
                "name": "Company news",
                "invite": [bot],
                "initial_state": [{
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": { "algorithm": "m.megolm.v1.aes-sha2" },
                }],
            }))
            .send()
            .await
            .expect("the homeserver answers")
            .json()
            .await
            .expect("a createRoom answer");
        let room = resp["room_id"]
            .as_str()
            .unwrap_or_else(|| panic!("createRoom failed: {resp}"))
            .to_string();
        MatrixRoom {
            hs: self.clone(),
            bot,
            bot_password,
            room,
        }
    }
}

impl MatrixRoom {
    /// The `matrix:` section of a bridge config whose store is `store`, paced at
    /// `per_second` with `burst` (the limit the bot was given).
    pub fn config(&self, per_second: f64, burst: u32) -> String {
        format!(
            "matrix:\n  homeserver: {}\n  user_id: \"{}\"\n  password: {}\n  encryption: true\n  send_rate: {{ per_second: {per_second}, burst: {burst} }}\n",
            self.hs.url(),
            self.bot,
            self.bot_password,
        )
    }
}

/// The value of one sample in a Prometheus text exposition (`0` when absent).
pub fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The bridge's successful Matrix sends, from its `/metrics`.
pub const SENT: &str =
    "livefeed_bridge_api_calls_total{platform=\"matrix\",method=\"send\",outcome=\"ok\"}";
/// The bridge's Matrix sends refused with `M_LIMIT_EXCEEDED`.
pub const LIMITED: &str =
    "livefeed_bridge_api_calls_total{platform=\"matrix\",method=\"send\",outcome=\"rate_limited\"}";
