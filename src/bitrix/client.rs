//! Bitrix24 REST client, over an incoming webhook or a local app's OAuth grant
//! (docs/platforms/bitrix24.md §1–3).
//!
//! - JSON bodies for every call; responses accept the PHP quirks (numbers as strings, `[]` for
//!   empty maps, `result` lists as objects).
//! - Errors are classified by `error` code first and HTTP status second; the codes of log.*
//!   methods are unreliable, so callers match method errors on `error_description`.
//! - A client-side token bucket keeps under the portal's leaky bucket; transient failures are
//!   retried with exponential backoff and jitter (backon). Calls that create something are
//!   retried only when the portal certainly did not run them (rate-limit rejections, refused
//!   connections); other failures go back to the engine, which reconciles before resending.
//! - The webhook URL contains its key: it is never logged, and transport errors are stripped of
//!   their URL before they are shown. OAuth tokens travel in the body (`auth`), and are
//!   scrubbed from error texts like the webhook.
//! - With OAuth, an `expired_token` or `invalid_token` answer refreshes the token and repeats
//!   the call once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tracing::{debug, trace};

use livefeed_core::metrics::Metrics;
use livefeed_core::model::Failure;
use livefeed_core::store::Store;

use super::PLATFORM;
use super::oauth::Tokens;
use crate::secret::{Secret, scrub};
use crate::upstream::ratelimit::{Blocks, RateLimit, TokenBucket};
use crate::upstream::{Backoff, ErrorClass, OUTCOME_NETWORK_ERROR, Repeat};

/// A successful call's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The `result` field.
    pub result: Value,
    /// `total` of a list method.
    pub total: Option<u64>,
    /// `next` of a list method: the offset of the next page.
    pub next: Option<u64>,
}

/// A failed call, with the portal's own words (secrets scrubbed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method}: {code} {description} (HTTP {status:?})")]
pub struct ApiError {
    /// The method called.
    pub method: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The `error` code (`NETWORK` when there was no answer).
    pub code: String,
    /// The `error_description`, which identifies method errors better than the code.
    pub description: String,
    /// How to treat it.
    pub class: ErrorClass,
    /// How long the portal asked us to wait, when it said.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Whether the description matches (method errors are identified by their text).
    pub fn says(&self, text: &str) -> bool {
        self.description
            .to_lowercase()
            .contains(&text.to_lowercase())
    }

    /// The failure the engine sees.
    pub fn to_failure(&self) -> Failure {
        self.class.failure(self.to_string(), self.retry_after)
    }
}

/// The outcome of a `batch` call: per-command results and errors.
#[derive(Debug, Clone, Default)]
pub struct BatchResponse {
    /// Results by command key.
    pub results: BTreeMap<String, Value>,
    /// Errors by command key.
    pub errors: BTreeMap<String, ApiError>,
    /// `total` by command key.
    pub totals: BTreeMap<String, u64>,
    /// `next` by command key.
    pub nexts: BTreeMap<String, u64>,
}

/// How calls authenticate.
#[derive(Clone)]
pub enum Credentials {
    /// `https://PORTAL/rest/USER/KEY/` (the method name is appended), and its user.
    Webhook(Secret, u64),
    /// A local app's tokens: `auth=<access token>` to the grant's REST endpoint.
    App(Tokens),
}

/// A REST client for one portal. Cheap to clone; clones share limits and pauses.
#[derive(Clone)]
pub struct BitrixClient {
    http: reqwest::Client,
    credentials: Credentials,
    limiter: Option<Arc<TokenBucket>>,
    metrics: Arc<Metrics>,
    backoff: ExponentialBuilder,
    /// Last `time.operating_reset_at` seen per method: when an OPERATION_TIME_LIMIT lifts.
    operating_reset: Arc<Mutex<HashMap<String, i64>>>,
    /// OPERATION_TIME_LIMIT answers in a row per method; each doubles the next pause.
    operating_strikes: Arc<Mutex<HashMap<String, u32>>>,
    /// Methods paused after OPERATION_TIME_LIMIT: every caller waits, nobody hammers.
    paused: Arc<Blocks>,
    /// Calls waiting for a token that the next request may carry along (see [`rides_along`]).
    waiting: Arc<Mutex<Waiting>>,
}

