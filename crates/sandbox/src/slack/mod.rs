//! A faithful fake Slack workspace for end-to-end tests and manual demos.
//!
//! It speaks the wire contract in `docs/platforms/slack.md`: the Web API (`/api/<method>`, JSON, form
//! and query encodings, Bearer or form tokens, Slack's error envelopes, 429 rate limiting),
//! Socket Mode (`apps.connections.open`, single-use tickets, `hello`, `events_api` envelopes,
//! acks, redelivery, `disconnect` frames) and Events API HTTP delivery (v0 signatures, retries).
//! Every state change — people acting through [`FakeSlack::post`] & co. **and** the bot's own
//! Web API writes — is emitted as the `event_callback` payload Slack would send.
//!
//! Files follow the external upload (`files.getUploadURLExternal`, raw bytes to the
//! `upload_url` without a token, `files.completeUploadExternal` with `files` as a JSON string)
//! in the shape the official `slack-sdk` 3.47 `files_upload_v2` sends, as recorded in the
//! contract; `url_private` serves bytes only to the bot token with `files:read` and a sign-in
//! page otherwise; people share files as `file_share` messages ([`FakeSlack::reply_with_file`]).
//!
//! The fake is deliberately strict where Slack is strict (JSON bodies are ignored by form-only
//! methods, tokens inside JSON do not authenticate, private channels are invisible to
//! non-members). Behaviour the contract marks as uncertain is switchable through [`Quirks`].
//!
//! # Control API (manual demos)
//!
//! Plain JSON over HTTP on the Web API port, no authentication (loopback only). Errors are
//! HTTP 400 `{"ok":false,"error":"…"}`.
//!
//! | route | body / result |
//! |---|---|
//! | `GET  /_sandbox/state` | ids, tokens' *kinds*, connection/ack counters |
//! | `GET  /_sandbox/users` · `POST /_sandbox/users` | `{name, real_name, display_name, email, image_72?, is_bot?}` → `{id}` |
//! | `GET  /_sandbox/channels` · `POST /_sandbox/channels` | `{name, private?, bot_member?}` → `{id}` |
//! | `POST /_sandbox/channels/{id}/archive` | → `{}` |
//! | `POST /_sandbox/channels/{id}/bot_member` | `{member: bool}` |
//! | `POST /_sandbox/post` | `{user, channel, text}` → `{ts}` |
//! | `POST /_sandbox/reply` | `{user, channel, thread_ts, text, broadcast?}` → `{ts}` |
//! | `POST /_sandbox/edit` | `{user, channel, ts, text}` |
//! | `POST /_sandbox/delete` | `{user, channel, ts}` |
//! | `POST /_sandbox/react` | `{user, channel, ts, name}` |
//! | `GET  /_sandbox/history/{channel}` | messages, oldest first |
//! | `GET  /_sandbox/thread/{channel}/{ts}` | parent then replies |
//! | `GET  /_sandbox/requests` · `GET /_sandbox/events` | request log / emitted event payloads |
//! | `POST /_sandbox/disconnect` | `{reason}` (`warning`, `refresh_requested`, `link_disabled`, `too_many_websockets`) |
//! | `POST /_sandbox/events_url` | `{url: "http://…" \| null}` |

mod api;
mod control;
mod events;
mod params;
mod socket;
mod state;
mod text;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use events::{HttpReply, SignMode, sign_v0};

/// `chat.postMessage` pacing per channel (a token bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostRate {
    pub per_sec: f64,
    pub burst: u32,
}

/// `chat.postMessage` with a `thread_ts` that names no message in the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownThread {
    /// `thread_not_found` — strict, so bridge bugs surface.
    #[default]
    Error,
    /// Post as a top-level message.
    TopLevel,
}

/// `chat.postMessage` with a `thread_ts` that is itself a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyThreadTs {
    /// Slack resolves threads through any member, as `conversations.replies` does.
    #[default]
    AttachToRoot,
    /// `cannot_reply_to_message`.
    Error,
}

/// `chat.postMessage` with more than 40,000 characters of `text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LongPost {
    /// Truncate, answer `ok` with the `message_truncated` warning (2018 changelog).
    #[default]
    Truncate,
    /// `msg_too_long` (older docs).
    Reject,
}

