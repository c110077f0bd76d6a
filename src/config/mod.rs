//! `bridge.yaml`: the typed configuration, `${VAR}` expansion and validation.
//!
//! The file is parsed *before* environment variables are expanded: every string that may hold a
//! `${VAR}` keeps its source position (serde-saphyr's `Spanned`), so an error can name
//! `file:line:column` without ever echoing an expanded secret. Every error says what to write
//! instead.

pub(crate) mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use livefeed_core::links::{Link, PeopleConfig};
use livefeed_core::model::{Audience, Platform, Room};
use livefeed_core::store::StoreOptions;
use serde::Deserialize;

pub use crate::bitrix::config::{BitrixConfig, PollConfig};
pub use crate::matrix::config::{MatrixAuth, MatrixConfig};
pub use crate::slack::config::{SlackConfig, SlackIntake};
pub use validate::parse_duration;
use validate::{Str, Validator};
use {crate::bitrix, crate::matrix, crate::slack};

/// A configuration problem with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based; 0 when the problem is not tied to a position (e.g. the file is missing).
    pub line: u64,
    /// 1-based.
    pub column: u64,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
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
/// A validated `bridge.yaml`.
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// `bitrix24:`.
    pub bitrix24: BitrixConfig,
    /// `slack:`, if configured.
    pub slack: Option<SlackConfig>,
    /// `matrix:`, if configured.
    pub matrix: Option<MatrixConfig>,
    /// `store:`.
    pub store: StoreConfig,
    /// `http:`.
    pub http: HttpConfig,
    /// `mappings:`, in file order.
    pub mappings: Vec<Mapping>,
    /// `important:`.
    pub important: ImportantConfig,
    /// `files:`.
    pub files: FilesConfig,
    /// `people:`: identity links.
    pub people: PeopleConfig,
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// `files:`: files carried between the feed and chat.
pub struct FilesConfig {
    /// Larger files become a link to the post (feed → chat) or a note in the comment
    /// (chat → feed).
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// `important:`: what chat shows of the feed's important posts.
pub struct ImportantConfig {
    /// Pin an important post's root messages while it is important.
    pub pin: bool,
    /// Keep "Read by N" on the root messages current.
    pub readers: bool,
    /// How often the readers of important posts are counted.
    pub readers_interval: std::time::Duration,
}

#[derive(Debug, Clone)]
/// `store:`.
pub struct StoreConfig {
    /// The sled directory; must persist.
    pub path: PathBuf,
    /// The most memory sled's page cache may take (`store.cache_capacity`).
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
/// `http:`.
pub struct HttpConfig {
    /// Where `/healthz`, `/readyz`, `/metrics` and the sides' routes are served.
    pub listen: SocketAddr,
    /// Larger requests get 413.
    pub max_body_bytes: usize,
}

impl HttpConfig {
    /// `http://ADDR{path}` as reached from this machine (or container): a wildcard listen
    /// address is reached on loopback. Used by the `health` and `dead-letters` commands.
    pub fn local_url(&self, path: &str) -> String {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}{path}")
    }
}

#[derive(Debug, Clone)]
/// One mapping: audiences to rooms.
pub struct Mapping {
    /// Unique.
    pub name: String,
    /// Posts addressed to any of these are mirrored.
    pub audiences: Vec<Audience>,
    /// Where (room ids as configured; aliases resolved at start).
    pub rooms: Vec<Room>,
    /// Whether thread replies become feed comments.
    pub replies: bool,
    /// Whether thread replies are copied into the post's threads in other rooms.
    pub mirror_replies: bool,
    /// Whether top-level messages in its rooms become posts for its one audience.
    pub posts_from_chat: bool,
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

