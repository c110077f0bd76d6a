//! The `slack:` section of `bridge.yaml` (tokens from the environment, the intake the tokens
//! select, pacing) and the Slack target of a mapping (`slack: { channel: C… }`).

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::validate::{Optional, RawRate, Str, Validator, check_scheme};
use crate::secret::Secret;
use crate::upstream::ratelimit::RateLimit;

#[derive(Debug, Clone)]
/// The `slack:` section, validated.
pub struct SlackConfig {
    /// `xoxb-…`.
    pub bot_token: Secret,
    /// How events reach the bridge.
    pub intake: SlackIntake,
    /// The Web API's base URL.
    pub api_base: String,
    /// Pacing of `chat.postMessage` per channel; `None` = unpaced.
    pub post_rate: Option<RateLimit>,
    /// Threads active within this are read again after an outage (catch-up).
    pub catch_up_window: Duration,
    /// Pacing of catch-up's `conversations.replies` calls; `None` = unpaced.
    pub catch_up_rate: Option<RateLimit>,
    /// Longest wait for one answer.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
/// How Slack events reach the bridge.
pub enum SlackIntake {
    /// Socket Mode with the app-level token (`xapp-…`): no public URL.
    SocketMode { app_token: Secret },
    /// The Events API on `http.listen`, verified with the signing secret.
    EventsApi { signing_secret: Secret },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlack {
    pub(crate) bot_token: Str,
    #[serde(default)]
    pub(crate) app_token: Option<Str>,
    #[serde(default)]
    pub(crate) signing_secret: Option<Str>,
    #[serde(default)]
    pub(crate) api_base: Option<Str>,
    #[serde(default)]
    pub(crate) post_rate: Option<RawRate>,
    #[serde(default)]
    pub(crate) catch_up_window: Option<Str>,
    #[serde(default)]
    pub(crate) catch_up_rate: Option<RawRate>,
    #[serde(default)]
    pub(crate) request_timeout: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSlackTarget {
    pub(crate) channel: Str,
}

/// Validate the section.
pub(crate) fn validate(v: &Validator, raw: &RawSlack) -> Result<SlackConfig, ConfigError> {
    let bot_token = v.expand("slack.bot_token", &raw.bot_token)?;
    if !bot_token.starts_with("xoxb-") {
        return Err(v.err(
            &raw.bot_token,
            "slack.bot_token is not a bot token (it must start with xoxb-)",
            Some("use the Bot User OAuth Token from the app's OAuth & Permissions page".into()),
        ));
    }
    Ok(SlackConfig {
        bot_token: Secret::new(bot_token),
        intake: intake(v, raw)?,
        api_base: api_base(v, raw.api_base.as_ref())?,
        post_rate: v.rate(
            "slack.post_rate",
            raw.post_rate.as_ref(),
            RateLimit {
                per_second: 1.0,
                burst: 3,
            },
        ),
        catch_up_window: v.duration(
            "slack.catch_up_window",
            raw.catch_up_window.as_ref(),
            Duration::from_secs(7 * 86_400),
        )?,
        // Tier 3 (`conversations.replies`): 50+ calls a minute.
        catch_up_rate: v.rate(
            "slack.catch_up_rate",
            raw.catch_up_rate.as_ref(),
            RateLimit {
                per_second: 0.8,
                burst: 5,
            },
        ),
        request_timeout: v.duration(
            "slack.request_timeout",
            raw.request_timeout.as_ref(),
            Duration::from_secs(30),
        )?,
    })
}

/// Socket Mode when an app token is set, else the Events API when a signing secret is.
fn intake(v: &Validator, raw: &RawSlack) -> Result<SlackIntake, ConfigError> {
    let app = v.expand_optional("slack.app_token", raw.app_token.as_ref())?;
    let signing = v.expand_optional("slack.signing_secret", raw.signing_secret.as_ref())?;
    match (app, signing) {
        (Optional::Set(token), _) => {
            if !token.starts_with("xapp-") {
                let at = raw.app_token.as_ref().expect("set implies present");
                return Err(v.err(
                    at,
                    "slack.app_token is not an app-level token (it must start with xapp-)",
                    Some("create an App-Level Token with the connections:write scope under Basic Information".into()),
                ));
            }
            Ok(SlackIntake::SocketMode {
                app_token: Secret::new(token),
            })
        }
        (Optional::Unset { .. }, Optional::Set(secret)) => Ok(SlackIntake::EventsApi {
            signing_secret: Secret::new(secret),
        }),
        (Optional::Unset { unset_var: a }, Optional::Unset { unset_var: s }) => {
            let named: Vec<String> = [a, s].into_iter().flatten().collect();
            let detail = if named.is_empty() {
                String::new()
            } else {
                format!(" (unset: {})", named.join(", "))
            };
            Err(v.err(
                &raw.bot_token,
                format!("slack: neither app_token nor signing_secret is set{detail}"),
                Some("set app_token: ${SLACK_APP_TOKEN} for Socket Mode (recommended, no public URL), or signing_secret: ${SLACK_SIGNING_SECRET} for the Events API on http.listen".into()),
            ))
        }
    }
}

/// `slack.api_base` (tests point it at the sandbox), ending in `/`.
fn api_base(v: &Validator, raw: Option<&Str>) -> Result<String, ConfigError> {
    Ok(match raw {
        None => "https://slack.com/api/".to_string(),
        Some(s) => {
            let text = v.expand("slack.api_base", s)?;
            let url = Url::parse(text.trim()).map_err(|_| {
                v.err(
                    s,
                    format!("slack.api_base: `{text}` is not a valid URL"),
                    Some("leave it out for https://slack.com/api/".into()),
                )
            })?;
            check_scheme(&url).map_err(|m| {
                v.err(
                    s,
                    format!("slack.api_base: {m}"),
                    Some("use https:// (plain http only for loopback hosts or a container name such as `synapse`)".into()),
                )
            })?;
            let mut base = url.to_string();
            if !base.ends_with('/') {
                base.push('/');
            }
            base
        }
    })
}

/// Validate a mapping's Slack target: a channel id.
pub(crate) fn channel(v: &Validator, raw: &RawSlackTarget) -> Result<String, ConfigError> {
    let channel = v.expand("slack.channel", &raw.channel)?.trim().to_string();
    if !is_slack_channel_id(&channel) {
        return Err(v.err(
            &raw.channel,
            format!("`{channel}` is not a Slack channel id"),
            Some("use the channel id (C… or G…, shown at the bottom of the channel's About tab), not its #name".into()),
        ));
    }
    Ok(channel)
}

fn is_slack_channel_id(id: &str) -> bool {
    id.len() >= 9
        && matches!(id.as_bytes()[0], b'C' | b'G')
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}
