//! The `bitrix24:` section of `bridge.yaml`: the credentials (an incoming webhook, whose URL
//! holds its key, and/or a local app's OAuth grant), the intake mode (poll, offline events,
//! pushed events), the intervals, pacing and timeouts.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::validate::{Optional, RawRate, Str, Validator, check_scheme};
use crate::secret::Secret;
use crate::upstream::ratelimit::RateLimit;

#[derive(Debug, Clone)]
/// The `bitrix24:` section, validated.
pub struct BitrixConfig {
    /// `https://PORTAL/rest/USER_ID/SECRET/` — the key is in the URL, so the whole URL is secret.
    /// Optional when `oauth` is set.
    pub webhook_url: Option<Secret>,
    /// `https://PORTAL` (no path): safe to log and used for links to posts.
    pub portal_url: String,
    /// The webhook's user (from the URL). With OAuth the user is the app's, learned from the
    /// token answer.
    pub webhook_user: Option<u64>,
    /// How the bridge learns about feed changes.
    pub intake: IntakeMode,
    /// The local app's grant; required by the event modes.
    pub oauth: Option<OAuthConfig>,
    /// `intake: push`: where the portal posts events, and the token that proves it.
    pub push: Option<PushConfig>,
    /// `intake: offline`: how often the portal's event queue is read.
    pub offline: OfflineConfig,
    /// The poll intake's timing (in the event modes, the safety net's).
    pub poll: PollConfig,
    /// Posts to mirror on the very first start (newest first).
    pub backfill: u32,
    /// `None` = no client-side limit (benchmarks against the sandbox).
    pub rate_limit: Option<RateLimit>,
    /// Longest wait for one REST answer.
    pub request_timeout: Duration,
}