/// Switches for behaviour the contract marks as inferred or unestablished.
#[derive(Debug, Clone)]
pub struct Quirks {
    pub unknown_thread_ts: UnknownThread,
    pub reply_thread_ts: ReplyThreadTs,
    pub long_post: LongPost,
    /// `chat.update` limit answered with `msg_too_long`; `None` disables it.
    pub update_text_limit: Option<usize>,
    /// Deleting a parent that has replies leaves a `tombstone` (`message_changed`) instead of
    /// a `message_deleted`.
    pub tombstone_parent_on_delete: bool,
    /// Customised (`bot_message`) posts still carry `user` = the bot user.
    pub customized_includes_user: bool,
    /// `username`/`icon_*` without `chat:write.customize` → `missing_scope` instead of being
    /// silently ignored.
    pub customize_without_scope_error: bool,
    /// `missing_charset` / `superfluous_charset` warnings.
    pub charset_warnings: bool,
    /// Methods without JSON input support ignore JSON body arguments (as Slack does).
    pub json_args_only_where_supported: bool,
    /// Emit a hidden `message_changed` for a parent whenever its reply info changes.
    pub parent_changed_on_reply: bool,
    /// Message events carry `metadata`.
    pub metadata_in_events: bool,
    /// Socket Mode redeliveries reuse the envelope id.
    pub redelivery_keeps_envelope_id: bool,
    /// Pacing and tier limits answer HTTP 200 `rate_limited` instead of 429 `ratelimited`.
    pub rate_limit_as_200: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks {
            unknown_thread_ts: UnknownThread::Error,
            reply_thread_ts: ReplyThreadTs::AttachToRoot,
            long_post: LongPost::Truncate,
            update_text_limit: Some(4000),
            tombstone_parent_on_delete: true,
            customized_includes_user: true,
            customize_without_scope_error: false,
            charset_warnings: true,
            json_args_only_where_supported: true,
            parent_changed_on_reply: false,
            metadata_in_events: false,
            redelivery_keeps_envelope_id: false,
            rate_limit_as_200: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkspaceConfig {
    pub team_id: String,
    pub team_name: String,
    /// `<domain>.slack.com`, used in `auth.test` and permalinks.
    pub team_domain: String,
    pub app_id: String,
    pub app_name: String,
    pub bot_id: String,
    pub bot_user_id: String,
    pub bot_user_name: String,
    pub bot_token: String,
    pub app_token: String,
    pub signing_secret: String,
    /// Legacy `token` field of event payloads.
    pub verification_token: String,
    pub bot_scopes: Vec<String>,
    pub post_rate: Option<PostRate>,
    /// `(method, per minute, burst)`, counted per method for the whole workspace.
    pub method_rates: Vec<(String, f64, u32)>,
    /// Socket Mode: redeliver unacked envelopes after this.
    pub ack_timeout: Duration,
    /// Socket Mode redeliveries before an event is given up.
    pub socket_retries: u32,
    /// How long an event nobody acknowledges is kept for redelivery, with or without a
    /// connection, before Slack gives it up (its retries span about six minutes).
    pub undelivered_retention: Duration,
    pub max_socket_connections: usize,
    /// Server-initiated WebSocket pings; `None` disables them.
    pub ping_interval: Option<Duration>,
    /// Time between a `refresh_requested` disconnect frame and the close.
    pub refresh_grace: Duration,
    /// Time between a `warning` disconnect frame and the close (≈10 s at Slack).
    pub warning_grace: Duration,
    /// Events API retry schedule; its length is the number of retries.
    pub http_retry_delays: Vec<Duration>,
    /// Events API: a delivery not answered within this is a `http_timeout`.
    pub http_timeout: Duration,
    pub seed: u64,
    pub quirks: Quirks,
}

/// The manifest's bot scopes (contract §7).
pub const MANIFEST_SCOPES: &[&str] = &[
    "chat:write",
    "chat:write.customize",
    "channels:history",
    "groups:history",
    "channels:read",
    "groups:read",
    "channels:join",
    "users:read",
    "users:read.email",
    "files:read",
    "files:write",
    "pins:write",
    "reactions:write",
    "reactions:read",
];

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig {
            team_id: "T0B24TEAM".into(),
            team_name: "B24 Bridge Test".into(),
            team_domain: "b24-bridge".into(),
            app_id: "A0B24APP1".into(),
            app_name: "Bitrix24 Bridge".into(),
            bot_id: "B0B24BOT1".into(),
            bot_user_id: "U0B24BOT1".into(),
            bot_user_name: "b24bridge".into(),
            bot_token: "xoxb-1000000001-2000000002-fakeslackbottoken".into(),
            app_token: "xapp-1-A0B24APP1-3000000003-fakeslackapptoken".into(),
            signing_secret: "bridge-test-signing-secret".into(),
            verification_token: "XXYYZZ".into(),
            bot_scopes: MANIFEST_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            post_rate: Some(PostRate {
                per_sec: 1.0,
                burst: 5,
            }),
            method_rates: Vec::new(),
            ack_timeout: Duration::from_secs(3),
            socket_retries: 3,
            undelivered_retention: Duration::from_secs(360),
            max_socket_connections: 10,
            ping_interval: Some(Duration::from_secs(10)),
            refresh_grace: Duration::from_millis(500),
            warning_grace: Duration::from_secs(10),
            http_retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(60),
                Duration::from_secs(300),
            ],
            http_timeout: Duration::from_secs(3),
            seed: 0x5eed_0b24,
            quirks: Quirks::default(),
        }
    }
}