/// Calls waiting for the rate limiter. Whichever of them gets a token first sends all of them
/// (up to [`MAX_BATCH`]) in one `batch`: the portal counts a batch as one request, so under
/// load many calls share a token, and alone a call still goes out as itself, at once.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    calls: Vec<Queued>,
}

struct Queued {
    id: u64,
    method: String,
    params: Value,
    answer: oneshot::Sender<Result<Response, ApiError>>,
}

/// Most commands one `batch` runs (docs/platforms/bitrix24.md §3).
pub const MAX_BATCH: usize = 50;

/// Whether a call may ride in another call's `batch`. Only comment writes without files do:
/// they are what a backlog of replies is made of, inside a batch they answer as they do alone
/// (their errors are told apart by `error_description`, which a batch keeps), and files
/// (base64 in the command line) would make one request as large as all of them.
fn rides_along(method: &str, params: &Value) -> bool {
    method == "log.blogcomment.add" && params.get("FILES").is_none()
}

/// First and longest pause of a method after OPERATION_TIME_LIMIT. The budget is spread over
/// ten one-minute buckets, so the method usually frees up well before `operating_reset_at`
/// (up to ten minutes away): a probe after 5 s, 10 s, 20 s … then every minute finds out at the
/// cost of one rejected call each (rejected calls use no operating time).
const FIRST_METHOD_PAUSE: Duration = Duration::from_secs(5);
const MAX_METHOD_PAUSE: Duration = Duration::from_secs(60);

/// Retries of a call before its failure goes back to the caller.
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(8),
    retries: 5,
};

