//! The `bitrix24:` section of `bridge.yaml`: the webhook (a secret: its URL holds the key), the
//! poll intake's intervals, pacing and timeouts.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::validate::{RawRate, Str, Validator, check_scheme};
use crate::secret::Secret;
use crate::upstream::ratelimit::RateLimit;

#[derive(Debug, Clone)]
/// The `bitrix24:` section, validated.
pub struct BitrixConfig {
    /// `https://PORTAL/rest/USER_ID/SECRET/` — the key is in the URL, so the whole URL is secret.
    pub webhook_url: Secret,
    /// `https://PORTAL` (no path): safe to log and used for links to posts.
    pub portal_url: String,
    /// The webhook's user (from the URL), i.e. the user the bridge acts as.
    pub user_id: u64,
    /// The poll intake's timing.
    pub poll: PollConfig,
    /// Posts to mirror on the very first start (newest first).
    pub backfill: u32,
    /// `None` = no client-side limit (benchmarks against the sandbox).
    pub rate_limit: Option<RateLimit>,
    /// Longest wait for one REST answer.
    pub request_timeout: Duration,
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
    pub(crate) webhook_url: Str,
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
    let webhook = webhook(v, &raw.webhook_url)?;
    Ok(BitrixConfig {
        webhook_url: Secret::new(webhook.url.to_string()),
        portal_url: webhook.portal,
        user_id: webhook.user_id,
        poll: poll(v, raw.poll.as_ref())?,
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

/// `bitrix24.poll`, with its defaults.
fn poll(v: &Validator, poll: Option<&RawPoll>) -> Result<PollConfig, ConfigError> {
    Ok(PollConfig {
        interval: v.duration(
            "bitrix24.poll.interval",
            poll.and_then(|p| p.interval.as_ref()),
            Duration::from_secs(5),
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