/// A person (or a foreign bot) in the workspace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewUser {
    pub name: String,
    pub real_name: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub image_72: Option<String>,
    #[serde(default)]
    pub is_bot: bool,
}

impl NewUser {
    pub fn new(name: &str, real_name: &str) -> Self {
        NewUser {
            name: name.into(),
            real_name: real_name.into(),
            email: format!("{name}@example.com"),
            ..NewUser::default()
        }
    }
}

/// A stored message, for assertions. `raw` is the JSON `conversations.history` would return
/// (with metadata).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageView {
    pub ts: String,
    pub thread_ts: Option<String>,
    pub user: Option<String>,
    pub bot_id: Option<String>,
    pub app_id: Option<String>,
    pub subtype: Option<String>,
    pub username: Option<String>,
    pub icon_url: Option<String>,
    pub text: String,
    pub metadata: Option<Value>,
    pub reply_count: usize,
    pub edited: bool,
    pub blocks: Option<Value>,
    /// The files the message shares.
    pub files: Vec<FileView>,
    pub raw: Value,
}

/// A file shared in a message, for assertions (`FakeSlack::file_content` has its bytes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileView {
    pub id: String,
    pub name: String,
    pub title: String,
    pub size: u64,
}

/// One Web API call as received. `params` never contains `token`; `status` is 0 when the
/// connection was reset instead of answered.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub method: String,
    pub http_method: String,
    pub content_type: Option<String>,
    /// How the token arrived: `"header"`, `"form"` or `None`.
    pub auth: Option<&'static str>,
    pub params: Value,
    pub status: u16,
    pub ok: bool,
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub retry_after: Option<u64>,
    /// When the request arrived, unix microseconds (the bench's latency figures).
    pub arrived_us: i64,
}

/// One Events API delivery attempt.
#[derive(Debug, Clone, Serialize)]
pub struct HttpDelivery {
    pub event_id: String,
    pub retry_num: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub no_retry: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// HTTP 429, `Retry-After`, body `{"ok":false,"error":"ratelimited"}`.
    RateLimited { retry_after: u64 },
    /// HTTP 200 `{"ok":false,"error":"rate_limited"}`.
    RateLimited200,
    /// That status with an HTML body.
    ServerError(u16),
    /// The TCP connection is reset instead of answered.
    ConnectionReset,
    /// Answer normally after this long.
    Delay(Duration),
    /// HTTP 200 `{"ok":false,"error":<code>}`.
    ApiError(String),
}

/// A scripted fault for the next `times` matching requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub method: Option<String>,
    pub channel: Option<String>,
    pub kind: FaultKind,
    pub times: usize,
}

impl Fault {
    /// One occurrence on `method` (any channel).
    pub fn on(method: &str, kind: FaultKind) -> Self {
        Fault {
            method: Some(method.into()),
            channel: None,
            kind,
            times: 1,
        }
    }

    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    pub fn in_channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.into());
        self
    }
}

pub(crate) struct World {
    pub ws: state::Workspace,
    pub net: api::Net,
    pub dl: events::Delivery,
}