impl BitrixClient {
    /// A client with `credentials`, paced at `rate` (none: unpaced, for benchmarks).
    pub fn new(
        credentials: Credentials,
        rate: Option<RateLimit>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("livefeed-bridge/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(BitrixClient {
            http,
            credentials,
            limiter: rate.map(|rate| Arc::new(TokenBucket::new(rate))),
            metrics,
            backoff: exponential(BACKOFF),
            operating_reset: Arc::new(Mutex::new(HashMap::new())),
            operating_strikes: Arc::new(Mutex::new(HashMap::new())),
            paused: Arc::new(Blocks::new()),
            waiting: Arc::new(Mutex::new(Waiting::default())),
        })
    }

    /// The user calls run as (what the bridge sees is what this user sees). `None` while an
    /// app has no token yet.
    pub async fn acting_user(&self) -> Option<u64> {
        match &self.credentials {
            Credentials::Webhook(_, user) => Some(*user),
            Credentials::App(tokens) => tokens.user_id().await.ok().filter(|u| *u != 0),
        }
    }

    /// Pace at `rate` from now on (a reload); a client made unpaced stays unpaced.
    pub fn set_rate(&self, rate: RateLimit) {
        if let Some(limiter) = &self.limiter {
            limiter.set_rate(rate);
        }
    }

    /// Keep `OPERATION_TIME_LIMIT` pauses in `store`, so they survive a restart.
    pub fn keeping_limits_in(mut self, store: Store) -> Self {
        self.paused = Arc::new(Blocks::persistent(store, PLATFORM.as_str()));
        self
    }

    /// Other retries (shorter ones for tests and `check`).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = exponential(backoff);
        self
    }

    /// A GET for a file the portal handed out (a Disk `DOWNLOAD_URL`, an image a post shows),
    /// with the headers the portal's web server wants: without a browser-like `Accept` and a
    /// `Referer` it may answer with an nginx 404 page (docs/platforms/bitrix24.md §8). The URL
    /// can carry credentials; the caller must never log it.
    pub fn file_request(&self, url: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "*/*")
            .header(reqwest::header::ACCEPT_LANGUAGE, "en");
        if let Ok(u) = url::Url::parse(url) {
            request = request.header(
                reqwest::header::REFERER,
                format!("{}/", u.origin().ascii_serialization()),
            );
        }
        request
    }

    /// Call a method with retries per `repeat`.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        repeat: Repeat,
    ) -> Result<Response, ApiError> {
        let attempt = || self.call_once(method, &params);
        attempt
            .retry(self.backoff)
            .when(|e: &ApiError| e.class.repeatable(repeat))
            // A paused method is waited for inside the next attempt, not here.
            .notify(|e: &ApiError, dur| {
                self.metrics.retry(PLATFORM.as_str());
                debug!(method, error = %e, retry_in_ms = dur.as_millis() as u64, "retrying Bitrix24 call");
            })
            .await
    }

    /// Run up to 50 commands in one request (`key → (method, params)`). Commands that fail
    /// appear in `errors`; the call itself fails only if the whole request does.
    pub async fn batch(&self, cmds: &[(String, String, Value)]) -> Result<BatchResponse, ApiError> {
        assert!(cmds.len() <= MAX_BATCH, "batch takes at most 50 commands");
        let resp = self.call("batch", batch_body(cmds), Repeat::Safe).await?;
        Ok(parse_batch(resp.result, cmds))
    }

    async fn call_once(&self, method: &str, params: &Value) -> Result<Response, ApiError> {
        if self.paused.wait(method).await {
            self.metrics.rate_limit_wait(PLATFORM.as_str());
        }
        if let Some(limiter) = &self.limiter {
            if rides_along(method, params) {
                return self.call_together(limiter, method, params).await;
            }
            if limiter.acquire().await {
                self.metrics.rate_limit_wait(PLATFORM.as_str());
            }
        }
        self.request(method, params).await
    }

    /// Wait for a token in [`Waiting`]: either this call gets one and sends every waiting call
    /// with it, or another call's token carries this one along.
    async fn call_together(
        &self,
        limiter: &TokenBucket,
        method: &str,
        params: &Value,
    ) -> Result<Response, ApiError> {
        let (answer, mut answered) = oneshot::channel();
        let id = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            w.next_id += 1;
            let id = w.next_id;
            w.calls.push(Queued {
                id,
                method: method.to_string(),
                params: params.clone(),
                answer,
            });
            id
        };
        // A caller that gives up (shutdown) leaves the queue with its call.
        let _leave = Leave {
            waiting: &self.waiting,
            id,
        };
        let lost = || {
            Err(ApiError {
                method: method.to_string(),
                status: None,
                code: "NETWORK".into(),
                description: "the request carrying this call was abandoned".into(),
                class: ErrorClass::Transient,
                retry_after: None,
            })
        };
        let waited = tokio::select! {
            biased;
            a = &mut answered => return a.unwrap_or_else(|_| lost()),
            waited = limiter.acquire() => waited,
        };
        if waited {
            self.metrics.rate_limit_wait(PLATFORM.as_str());
        }
        let group = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match w.calls.iter().position(|q| q.id == id) {
                // Taken along after this token came: the token goes back.
                None => Vec::new(),
                Some(i) => {
                    let own = w.calls.remove(i);
                    let others = w.calls.len().min(MAX_BATCH - 1);
                    std::iter::once(own)
                        .chain(w.calls.drain(..others))
                        .collect()
                }
            }
        };
        if group.is_empty() {
            limiter.refund();
        } else {
            self.send_together(group).await;
        }
        answered.await.unwrap_or_else(|_| lost())
    }

    /// Send `group` as one request and answer each call: alone as itself, together as a
    /// `batch` whose per-command results and errors go to their callers. A failed request
    /// fails every call in it the same way (none of them ran, or any may have).
    async fn send_together(&self, mut group: Vec<Queued>) {
        if group.len() == 1 {
            let q = group.remove(0);
            let answer = self.request(&q.method, &q.params).await;
            let _ = q.answer.send(answer);
            return;
        }
        let cmds: Vec<(String, String, Value)> = group
            .iter()
            .enumerate()
            .map(|(i, q)| (format!("c{i}"), q.method.clone(), q.params.clone()))
            .collect();
        trace!(calls = cmds.len(), "Bitrix24 calls sent together");
        let mut answer = self.request("batch", &batch_body(&cmds)).await;
        let mut parsed = match &mut answer {
            Ok(resp) => parse_batch(resp.result.take(), &cmds),
            Err(_) => BatchResponse::default(),
        };
        for ((key, method, _), q) in cmds.iter().zip(group) {
            let own = match &answer {
                Err(e) => Err(ApiError {
                    method: method.clone(),
                    ..e.clone()
                }),
                Ok(_) => match (parsed.results.remove(key), parsed.errors.remove(key)) {
                    (Some(result), None) => Ok(Response {
                        total: parsed.totals.get(key).copied(),
                        next: parsed.nexts.get(key).copied(),
                        result,
                    }),
                    (_, Some(mut e)) => {
                        if e.code == "OPERATION_TIME_LIMIT" {
                            let wait = self.operating_wait(method);
                            e.retry_after = Some(wait);
                            self.paused.block(method, wait).await;
                        }
                        Err(e)
                    }
                    // An answer without this command: it may or may not have run.
                    (None, None) => Err(ApiError {
                        method: method.clone(),
                        status: None,
                        code: "ERROR_UNEXPECTED_ANSWER".into(),
                        description: "the batch answer says nothing of this command".into(),
                        class: ErrorClass::Transient,
                        retry_after: None,
                    }),
                },
            };
            let _ = q.answer.send(own);
        }
    }

    /// One request, paced already: the answer, with a token refresh and an operating-time
    /// pause where the portal asks for them.
    async fn request(&self, method: &str, params: &Value) -> Result<Response, ApiError> {
        let (mut result, token) = self.send(method, params).await;
        if let (Err(e), Some(token), Credentials::App(tokens)) =
            (&result, &token, &self.credentials)
            && (e.code == "expired_token" || e.code == "invalid_token")
        {
            // Expired before its time (the portal's clock), or refused: refresh once. A revoked
            // grant then fails the refresh with `invalid_grant`, which says what to do.
            tokens.expired(token).await;
            result = self.send(method, params).await.0;
        }
        if let Err(e) = &result
            && e.code == "OPERATION_TIME_LIMIT"
            && let Some(wait) = e.retry_after
        {
            // The method is paused for every caller, also after a restart.
            self.paused.block(method, wait).await;
        }
        let outcome = match &result {
            Err(e) if e.code == "NETWORK" => OUTCOME_NETWORK_ERROR,
            other => crate::upstream::outcome(&other.as_ref().map_err(|e| e.class)),
        };
        self.metrics.api_call(PLATFORM.as_str(), method, outcome);
        if let Err(e) = &result
            && e.class == ErrorClass::Rejected
        {
            self.metrics.rate_limit_wait(PLATFORM.as_str());
        }
        result
    }

    /// One request with the current credentials: the answer, and the OAuth token it carried.
    async fn send(
        &self,
        method: &str,
        params: &Value,
    ) -> (Result<Response, ApiError>, Option<Secret>) {
        let (url, body, token, secrets) = match &self.credentials {
            Credentials::Webhook(w, _) => (
                format!("{}{}", w.expose(), method),
                params.clone(),
                None,
                vec![w.clone()],
            ),
            Credentials::App(tokens) => {
                let access = match tokens.access().await {
                    Ok(a) => a,
                    Err(e) => return (Err(e), None),
                };
                let mut body = params.clone();
                if let Value::Object(map) = &mut body {
                    map.insert("auth".into(), Value::String(access.token.expose().into()));
                }
                let secrets = tokens.secrets().await;
                (
                    format!("{}{}", access.endpoint, method),
                    body,
                    Some(access.token),
                    secrets,
                )
            }
        };
        trace!(method, "Bitrix24 request");
        let sent = self
            .http
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return (Err(self.transport_error(method, e, &secrets)), token),
        };
        let status = response.status().as_u16();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return (Err(self.transport_error(method, e, &secrets)), token),
        };
        (self.answer(method, status, &body, &secrets), token)
    }

    /// Read an answer: the REST envelope, or an error with its class. An
    /// OPERATION_TIME_LIMIT error carries how long to pause the method; a success says when
    /// the method's operating-time window resets.
    fn answer(
        &self,
        method: &str,
        status: u16,
        body: &[u8],
        secrets: &[Secret],
    ) -> Result<Response, ApiError> {
        let secrets: Vec<&Secret> = secrets.iter().collect();
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        match parsed {
            Some(Value::Object(obj)) if obj.contains_key("error") => {
                let code = obj.get("error").map(value_text).unwrap_or_default();
                let description = obj
                    .get("error_description")
                    .map(value_text)
                    .unwrap_or_default();
                let class = classify(Some(status), &code);
                let retry_after =
                    (code == "OPERATION_TIME_LIMIT").then(|| self.operating_wait(method));
                Err(ApiError {
                    method: method.to_string(),
                    status: Some(status),
                    code,
                    description: scrub(&description, &secrets),
                    class,
                    retry_after,
                })
            }
            Some(Value::Object(mut obj)) if status < 300 && obj.contains_key("result") => {
                self.operating_strikes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(method);
                if let Some(reset) = obj
                    .get("time")
                    .and_then(|t| t.get("operating_reset_at"))
                    .and_then(as_i64)
                {
                    self.operating_reset
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(method.to_string(), reset);
                }
                Ok(Response {
                    total: obj.get("total").and_then(as_u64),
                    next: obj.get("next").and_then(as_u64),
                    // Moved, not cloned: a page of 50 posts is most of the answer.
                    result: obj.remove("result").unwrap_or(Value::Null),
                })
            }
            _ => Err(ApiError {
                method: method.to_string(),
                status: Some(status),
                code: String::new(),
                description: format!(
                    "unexpected answer ({} bytes, not a REST envelope)",
                    body.len()
                ),
                class: if status >= 500 || status == 429 {
                    ErrorClass::Transient
                } else if status == 401 || status == 403 {
                    ErrorClass::Auth
                } else {
                    ErrorClass::Permanent
                },
                retry_after: None,
            }),
        }
    }

    /// How long to pause a method after OPERATION_TIME_LIMIT: 5 s doubling with each answer
    /// in a row up to [`MAX_METHOD_PAUSE`], never past the last seen `operating_reset_at`, at
    /// least a second.
    fn operating_wait(&self, method: &str) -> Duration {
        let strikes = {
            let mut strikes = self
                .operating_strikes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = strikes.entry(method.to_string()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let backoff = FIRST_METHOD_PAUSE
            .saturating_mul(1 << (strikes - 1).min(8))
            .min(MAX_METHOD_PAUSE);
        let reset = self
            .operating_reset
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)
            .copied();
        let now = livefeed_core::store::now_ms() / 1000;
        match reset {
            Some(reset) if reset > now => backoff.min(Duration::from_secs((reset - now) as u64)),
            _ => backoff,
        }
        .max(Duration::from_secs(1))
    }

    fn transport_error(&self, method: &str, e: reqwest::Error, secrets: &[Secret]) -> ApiError {
        // Refused connections never reached the portal; everything else may have.
        let class = if e.is_connect() {
            ErrorClass::Rejected
        } else {
            ErrorClass::Transient
        };
        let secrets: Vec<&Secret> = secrets.iter().collect();
        let text = scrub(&e.without_url().to_string(), &secrets);
        ApiError {
            method: method.to_string(),
            status: None,
            code: "NETWORK".into(),
            description: text,
            class,
            retry_after: None,
        }
    }
}

