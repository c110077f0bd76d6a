//! Public configuration, input and view types of the fake portal.

use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Leaky-bucket request limiter (contract §2.1): every REST HTTP request adds 1, the
/// level drains by `drain_per_sec`, and a request that would lift it above `burst` is
/// answered `503 QUERY_LIMIT_EXCEEDED` without being counted.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakyBucket {
    pub burst: f64,
    pub drain_per_sec: f64,
}

/// How the fake portal behaves. Fields after `seed` switch between variants the
/// contract could not pin down; defaults follow the documentation where there is one.
#[derive(Clone, Debug)]
pub struct PortalConfig {
    /// Creator of the incoming webhook; created as user "Bridge Bot".
    pub webhook_user: u64,
    /// The webhook key (a secret: never logged or recorded).
    pub webhook_secret: String,
    /// Scopes ticked on the webhook.
    pub scopes: Vec<String>,
    pub rate_limit: Option<LeakyBucket>,
    /// Host used in URLs the portal hands out (photos, files).
    pub portal_host: String,
    /// `false`: `log.blogcomment.user.get` emits `log_id` only (current docs); `true`:
    /// also `post_id` (older servers).
    pub comment_user_get_post_id: bool,
    /// Seeds id gaps and probabilistic faults.
    pub seed: u64,
    /// Whether the webhook user is a portal administrator.
    pub webhook_user_admin: bool,
    /// HTTP status of `INVALID_CREDENTIALS` for a wrong webhook secret (docs 403, source 401).
    pub invalid_credentials_status: u16,
    /// HTTP status of `insufficient_scope` (docs 403, source default 401).
    pub insufficient_scope_status: u16,
    /// Portal time zone as seconds east of UTC; used by every date the portal prints.
    pub utc_offset_secs: i32,
    /// PHP's default `json_encode` escapes all non-ASCII as `\uXXXX`; `false` sends raw UTF-8.
    pub escape_unicode: bool,
    /// Old-style (`CDBResult`) lists answer an offset past the end with the last page
    /// again instead of an empty page.
    pub clamp_out_of_range_page: bool,
    /// Cloud portals add `operating` / `operating_reset_at` to `time`.
    pub cloud: bool,
    /// `DATE_PUBLISH` as `17.03.2026 15:29:15` (2015-era servers) instead of ISO 8601.
    pub legacy_date_format: bool,
    /// `log.blogcomment.user.get` with upper-case top-level keys (`COMMENTS`, `FILES`).
    pub comment_user_get_upper_keys: bool,
    /// Answers of `feature.get`; unknown codes are `"N"`. `rest_offline_extended` (on by
    /// default) also decides whether `event.offline.get` may reserve rows (`clear=0`).
    pub features: Vec<(String, bool)>,
    /// The local OAuth app installed on the portal (events need one).
    pub oauth: OAuthApp,
    /// How long an online event push waits for the handler's answer.
    pub push_timeout: Duration,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            webhook_user: 1,
            webhook_secret: "k3yS3cr3t0000001".to_owned(),
            scopes: ["log", "user", "department", "sonet_group", "disk"]
                .map(str::to_owned)
                .to_vec(),
            rate_limit: Some(LeakyBucket {
                burst: 50.0,
                drain_per_sec: 2.0,
            }),
            portal_host: "b24-sandbox.bitrix24.com".to_owned(),
            comment_user_get_post_id: false,
            seed: 0x05ee_db24,
            webhook_user_admin: true,
            invalid_credentials_status: 401,
            insufficient_scope_status: 403,
            utc_offset_secs: 3 * 3600,
            escape_unicode: true,
            clamp_out_of_range_page: true,
            cloud: true,
            legacy_date_format: false,
            comment_user_get_upper_keys: false,
            features: vec![
                ("rest_offline_extended".to_owned(), true),
                ("rest_auth_connector".to_owned(), false),
            ],
            oauth: OAuthApp::default(),
            push_timeout: Duration::from_secs(5),
        }
    }
}

/// A local ("server-side, uses only API") OAuth application installed by an
/// administrator (contract §1.5, §5). It gets tokens from `/oauth/token/` on the portal's
/// own listener, calls `/rest/{method}` with them, and is the only kind of caller the
/// `event.*` methods accept.
#[derive(Clone, Debug)]
pub struct OAuthApp {
    /// `client_id` of the app (`local.…`).
    pub client_id: String,
    /// `client_secret` (a secret: never logged or recorded).
    pub client_secret: String,
    /// Sent in every event push as `auth[application_token]`; handlers compare it.
    pub application_token: String,
    /// The admin who installed the app; its tokens act as this user. `0` (the default)
    /// means the webhook user.
    pub user: u64,
    /// Scopes granted to the app.
    pub scopes: Vec<String>,
    /// Where `/oauth/authorize/` redirects with `code`.
    pub redirect_uri: String,
    /// Access token lifetime (`expires_in`).
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
}

impl Default for OAuthApp {
    fn default() -> Self {
        Self {
            client_id: "local.6a1b2c3d4e5f60.12345678".to_owned(),
            client_secret: "Zq4tUe7Hs9Kd2Lm5Np8Rv1Wx3Yb6Cf0Gj4Ik7Ol2Pn5Qs8Tu1V".to_owned(),
            application_token: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".to_owned(),
            user: 0,
            scopes: ["log", "user", "department", "sonet_group", "disk"]
                .map(str::to_owned)
                .to_vec(),
            redirect_uri: "https://bridge.example.invalid/bitrix24/oauth".to_owned(),
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(180 * 86_400),
        }
    }
}