pub(crate) struct Shared {
    pub cfg: WorkspaceConfig,
    world: Mutex<World>,
    version: watch::Sender<u64>,
    pub rt: tokio::runtime::Handle,
    pub api_addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub shutdown: watch::Sender<bool>,
    pub http_tx: mpsc::UnboundedSender<events::HttpJob>,
    pub http: reqwest::Client,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        // A panic elsewhere must not turn every later request into a panic too.
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes `wait_until` callers.
    pub(crate) fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Resolves once shutdown has been requested.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not across a caller's await.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// A running fake workspace. Cheap to clone; all clones share one workspace.
#[derive(Clone)]
pub struct FakeSlack(Arc<Shared>);

impl FakeSlack {
    /// Starts the Web API and the Socket Mode WebSocket server on loopback ports.
    pub async fn start(cfg: WorkspaceConfig) -> std::io::Result<FakeSlack> {
        let any = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        Self::start_on(cfg, any, any).await
    }

    /// Starts the Web API on `api` and Socket Mode on `ws`; URLs name loopback when an
    /// address is a wildcard.
    pub async fn start_on(
        cfg: WorkspaceConfig,
        api: SocketAddr,
        ws: SocketAddr,
    ) -> std::io::Result<FakeSlack> {
        let api_listener = TcpListener::bind(api).await?;
        let ws_listener = TcpListener::bind(ws).await?;
        let api_addr = crate::reachable(api_listener.local_addr()?);
        let ws_addr = crate::reachable(ws_listener.local_addr()?);
        let (http_tx, http_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(std::io::Error::other)?;
        let mut workspace = state::Workspace::new(cfg.clone());
        workspace.base_url = format!("http://{api_addr}");
        let world = World {
            ws: workspace,
            net: api::Net::default(),
            dl: events::Delivery::default(),
        };
        let shared = Arc::new(Shared {
            cfg,
            world: Mutex::new(world),
            version: watch::channel(0).0,
            rt: tokio::runtime::Handle::current(),
            api_addr,
            ws_addr,
            shutdown,
            http_tx,
            http,
        });
        tokio::spawn(api::serve(shared.clone(), api_listener));
        tokio::spawn(socket::serve(shared.clone(), ws_listener));
        tokio::spawn(events::http_worker(shared.clone(), http_rx));
        Ok(FakeSlack(shared))
    }

    /// `http://127.0.0.1:PORT/api/`
    pub fn api_base(&self) -> String {
        format!("http://{}/api/", self.0.api_addr)
    }

    /// `http://127.0.0.1:PORT` — the control API lives under `/_sandbox/`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.0.api_addr)
    }

    pub fn config(&self) -> &WorkspaceConfig {
        &self.0.cfg
    }

    /// Stops both servers and closes all sockets; pending deliveries are abandoned.
    pub fn shutdown(&self) {
        self.0.shutdown.send_replace(true);
        self.0.lock().dl.close_all();
        self.0.bump();
    }

    fn with<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        let r = {
            let mut w = self.0.lock();
            let r = f(&mut w);
            self.0.flush(&mut w);
            r
        };
        self.0.bump();
        r
    }

    // ---- setup --------------------------------------------------------------------------

    pub fn add_user(&self, u: NewUser) -> String {
        self.with(|w| w.ws.add_user(u))
    }

    pub fn add_channel(&self, name: &str, private: bool, bot_member: bool) -> String {
        self.with(|w| w.ws.add_channel(name, private, bot_member))
    }

    /// The id of a channel by name (with or without `#`).
    pub fn channel_id(&self, name: &str) -> Option<String> {
        self.0.lock().ws.find_channel(name).map(|c| c.id.clone())
    }

    /// Panics on an unknown channel (a test-setup mistake).
    pub fn archive_channel(&self, id: &str) {
        if let Err(e) = self.with(|w| w.ws.archive_channel(id)) {
            panic!("archive_channel: {e}");
        }
    }

    /// Invites (with `member_joined_channel`) or removes the bot. Panics on an unknown channel.
    pub fn set_bot_member(&self, channel: &str, member: bool) {
        if let Err(e) = self.with(|w| w.ws.set_bot_member(channel, member)) {
            panic!("set_bot_member: {e}");
        }
    }