/// Takes a queued call out of [`Waiting`] when its caller stops waiting.
struct Leave<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.calls.retain(|q| q.id != self.id);
    }
}

/// The body of a `batch` request: `halt: 0` and each command as `method?query`.
fn batch_body(cmds: &[(String, String, Value)]) -> Value {
    let mut cmd = Map::new();
    for (key, method, params) in cmds {
        let query = php_query(params);
        let line = if query.is_empty() {
            method.clone()
        } else {
            format!("{method}?{query}")
        };
        cmd.insert(key.clone(), Value::String(line));
    }
    json!({ "halt": 0, "cmd": cmd })
}

/// A `batch` answer's sections by command key.
fn parse_batch(mut result: Value, cmds: &[(String, String, Value)]) -> BatchResponse {
    let mut out = BatchResponse::default();
    let mut section = |name: &str| -> Vec<(String, Value)> {
        match result.get_mut(name).map(Value::take) {
            Some(Value::Object(m)) => m.into_iter().collect(),
            // `[]` is PHP's empty map; list-shaped sections index by position.
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (key, value) in section("result") {
        out.results.insert(key, value);
    }
    for (key, value) in section("result_error") {
        let method = cmds
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, m, _)| m.clone())
            .unwrap_or_default();
        let code = value.get("error").map(value_text).unwrap_or_default();
        let description = value
            .get("error_description")
            .map(value_text)
            .unwrap_or_default();
        let class = classify(None, &code);
        out.errors.insert(
            key,
            ApiError {
                method,
                status: None,
                code,
                description,
                class,
                retry_after: None,
            },
        );
    }
    for (key, value) in section("result_total") {
        if let Some(n) = as_u64(&value) {
            out.totals.insert(key, n);
        }
    }
    for (key, value) in section("result_next") {
        if let Some(n) = as_u64(&value) {
            out.nexts.insert(key, n);
        }
    }
    out
}

