//! Slack Web API client (docs/platforms/slack.md §1–2).
//!
//! - POSTs everything; JSON bodies for the methods that accept them, form bodies for the rest;
//!   the token travels only in the `Authorization` header.
//! - `ok:false` is an error even with HTTP 200; errors are classified (contract §1.6) into
//!   auth (stop the side), transient (retry) and per-message permanent ones.
//! - Rate limits: `chat.postMessage` is paced per channel by a token bucket; a 429 (or
//!   `ratelimited`) blocks that method for that channel for `Retry-After` seconds, for every
//!   caller, so the bridge never sends inside a window it was told to wait out.
//! - Creating calls (`chat.postMessage`) are repeated only when Slack certainly did not act
//!   (rate-limit answers, refused connections); anything else goes back to the engine, which
//!   reconciles before sending again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{debug, trace};

use livefeed_core::metrics::Metrics;
use livefeed_core::model::Failure;
use livefeed_core::store::Store;

use super::PLATFORM;
use crate::secret::{Secret, scrub};
use crate::upstream::ratelimit::{Blocks, KeyedBuckets, RateLimit};
use crate::upstream::{ErrorClass, OUTCOME_NETWORK_ERROR, Repeat};

/// Attempts per call before the failure goes back to the caller.
const MAX_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method}: {error}")]
/// A failed call: Slack's `error` code or a transport description (secrets scrubbed).
pub struct SlackError {
    /// The method called.
    pub method: String,
    /// Slack's `error` code, or a transport description.
    pub error: String,
    /// How to treat it.
    pub class: ErrorClass,
    /// How long Slack asked us to wait, when it did.
    pub retry_after: Option<Duration>,
}

impl SlackError {
    /// The failure the engine sees.
    pub fn to_failure(&self) -> Failure {
        self.class.failure(self.to_string(), self.retry_after)
    }

    /// Whether Slack answered with this `error` code.
    pub fn is(&self, error: &str) -> bool {
        self.error == error
    }
}

/// Classify an `ok:false` error code (docs/platforms/slack.md §1.6).
pub fn classify(error: &str) -> ErrorClass {
    match error {
        "ratelimited" | "rate_limited" => ErrorClass::Rejected,
        "fatal_error" | "internal_error" | "service_unavailable" | "request_timeout" => {
            ErrorClass::Transient
        }
        "invalid_auth"
        | "not_authed"
        | "account_inactive"
        | "token_revoked"
        | "token_expired"
        | "missing_scope"
        | "not_allowed_token_type"
        | "team_disabled"
        | "user_removed_from_team"
        | "link_disabled" => ErrorClass::Auth,
        _ => ErrorClass::Permanent,
    }
}

/// A request body: JSON for the methods that accept it, a form for the rest.
#[derive(Debug, Clone)]
pub enum Body {
    /// `application/json`.
    Json(Value),
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(String, String)>),
}

/// Who the bot is, from `auth.test`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthTest {
    /// The bot user (`U…`).
    pub user_id: String,
    /// The bot user's name.
    pub user: String,
    /// The bot (`B…`): the bot's own messages carry it.
    pub bot_id: String,
    /// The app (`A…`), when Slack says.
    pub app_id: Option<String>,
    /// The workspace's name.
    pub team: String,
}