    /// Every later bot-token call fails with `token_revoked`.
    pub fn revoke_bot_token(&self) {
        self.with(|w| w.ws.bot_revoked = true);
    }

    /// Every later bot-token call fails with `account_inactive`.
    pub fn set_account_inactive(&self, inactive: bool) {
        self.with(|w| w.ws.account_inactive = inactive);
    }

    pub fn remove_scope(&self, scope: &str) {
        self.with(|w| w.ws.scopes.retain(|s| s != scope));
    }

    pub fn add_scope(&self, scope: &str) {
        self.with(|w| {
            if !w.ws.has_scope(scope) {
                w.ws.scopes.push(scope.to_owned());
            }
        });
    }

    /// Moves the clock used for `ts`/`event_time` (never backwards past issued `ts` values).
    pub fn advance_clock(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.with(|w| w.ws.advance_clock(micros));
    }

    // ---- people acting in Slack clients ---------------------------------------------------

    pub fn try_post(&self, user: &str, channel: &str, text: &str) -> Result<String, String> {
        self.with(|w| w.ws.human_post(user, channel, text, None))
    }

    pub fn try_reply(
        &self,
        user: &str,
        channel: &str,
        thread_ts: &str,
        text: &str,
        broadcast: bool,
    ) -> Result<String, String> {
        self.with(|w| {
            w.ws.human_post(user, channel, text, Some((thread_ts, broadcast)))
        })
    }

    /// A person replies in a thread with a file (a `file_share` message, contract §3.3).
    /// Panics on invalid setup.
    pub fn reply_with_file(
        &self,
        user: &str,
        channel: &str,
        thread_ts: &str,
        text: &str,
        name: &str,
        bytes: &[u8],
    ) -> String {
        self.with(|w| {
            w.ws.human_post_file(user, channel, text, Some(thread_ts), name, bytes)
        })
        .unwrap_or_else(|e| panic!("reply_with_file: {e}"))
    }

    /// A person posts a file at the top level of a channel. Panics on invalid setup.
    pub fn post_with_file(
        &self,
        user: &str,
        channel: &str,
        text: &str,
        name: &str,
        bytes: &[u8],
    ) -> String {
        self.with(|w| w.ws.human_post_file(user, channel, text, None, name, bytes))
            .unwrap_or_else(|e| panic!("post_with_file: {e}"))
    }

    /// A file's bytes (uploaded through the API or shared by a person).
    pub fn file_content(&self, file_id: &str) -> Option<Vec<u8>> {
        let w = self.0.lock();
        w.ws.files.get(file_id).and_then(|f| f.content.clone())
    }

    pub fn try_edit(&self, user: &str, channel: &str, ts: &str, text: &str) -> Result<(), String> {
        self.with(|w| w.ws.human_edit(user, channel, ts, text))
    }

    pub fn try_delete(&self, user: &str, channel: &str, ts: &str) -> Result<(), String> {
        self.with(|w| w.ws.human_delete(user, channel, ts))
    }

    /// A workspace admin deletes someone else's message (admins and owners may delete any
    /// message, the bot's too). A thread root with replies stays as a tombstone.
    ///
    /// # Panics
    /// If the channel or message does not exist.
    #[track_caller]
    pub fn admin_delete(&self, channel: &str, ts: &str) {
        if let Err(e) = self.with(|w| w.ws.delete(channel, ts).map_err(str::to_owned)) {
            panic!("admin_delete: {e}");
        }
    }

    pub fn try_react(&self, user: &str, channel: &str, ts: &str, name: &str) -> Result<(), String> {
        self.with(|w| {
            if !w.ws.users.contains_key(user) {
                return Err(format!("unknown user {user}"));
            }
            w.ws.add_reaction(channel, ts, user, name)
                .map_err(str::to_owned)
        })
    }

    /// A person posts `text` as typed; stored escaped with `<url>` wrapping and a `rich_text`
    /// block. Panics on invalid setup (unknown user/channel, archived channel).
    pub fn post(&self, user: &str, channel: &str, text: &str) -> String {
        self.try_post(user, channel, text)
            .unwrap_or_else(|e| panic!("post: {e}"))
    }

    pub fn reply(
        &self,
        user: &str,
        channel: &str,
        thread_ts: &str,
        text: &str,
        broadcast: bool,
    ) -> String {
        self.try_reply(user, channel, thread_ts, text, broadcast)
            .unwrap_or_else(|e| panic!("reply: {e}"))
    }