    /// The room ids of one platform's rooms, as configured, each once.
    pub fn rooms_on(&self, platform: &Platform) -> Vec<String> {
        self.rooms()
            .into_iter()
            .filter(|r| &r.platform == platform)
            .map(|r| r.id)
            .collect()
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bitrix24: bitrix::config::RawBitrix,
    #[serde(default)]
    slack: Option<slack::config::RawSlack>,
    #[serde(default)]
    matrix: Option<matrix::config::RawMatrix>,
    #[serde(default)]
    store: Option<RawStore>,
    #[serde(default)]
    http: Option<RawHttp>,
    mappings: Vec<RawMapping>,
    #[serde(default)]
    important: Option<RawImportant>,
    #[serde(default)]
    files: Option<RawFiles>,
    #[serde(default)]
    people: Option<RawPeople>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeople {
    #[serde(default)]
    match_by_email: Option<bool>,
    #[serde(default)]
    comments_as_author: Option<bool>,
    #[serde(default)]
    refresh_interval: Option<Str>,
    #[serde(default)]
    links: Vec<RawLink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    #[serde(default)]
    bitrix: Option<Str>,
    #[serde(default)]
    slack: Option<Str>,
    #[serde(default)]
    matrix: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    #[serde(default)]
    max_bytes: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImportant {
    #[serde(default)]
    pin: Option<bool>,
    #[serde(default)]
    readers: Option<bool>,
    #[serde(default)]
    readers_interval: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    path: Option<Str>,
    #[serde(default)]
    cache_capacity: Option<Str>,
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
    slack: Option<slack::config::RawSlackTarget>,
    #[serde(default)]
    matrix: Option<matrix::config::RawMatrixTarget>,
    #[serde(default)]
    replies: Option<bool>,
    #[serde(default)]
    mirror_replies: Option<bool>,
    #[serde(default)]
    posts_from_chat: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

impl Validator<'_> {
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let bitrix24 = bitrix::config::validate(self, &raw.bitrix24)?;
        let slack = match &raw.slack {
            Some(s) => Some(slack::config::validate(self, s)?),
            None => None,
        };
        let matrix = match &raw.matrix {
            Some(m) => Some(matrix::config::validate(self, m)?),
            None => None,
        };
        let store = self.store(raw.store.as_ref())?;
        let http = self.http(raw.http.as_ref())?;
        let mappings = self.mappings(&raw.mappings)?;
        let important = ImportantConfig {
            pin: raw.important.as_ref().and_then(|i| i.pin).unwrap_or(true),
            readers: raw
                .important
                .as_ref()
                .and_then(|i| i.readers)
                .unwrap_or(true),
            readers_interval: self.duration(
                "important.readers_interval",
                raw.important
                    .as_ref()
                    .and_then(|i| i.readers_interval.as_ref()),
                std::time::Duration::from_secs(300),
            )?,
        };

        let files = self.files(raw.files.as_ref())?;
        let people = self.people(raw.people.as_ref())?;

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
            important,
            files,
            people,
        })
    }

    fn people(&self, raw: Option<&RawPeople>) -> Result<PeopleConfig, ConfigError> {
        let defaults = PeopleConfig::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let refresh = self.duration(
            "people.refresh_interval",
            raw.refresh_interval.as_ref(),
            defaults.refresh,
        )?;
        let mut links: Vec<Link> = Vec::new();
        for (i, l) in raw.links.iter().enumerate() {
            let mut ids = BTreeMap::new();
            let mut first: Option<&Str> = None;
            let sides = [
                (
                    bitrix::PLATFORM,
                    &l.bitrix,
                    "bitrix",
                    "a Bitrix24 user id, e.g. 17",
                ),
                (
                    slack::PLATFORM,
                    &l.slack,
                    "slack",
                    "a Slack user id, e.g. U0123456789",
                ),
                (
                    matrix::PLATFORM,
                    &l.matrix,
                    "matrix",
                    "a Matrix user id in quotes, e.g. \"@anna:example.org\"",
                ),
            ];
            for (platform, value, key, what) in sides {
                let Some(value) = value else { continue };
                let text = self.expand(&format!("people.links[{i}].{key}"), value)?;
                let text = text.trim().to_string();
                let valid = match key {
                    "bitrix" => text.parse::<u64>().is_ok_and(|n| n > 0),
                    "slack" => {
                        text.len() > 1
                            && (text.starts_with('U') || text.starts_with('W'))
                            && text
                                .bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    }
                    _ => {
                        text.starts_with('@')
                            && text.contains(':')
                            && !text.contains(char::is_whitespace)
                    }
                };
                if !valid {
                    return Err(self.err(
                        value,
                        format!("people.links[{i}].{key}: `{text}` is not {what}"),
                        Some(format!("write {what}")),
                    ));
                }
                if let Some(other) = links
                    .iter()
                    .position(|o| o.ids.get(&platform) == Some(&text))
                {
                    return Err(self.err(
                        value,
                        format!("people.links[{i}].{key}: `{text}` is already linked in people.links[{other}]"),
                        Some("list each person once, with all their ids in one entry".into()),
                    ));
                }
                first.get_or_insert(value);
                ids.insert(platform, text);
            }
            if ids.len() < 2 {
                let hint = Some("write two or three of `bitrix:`, `slack:` and `matrix:` in the entry, e.g. { bitrix: 17, slack: U0123456789 }".into());
                return Err(match first {
                    Some(at) => self.err(
                        at,
                        format!("people.links[{i}] names only one platform; a link needs two"),
                        hint,
                    ),
                    None => self.top_err(
                        format!("people.links[{i}] is empty; a link needs two ids"),
                        hint,
                    ),
                });
            }
            links.push(Link { ids });
        }
        Ok(PeopleConfig {
            match_by_email: raw.match_by_email.unwrap_or(defaults.match_by_email),
            comments_as_author: raw
                .comments_as_author
                .unwrap_or(defaults.comments_as_author),
            links,
            refresh,
        })
    }