/// The Web API client. Cheap to clone; clones share pacing and rate-limit blocks.
#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    base: String,
    bot_token: Secret,
    metrics: Arc<Metrics>,
    post_pacing: Option<Arc<KeyedBuckets<String>>>,
    /// `Retry-After` holds per method and channel, kept across restarts once
    /// [`SlackApi::keeping_limits_in`] gave a store.
    blocks: Arc<Blocks>,
    /// The bot token's scopes as Slack last named them (`x-oauth-scopes`).
    scopes: Arc<std::sync::Mutex<Option<Vec<String>>>>,
    /// One call at a time per method and channel: a `Retry-After` one caller is given holds
    /// the next caller (a catch-up and a lane both reading a channel's threads), instead of
    /// both being in flight when it comes.
    in_flight: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl SlackApi {
    /// The bot token's scopes, as the last answer named them; `None` before any answer did.
    pub fn scopes(&self) -> Option<Vec<String>> {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pace new root messages at `rate` per channel from now on (a reload); an unpaced client
    /// stays unpaced.
    pub fn set_post_rate(&self, rate: RateLimit) {
        if let Some(pacing) = &self.post_pacing {
            pacing.set_rate(rate);
        }
    }

    /// A client for the API at `base` (`https://slack.com/api/`), pacing `chat.postMessage` per
    /// channel at `post_rate` (none: unpaced).
    pub fn new(
        base: String,
        bot_token: Secret,
        post_rate: Option<RateLimit>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("livefeed-bridge/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(SlackApi {
            http,
            base,
            bot_token,
            metrics,
            post_pacing: post_rate.map(|rate| Arc::new(KeyedBuckets::new(rate))),
            blocks: Arc::new(Blocks::new()),
            scopes: Arc::default(),
            in_flight: Arc::default(),
        })
    }

    /// Call with the bot token.
    /// Keep `Retry-After` holds in `store`, so they survive a restart.
    pub fn keeping_limits_in(mut self, store: Store) -> Self {
        self.blocks = Arc::new(Blocks::persistent(store, PLATFORM.as_str()));
        self
    }

    /// Call `method` with the bot token, retrying per `repeat`. `channel` keys pacing and
    /// rate-limit blocks (a 429 holds that method in that channel for every caller).
    pub async fn call(
        &self,
        method: &str,
        channel: Option<&str>,
        body: Body,
        repeat: Repeat,
    ) -> Result<Value, SlackError> {
        self.call_with(method, channel, body, repeat, &self.bot_token)
            .await
    }

    /// Call with another token (the app-level token for `apps.connections.open`).
    pub async fn call_with(
        &self,
        method: &str,
        channel: Option<&str>,
        body: Body,
        repeat: Repeat,
        token: &Secret,
    ) -> Result<Value, SlackError> {
        let key = format!("{method}/{}", channel.unwrap_or_default());
        let serial = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let _turn = serial.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.blocks.wait(&key).await {
                self.metrics.rate_limit_wait(PLATFORM.as_str());
            }
            if method == "chat.postMessage"
                && let (Some(pacing), Some(ch)) = (&self.post_pacing, channel)
                && pacing.acquire(&ch.to_string()).await
            {
                self.metrics.rate_limit_wait(PLATFORM.as_str());
            }
            let result = self.call_once(method, &body, token).await;
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let Some(after) = err.retry_after {
                self.blocks.block(&key, after).await;
            }
            if !err.class.repeatable(repeat) || attempt >= MAX_ATTEMPTS {
                return Err(err);
            }
            self.metrics.retry(PLATFORM.as_str());
            let backoff = Duration::from_millis(250 * (1 << attempt) + fastrand::u64(0..250));
            let delay = err.retry_after.unwrap_or(backoff);
            debug!(method, error = %err, retry_in_ms = delay.as_millis() as u64, "retrying Slack call");
            if err.retry_after.is_none() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    async fn call_once(
        &self,
        method: &str,
        body: &Body,
        token: &Secret,
    ) -> Result<Value, SlackError> {
        let url = format!("{}{}", self.base, method);
        trace!(method, "Slack request");
        let req = self.http.post(&url).bearer_auth(token.expose());
        let req = match body {
            Body::Json(v) => req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(serde_json::to_vec(v).expect("JSON values serialize")),
            Body::Form(pairs) => req.form(pairs),
        };
        let answered = async {
            let response = req.send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if let Some(scopes) = response
                .headers()
                .get("x-oauth-scopes")
                .and_then(|v| v.to_str().ok())
            {
                *self.scopes.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                    scopes
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                );
            }
            Ok::<_, reqwest::Error>((status, retry_after, response.bytes().await?))
        };
        let (status, retry_after, bytes) = match answered.await {
            Ok(answer) => answer,
            Err(e) => {
                self.metrics
                    .api_call(PLATFORM.as_str(), method, OUTCOME_NETWORK_ERROR);
                return Err(self.transport_error(method, e));
            }
        };
        let result = answer(method, status, retry_after, &bytes);
        let outcome = crate::upstream::outcome(&result.as_ref().map_err(|e| e.class));
        self.metrics.api_call(PLATFORM.as_str(), method, outcome);
        if let Ok(value) = &result
            && let Some(w) = value.get("warning").and_then(Value::as_str)
        {
            debug!(method, warning = w, "Slack warning");
        }
        result
    }

    fn transport_error(&self, method: &str, e: reqwest::Error) -> SlackError {
        // Refused connections never reached Slack; everything else may have.
        let class = if e.is_connect() {
            ErrorClass::Rejected
        } else {
            ErrorClass::Transient
        };
        SlackError {
            method: method.into(),
            error: scrub(&e.without_url().to_string(), &[&self.bot_token]),
            class,
            retry_after: None,
        }
    }

    // -- files (docs/platforms/slack.md §2.12) ------------------------------------------------

    /// Step 2 of an upload: the raw bytes to the `upload_url` Slack handed out, without the
    /// token (the URL itself authorises).
    pub async fn upload_bytes(&self, upload_url: &str, bytes: Vec<u8>) -> Result<(), SlackError> {
        let method = "files.upload_url";
        let sent = self
            .http
            .post(upload_url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await;
        let outcome = match &sent {
            Ok(r) if r.status().is_success() => "ok",
            Ok(_) => "error",
            Err(_) => OUTCOME_NETWORK_ERROR,
        };
        self.metrics.api_call(PLATFORM.as_str(), method, outcome);
        let response = sent.map_err(|e| self.transport_error(method, e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(SlackError {
            method: method.into(),
            error: format!("HTTP {status}"),
            class: if status == 429 || status >= 500 {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            },
            retry_after: None,
        })
    }

    /// A GET for a file's `url_private_download` with the bot token, or `None` when the URL is
    /// not Slack's own (or the configured API's host): the token goes nowhere else, whatever an
    /// event says.
    pub fn file_request(&self, url: &str) -> Option<reqwest::RequestBuilder> {
        let host = |u: &str| {
            url::Url::parse(u)
                .ok()?
                .host_str()
                .map(str::to_ascii_lowercase)
        };
        let target = host(url)?;
        let trusted = target == "files.slack.com"
            || target.ends_with(".slack.com")
            || host(&self.base).is_some_and(|api| api == target);
        let https_or_local = url.starts_with("https://") || host(&self.base) == Some(target);
        (trusted && https_or_local).then(|| self.http.get(url).bearer_auth(self.bot_token.expose()))
    }

    // -- the methods the bridge uses --------------------------------------------------------

    /// Who the bot token belongs to.
    pub async fn auth_test(&self) -> Result<AuthTest, SlackError> {
        let v = self
            .call("auth.test", None, Body::Json(json!({})), Repeat::Safe)
            .await?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(AuthTest {
            user_id: text("user_id").unwrap_or_default(),
            user: text("user").unwrap_or_default(),
            bot_id: text("bot_id").unwrap_or_default(),
            app_id: text("app_id"),
            team: text("team").unwrap_or_default(),
        })
    }

    /// A channel's facts (membership, archived).
    pub async fn conversations_info(&self, channel: &str) -> Result<Value, SlackError> {
        self.call(
            "conversations.info",
            Some(channel),
            Body::Form(vec![("channel".into(), channel.into())]),
            Repeat::Safe,
        )
        .await
    }

    /// A user's profile.
    /// `users.lookupByEmail` (scope `users:read.email`).
    pub async fn users_lookup_by_email(&self, email: &str) -> Result<Value, SlackError> {
        self.call(
            "users.lookupByEmail",
            None,
            Body::Form(vec![("email".into(), email.into())]),
            Repeat::Safe,
        )
        .await
    }

    pub async fn users_info(&self, user: &str) -> Result<Value, SlackError> {
        self.call(
            "users.info",
            None,
            Body::Form(vec![("user".into(), user.into())]),
            Repeat::Safe,
        )
        .await
    }
}

/// Read an answer: `ok:true` is success; HTTP 429, `ok:false` and anything that is not a Web
/// API answer are errors with their class (docs/platforms/slack.md §1.3–1.6).
fn answer(
    method: &str,
    status: u16,
    retry_after: Option<Duration>,
    bytes: &[u8],
) -> Result<Value, SlackError> {
    let error = |error: String, class: ErrorClass, retry_after: Option<Duration>| SlackError {
        method: method.into(),
        error,
        class,
        retry_after,
    };
    // Slack's advice when a limit answer carries no Retry-After: wait a second.
    let wait = Some(retry_after.unwrap_or(Duration::from_secs(1)));
    if status == 429 {
        return Err(error("ratelimited".into(), ErrorClass::Rejected, wait));
    }
    let parsed: Option<Value> = serde_json::from_slice(bytes).ok();
    let Some(value) = parsed.filter(|v| v.get("ok").is_some()) else {
        let class = if status >= 500 || status == 408 {
            ErrorClass::Transient
        } else {
            ErrorClass::Permanent
        };
        let what = format!(
            "HTTP {status}, not a Slack API answer ({} bytes)",
            bytes.len()
        );
        return Err(error(what, class, None));
    };
    if value.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(value);
    }
    let code = value
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error")
        .to_string();
    let class = classify(&code);
    let retry = (class == ErrorClass::Rejected).then_some(wait).flatten();
    Err(error(code, class, retry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("ratelimited"), ErrorClass::Rejected);
        assert_eq!(classify("rate_limited"), ErrorClass::Rejected);
        assert_eq!(classify("internal_error"), ErrorClass::Transient);
        assert_eq!(classify("token_revoked"), ErrorClass::Auth);
        assert_eq!(classify("channel_not_found"), ErrorClass::Permanent);
        assert_eq!(classify("is_archived"), ErrorClass::Permanent);
    }
}