impl BitrixConfig {
    /// Whether REST calls go through the OAuth grant rather than the webhook: always in the
    /// offline mode (the queue is an app's), whenever there is no webhook, and in the push
    /// mode when an app is configured (it binds the events itself). Push without an app is
    /// an outgoing webhook's pushes plus the incoming webhook's REST.
    pub fn uses_oauth(&self) -> bool {
        match self.intake {
            IntakeMode::Offline => true,
            IntakeMode::Push => self.oauth.is_some() || self.webhook_url.is_none(),
            IntakeMode::Poll => self.webhook_url.is_none(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// `bitrix24.intake`.
pub enum IntakeMode {
    /// Read the feed every `poll.interval` (only needs the webhook).
    Poll,
    /// Read the portal's offline event queue (a local app with admin rights; no public URL).
    Offline,
    /// Receive events pushed to `http.listen` at `push.path` (needs a public HTTPS URL).
    Push,
}

impl IntakeMode {
    /// As written in `bridge.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            IntakeMode::Poll => "poll",
            IntakeMode::Offline => "offline",
            IntakeMode::Push => "push",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
/// `bitrix24.oauth`: a local app ("uses only API") and its grant.
pub struct OAuthConfig {
    /// `https://PORTAL`, where `/oauth/authorize/` and `/rest/` live.
    pub portal: String,
    /// The OAuth server, ending in `/`: tokens at `<server>oauth/token/`.
    pub server: String,
    /// The app's client id (`local.…`).
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: Secret,
    /// The first refresh token; rotated ones live in the store. `None`: only the store's
    /// (after `livefeed-bridge bitrix24 authorize`).
    pub refresh_token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq)]
/// `bitrix24.push`.
pub struct PushConfig {
    /// Path on `http.listen` that takes the portal's event posts.
    pub path: String,
    /// The app's `application_token`: a push without it is refused.
    pub application_token: Secret,
    /// The public HTTPS URL of `path`, if the bridge should bind the events itself.
    pub handler_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// `bitrix24.offline`.
pub struct OfflineConfig {
    /// Pause between reads of the queue while events arrive.
    pub interval: Duration,
    /// The pause grows to this while the queue stays empty.
    pub idle_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
/// `bitrix24.poll`.
pub struct PollConfig {
    /// How often the feed's first pages are read.
    pub interval: Duration,
    /// Posts younger than this are re-read to find deletions and edits.
    pub reconcile_window: Duration,
    /// How often that re-read runs.
    pub reconcile_interval: Duration,
    /// Upper bound of pages read per audience and cycle when catching up.
    pub max_pages: u32,
    /// More verified deletions than this in one reconcile round are held for an operator:
    /// many posts vanishing at once more likely means lost access than mass deletion.
    pub max_deletions_per_round: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBitrix {
    #[serde(default)]
    pub(crate) webhook_url: Option<Str>,
    #[serde(default)]
    pub(crate) intake: Option<Str>,
    #[serde(default)]
    pub(crate) oauth: Option<RawOAuth>,
    #[serde(default)]
    pub(crate) push: Option<RawPush>,
    #[serde(default)]
    pub(crate) offline: Option<RawOffline>,
    #[serde(default)]
    pub(crate) poll: Option<RawPoll>,
    #[serde(default)]
    pub(crate) backfill: Option<u32>,
    #[serde(default)]
    pub(crate) rate_limit: Option<RawRate>,
    #[serde(default)]
    pub(crate) request_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth {
    pub(crate) portal: Str,
    #[serde(default)]
    pub(crate) server: Option<Str>,
    pub(crate) client_id: Str,
    pub(crate) client_secret: Str,
    #[serde(default)]
    pub(crate) refresh_token: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPush {
    #[serde(default)]
    pub(crate) path: Option<Str>,
    pub(crate) application_token: Str,
    #[serde(default)]
    pub(crate) handler_url: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOffline {
    #[serde(default)]
    pub(crate) interval: Option<Str>,
    #[serde(default)]
    pub(crate) idle_interval: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoll {
    #[serde(default)]
    pub(crate) interval: Option<Str>,
    #[serde(default)]
    pub(crate) reconcile_window: Option<Str>,
    #[serde(default)]
    pub(crate) reconcile_interval: Option<Str>,
    #[serde(default)]
    pub(crate) max_pages: Option<u32>,
    #[serde(default)]
    pub(crate) max_deletions_per_round: Option<usize>,
}

/// Validate the section.
pub(crate) fn validate(v: &Validator, raw: &RawBitrix) -> Result<BitrixConfig, ConfigError> {
    let intake = intake_mode(v, raw.intake.as_ref())?;
    let webhook = match &raw.webhook_url {
        // Beside an OAuth grant the webhook may be left unset (`${B24_WEBHOOK_URL}` unset).
        Some(w) if raw.oauth.is_some() => {
            match v.expand_optional("bitrix24.webhook_url", Some(w))? {
                Optional::Set(_) => Some(webhook(v, w)?),
                Optional::Unset { .. } => None,
            }
        }
        Some(w) => Some(webhook(v, w)?),
        None => None,
    };
    let oauth = raw.oauth.as_ref().map(|o| oauth(v, o)).transpose()?;
    let portal_url = match (&webhook, &oauth) {
        (Some(w), Some(o)) if w.portal != o.portal => {
            let at = &raw.oauth.as_ref().expect("set").portal;
            return Err(v.err(
                at,
                format!(
                    "bitrix24.oauth.portal `{}` is not the webhook's portal `{}`",
                    o.portal, w.portal
                ),
                Some("both must name the same portal".into()),
            ));
        }
        (Some(w), _) => w.portal.clone(),
        (None, Some(o)) => o.portal.clone(),
        (None, None) => {
            return Err(v.top_err(
                "bitrix24: neither webhook_url nor oauth is set",
                Some("set webhook_url: ${B24_WEBHOOK_URL} (intake: poll), or an oauth: section for a local app".into()),
            ));
        }
    };
    if intake == IntakeMode::Offline && oauth.is_none() {
        let at = raw.intake.as_ref().expect("a non-default mode was written");
        return Err(v.err(
            at,
            format!(
                "bitrix24.intake: {} needs an oauth: section (the offline queue is an app's)",
                intake.as_str()
            ),
            Some("add bitrix24.oauth with portal, client_id, client_secret and refresh_token of a local app; README: Choosing an intake mode".into()),
        ));
    }
    let push = match (&raw.push, intake) {
        (Some(p), _) => Some(push(v, p)?),
        (None, IntakeMode::Push) => {
            let at = raw.intake.as_ref().expect("push was written");
            return Err(v.err(
                at,
                "bitrix24.intake: push needs a push: section with the app's application_token",
                Some("add bitrix24.push.application_token: ${B24_APPLICATION_TOKEN}".into()),
            ));
        }
        (None, _) => None,
    };
    let offline = raw.offline.as_ref();
    Ok(BitrixConfig {
        webhook_url: webhook.as_ref().map(|w| Secret::new(w.url.to_string())),
        portal_url,
        webhook_user: webhook.map(|w| w.user_id),
        intake,
        oauth,
        push,
        offline: OfflineConfig {
            interval: v.duration(
                "bitrix24.offline.interval",
                offline.and_then(|o| o.interval.as_ref()),
                Duration::from_secs(2),
            )?,
            idle_interval: v.duration(
                "bitrix24.offline.idle_interval",
                offline.and_then(|o| o.idle_interval.as_ref()),
                Duration::from_secs(30),
            )?,
        },
        poll: poll(v, raw.poll.as_ref(), intake)?,
        backfill: raw.backfill.unwrap_or(0),
        rate_limit: v.rate(
            "bitrix24.rate_limit",
            raw.rate_limit.as_ref(),
            RateLimit {
                per_second: 2.0,
                burst: 50,
            },
        ),
        request_timeout: v.duration(
            "bitrix24.request_timeout",
            raw.request_timeout.as_ref(),
            Duration::from_secs(30),
        )?,
    })
}

fn intake_mode(v: &Validator, raw: Option<&Str>) -> Result<IntakeMode, ConfigError> {
    let Some(raw) = raw else {
        return Ok(IntakeMode::Poll);
    };
    match v.expand("bitrix24.intake", raw)?.trim() {
        "poll" => Ok(IntakeMode::Poll),
        "offline" => Ok(IntakeMode::Offline),
        "push" => Ok(IntakeMode::Push),
        other => Err(v.err(
            raw,
            format!("bitrix24.intake: unknown mode `{other}`"),
            Some("write poll (webhook only), offline (a local app, no public URL) or push (a local app and a public HTTPS URL)".into()),
        )),
    }
}

/// `https://PORTAL` of an OAuth setting: a scheme and a host, nothing else.
fn base_url(v: &Validator, field: &str, raw: &Str) -> Result<Url, ConfigError> {
    let text = v.expand(field, raw)?;
    let url = Url::parse(text.trim()).map_err(|_| {
        v.err(
            raw,
            format!("{field}: `{}` is not a valid URL", text.trim()),
            Some("write it like https://acme.bitrix24.com".into()),
        )
    })?;
    check_scheme(&url)
        .map_err(|m| v.err(raw, format!("{field}: {m}"), Some("use https://".into())))?;
    Ok(url)
}

fn oauth(v: &Validator, raw: &RawOAuth) -> Result<OAuthConfig, ConfigError> {
    let portal = base_url(v, "bitrix24.oauth.portal", &raw.portal)?;
    let server = match &raw.server {
        Some(s) => {
            let mut u = base_url(v, "bitrix24.oauth.server", s)?;
            if !u.path().ends_with('/') {
                let p = format!("{}/", u.path());
                u.set_path(&p);
            }
            u.to_string()
        }
        None => "https://oauth.bitrix24.tech/".to_string(),
    };
    let client_id = v.expand("bitrix24.oauth.client_id", &raw.client_id)?;
    let client_secret = v.expand("bitrix24.oauth.client_secret", &raw.client_secret)?;
    if client_id.trim().is_empty() || client_secret.trim().is_empty() {
        return Err(v.err(
            &raw.client_id,
            "bitrix24.oauth: client_id and client_secret must not be empty",
            Some("copy both from the local app's page (Developer resources → Other → Local application)".into()),
        ));
    }
    let refresh_token =
        match v.expand_optional("bitrix24.oauth.refresh_token", raw.refresh_token.as_ref())? {
            Optional::Set(t) => Some(Secret::new(t.trim())),
            Optional::Unset { .. } => None,
        };
    Ok(OAuthConfig {
        portal: portal.as_str().trim_end_matches('/').to_string(),
        server,
        client_id: client_id.trim().to_string(),
        client_secret: Secret::new(client_secret.trim()),
        refresh_token,
    })
}

fn push(v: &Validator, raw: &RawPush) -> Result<PushConfig, ConfigError> {
    let path = match &raw.path {
        Some(p) => {
            let path = v.expand("bitrix24.push.path", p)?.trim().to_string();
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.len() < 2 {
                return Err(v.err(
                    p,
                    format!("bitrix24.push.path `{path}` is not a path"),
                    Some("write an absolute path such as /bitrix24/events".into()),
                ));
            }
            path
        }
        None => "/bitrix24/events".to_string(),
    };
    let token = v.expand("bitrix24.push.application_token", &raw.application_token)?;
    if token.trim().len() < 8 {
        return Err(v.err(
            &raw.application_token,
            "bitrix24.push.application_token is empty or too short",
            Some("use the application_token the portal sent when the app was installed".into()),
        ));
    }
    let handler_url = match &raw.handler_url {
        Some(h) => Some(base_url(v, "bitrix24.push.handler_url", h)?.to_string()),
        None => None,
    };
    Ok(PushConfig {
        path,
        application_token: Secret::new(token.trim()),
        handler_url,
    })
}

/// An incoming webhook's URL, taken apart.
struct Webhook {
    /// `https://PORTAL/rest/USER_ID/SECRET/`, with the trailing slash.
    url: Url,
    /// `https://PORTAL`.
    portal: String,
    /// The webhook's user.
    user_id: u64,
}

/// The webhook URL: https, `rest/USER_ID/SECRET`, no query. Errors never echo the URL: it
/// contains the webhook key.
fn webhook(v: &Validator, raw: &Str) -> Result<Webhook, ConfigError> {
    let url_text = v.expand("bitrix24.webhook_url", raw)?;
    let shape_hint = Some(
        "write the incoming webhook URL from Bitrix24 (Developer resources → Other → Incoming webhook): https://PORTAL/rest/USER_ID/SECRET/".to_string(),
    );
    let url = Url::parse(url_text.trim()).map_err(|_| {
        v.err(
            raw,
            "bitrix24.webhook_url is not a valid URL",
            shape_hint.clone(),
        )
    })?;
    check_scheme(&url).map_err(|m| {
        v.err(
            raw,
            format!("bitrix24.webhook_url: {m}"),
            Some("use https:// (plain http is accepted only for loopback test portals)".into()),
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
        return Err(v.err(
            raw,
            "bitrix24.webhook_url does not have the shape https://PORTAL/rest/USER_ID/SECRET/",
            shape_hint,
        ));
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(v.err(
            raw,
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
    Ok(Webhook {
        url: webhook,
        portal: base.as_str().trim_end_matches('/').to_string(),
        user_id,
    })
}

/// `bitrix24.poll`, with its defaults. Beside feed events the poll is only a safety net (a
/// push is never retried, offline rows are merged), so it runs every 5 minutes instead of 5 s.
fn poll(
    v: &Validator,
    poll: Option<&RawPoll>,
    intake: IntakeMode,
) -> Result<PollConfig, ConfigError> {
    let interval = match intake {
        IntakeMode::Poll => Duration::from_secs(5),
        IntakeMode::Offline | IntakeMode::Push => Duration::from_secs(300),
    };
    Ok(PollConfig {
        interval: v.duration(
            "bitrix24.poll.interval",
            poll.and_then(|p| p.interval.as_ref()),
            interval,
        )?,
        reconcile_window: v.duration(
            "bitrix24.poll.reconcile_window",
            poll.and_then(|p| p.reconcile_window.as_ref()),
            Duration::from_secs(7 * 86_400),
        )?,
        reconcile_interval: v.duration(
            "bitrix24.poll.reconcile_interval",
            poll.and_then(|p| p.reconcile_interval.as_ref()),
            Duration::from_secs(300),
        )?,
        max_pages: poll.and_then(|p| p.max_pages).unwrap_or(20).max(1),
        max_deletions_per_round: poll.and_then(|p| p.max_deletions_per_round).unwrap_or(5),
    })
}
