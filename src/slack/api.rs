//! Slack Web API client (contracts/slack.md §1–2).
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

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{debug, trace};

use crate::ratelimit::{Blocks, KeyedBuckets};
use crate::secret::{Secret, scrub};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::Failure;

const PLATFORM: &str = "slack";
/// Attempts per call before the failure goes back to the caller.
const MAX_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackErrorKind {
    /// Slack refused before acting (rate limits, refused connections): safe to repeat.
    Rejected,
    /// Network or server trouble: Slack may or may not have acted.
    Transient,
    /// The token or the app is no longer valid.
    Auth,
    /// This request can never succeed.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method}: {error}")]
pub struct SlackError {
    pub method: String,
    /// Slack's `error` code, or a transport description.
    pub error: String,
    pub kind: SlackErrorKind,
    pub retry_after: Option<Duration>,
}

impl SlackError {
    pub fn to_failure(&self) -> Failure {
        let reason = self.to_string();
        match self.kind {
            SlackErrorKind::Rejected | SlackErrorKind::Transient => match self.retry_after {
                Some(d) => Failure::retry_after(reason, d),
                None => Failure::transient(reason),
            },
            SlackErrorKind::Auth => Failure::auth(reason),
            SlackErrorKind::Permanent => Failure::permanent(reason),
        }
    }
}

/// Classify an `ok:false` error code (contract §1.6).
pub fn classify(error: &str) -> SlackErrorKind {
    match error {
        "ratelimited" | "rate_limited" => SlackErrorKind::Rejected,
        "fatal_error" | "internal_error" | "service_unavailable" | "request_timeout" => {
            SlackErrorKind::Transient
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
        | "link_disabled" => SlackErrorKind::Auth,
        _ => SlackErrorKind::Permanent,
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    Json(Value),
    Form(Vec<(String, String)>),
}

/// Whether repeating a call is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Safe,
    OnlyIfRejected,
}

#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    base: String,
    bot_token: Secret,
    metrics: Arc<Metrics>,
    post_pacing: Option<Arc<KeyedBuckets<String>>>,
    blocks: Arc<Blocks<(String, String)>>,
}

impl SlackApi {
    pub fn new(
        base: String,
        bot_token: Secret,
        post_rate: Option<(f64, u32)>,
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
            post_pacing: post_rate.map(|(r, b)| Arc::new(KeyedBuckets::new(r, b))),
            blocks: Arc::new(Blocks::new()),
        })
    }

    /// Call with the bot token.
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
        let key = (method.to_string(), channel.unwrap_or_default().to_string());
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.blocks.wait(&key).await {
                self.metrics.rate_limit_wait(PLATFORM);
            }
            if method == "chat.postMessage"
                && let (Some(pacing), Some(ch)) = (&self.post_pacing, channel)
                && pacing.acquire(&ch.to_string()).await
            {
                self.metrics.rate_limit_wait(PLATFORM);
            }
            let result = self.call_once(method, &body, token).await;
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let Some(after) = err.retry_after {
                self.blocks.block(key.clone(), after);
            }
            let repeatable = match repeat {
                Repeat::Safe => matches!(
                    err.kind,
                    SlackErrorKind::Rejected | SlackErrorKind::Transient
                ),
                Repeat::OnlyIfRejected => err.kind == SlackErrorKind::Rejected,
            };
            if !repeatable || attempt >= MAX_ATTEMPTS {
                return Err(err);
            }
            self.metrics.retry(PLATFORM);
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
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.api_call(PLATFORM, method, "network_error");
                return Err(self.transport_error(method, e));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.metrics.api_call(PLATFORM, method, "network_error");
                return Err(self.transport_error(method, e));
            }
        };
        if status == 429 {
            self.metrics.api_call(PLATFORM, method, "rate_limited");
            return Err(SlackError {
                method: method.into(),
                error: "ratelimited".into(),
                kind: SlackErrorKind::Rejected,
                retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
            });
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let Some(value) = parsed.filter(|v| v.get("ok").is_some()) else {
            self.metrics.api_call(PLATFORM, method, "server_error");
            return Err(SlackError {
                method: method.into(),
                error: format!(
                    "HTTP {status}, not a Slack API answer ({} bytes)",
                    bytes.len()
                ),
                kind: if status >= 500 || status == 408 {
                    SlackErrorKind::Transient
                } else {
                    SlackErrorKind::Permanent
                },
                retry_after: None,
            });
        };
        if value.get("ok").and_then(Value::as_bool) == Some(true) {
            self.metrics.api_call(PLATFORM, method, "ok");
            if let Some(w) = value.get("warning").and_then(Value::as_str) {
                debug!(method, warning = w, "Slack warning");
            }
            return Ok(value);
        }
        let error = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error")
            .to_string();
        let kind = classify(&error);
        self.metrics.api_call(
            PLATFORM,
            method,
            match kind {
                SlackErrorKind::Rejected => "rate_limited",
                SlackErrorKind::Auth => "auth_error",
                _ => "error",
            },
        );
        Err(SlackError {
            method: method.into(),
            retry_after: if kind == SlackErrorKind::Rejected {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            } else {
                None
            },
            error,
            kind,
        })
    }

    fn transport_error(&self, method: &str, e: reqwest::Error) -> SlackError {
        let kind = if e.is_connect() {
            SlackErrorKind::Rejected
        } else {
            SlackErrorKind::Transient
        };
        SlackError {
            method: method.into(),
            error: scrub(&e.without_url().to_string(), &[&self.bot_token]),
            kind,
            retry_after: None,
        }
    }

    // -- the methods the bridge uses --------------------------------------------------------

    pub async fn auth_test(&self) -> Result<Value, SlackError> {
        self.call("auth.test", None, Body::Json(json!({})), Repeat::Safe)
            .await
    }

    pub async fn conversations_info(&self, channel: &str) -> Result<Value, SlackError> {
        self.call(
            "conversations.info",
            Some(channel),
            Body::Form(vec![("channel".into(), channel.into())]),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify("ratelimited"), SlackErrorKind::Rejected);
        assert_eq!(classify("rate_limited"), SlackErrorKind::Rejected);
        assert_eq!(classify("internal_error"), SlackErrorKind::Transient);
        assert_eq!(classify("token_revoked"), SlackErrorKind::Auth);
        assert_eq!(classify("channel_not_found"), SlackErrorKind::Permanent);
        assert_eq!(classify("is_archived"), SlackErrorKind::Permanent);
    }
}
