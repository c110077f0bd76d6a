//! `bridge.yaml`: the typed configuration, `${VAR}` expansion and validation.
//!
//! The file is parsed *before* environment variables are expanded: every string that may hold a
//! `${VAR}` keeps its source position (serde-saphyr's `Spanned`), so an error can name
//! `file:line:column` without ever echoing an expanded secret. Every error says what to write
//! instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::secret::Secret;
use livefeed_core::model::{Audience, Platform, Room};

/// A configuration problem with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is not tied to a position (e.g. the file is missing).
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub bitrix24: BitrixConfig,
    pub slack: Option<SlackConfig>,
    pub matrix: Option<MatrixConfig>,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub mappings: Vec<Mapping>,
}

#[derive(Debug, Clone)]
pub struct MatrixConfig {
    /// `https://matrix.example.org` (plain http only for loopback).
    pub homeserver: String,
    /// `@feedbot:example.org`
    pub user_id: String,
    pub auth: MatrixAuth,
    /// Take part in encrypted rooms (device keys and a crypto store in the store directory).
    pub encryption: bool,
    pub request_timeout: Duration,
    /// Long-poll timeout of `/sync`.
    pub sync_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum MatrixAuth {
    /// An existing session: the token and the device it belongs to.
    Token {
        access_token: Secret,
        device_id: String,
    },
    /// Log in once with the password; the session is then kept in the store.
    Password {
        password: Secret,
        device_id: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct BitrixConfig {
    /// `https://PORTAL/rest/USER_ID/SECRET/` — the key is in the URL, so the whole URL is secret.
    pub webhook_url: Secret,
    /// `https://PORTAL` (no path): safe to log and used for links to posts.
    pub portal_url: String,
    /// The webhook's user (from the URL), i.e. the user the bridge acts as.
    pub user_id: u64,
    pub poll: PollConfig,
    pub backfill: u32,
    /// `None` = no client-side limit (benchmarks against the sandbox).
    pub rate_limit: Option<RateLimit>,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollConfig {
    pub interval: Duration,
    pub reconcile_window: Duration,
    pub reconcile_interval: Duration,
    /// Upper bound of pages read per audience and cycle when catching up.
    pub max_pages: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub bot_token: Secret,
    pub intake: SlackIntake,
    pub api_base: String,
    /// Pacing of `chat.postMessage` per channel; `None` = unpaced.
    pub post_rate: Option<RateLimit>,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum SlackIntake {
    SocketMode { app_token: Secret },
    EventsApi { signing_secret: Secret },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub name: String,
    pub audiences: Vec<Audience>,
    pub rooms: Vec<Room>,
    pub replies: bool,
}

impl Config {
    /// Read, parse, expand and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
            hint: Some(
                "pass --config PATH or set LIVEFEED_BRIDGE_CONFIG; the repository's bridge.yaml is an annotated example"
                    .into(),
            ),
        })?;
        Config::parse(&text, &file, &|name| std::env::var(name).ok()).map(|mut c| {
            c.path = path.to_path_buf();
            c
        })
    }

    /// Parse config text; `env` looks variables up (the process environment in production).
    pub fn parse(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        Validator { file, env }.config(raw)
    }

    /// Every room any mapping names, once.
    pub fn rooms(&self) -> BTreeSet<Room> {
        self.mappings
            .iter()
            .flat_map(|m| m.rooms.iter().cloned())
            .collect()
    }

    pub fn uses_platform(&self, platform: Platform) -> bool {
        self.rooms().iter().any(|r| r.platform == platform)
    }
}

fn yaml_error(file: &str, e: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    // The snippet-free rendering never shows neighbouring lines (which could hold a literal
    // secret); it ends in " at line L, column C", which our prefix already says.
    let mut message = e.without_snippet().to_string();
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    let hint = if message.starts_with("unknown field") {
        Some("check the spelling; the keys this section accepts are listed above".to_string())
    } else if message.starts_with("missing field") {
        Some("add the key; the annotated bridge.yaml in the repository shows every key".into())
    } else if message.starts_with("invalid u32") || message.starts_with("invalid u64") {
        message = "expected a whole number".into();
        None
    } else if message.starts_with("invalid f64") {
        message = "expected a number".into();
        None
    } else if message.starts_with("invalid bool") || message.contains("boolean") {
        message = "expected true or false".into();
        None
    } else {
        None
    };
    ConfigError {
        file: file.to_string(),
        line,
        column,
        message,
        hint,
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bitrix24: RawBitrix,
    #[serde(default)]
    slack: Option<RawSlack>,
    #[serde(default)]
    matrix: Option<RawMatrix>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    http: Option<RawHttp>,
    mappings: Vec<RawMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBitrix {
    webhook_url: Str,
    #[serde(default)]
    poll: Option<RawPoll>,
    #[serde(default)]
    backfill: Option<u32>,
    #[serde(default)]
    rate_limit: Option<RawRate>,
    #[serde(default)]
    request_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    #[serde(default)]
    interval: Option<Str>,
    #[serde(default)]
    reconcile_window: Option<Str>,
    #[serde(default)]
    reconcile_interval: Option<Str>,
    #[serde(default)]
    max_pages: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: Spanned<f64>,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    bot_token: Str,
    #[serde(default)]
    app_token: Option<Str>,
    #[serde(default)]
    signing_secret: Option<Str>,
    #[serde(default)]
    api_base: Option<Str>,
    #[serde(default)]
    post_rate: Option<RawRate>,
    #[serde(default)]
    request_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    homeserver: Str,
    user_id: Str,
    #[serde(default)]
    access_token: Option<Str>,
    #[serde(default)]
    password: Option<Str>,
    #[serde(default)]
    device_id: Option<Str>,
    #[serde(default)]
    encryption: Option<bool>,
    #[serde(default)]
    request_timeout: Option<Str>,
    #[serde(default)]
    sync_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrixTarget {
    room: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    listen: Option<Str>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    name: Str,
    audience: Vec<Str>,
    #[serde(default)]
    slack: Option<RawSlackTarget>,
    #[serde(default)]
    matrix: Option<RawMatrixTarget>,
    #[serde(default)]
    replies: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlackTarget {
    channel: Str,
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    file: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// What an optional `${VAR}` field turned into.
enum Optional {
    Set(String),
    /// Absent, empty, or a reference to an unset variable without default.
    Unset {
        unset_var: Option<String>,
    },
}

impl Validator<'_> {
    fn err(&self, at: &Str, message: impl Into<String>, hint: Option<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            message: message.into(),
            hint,
        }
    }

    fn top_err(&self, message: impl Into<String>, hint: Option<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: 0,
            column: 0,
            message: message.into(),
            hint,
        }
    }

    /// Expand `${VAR}` / `${VAR:-default}` / `$$`. Unset variables without default are errors.
    fn expand(&self, field: &str, s: &Str) -> Result<String, ConfigError> {
        match expand_env(&s.value, self.env) {
            Ok(v) => Ok(v),
            Err(Expansion::Unset(var)) => Err(self.err(
                s,
                format!("{field}: environment variable {var} is not set"),
                Some(format!(
                    "export {var}=… before starting the bridge, or write ${{{var}:-default}}"
                )),
            )),
            Err(Expansion::Malformed) => Err(self.err(
                s,
                format!("{field}: malformed ${{…}} reference"),
                Some("write ${NAME} or ${NAME:-default}; write $$ for a literal $".into()),
            )),
        }
    }

    /// Like `expand`, but an unset variable (or an empty result) means "not configured".
    fn expand_optional(&self, field: &str, s: Option<&Str>) -> Result<Optional, ConfigError> {
        let Some(s) = s else {
            return Ok(Optional::Unset { unset_var: None });
        };
        match expand_env(&s.value, self.env) {
            Ok(v) if v.trim().is_empty() => Ok(Optional::Unset { unset_var: None }),
            Ok(v) => Ok(Optional::Set(v)),
            Err(Expansion::Unset(var)) => Ok(Optional::Unset {
                unset_var: Some(var),
            }),
            Err(Expansion::Malformed) => self.expand(field, s).map(Optional::Set),
        }
    }

    fn duration(
        &self,
        field: &str,
        s: Option<&Str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = s else { return Ok(default) };
        let text = self.expand(field, s)?;
        parse_duration(&text).ok_or_else(|| {
            self.err(
                s,
                format!("{field}: `{text}` is not a duration"),
                Some("write a number with a unit: 500ms, 5s, 5m, 2h or 7d".into()),
            )
        })
    }

    fn rate(&self, field: &str, raw: Option<&RawRate>, default: RateLimit) -> Option<RateLimit> {
        let _ = field;
        match raw {
            None => Some(default),
            Some(r) if r.per_second.value <= 0.0 => None,
            Some(r) => Some(RateLimit {
                per_second: r.per_second.value,
                burst: r.burst.unwrap_or(default.burst).max(1),
            }),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let bitrix24 = self.bitrix(&raw.bitrix24)?;
        let slack = match &raw.slack {
            Some(s) => Some(self.slack(s)?),
            None => None,
        };
        let matrix = match &raw.matrix {
            Some(m) => Some(self.matrix(m)?),
            None => None,
        };
        let store = StoreConfig {
            path: match &raw.store {
                Some(s) => PathBuf::from(self.expand("store.path", &s.path)?),
                None => PathBuf::from("./data"),
            },
        };
        let http = self.http(raw.http.as_ref())?;
        let mappings = self.mappings(&raw.mappings)?;

        if slack.is_none()
            && let Some(m) = raw.mappings.iter().find(|m| m.slack.is_some())
        {
            return Err(self.err(
                &m.name,
                format!("mapping `{}` names a Slack channel but there is no `slack:` section", m.name.value),
                Some("add `slack:` with bot_token and app_token (Socket Mode) or signing_secret (Events API)".into()),
            ));
        }
        if matrix.is_none()
            && let Some(m) = raw.mappings.iter().find(|m| m.matrix.is_some())
        {
            return Err(self.err(
                &m.name,
                format!("mapping `{}` names a Matrix room but there is no `matrix:` section", m.name.value),
                Some("add `matrix:` with homeserver, user_id and access_token + device_id (or password)".into()),
            ));
        }
        Ok(Config {
            path: PathBuf::new(),
            bitrix24,
            slack,
            matrix,
            store,
            http,
            mappings,
        })
    }

    fn bitrix(&self, raw: &RawBitrix) -> Result<BitrixConfig, ConfigError> {
        let url_text = self.expand("bitrix24.webhook_url", &raw.webhook_url)?;
        // Never echo the URL: it contains the webhook key.
        let shape_hint = Some(
            "write the incoming webhook URL from Bitrix24 (Developer resources → Other → Incoming webhook): https://PORTAL/rest/USER_ID/SECRET/".to_string(),
        );
        let url = Url::parse(url_text.trim()).map_err(|_| {
            self.err(
                &raw.webhook_url,
                "bitrix24.webhook_url is not a valid URL",
                shape_hint.clone(),
            )
        })?;
        check_scheme(&url).map_err(|m| {
            self.err(
                &raw.webhook_url,
                format!("bitrix24.webhook_url: {m}"),
                Some("use https:// (plain http is accepted only for 127.0.0.1/localhost test portals)".into()),
            )
        })?;
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let user_id = match segments.as_slice() {
            ["rest", user, secret] if !secret.is_empty() => user.parse::<u64>().ok(),
            _ => None,
        };
        let Some(user_id) = user_id else {
            return Err(self.err(
                &raw.webhook_url,
                "bitrix24.webhook_url does not have the shape https://PORTAL/rest/USER_ID/SECRET/",
                shape_hint,
            ));
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err(
                &raw.webhook_url,
                "bitrix24.webhook_url must not have a query or fragment",
                shape_hint,
            ));
        }
        let mut base = url.clone();
        base.set_path("/");
        let mut webhook = url;
        if !webhook.path().ends_with('/') {
            let p = format!("{}/", webhook.path());
            webhook.set_path(&p);
        }
        let poll = raw.poll.as_ref();
        let poll = PollConfig {
            interval: self.duration(
                "bitrix24.poll.interval",
                poll.and_then(|p| p.interval.as_ref()),
                Duration::from_secs(5),
            )?,
            reconcile_window: self.duration(
                "bitrix24.poll.reconcile_window",
                poll.and_then(|p| p.reconcile_window.as_ref()),
                Duration::from_secs(7 * 86_400),
            )?,
            reconcile_interval: self.duration(
                "bitrix24.poll.reconcile_interval",
                poll.and_then(|p| p.reconcile_interval.as_ref()),
                Duration::from_secs(300),
            )?,
            max_pages: poll.and_then(|p| p.max_pages).unwrap_or(20).max(1),
        };
        Ok(BitrixConfig {
            webhook_url: Secret::new(webhook.to_string()),
            portal_url: base.as_str().trim_end_matches('/').to_string(),
            user_id,
            poll,
            backfill: raw.backfill.unwrap_or(0),
            rate_limit: self.rate(
                "bitrix24.rate_limit",
                raw.rate_limit.as_ref(),
                RateLimit {
                    per_second: 2.0,
                    burst: 50,
                },
            ),
            request_timeout: self.duration(
                "bitrix24.request_timeout",
                raw.request_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
        })
    }

    fn slack(&self, raw: &RawSlack) -> Result<SlackConfig, ConfigError> {
        let bot_token = self.expand("slack.bot_token", &raw.bot_token)?;
        if !bot_token.starts_with("xoxb-") {
            return Err(self.err(
                &raw.bot_token,
                "slack.bot_token is not a bot token (it must start with xoxb-)",
                Some("use the Bot User OAuth Token from the app's OAuth & Permissions page".into()),
            ));
        }
        let app = self.expand_optional("slack.app_token", raw.app_token.as_ref())?;
        let signing = self.expand_optional("slack.signing_secret", raw.signing_secret.as_ref())?;
        let intake = match (app, signing) {
            (Optional::Set(token), _) => {
                if !token.starts_with("xapp-") {
                    let at = raw.app_token.as_ref().expect("set implies present");
                    return Err(self.err(
                        at,
                        "slack.app_token is not an app-level token (it must start with xapp-)",
                        Some("create an App-Level Token with the connections:write scope under Basic Information".into()),
                    ));
                }
                SlackIntake::SocketMode {
                    app_token: Secret::new(token),
                }
            }
            (Optional::Unset { .. }, Optional::Set(secret)) => SlackIntake::EventsApi {
                signing_secret: Secret::new(secret),
            },
            (Optional::Unset { unset_var: a }, Optional::Unset { unset_var: s }) => {
                let named: Vec<String> = [a, s].into_iter().flatten().collect();
                let detail = if named.is_empty() {
                    String::new()
                } else {
                    format!(" (unset: {})", named.join(", "))
                };
                return Err(self.err(
                    &raw.bot_token,
                    format!("slack: neither app_token nor signing_secret is set{detail}"),
                    Some("set app_token: ${SLACK_APP_TOKEN} for Socket Mode (recommended, no public URL), or signing_secret: ${SLACK_SIGNING_SECRET} for the Events API on http.listen".into()),
                ));
            }
        };
        let api_base = match &raw.api_base {
            None => "https://slack.com/api/".to_string(),
            Some(s) => {
                let text = self.expand("slack.api_base", s)?;
                let url = Url::parse(text.trim()).map_err(|_| {
                    self.err(
                        s,
                        format!("slack.api_base: `{text}` is not a valid URL"),
                        Some("leave it out for https://slack.com/api/".into()),
                    )
                })?;
                check_scheme(&url).map_err(|m| {
                    self.err(
                        s,
                        format!("slack.api_base: {m}"),
                        Some("use https:// (plain http only for loopback test servers)".into()),
                    )
                })?;
                let mut base = url.to_string();
                if !base.ends_with('/') {
                    base.push('/');
                }
                base
            }
        };
        Ok(SlackConfig {
            bot_token: Secret::new(bot_token),
            intake,
            api_base,
            post_rate: self.rate(
                "slack.post_rate",
                raw.post_rate.as_ref(),
                RateLimit {
                    per_second: 1.0,
                    burst: 3,
                },
            ),
            request_timeout: self.duration(
                "slack.request_timeout",
                raw.request_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
        })
    }

    fn matrix(&self, raw: &RawMatrix) -> Result<MatrixConfig, ConfigError> {
        let hs_text = self.expand("matrix.homeserver", &raw.homeserver)?;
        let hs = Url::parse(hs_text.trim()).map_err(|_| {
            self.err(
                &raw.homeserver,
                format!("matrix.homeserver: `{hs_text}` is not a valid URL"),
                Some("write the homeserver's client URL, e.g. https://matrix.example.org".into()),
            )
        })?;
        check_scheme(&hs).map_err(|m| {
            self.err(
                &raw.homeserver,
                format!("matrix.homeserver: {m}"),
                Some("use https:// (plain http only for loopback test servers)".into()),
            )
        })?;
        let user_id = self
            .expand("matrix.user_id", &raw.user_id)?
            .trim()
            .to_string();
        let valid_user = user_id
            .strip_prefix('@')
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(local, server)| !local.is_empty() && !server.is_empty());
        if !valid_user {
            return Err(self.err(
                &raw.user_id,
                format!("`{user_id}` is not a Matrix user id"),
                Some("write the bot's full id in quotes: \"@feedbot:example.org\"".into()),
            ));
        }
        let token = self.expand_optional("matrix.access_token", raw.access_token.as_ref())?;
        let password = self.expand_optional("matrix.password", raw.password.as_ref())?;
        let device_id = match raw.device_id.as_ref() {
            Some(d) => Some(self.expand("matrix.device_id", d)?.trim().to_string())
                .filter(|d| !d.is_empty()),
            None => None,
        };
        let auth = match (token, password) {
            (Optional::Set(access_token), _) => {
                let Some(device_id) = device_id else {
                    return Err(self.err(
                        raw.access_token.as_ref().expect("set implies present"),
                        "matrix.access_token needs matrix.device_id (the device the token belongs to)",
                        Some("add device_id: the device id shown when the token was created (GET /_matrix/client/v3/account/whoami tells it)".into()),
                    ));
                };
                MatrixAuth::Token {
                    access_token: Secret::new(access_token),
                    device_id,
                }
            }
            (Optional::Unset { .. }, Optional::Set(password)) => MatrixAuth::Password {
                password: Secret::new(password),
                device_id,
            },
            (Optional::Unset { unset_var: a }, Optional::Unset { unset_var: p }) => {
                let named: Vec<String> = [a, p].into_iter().flatten().collect();
                let detail = if named.is_empty() {
                    String::new()
                } else {
                    format!(" (unset: {})", named.join(", "))
                };
                return Err(self.err(
                    &raw.user_id,
                    format!("matrix: neither access_token nor password is set{detail}"),
                    Some("set access_token: ${MATRIX_ACCESS_TOKEN} with device_id, or password: ${MATRIX_PASSWORD}".into()),
                ));
            }
        };
        Ok(MatrixConfig {
            homeserver: hs.as_str().trim_end_matches('/').to_string(),
            user_id,
            auth,
            encryption: raw.encryption.unwrap_or(true),
            request_timeout: self.duration(
                "matrix.request_timeout",
                raw.request_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
            sync_timeout: self.duration(
                "matrix.sync_timeout",
                raw.sync_timeout.as_ref(),
                Duration::from_secs(30),
            )?,
        })
    }

    fn http(&self, raw: Option<&RawHttp>) -> Result<HttpConfig, ConfigError> {
        let listen = match raw.and_then(|h| h.listen.as_ref()) {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(s) => {
                let text = self.expand("http.listen", s)?;
                text.trim().parse().map_err(|_| {
                    self.err(
                        s,
                        format!("http.listen: `{text}` is not an address"),
                        Some(
                            "write IP:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 in a container"
                                .into(),
                        ),
                    )
                })?
            }
        };
        Ok(HttpConfig {
            listen,
            max_body_bytes: raw
                .and_then(|h| h.max_body_bytes)
                .unwrap_or(1 << 20)
                .max(1024),
        })
    }

    fn mappings(&self, raw: &[RawMapping]) -> Result<Vec<Mapping>, ConfigError> {
        if raw.is_empty() {
            return Err(self.top_err(
                "mappings: at least one mapping is needed",
                Some(
                    "add a mapping: name, audience: [all], slack: { channel: C0123456789 }".into(),
                ),
            ));
        }
        let mut names: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for m in raw {
            let name = m.name.value.trim().to_string();
            if name.is_empty() {
                return Err(self.err(
                    &m.name,
                    "mapping name is empty",
                    Some("give every mapping a unique name".into()),
                ));
            }
            if let Some(first) = names.insert(name.clone(), m.name.referenced.line()) {
                return Err(self.err(
                    &m.name,
                    format!("duplicate mapping name `{name}` (first used on line {first})"),
                    Some("give every mapping a unique name".into()),
                ));
            }
            if m.audience.is_empty() {
                return Err(self.err(
                    &m.name,
                    format!("mapping `{name}` has an empty audience"),
                    Some("write audience: [all] or e.g. [group:12, department:3]".into()),
                ));
            }
            let mut audiences = Vec::new();
            for a in &m.audience {
                let text = self.expand("audience", a)?;
                let audience = Audience::parse(&text).ok_or_else(|| {
                    self.err(
                        a,
                        format!("`{text}` is not an audience"),
                        Some("write all, group:<id>, department:<id> or user:<id> (ids as in Bitrix24 URLs)".into()),
                    )
                })?;
                if !audiences.contains(&audience) {
                    audiences.push(audience);
                }
            }
            let mut rooms = Vec::new();
            if let Some(s) = &m.slack {
                let channel = self.expand("slack.channel", &s.channel)?.trim().to_string();
                if !is_slack_channel_id(&channel) {
                    return Err(self.err(
                        &s.channel,
                        format!("`{channel}` is not a Slack channel id"),
                        Some("use the channel id (C… or G…, shown at the bottom of the channel's About tab), not its #name".into()),
                    ));
                }
                rooms.push(Room::new(Platform::Slack, channel));
            }
            if let Some(t) = &m.matrix {
                let room = self.expand("matrix.room", &t.room)?.trim().to_string();
                if !is_matrix_room(&room) {
                    return Err(self.err(
                        &t.room,
                        format!("`{room}` is not a Matrix room id or alias"),
                        Some("write the room id (!abc…, Room settings → Advanced) or an alias (#room:server), in quotes".into()),
                    ));
                }
                rooms.push(Room::new(Platform::Matrix, room));
            }
            if rooms.is_empty() {
                return Err(self.err(
                    &m.name,
                    format!("mapping `{name}` has no chat target"),
                    Some("add slack: { channel: C0123456789 } and/or matrix: { room: \"!roomid:server\" }".into()),
                ));
            }
            out.push(Mapping {
                name,
                audiences,
                rooms,
                replies: m.replies.unwrap_or(true),
            });
        }
        Ok(out)
    }
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(url) => Ok(()),
        "http" => Err("plain http is only allowed for loopback hosts".into()),
        other => Err(format!("unsupported scheme `{other}`")),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn is_slack_channel_id(id: &str) -> bool {
    id.len() >= 9
        && matches!(id.as_bytes()[0], b'C' | b'G')
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// `!opaque` (room versions 12+ have no server part) or `#alias:server`.
fn is_matrix_room(id: &str) -> bool {
    let well_formed = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    match id.split_at_checked(1) {
        Some(("!", rest)) => well_formed(rest),
        Some(("#", rest)) => rest
            .split_once(':')
            .is_some_and(|(a, server)| well_formed(a) && well_formed(server)),
        _ => false,
    }
}

/// `500ms`, `5s`, `5m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[derive(Debug, PartialEq, Eq)]
enum Expansion {
    Unset(String),
    Malformed,
}

/// Expand `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`). A `$` not followed by `{` or
/// `$` stays as it is.
fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Expansion> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or(Expansion::Malformed)?;
            let body = &inner[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(Expansion::Malformed);
            }
            match (env(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => return Err(Expansion::Unset(name.to_string())),
                (Some(v), None) => out.push_str(&v),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const GOOD: &str = r#"bitrix24:
  webhook_url: ${B24_WEBHOOK_URL}
  poll: { interval: 5s, reconcile_window: 7d, reconcile_interval: 5m }
  backfill: 0
  rate_limit: { per_second: 2, burst: 50 }
slack:
  bot_token: ${SLACK_BOT_TOKEN}
  app_token: ${SLACK_APP_TOKEN}
  signing_secret: ${SLACK_SIGNING_SECRET}
  api_base: https://slack.com/api/
store: { path: ./data }
http: { listen: 127.0.0.1:8080 }
mappings:
  - name: company-news
    audience: [all]
    slack: { channel: C0123456789 }
    replies: true
  - name: dev-group
    audience: [group:12, department:3]
    slack: { channel: G0123456789 }
"#;

    fn good_env() -> impl Fn(&str) -> Option<String> {
        env(&[
            (
                "B24_WEBHOOK_URL",
                "https://acme.bitrix24.com/rest/17/k3yS3cr3t0000001/",
            ),
            ("SLACK_BOT_TOKEN", "xoxb-1-2-3"),
            ("SLACK_APP_TOKEN", "xapp-1-2-3"),
        ])
    }

    fn parse_err(text: &str, e: &dyn Fn(&str) -> Option<String>) -> ConfigError {
        Config::parse(text, "bridge.yaml", e).expect_err("config should be rejected")
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD, "bridge.yaml", &good_env()).unwrap();
        assert_eq!(c.bitrix24.portal_url, "https://acme.bitrix24.com");
        assert_eq!(c.bitrix24.user_id, 17);
        assert_eq!(c.bitrix24.poll.interval, Duration::from_secs(5));
        assert_eq!(
            c.bitrix24.poll.reconcile_window,
            Duration::from_secs(604_800)
        );
        assert_eq!(c.bitrix24.rate_limit.unwrap().burst, 50);
        let slack = c.slack.as_ref().unwrap();
        assert!(matches!(slack.intake, SlackIntake::SocketMode { .. }));
        assert_eq!(slack.api_base, "https://slack.com/api/");
        assert_eq!(c.mappings.len(), 2);
        assert_eq!(
            c.mappings[1].audiences,
            vec![Audience::Group(12), Audience::Department(3)]
        );
        assert!(c.mappings[1].replies, "replies default to true");
        assert_eq!(c.rooms().len(), 2);
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../bridge.yaml");
        let c = Config::parse(text, "bridge.yaml", &good_env()).unwrap();
        assert_eq!(c.mappings[0].rooms[0].id, "C0123456789");
        assert_eq!(c.bitrix24.poll.max_pages, 20);
        assert_eq!(c.http.max_body_bytes, 1_048_576);
    }

    #[test]
    fn signing_secret_selects_events_api() {
        let e = env(&[
            (
                "B24_WEBHOOK_URL",
                "https://acme.bitrix24.com/rest/1/abcdefgh/",
            ),
            ("SLACK_BOT_TOKEN", "xoxb-1"),
            ("SLACK_SIGNING_SECRET", "s3cr3t-signing"),
        ]);
        let c = Config::parse(GOOD, "bridge.yaml", &e).unwrap();
        assert!(matches!(
            c.slack.unwrap().intake,
            SlackIntake::EventsApi { .. }
        ));
    }

    #[test]
    fn unknown_key_has_position_and_alternatives() {
        let text = GOOD.replace("  app_token:", "  app_tokn:");
        let e = parse_err(&text, &good_env());
        assert_eq!((e.line, e.column), (8, 3));
        assert!(e.message.contains("unknown field `app_tokn`"), "{e}");
        assert!(e.message.contains("app_token"), "{e}");
        assert!(e.to_string().starts_with("bridge.yaml:8:3: "), "{e}");
    }

    #[test]
    fn wrong_type_has_position() {
        let text = GOOD.replace("backfill: 0", "backfill: lots");
        let e = parse_err(&text, &good_env());
        assert_eq!((e.line, e.column), (4, 13));
        assert_eq!(e.message, "expected a whole number");
    }

    #[test]
    fn missing_env_var_is_named() {
        let e = parse_err(GOOD, &env(&[("SLACK_BOT_TOKEN", "xoxb-1")]));
        assert_eq!((e.line, e.column), (2, 16));
        assert!(e.message.contains("B24_WEBHOOK_URL is not set"), "{e}");
        assert!(e.hint.unwrap().contains("export B24_WEBHOOK_URL"));
    }

    #[test]
    fn env_default_is_used() {
        let text = GOOD.replace(
            "${B24_WEBHOOK_URL}",
            "${B24_URL:-http://127.0.0.1:9/rest/1/abc123456/}",
        );
        let c = Config::parse(&text, "f", &good_env()).unwrap();
        assert_eq!(c.bitrix24.portal_url, "http://127.0.0.1:9");
        assert_eq!(
            c.bitrix24.webhook_url.expose(),
            "http://127.0.0.1:9/rest/1/abc123456/"
        );
    }

    #[test]
    fn bad_webhook_urls_never_echo_the_secret() {
        for (url, needle) in [
            (
                "http://acme.bitrix24.com/rest/1/k3yS3cr3t0000001/",
                "plain http",
            ),
            ("https://acme.bitrix24.com/k3yS3cr3t0000001/", "shape"),
            ("not a url k3yS3cr3t0000001", "not a valid URL"),
            (
                "https://acme.bitrix24.com/rest/x/k3yS3cr3t0000001/",
                "shape",
            ),
        ] {
            let e = parse_err(
                GOOD,
                &env(&[
                    ("B24_WEBHOOK_URL", url),
                    ("SLACK_BOT_TOKEN", "xoxb-1"),
                    ("SLACK_APP_TOKEN", "xapp-1"),
                ]),
            );
            let shown = e.to_string();
            assert!(shown.contains(needle), "{shown}");
            assert!(!shown.contains("k3yS3cr3t"), "secret leaked: {shown}");
            assert_eq!(e.line, 2);
        }
    }

    #[test]
    fn duplicate_mapping_names() {
        let text = GOOD.replace("name: dev-group", "name: company-news");
        let e = parse_err(&text, &good_env());
        assert_eq!(e.line, 18);
        assert!(
            e.message
                .contains("duplicate mapping name `company-news` (first used on line 14)"),
            "{e}"
        );
    }

    #[test]
    fn bad_audience_and_channel() {
        let e = parse_err(&GOOD.replace("group:12", "team:12"), &good_env());
        assert_eq!((e.line, e.column), (19, 16));
        assert!(e.hint.unwrap().contains("group:<id>"));
        let e = parse_err(&GOOD.replace("C0123456789", "\"#general\""), &good_env());
        assert_eq!(e.line, 16);
        assert!(e.message.contains("not a Slack channel id"), "{e}");
    }

    #[test]
    fn slack_needs_an_intake() {
        let e = parse_err(
            GOOD,
            &env(&[
                ("B24_WEBHOOK_URL", "https://a.bitrix24.com/rest/1/abcdefgh/"),
                ("SLACK_BOT_TOKEN", "xoxb-1"),
            ]),
        );
        assert!(
            e.message.contains("SLACK_APP_TOKEN, SLACK_SIGNING_SECRET"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration() {
        let e = parse_err(
            &GOOD.replace("interval: 5s", "interval: 5 seconds"),
            &good_env(),
        );
        assert_eq!((e.line, e.column), (3, 21));
        assert!(e.hint.unwrap().contains("5s"));
    }

    const MATRIX: &str = r##"bitrix24:
  webhook_url: https://acme.bitrix24.com/rest/1/abcdefgh/
matrix:
  homeserver: https://matrix.example.org
  user_id: "@feedbot:example.org"
  access_token: ${MATRIX_ACCESS_TOKEN}
  device_id: LIVEFEEDBRIDGE
  encryption: true
mappings:
  - name: company-news
    audience: [all]
    matrix: { room: "!roomid:example.org" }
  - name: dev
    audience: [group:5]
    matrix: { room: "#dev:example.org" }
"##;

    #[test]
    fn matrix_section_and_rooms() {
        let c = Config::parse(MATRIX, "f", &env(&[("MATRIX_ACCESS_TOKEN", "syt_x")])).unwrap();
        let m = c.matrix.as_ref().unwrap();
        assert_eq!(m.homeserver, "https://matrix.example.org");
        assert!(
            matches!(&m.auth, MatrixAuth::Token { device_id, .. } if device_id == "LIVEFEEDBRIDGE")
        );
        assert!(m.encryption);
        assert_eq!(
            c.mappings[1].rooms,
            vec![Room::new(Platform::Matrix, "#dev:example.org")]
        );
        assert!(c.uses_platform(Platform::Matrix) && !c.uses_platform(Platform::Slack));
        let pw = MATRIX.replace(
            "access_token: ${MATRIX_ACCESS_TOKEN}",
            "password: ${MATRIX_PASSWORD}",
        );
        let c = Config::parse(&pw, "f", &env(&[("MATRIX_PASSWORD", "pw")])).unwrap();
        assert!(matches!(
            c.matrix.unwrap().auth,
            MatrixAuth::Password { .. }
        ));
    }

    #[test]
    fn matrix_errors() {
        let e = parse_err(MATRIX, &env(&[]));
        assert!(
            e.message
                .contains("neither access_token nor password is set (unset: MATRIX_ACCESS_TOKEN)"),
            "{e}"
        );
        let e = parse_err(
            &MATRIX.replace("  device_id: LIVEFEEDBRIDGE\n", ""),
            &env(&[("MATRIX_ACCESS_TOKEN", "t")]),
        );
        assert!(e.message.contains("needs matrix.device_id"), "{e}");
        let e = parse_err(
            &MATRIX.replace("\"@feedbot:example.org\"", "feedbot"),
            &env(&[("MATRIX_ACCESS_TOKEN", "t")]),
        );
        assert_eq!(e.line, 5);
        let e = parse_err(
            &MATRIX.replace("#dev:example.org", "dev"),
            &env(&[("MATRIX_ACCESS_TOKEN", "t")]),
        );
        assert!(e.message.contains("not a Matrix room id or alias"), "{e}");
        let e = parse_err(
            &MATRIX.replace("https://matrix.example.org", "http://matrix.example.org"),
            &env(&[("MATRIX_ACCESS_TOKEN", "t")]),
        );
        assert!(e.message.contains("plain http"), "{e}");
        let no_section = "bitrix24:\n  webhook_url: https://a.bitrix24.com/rest/1/abcdefgh/\nmappings:\n  - name: x\n    audience: [all]\n    matrix: { room: \"!r\" }\n";
        let e = parse_err(no_section, &env(&[]));
        assert!(e.message.contains("no `matrix:` section"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5w"), None);
    }

    #[test]
    fn env_expansion_forms() {
        let e = env(&[("A", "x"), ("EMPTY", "")]);
        assert_eq!(expand_env("${A}-${B:-d}-$$-$5", &e), Ok("x-d-$-$5".into()));
        assert_eq!(expand_env("${EMPTY:-d}", &e), Ok("d".into()));
        assert_eq!(expand_env("${B}", &e), Err(Expansion::Unset("B".into())));
        assert_eq!(expand_env("${A", &e), Err(Expansion::Malformed));
        assert_eq!(expand_env("${1A}", &e), Err(Expansion::Malformed));
    }
}