fn exponential(b: Backoff) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(b.first)
        .with_max_delay(b.max)
        .with_max_times(b.retries)
        .with_jitter()
}

/// Classify by code first, HTTP status second (docs/platforms/bitrix24.md §1.4).
pub fn classify(status: Option<u16>, code: &str) -> ErrorClass {
    match code {
        "QUERY_LIMIT_EXCEEDED" | "OPERATION_TIME_LIMIT" => ErrorClass::Rejected,
        "INTERNAL_SERVER_ERROR" | "ERROR_UNEXPECTED_ANSWER" => ErrorClass::Transient,
        "NO_AUTH_FOUND"
        | "INVALID_CREDENTIALS"
        | "expired_token"
        | "invalid_token"
        | "insufficient_scope"
        | "ACCESS_DENIED"
        | "user_access_error"
        | "WRONG_AUTH_TYPE"
        | "METHOD_CONFIRM_WAITING"
        | "WRONG_LICENSE"
        | "PORTAL_DELETED"
        | "OVERLOAD_LIMIT"
        | "INVALID_REQUEST" => ErrorClass::Auth,
        "ERROR_METHOD_NOT_FOUND" => ErrorClass::Permanent,
        "ERROR_CORE" if status.is_some_and(|s| s >= 500) => ErrorClass::Transient,
        _ => match status {
            Some(s) if s >= 500 => ErrorClass::Transient,
            Some(429) => ErrorClass::Rejected,
            Some(401) | Some(403) => ErrorClass::Auth,
            _ => ErrorClass::Permanent,
        },
    }
}