/// An `event.bind` registration of the app.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventBinding {
    /// `event_handler_id` of pushes.
    pub id: u64,
    /// Upper-case event name.
    pub event: String,
    /// Handler URL; `None` for an offline binding.
    pub handler: Option<String>,
    /// `auth_type`: the user whose token pushes carry; `0` means the acting user.
    pub auth_type: u64,
    /// `auth_connector` the binding was made with (`""` normally).
    pub connector: String,
    pub offline: bool,
}

/// A row of the offline event queue (`b_rest_event_offline`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OfflineRow {
    pub id: u64,
    /// Upper-case event name.
    pub name: String,
    pub post_id: u64,
    /// `md5(EVENT_NAME + "|" + json(EVENT_DATA))`.
    pub message_id: String,
    /// The `clear=0` reservation holding the row, if any.
    pub process_id: Option<String>,
    /// Marked by `event.offline.error`.
    pub error: bool,
    /// The `auth_connector` of the binding that queued it.
    pub connector: String,
    /// `EVENT_ADDITIONAL.user_id`: who made the change.
    pub user_id: u64,
    /// `TIMESTAMP_X`: when the row was queued or last merged.
    #[serde(skip)]
    pub timestamp: SystemTime,
}

/// One attempt to deliver an online event to a handler URL (never retried).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PushRecord {
    /// Upper-case event name.
    pub event: String,
    pub post_id: u64,
    pub url: String,
    /// The binding's id (`event_handler_id`).
    pub handler_id: u64,
    /// HTTP status of the handler's answer; `None` when there was none.
    pub status: Option<u16>,
    /// Transport error or timeout.
    pub error: Option<String>,
}

/// A directory user to create.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub name: String,
    pub last_name: String,
    /// File name (served from `portal_host`) or absolute URL.
    pub photo: Option<String>,
    pub admin: bool,
    pub departments: Vec<u64>,
    pub active: bool,
    /// Their e-mail address (`user<id>@<portal host>` when `None`).
    pub email: Option<String>,
}

impl Default for NewUser {
    fn default() -> Self {
        Self {
            name: "Test".to_owned(),
            last_name: "User".to_owned(),
            photo: None,
            admin: false,
            departments: Vec::new(),
            active: true,
            email: None,
        }
    }
}

/// A post written in the Bitrix24 UI.
#[derive(Clone, Debug, Default)]
pub struct NewPost {
    /// `None` or empty makes a MICRO post whose title is derived from the text.
    pub title: Option<String>,
    pub text: String,
    /// Destination codes (`UA`, `U7`, `SG3`, `DR2`); empty means `["UA"]`.
    pub dest: Vec<String>,
    pub important: bool,
    /// Files attached when the post is written (stored in the author's Disk).
    pub files: Vec<NewFile>,
}

/// A file a person attaches in the UI.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Injected failure modes.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// `503 QUERY_LIMIT_EXCEEDED` (not counted by the bucket).
    QueryLimitExceeded,
    /// `429 OPERATION_TIME_LIMIT` for the matching method (also inside `batch`).
    OperationTimeLimit,
    /// An nginx-style HTML error page with this status (500/502/503/504).
    ServerError(u16),
    /// The TCP connection is reset without a response.
    ConnectionReset,
    /// The request is answered normally after this delay.
    Delay(Duration),
    /// An arbitrary method-level error envelope (also inside `batch`).
    MethodError {
        status: u16,
        code: String,
        description: String,
    },
}

/// Fail the next `times` matching requests. `method: None` matches any method; for
/// transport-level kinds (limit, server error, reset, delay) it matches top-level
/// requests including `batch`, for method-level kinds it matches top-level calls and
/// batch sub-calls but not the `batch` wrapper itself.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Option<String>,
    pub kind: FaultKind,
    pub times: usize,
}

/// A post as stored by the portal.
#[derive(Clone, Debug, PartialEq)]
pub struct PostView {
    pub id: u64,
    /// Feed (sonet log) entry id: a different id space from `id`.
    pub log_id: u64,
    pub blog_id: u64,
    pub author: u64,
    pub title: String,
    pub micro: bool,
    pub text: String,
    pub dest: Vec<String>,
    pub important: bool,
    pub num_comments: u64,
    pub deleted: bool,
    pub published: bool,
    pub has_props: bool,
    pub tags: Vec<String>,
    /// Attached-object ids.
    pub files: Vec<u64>,
    pub date_publish: SystemTime,
    pub log_update: SystemTime,
}

/// A live comment.
#[derive(Clone, Debug, PartialEq)]
pub struct CommentView {
    /// Blog comment id (what `log.blogcomment.add` returns).
    pub comment_id: u64,
    /// Feed comment id (the `id` of `log.blogcomment.user.get`).
    pub log_comment_id: u64,
    pub post_id: u64,
    pub author: u64,
    pub text: String,
    pub date: SystemTime,
    /// Disk object ids.
    pub files: Vec<u64>,
}

/// One REST HTTP request as the portal saw it (never includes credentials).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord {
    pub seq: u64,
    /// Lower-cased method name without `.json`.
    pub method: String,
    pub http_method: String,
    /// HTTP status; `0` when the connection was reset without an answer.
    pub status: u16,
    pub error: Option<String>,
    pub sub_calls: Vec<SubCallRecord>,
    /// When the answer was ready, its body written, unix microseconds (the bench's latency
    /// figures).
    pub answered_us: i64,
}

/// One `batch` command.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubCallRecord {
    pub key: String,
    pub method: String,
    /// The command's query string, as sent (percent-encoded).
    pub query: String,
    pub error: Option<String>,
}