    fn files(&self, raw: Option<&RawFiles>) -> Result<FilesConfig, ConfigError> {
        let max_bytes = match raw.and_then(|f| f.max_bytes.as_ref()) {
            None => 20 << 20,
            Some(m) => {
                let text = self.expand("files.max_bytes", m)?;
                validate::parse_size(&text).ok_or_else(|| {
                    self.err(
                        m,
                        format!("files.max_bytes: `{text}` is not a size"),
                        Some(
                            "write e.g. 20MB, 512KB or 1GB (0 turns every file into a link)".into(),
                        ),
                    )
                })?
            }
        };
        Ok(FilesConfig { max_bytes })
    }

    fn store(&self, raw: Option<&RawStore>) -> Result<StoreConfig, ConfigError> {
        let path = match raw.and_then(|s| s.path.as_ref()) {
            Some(p) => PathBuf::from(self.expand("store.path", p)?),
            None => PathBuf::from("./data"),
        };
        let cache_bytes = match raw.and_then(|s| s.cache_capacity.as_ref()) {
            None => StoreOptions::default().cache_bytes,
            Some(c) => {
                let text = self.expand("store.cache_capacity", c)?;
                validate::parse_size(&text)
                    .filter(|n| *n >= 1 << 20)
                    .ok_or_else(|| {
                        self.err(
                            c,
                            format!("store.cache_capacity: `{text}` is not a size of at least 1MB"),
                            Some("write e.g. 32MB, 256MB or 1GB".into()),
                        )
                    })?
            }
        };
        Ok(StoreConfig { path, cache_bytes })
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
                rooms.push(Room::new(slack::PLATFORM, slack::config::channel(self, s)?));
            }
            if let Some(t) = &m.matrix {
                rooms.push(Room::new(matrix::PLATFORM, matrix::config::room(self, t)?));
            }
            if rooms.is_empty() {
                return Err(self.err(
                    &m.name,
                    format!("mapping `{name}` has no chat target"),
                    Some("add slack: { channel: C0123456789 } and/or matrix: { room: \"!roomid:server\" }".into()),
                ));
            }
            let posts_from_chat = m.posts_from_chat.unwrap_or(false);
            if posts_from_chat && audiences.len() != 1 {
                return Err(self.err(
                    &m.name,
                    format!(
                        "mapping `{name}` has posts_from_chat: true and {} audiences; a message from chat becomes one post for one audience",
                        audiences.len()
                    ),
                    Some("give this mapping exactly one audience (e.g. audience: [group:12]) or set posts_from_chat: false".into()),
                ));
            }
            out.push(Mapping {
                name,
                audiences,
                rooms,
                replies: m.replies.unwrap_or(true),
                mirror_replies: m.mirror_replies.unwrap_or(true),
                posts_from_chat,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::bitrix::config::IntakeMode;

    use super::validate::{Expansion, expand_env};
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
        assert_eq!(c.bitrix24.webhook_user, Some(17));
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
    fn posts_from_chat_needs_exactly_one_audience() {
        let c = Config::parse(GOOD, "bridge.yaml", &good_env()).unwrap();
        assert!(
            c.mappings
                .iter()
                .all(|m| !m.posts_from_chat && m.mirror_replies)
        );
        let two = GOOD.replace(
            "    audience: [group:12, department:3]\n",
            "    audience: [group:12, department:3]\n    posts_from_chat: true\n",
        );
        assert_ne!(two, GOOD);
        let e = parse_err(&two, &good_env());
        assert!(
            e.to_string()
                .contains("posts_from_chat: true and 2 audiences"),
            "{e}"
        );
        assert!(
            e.hint.as_deref().unwrap().contains("exactly one audience"),
            "{e:?}"
        );
        let one = GOOD.replace(
            "    audience: [group:12, department:3]\n",
            "    audience: [group:12]\n    posts_from_chat: true\n",
        );
        let c = Config::parse(&one, "bridge.yaml", &good_env()).unwrap();
        assert!(c.mappings[1].posts_from_chat);
    }

    #[test]
    fn people_links_name_two_platforms_each_once() {
        let c = Config::parse(GOOD, "bridge.yaml", &good_env()).unwrap();
        assert!(c.people.match_by_email && c.people.links.is_empty());
        let with = |people: &str| format!("{GOOD}{people}");
        let c = Config::parse(
            &with("people:\n  match_by_email: false\n  refresh_interval: 1h\n  links:\n    - { bitrix: 17, slack: U0123456789, matrix: \"@anna:example.org\" }\n    - { bitrix: 18, matrix: \"@bob:example.org\" }\n"),
            "bridge.yaml",
            &good_env(),
        )
        .unwrap();
        assert!(!c.people.match_by_email);
        assert_eq!(c.people.refresh, Duration::from_secs(3600));
        assert_eq!(c.people.links.len(), 2);
        assert_eq!(c.people.links[0].ids[&slack::PLATFORM], "U0123456789");
        assert_eq!(c.people.links[1].ids[&bitrix::PLATFORM], "18");
        let lines = GOOD.lines().count() as u64;

        let e = parse_err(
            &with("people:\n  links:\n    - { slack: U0123456789 }\n"),
            &good_env(),
        );
        assert_eq!((e.line, e.column), (lines + 3, 16), "{e}");
        assert!(e.to_string().contains("names only one platform"), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("bitrix:"), "{e:?}");

        let e = parse_err(
            &with("people:\n  links:\n    - { bitrix: anna, slack: U0123456789 }\n"),
            &good_env(),
        );
        assert_eq!((e.line, e.column), (lines + 3, 17), "{e}");
        assert!(
            e.to_string().contains("`anna` is not a Bitrix24 user id"),
            "{e}"
        );

        let e = parse_err(
            &with("people:\n  links:\n    - { bitrix: 17, matrix: anna }\n"),
            &good_env(),
        );
        assert!(e.to_string().contains("not a Matrix user id"), "{e}");

        let e = parse_err(
            &with(
                "people:\n  links:\n    - { bitrix: 17, slack: U0123456789 }\n    - { bitrix: 18, slack: U0123456789 }\n",
            ),
            &good_env(),
        );
        assert_eq!(e.line, lines + 4, "{e}");
        assert!(
            e.to_string().contains("already linked in people.links[0]"),
            "{e}"
        );
    }

    #[test]
    fn the_store_cache_is_bounded_and_configurable() {
        let c = Config::parse(GOOD, "bridge.yaml", &good_env()).unwrap();
        assert_eq!(c.store.cache_bytes, 32 << 20);
        let with = |v: &str| {
            GOOD.replace(
                "store: { path: ./data }",
                &format!("store: {{ path: ./data, cache_capacity: {v} }}"),
            )
        };
        let c = Config::parse(&with("256MB"), "bridge.yaml", &good_env()).unwrap();
        assert_eq!(c.store.cache_bytes, 256 << 20);
        let e = parse_err(&with("lots"), &good_env());
        assert_eq!((e.line, e.column), (11, 40), "{e}");
        assert!(e.to_string().contains("not a size"), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("32MB"));
        let e = parse_err(&with("4KB"), &good_env());
        assert!(e.to_string().contains("at least 1MB"), "{e}");
        assert_eq!(validate::parse_size("1GiB"), Some(1 << 30));
        assert_eq!(validate::parse_size("1048576"), Some(1 << 20));
        assert_eq!(validate::parse_size("2 mb"), Some(2 << 20));
        assert_eq!(validate::parse_size("1.5GB"), None);
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../bridge.yaml");
        let c = Config::parse(text, "bridge.yaml", &good_env()).unwrap();
        assert_eq!(c.mappings[0].rooms[0].id, "C0123456789");
        assert_eq!(c.bitrix24.poll.max_pages, 20);
        assert_eq!(c.bitrix24.poll.interval, Duration::from_secs(5));
        assert_eq!(c.http.max_body_bytes, 1_048_576);
        // The same file switched to offline events: the poll becomes the 5-minute safety net.
        let offline = text.replace("  intake: poll", "  intake: offline").replace(
            "  # oauth:\n  #   portal: https://acme.bitrix24.com\n  #   server: https://oauth.bitrix24.tech/    # tokens at <server>oauth/token/\n  #   client_id: ${B24_CLIENT_ID}\n  #   client_secret: ${B24_CLIENT_SECRET}\n",
            "  oauth:\n    portal: https://acme.bitrix24.com\n    client_id: local.1\n    client_secret: s3cr3t\n",
        );
        let c = Config::parse(&offline, "bridge.yaml", &good_env()).unwrap();
        assert_eq!(c.bitrix24.intake, IntakeMode::Offline);
        assert_eq!(c.bitrix24.poll.interval, Duration::from_secs(300));
        assert!(c.bitrix24.uses_oauth());
    }

    #[test]
    fn event_modes_say_what_they_are_missing() {
        let app = "  oauth:\n    portal: https://acme.bitrix24.com\n    client_id: local.1\n    client_secret: s3cr3t\n";
        let with =
            |extra: &str| GOOD.replace("  backfill: 0\n", &format!("  backfill: 0\n{extra}"));
        let e = parse_err(&with("  intake: offline\n"), &good_env());
        assert_eq!((e.line, e.column), (5, 11), "{e}");
        assert!(e.message.contains("offline needs an oauth: section"), "{e}");
        assert!(e.hint.as_deref().unwrap().contains("client_id"), "{e}");
        let e = parse_err(&with("  intake: push\n"), &good_env());
        assert!(e.message.contains("push needs a push: section"), "{e}");
        let e = parse_err(&with("  intake: events\n"), &good_env());
        assert!(e.message.contains("unknown mode `events`"), "{e}");
        let e = parse_err(
            &with(&format!(
                "  intake: offline\n{}",
                app.replace("https://acme", "http://acme")
            )),
            &good_env(),
        );
        assert!(e.message.contains("oauth.portal: plain http"), "{e}");
        let e = parse_err(
            &with(&format!(
                "  intake: offline\n{}",
                app.replace("acme.bitrix24.com", "other.bitrix24.com")
            )),
            &good_env(),
        );
        assert!(e.message.contains("is not the webhook's portal"), "{e}");

        let c = Config::parse(
            &with(&format!("  intake: offline\n{app}")),
            "f",
            &good_env(),
        )
        .unwrap();
        let b = &c.bitrix24;
        assert_eq!(b.intake, IntakeMode::Offline);
        assert!(b.uses_oauth());
        let oauth = b.oauth.as_ref().unwrap();
        assert_eq!(oauth.server, "https://oauth.bitrix24.tech/");
        assert!(oauth.refresh_token.is_none());
        assert_eq!(
            b.poll.interval,
            Duration::from_secs(5),
            "written explicitly in GOOD"
        );
        // Push with only the incoming webhook: an outgoing webhook pushes, REST stays on it.
        let c = Config::parse(
            &with("  intake: push\n  push:\n    application_token: 0123456789abcdef\n"),
            "f",
            &good_env(),
        )
        .unwrap();
        assert!(!c.bitrix24.uses_oauth());
        assert_eq!(c.bitrix24.push.unwrap().path, "/bitrix24/events");
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
            c.bitrix24.webhook_url.as_ref().unwrap().expose(),
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
            vec![Room::new(matrix::PLATFORM, "#dev:example.org")]
        );
        assert_eq!(c.rooms_on(&matrix::PLATFORM).len(), 2);
        assert!(c.rooms_on(&slack::PLATFORM).is_empty());
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
    fn matrix_send_rate_is_off_unless_set() {
        let token = env(&[("MATRIX_ACCESS_TOKEN", "syt_x")]);
        let c = Config::parse(MATRIX, "f", &token).unwrap();
        assert_eq!(c.matrix.unwrap().send_rate, None);
        let with = |rate: &str| {
            MATRIX.replace(
                "access_token: ${MATRIX_ACCESS_TOKEN}",
                &format!("access_token: ${{MATRIX_ACCESS_TOKEN}}\n  send_rate: {rate}"),
            )
        };
        let c = Config::parse(&with("{ per_second: 0.2, burst: 10 }"), "f", &token).unwrap();
        assert_eq!(
            c.matrix.unwrap().send_rate,
            Some(crate::upstream::ratelimit::RateLimit {
                per_second: 0.2,
                burst: 10
            })
        );
        let c = Config::parse(&with("{ per_second: 0 }"), "f", &token).unwrap();
        assert_eq!(c.matrix.unwrap().send_rate, None);
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
        // A compose service name is on the same container network, never the internet.
        let c = Config::parse(
            &MATRIX.replace("https://matrix.example.org", "http://synapse:8008"),
            "f",
            &env(&[("MATRIX_ACCESS_TOKEN", "t")]),
        )
        .unwrap();
        assert!(
            c.matrix
                .unwrap()
                .homeserver
                .starts_with("http://synapse:8008")
        );
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