/// PHP-style query string for `batch` command lines: nested values as `KEY[0]=…`,
/// `FILTER[ID][0]=…`, percent-encoded.
pub fn php_query(params: &Value) -> String {
    let mut pairs = Vec::new();
    if let Value::Object(map) = params {
        for (k, v) in map {
            flatten(k.clone(), v, &mut pairs);
        }
    }
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        ser.append_pair(k, v);
    }
    ser.finish()
}

fn flatten(prefix: String, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(format!("{prefix}[{k}]"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => out.push((prefix, String::new())),
        Value::Bool(b) => out.push((prefix, if *b { "Y" } else { "N" }.to_string())),
        other => out.push((prefix, value_text(other))),
    }
}

/// A JSON scalar as text (strings without quotes).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A number that may arrive as a JSON number or a numeric string.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A list result that PHP may have serialised as an object with numeric keys.
pub fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(m) => m.values().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_query_encoding() {
        let q =
            php_query(&json!({"LOG_RIGHTS": ["UA", "SG5"], "start": 50, "FILTER": {"ID": [1, 5]}}));
        assert_eq!(
            q,
            "FILTER%5BID%5D%5B0%5D=1&FILTER%5BID%5D%5B1%5D=5&LOG_RIGHTS%5B0%5D=UA&LOG_RIGHTS%5B1%5D=SG5&start=50"
        );
    }

    #[test]
    fn classification_follows_the_contract() {
        assert_eq!(
            classify(Some(503), "QUERY_LIMIT_EXCEEDED"),
            ErrorClass::Rejected
        );
        assert_eq!(
            classify(Some(429), "OPERATION_TIME_LIMIT"),
            ErrorClass::Rejected
        );
        assert_eq!(
            classify(Some(500), "INTERNAL_SERVER_ERROR"),
            ErrorClass::Transient
        );
        assert_eq!(classify(Some(401), "INVALID_CREDENTIALS"), ErrorClass::Auth);
        assert_eq!(classify(Some(403), "insufficient_scope"), ErrorClass::Auth);
        assert_eq!(classify(None, "insufficient_scope"), ErrorClass::Auth);
        assert_eq!(classify(Some(400), ""), ErrorClass::Permanent);
        assert_eq!(classify(Some(400), "100"), ErrorClass::Permanent);
        assert_eq!(classify(Some(502), ""), ErrorClass::Transient);
        assert_eq!(
            classify(Some(404), "ERROR_METHOD_NOT_FOUND"),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn lenient_numbers_and_lists() {
        assert_eq!(as_u64(&json!("217")), Some(217));
        assert_eq!(as_u64(&json!(217)), Some(217));
        assert_eq!(as_u64(&json!("x")), None);
        assert_eq!(as_list(&json!({"0": 1, "1": 2})).len(), 2);
        assert_eq!(as_list(&json!([])).len(), 0);
    }
}