    pub fn edit(&self, user: &str, channel: &str, ts: &str, text: &str) {
        if let Err(e) = self.try_edit(user, channel, ts, text) {
            panic!("edit: {e}");
        }
    }

    pub fn delete(&self, user: &str, channel: &str, ts: &str) {
        if let Err(e) = self.try_delete(user, channel, ts) {
            panic!("delete: {e}");
        }
    }

    pub fn react(&self, user: &str, channel: &str, ts: &str, name: &str) {
        if let Err(e) = self.try_react(user, channel, ts, name) {
            panic!("react: {e}");
        }
    }

    // ---- state ------------------------------------------------------------------------------

    /// What `conversations.history` would list, oldest first (tombstones included).
    pub fn history(&self, channel: &str) -> Vec<MessageView> {
        let w = self.0.lock();
        let Some(ch) = w.ws.channels.get(channel) else {
            return Vec::new();
        };
        w.ws.history_msgs(ch)
            .into_iter()
            .map(|m| w.ws.view(ch, m))
            .collect()
    }

    /// Parent first, then replies ascending (`thread_ts` may name any message of the thread);
    /// empty if there is no such message.
    pub fn thread(&self, channel: &str, thread_ts: &str) -> Vec<MessageView> {
        let w = self.0.lock();
        let Some(ch) = w.ws.channels.get(channel) else {
            return Vec::new();
        };
        let Some(m) = ch
            .msgs
            .get(thread_ts)
            .filter(|m| m.life != state::Life::Deleted)
        else {
            return Vec::new();
        };
        // Any member of a thread names the thread, as in `conversations.replies`.
        let Some(root) = m.parent.as_ref().map_or(Some(m), |p| ch.msgs.get(p)) else {
            return Vec::new();
        };
        w.ws.thread_msgs(ch, root)
            .into_iter()
            .map(|m| w.ws.view(ch, m))
            .collect()
    }

    /// A message that is not deleted (a tombstone counts as present).
    pub fn message(&self, channel: &str, ts: &str) -> Option<MessageView> {
        let w = self.0.lock();
        let ch = w.ws.channels.get(channel)?;
        let m = ch.msgs.get(ts).filter(|m| m.life != state::Life::Deleted)?;
        Some(w.ws.view(ch, m))
    }

    /// True if the message existed and has been deleted.
    pub fn was_deleted(&self, channel: &str, ts: &str) -> bool {
        let w = self.0.lock();
        w.ws.channels
            .get(channel)
            .and_then(|c| c.msgs.get(ts))
            .is_some_and(|m| m.life == state::Life::Deleted)
    }

    pub fn scopes(&self) -> Vec<String> {
        self.0.lock().ws.scopes.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.0.lock().net.requests.clone()
    }

    pub fn request_count(&self, method: &str) -> usize {
        self.0
            .lock()
            .net
            .requests
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    /// Answered calls of `method` that succeeded (`ok: true`), counted without copying.
    pub fn ok_count(&self, method: &str) -> usize {
        self.0
            .lock()
            .net
            .requests
            .iter()
            .filter(|r| r.ok && r.method == method)
            .count()
    }

    /// Every `event_callback` payload emitted to the app, in order.
    pub fn events_sent(&self) -> Vec<Value> {
        self.0.lock().dl.events_sent.clone()
    }

    /// Every Socket Mode envelope written to a socket (redeliveries included).
    pub fn envelopes_sent(&self) -> Vec<Value> {
        self.0.lock().dl.envelopes.clone()
    }

    pub fn http_deliveries(&self) -> Vec<HttpDelivery> {
        self.0.lock().dl.http_log.clone()
    }

    /// `event_id`s given up after all retries.
    pub fn failed_deliveries(&self) -> Vec<String> {
        self.0.lock().dl.failed.clone()
    }

    // ---- delivery ---------------------------------------------------------------------------

    /// `Some(url)`: deliver events as signed HTTP POSTs instead of over Socket Mode.
    pub fn set_events_url(&self, url: Option<String>) {
        self.with(|w| w.dl.events_url = url);
    }

    pub fn socket_connections(&self) -> usize {
        self.0.lock().dl.conns.len()
    }

    /// Sends `{"type":"disconnect","reason":…}` on every socket, then closes it (after
    /// `refresh_grace` for `refresh_requested`, `warning_grace` for `warning`, at once
    /// otherwise). No new envelopes go to these sockets meanwhile.
    pub fn disconnect_sockets(&self, reason: &str) {
        let grace = match reason {
            "refresh_requested" => self.0.cfg.refresh_grace,
            "warning" => self.0.cfg.warning_grace,
            _ => Duration::ZERO,
        };
        self.with(|w| w.dl.disconnect_all(reason, grace));
    }

    /// Abrupt TCP reset, no close frame.
    pub fn drop_sockets(&self) {
        self.with(|w| w.dl.broadcast(|| events::Outbound::Abort));
    }

    /// Half-open sockets: stop reading, writing and answering pings, keep TCP open.
    pub fn freeze_sockets(&self) {
        self.with(|w| w.dl.broadcast(|| events::Outbound::Freeze));
    }

    /// Events not yet acknowledged: queued for a socket, in flight on one, or being delivered
    /// over HTTP.
    pub fn unacked_envelopes(&self) -> usize {
        let w = self.0.lock();
        w.dl.pending.len() + w.dl.inflight.len() + w.dl.http_outstanding
    }

    pub fn acks(&self) -> usize {
        self.0.lock().dl.acks
    }

    /// Pongs received for the server's pings.
    pub fn pongs(&self) -> usize {
        self.0.lock().dl.pongs
    }

    /// Deliver this share of events twice (same `event_id`), to exercise de-duplication.
    pub fn set_duplicate_ratio(&self, ratio: f64) {
        self.with(|w| w.dl.duplicate_ratio = ratio);
    }

    // ---- faults -------------------------------------------------------------------------

    pub fn inject(&self, f: Fault) {
        self.with(|w| w.net.faults.push(f));
    }

    /// Each request to `method` (all methods if `None`) fails with probability `ratio`, with
    /// a kind drawn from `kinds` (seeded). Replaces an earlier ratio for the same method.
    pub fn set_fault_ratio(&self, method: Option<&str>, ratio: f64, kinds: Vec<FaultKind>) {
        let method = method.map(str::to_owned);
        self.with(|w| {
            w.net.ratio_faults.retain(|(m, _, _)| *m != method);
            if ratio > 0.0 && !kinds.is_empty() {
                w.net.ratio_faults.push((method, ratio, kinds));
            }
        });
    }

    pub fn clear_faults(&self) {
        self.with(|w| {
            w.net.faults.clear();
            w.net.ratio_faults.clear();
        });
    }

    /// Requests that arrived for a (method, channel) while a `Retry-After` window given for it
    /// was still open.
    pub fn rate_limit_violations(&self) -> usize {
        self.0.lock().net.violations
    }

    /// The calls that landed inside a `Retry-After` window (`method channel at <unix ms>`),
    /// and the windows opened (`method channel for Ns at <unix ms>`).
    pub fn rate_limit_violation_calls(&self) -> (Vec<String>, Vec<String>) {
        let net = &self.0.lock().net;
        (net.violated.clone(), net.opened.clone())
    }

    /// Waits until `pred` holds, re-checking on every state change; false on timeout.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&FakeSlack) -> bool) -> bool {
        let mut rx = self.0.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if pred(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return pred(self),
            }
        }
    }

    // ---- Events API helpers -----------------------------------------------------------------

    /// Sends a signed `url_verification`; returns the challenge and the receiver's answer.
    pub async fn send_url_verification(
        &self,
        url: &str,
    ) -> Result<(String, HttpReply), reqwest::Error> {
        events::send_url_verification(&self.0, url).await
    }

    /// POSTs `body` to `url` signed as Slack would, or deliberately wrong.
    pub async fn send_signed(
        &self,
        url: &str,
        body: &[u8],
        mode: SignMode,
    ) -> Result<HttpReply, reqwest::Error> {
        events::send_signed(&self.0, url, body, mode).await
    }

    /// Sends the top-level `app_rate_limited` notice (contract §3.6).
    pub async fn send_app_rate_limited(&self, url: &str) -> Result<HttpReply, reqwest::Error> {
        events::send_app_rate_limited(&self.0, url).await
    }
}
