//! The Web API: routing, authentication, fault injection, rate limiting, Slack's response
//! envelopes, and the methods the bridge uses (contract §1–§2).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::{IncomingStream, Listener};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::params::{self, BadJson, Params};
use super::state::{
    Author, Channel, Custom, Life, Msg, NewMsg, Render, SlackFile, Workspace, is_msg_ts, parse_ts,
};
use super::text::b64_decode;
use super::text::b64_encode;
use super::{
    Fault, FaultKind, LongPost, ReplyThreadTs, RequestRecord, Shared, UnknownThread, World,
};
use crate::mime_of;

// ---- transport: a listener whose connections a handler can reset --------------------------

/// Accepts TCP connections and hands each handler a switch that turns the connection's next
/// I/O into a TCP reset (`FaultKind::ConnectionReset`).
pub(crate) struct ResettableListener(TcpListener);

#[derive(Clone, Debug)]
pub(crate) struct ConnTag {
    kill: Arc<AtomicBool>,
}

pub(crate) struct ResettableIo {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl ResettableIo {
    fn killed(&self) -> Option<io::Error> {
        if self.kill.load(Ordering::SeqCst) {
            // Zero linger makes the close a RST rather than a FIN.
            let _ = self.inner.set_zero_linger();
            Some(io::Error::from(io::ErrorKind::ConnectionReset))
        } else {
            None
        }
    }
}

impl Listener for ResettableListener {
    type Io = ResettableIo;
    type Addr = ConnTag;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    let tag = ConnTag { kill: kill.clone() };
                    return (ResettableIo { inner: s, kill }, tag);
                }
                // Usually EMFILE; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr().map(|_| ConnTag {
            kill: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, ResettableListener>> for ConnTag {
    fn connect_info(stream: IncomingStream<'_, ResettableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl AsyncRead for ResettableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.killed() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

pub(crate) async fn serve(sh: Arc<Shared>, listener: TcpListener) {
    let mut stop = sh.shutdown.subscribe();
    let app = Router::new()
        .route("/api/{method}", any(api_handler))
        .route("/upload/v1/{key}", axum::routing::post(upload_handler))
        .route(
            "/files-pri/{file}/{*rest}",
            axum::routing::get(file_handler),
        )
        .merge(super::control::routes())
        .with_state(sh.clone());
    let server = axum::serve(
        ResettableListener(listener),
        app.into_make_service_with_connect_info::<ConnTag>(),
    )
    .with_graceful_shutdown(async move { super::stopped(&mut stop).await });
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "fake Slack Web API server stopped");
    }
}

// ---- bookkeeping shared with the rest of the fake ---------------------------------------

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Window {
    method: String,
    /// `None`: the whole method.
    channel: Option<String>,
    until: Instant,
}

#[derive(Default)]
pub(crate) struct Net {
    pub requests: Vec<RequestRecord>,
    pub faults: Vec<Fault>,
    pub ratio_faults: Vec<(Option<String>, f64, Vec<FaultKind>)>,
    buckets: HashMap<(String, String), Bucket>,
    windows: Vec<Window>,
    pub violations: usize,
    /// `method channel at <unix ms>` of each call that landed inside a window.
    pub violated: Vec<String>,
    /// `method channel for Ns at <unix ms>` of each window opened.
    pub opened: Vec<String>,
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Net {
    fn note_violation(&mut self, method: &str, channel: &str) {
        let now = Instant::now();
        self.windows.retain(|w| w.until > now);
        if self
            .windows
            .iter()
            .any(|w| w.method == method && w.channel.as_deref().is_none_or(|c| c == channel))
        {
            self.violations += 1;
            self.violated
                .push(format!("{method} {channel} at {}", unix_ms()));
        }
    }

    fn open_window(&mut self, method: &str, channel: Option<&str>, secs: u64) {
        self.opened.push(format!(
            "{method} {} for {secs}s at {}",
            channel.unwrap_or("*"),
            unix_ms()
        ));
        self.windows.push(Window {
            method: method.to_owned(),
            channel: channel.map(str::to_owned),
            // Capped so that absurd scripted values cannot overflow `Instant`.
            until: Instant::now() + Duration::from_secs(secs.min(86_400)),
        });
    }

    fn take_fault(&mut self, method: &str, channel: &str, ws: &mut Workspace) -> Option<FaultKind> {
        if let Some(i) = self.faults.iter().position(|f| {
            f.times > 0
                && f.method.as_deref().is_none_or(|m| m == method)
                && f.channel.as_deref().is_none_or(|c| c == channel)
        }) {
            let f = &mut self.faults[i];
            f.times -= 1;
            let kind = f.kind.clone();
            if f.times == 0 {
                self.faults.remove(i);
            }
            return Some(kind);
        }
        let (_, ratio, kinds) = self
            .ratio_faults
            .iter()
            .find(|(m, _, _)| m.as_deref() == Some(method))
            .or_else(|| self.ratio_faults.iter().find(|(m, _, _)| m.is_none()))?;
        if ws.ids.f64() < *ratio {
            Some(kinds[ws.ids.below(kinds.len())].clone())
        } else {
            None
        }
    }

    /// Takes a token from `key`'s bucket, or answers how many seconds to wait.
    fn take_token(&mut self, key: (String, String), per_sec: f64, burst: u32) -> Option<u64> {
        if per_sec <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let cap = f64::from(burst.max(1));
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            None
        } else {
            let wait = (1.0 - b.tokens) / per_sec;
            Some((wait.ceil() as u64).max(1))
        }
    }

    /// Tier limits per method, then `chat.postMessage` pacing per channel. A `Retry-After`
    /// window is opened only when one is actually given (the 429 flavour).
    fn rate_check(
        &mut self,
        cfg: &super::WorkspaceConfig,
        method: &str,
        channel: &str,
    ) -> Option<u64> {
        if let Some((_, per_min, burst)) = cfg.method_rates.iter().find(|(m, _, _)| m == method)
            && let Some(secs) =
                self.take_token((method.to_owned(), String::new()), per_min / 60.0, *burst)
        {
            if !cfg.quirks.rate_limit_as_200 {
                self.open_window(method, None, secs);
            }
            return Some(secs);
        }
        if method == "chat.postMessage"
            && let Some(rate) = cfg.post_rate
            && let Some(secs) = self.take_token(
                (method.to_owned(), channel.to_owned()),
                rate.per_sec,
                rate.burst,
            )
        {
            if !cfg.quirks.rate_limit_as_200 {
                self.open_window(method, Some(channel), secs);
            }
            return Some(secs);
        }
        None
    }
}

// ---- envelopes ------------------------------------------------------------------------------

pub(crate) struct Success {
    body: Map<String, Value>,
    warnings: Vec<String>,
    messages: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct ApiErr {
    error: String,
    extra: Map<String, Value>,
}

impl From<&str> for ApiErr {
    fn from(e: &str) -> Self {
        ApiErr {
            error: e.to_owned(),
            extra: Map::new(),
        }
    }
}

type MResult = Result<Success, ApiErr>;

fn ok(v: Value) -> Success {
    Success {
        body: match v {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        warnings: Vec::new(),
        messages: Vec::new(),
    }
}

fn err(e: &str) -> ApiErr {
    ApiErr::from(e)
}

fn missing_scope(ws: &Workspace, needed: &str) -> ApiErr {
    let mut extra = Map::new();
    extra.insert("needed".into(), json!(needed));
    extra.insert("provided".into(), json!(ws.scopes.join(",")));
    ApiErr {
        error: "missing_scope".into(),
        extra,
    }
}

fn need_scope(ws: &Workspace, s: &str) -> Result<(), ApiErr> {
    if ws.has_scope(s) {
        Ok(())
    } else {
        Err(missing_scope(ws, s))
    }
}

fn need_any_scope(ws: &Workspace, any: &[&str]) -> Result<(), ApiErr> {
    if any.iter().any(|s| ws.has_scope(s)) {
        Ok(())
    } else {
        Err(missing_scope(ws, &any.join(",")))
    }
}

/// Merges warnings and detail messages into the body the way Slack does.
fn finish(result: MResult, transport_warnings: &[&str]) -> (Value, Option<String>, Vec<String>) {
    let (mut body, ok_flag, error, mut warnings, messages) = match result {
        Ok(s) => (s.body, true, None, s.warnings, s.messages),
        Err(e) => (e.extra, false, Some(e.error), Vec::new(), Vec::new()),
    };
    warnings.extend(transport_warnings.iter().map(|w| (*w).to_owned()));
    let mut out = Map::new();
    out.insert("ok".into(), json!(ok_flag));
    if let Some(e) = &error {
        out.insert("error".into(), json!(e));
    }
    if !warnings.is_empty() {
        out.insert("warning".into(), json!(warnings.join(",")));
    }
    let mut meta = match body.remove("response_metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    out.append(&mut body);
    if !warnings.is_empty() {
        meta.insert("warnings".into(), json!(warnings));
    }
    if !messages.is_empty() {
        meta.insert("messages".into(), json!(messages));
    }
    if !meta.is_empty() {
        out.insert("response_metadata".into(), Value::Object(meta));
    }
    (Value::Object(out), error, warnings)
}

fn json_response(status: StatusCode, body: &Value, retry_after: Option<u64>) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

// ---- the handler ----------------------------------------------------------------------------

struct MethodSpec {
    json: bool,
    app_token: bool,
}

fn spec(method: &str) -> Option<MethodSpec> {
    let (json, app_token) = match method {
        "auth.test"
        | "chat.postMessage"
        | "chat.update"
        | "chat.delete"
        | "conversations.join"
        | "conversations.history"
        | "pins.add"
        | "pins.remove"
        | "reactions.add"
        | "files.delete"
        | "files.upload" => (true, false),
        "chat.getPermalink"
        | "conversations.info"
        | "conversations.replies"
        | "users.info"
        | "users.lookupByEmail"
        | "files.getUploadURLExternal"
        | "files.completeUploadExternal"
        | "files.info" => (false, false),
        "apps.connections.open" => (true, true),
        _ => return None,
    };
    Some(MethodSpec { json, app_token })
}

enum Auth {
    Bot,
    App,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, tok) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| tok.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn authenticate(
    ws: &Workspace,
    header_token: Option<&str>,
    form_token: Option<&str>,
    app_method: bool,
) -> Result<Auth, &'static str> {
    // apps.connections.open only takes its token in the header (contract §5.1).
    let token = if app_method {
        header_token
    } else {
        header_token.or(form_token)
    };
    let Some(token) = token else {
        return Err("not_authed");
    };
    let kind = if token == ws.cfg.bot_token {
        if ws.bot_revoked {
            return Err("token_revoked");
        }
        if ws.account_inactive {
            return Err("account_inactive");
        }
        Auth::Bot
    } else if token == ws.cfg.app_token {
        Auth::App
    } else {
        return Err("invalid_auth");
    };
    match (kind, app_method) {
        (Auth::Bot, false) => Ok(Auth::Bot),
        (Auth::App, true) => Ok(Auth::App),
        _ => Err("not_allowed_token_type"),
    }
}

const HTML_ERROR: &str = "<!DOCTYPE html><html><head><title>Slack</title></head><body>\
<h1>Something went wrong</h1><p>Slack is having trouble right now. Please try again.</p></body></html>";

/// Step 2 of the external upload: the raw bytes (any or no `Content-Type`, or one multipart
/// file part), no token; `OK - <length>` with 200.
async fn upload_handler(
    State(sh): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = if content_type.starts_with("multipart/form-data") {
        multipart_file(&content_type, &body).unwrap_or_default()
    } else {
        body.to_vec()
    };
    let found = {
        let mut w = sh.lock();
        let file =
            w.ws.files
                .values_mut()
                .find(|f| !f.upload_key.is_empty() && f.upload_key == key && !f.completed);
        match file {
            Some(f) => {
                let len = bytes.len();
                f.content = Some(bytes);
                Some(len)
            }
            None => None,
        }
    };
    sh.bump();
    match found {
        Some(len) => (StatusCode::OK, format!("OK - {len}")).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The first file part of a multipart body.
fn multipart_file(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = body;
    let start = find(text, delimiter.as_bytes())? + delimiter.len();
    let rest = &text[start..];
    let head_end = find(rest, b"\r\n\r\n")? + 4;
    let content = &rest[head_end..];
    let end = find(content, format!("\r\n{delimiter}").as_bytes())?;
    Some(content[..end].to_vec())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `url_private` / `url_private_download`: the bytes to the bot token with `files:read`;
/// anything else gets Slack's HTML sign-in page with 200 (contract §2.12).
async fn file_handler(
    State(sh): State<Arc<Shared>>,
    Path((file, _rest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = bearer(&headers);
    let served = {
        let w = sh.lock();
        let authorised = token.as_deref().is_some_and(|t| {
            matches!(authenticate(&w.ws, Some(t), None, false), Ok(Auth::Bot))
                && w.ws.has_scope("files:read")
        });
        let id = file.rsplit('-').next().unwrap_or_default();
        authorised
            .then(|| w.ws.files.get(id))
            .flatten()
            .filter(|f| !f.deleted)
            .and_then(|f| Some((f.mimetype.clone(), f.content.clone()?)))
    };
    match served {
        Some((mime, bytes)) => {
            let mut r = (StatusCode::OK, Body::from(bytes)).into_response();
            if let Ok(v) = HeaderValue::from_str(&mime) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        None => {
            let mut r = (StatusCode::OK, SIGN_IN_PAGE).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
    }
}

const SIGN_IN_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in | Slack</title></head>\
<body><h1>Sign in to your workspace</h1></body></html>";

#[allow(clippy::too_many_arguments)]
async fn api_handler(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnTag>,
    Path(method): Path<String>,
    http_method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    // Before the fake's own work: the bench's latency figures end when the call arrives.
    let arrived_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let spec = spec(&method);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let honour_json =
        spec.as_ref().is_none_or(|s| s.json) || !sh.cfg.quirks.json_args_only_where_supported;
    let dec = params::decode(
        query.as_deref(),
        content_type.as_deref(),
        &body,
        honour_json,
        sh.cfg.quirks.charset_warnings,
    );
    let channel_key = dec
        .params
        .str("channel")
        .or_else(|| dec.params.str("channel_id"))
        .unwrap_or_default();
    let header_token = bearer(&headers);
    let auth_via = if header_token.is_some() {
        Some("header")
    } else if dec.form_token.is_some() {
        Some("form")
    } else {
        None
    };
    let mut record = RequestRecord {
        method: method.clone(),
        http_method: http_method.to_string(),
        content_type,
        auth: auth_via,
        params: Value::Object(dec.received.clone()),
        status: 200,
        ok: false,
        error: None,
        warnings: Vec::new(),
        retry_after: None,
        arrived_us,
    };

    let fault = {
        let mut guard = sh.lock();
        let w = &mut *guard;
        w.net.note_violation(&method, &channel_key);
        w.net.take_fault(&method, &channel_key, &mut w.ws)
    };
    let response = match fault {
        Some(FaultKind::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(FaultKind::RateLimited { retry_after }) => {
            sh.lock()
                .net
                .open_window(&method, Some(&channel_key), retry_after);
            record.status = 429;
            record.error = Some("ratelimited".into());
            record.retry_after = Some(retry_after);
            Some(json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"ok": false, "error": "ratelimited"}),
                Some(retry_after),
            ))
        }
        Some(FaultKind::RateLimited200) => {
            record.error = Some("rate_limited".into());
            Some(json_response(
                StatusCode::OK,
                &json!({"ok": false, "error": "rate_limited"}),
                None,
            ))
        }
        Some(FaultKind::ApiError(e)) => {
            let r = json_response(StatusCode::OK, &json!({"ok": false, "error": e}), None);
            record.error = Some(e);
            Some(r)
        }
        Some(FaultKind::ServerError(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            record.status = status.as_u16();
            let mut r = (status, HTML_ERROR).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            Some(r)
        }
        Some(FaultKind::ConnectionReset) => {
            conn.kill.store(true, Ordering::SeqCst);
            record.status = 0;
            Some(Response::new(Body::empty()))
        }
        None => None,
    };
    if let Some(r) = response {
        sh.lock().net.requests.push(record);
        sh.bump();
        return r;
    }

    let (status, body, retry_after, scopes) = {
        let mut guard = sh.lock();
        let w = &mut *guard;
        let (status, body, retry_after) = process(
            &sh,
            w,
            &method,
            spec.as_ref(),
            &http_method,
            &dec,
            header_token.as_deref(),
            &channel_key,
            &mut record,
        );
        w.net.requests.push(record);
        sh.flush(w);
        (status, body, retry_after, w.ws.scopes.join(","))
    };
    sh.bump();
    let mut r = json_response(status, &body, retry_after);
    // Slack names the bot token's scopes on every answer.
    if method != "apps.connections.open"
        && let Ok(v) = HeaderValue::from_str(&scopes)
    {
        r.headers_mut().insert("x-oauth-scopes", v);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn process(
    sh: &Shared,
    w: &mut World,
    method: &str,
    spec: Option<&MethodSpec>,
    http_method: &Method,
    dec: &params::Decoded,
    header_token: Option<&str>,
    channel_key: &str,
    record: &mut RequestRecord,
) -> (StatusCode, Value, Option<u64>) {
    let result: MResult = (|| {
        let spec = spec.ok_or_else(|| {
            let mut e = err("unknown_method");
            e.extra.insert("req_method".into(), json!(method));
            e
        })?;
        if let Some(e) = dec.error {
            return Err(err(e));
        }
        authenticate(
            &w.ws,
            header_token,
            dec.form_token.as_deref(),
            spec.app_token,
        )?;
        Ok(ok(json!({})))
    })();
    if let Err(e) = result {
        let (body, error, warnings) = finish(Err(e), &dec.warnings);
        record.error = error;
        record.warnings = warnings;
        return (StatusCode::OK, body, None);
    }
    if let Some(secs) = w.net.rate_check(&sh.cfg, method, channel_key) {
        if sh.cfg.quirks.rate_limit_as_200 {
            record.error = Some("rate_limited".into());
            return (
                StatusCode::OK,
                json!({"ok": false, "error": "rate_limited"}),
                None,
            );
        }
        record.status = 429;
        record.error = Some("ratelimited".into());
        record.retry_after = Some(secs);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"ok": false, "error": "ratelimited"}),
            Some(secs),
        );
    }
    let mut ctx = Ctx {
        ws: &mut w.ws,
        tickets: &mut w.dl.tickets,
        ws_port: sh.ws_addr.port(),
        http_method,
        p: &dec.params,
    };
    let result = ctx.call(method);
    let (body, error, warnings) = finish(result, &dec.warnings);
    record.ok = error.is_none();
    record.error = error;
    record.warnings = warnings;
    (StatusCode::OK, body, None)
}

// ---- methods --------------------------------------------------------------------------------

struct Ctx<'a> {
    ws: &'a mut Workspace,
    tickets: &'a mut std::collections::HashSet<String>,
    ws_port: u16,
    http_method: &'a Method,
    p: &'a Params,
}

/// How a method looks at a channel the bot is not in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reading or writing needs membership of public channels too (`not_in_channel`).
    Member,
    /// Visible if public (info, permalinks, edits of own messages).
    Visible,
}

impl Ctx<'_> {
    fn call(&mut self, method: &str) -> MResult {
        match method {
            "auth.test" => self.auth_test(),
            "chat.postMessage" => self.post_message(),
            "chat.update" => self.update(),
            "chat.delete" => self.delete(),
            "chat.getPermalink" => self.permalink(),
            "conversations.info" => self.conv_info(),
            "conversations.join" => self.join(),
            "conversations.history" => self.history(),
            "conversations.replies" => self.replies(),
            "users.info" => self.users_info(),
            "users.lookupByEmail" => self.users_lookup_by_email(),
            "pins.add" => self.pin(true),
            "pins.remove" => self.pin(false),
            "reactions.add" => self.reactions_add(),
            "apps.connections.open" => self.connections_open(),
            "files.upload" => Err(err("method_deprecated")),
            "files.getUploadURLExternal" => self.upload_url(),
            "files.completeUploadExternal" => self.complete_upload(),
            "files.delete" => self.delete_file(),
            "files.info" => self.file_info(),
            _ => Err(err("unknown_method")),
        }
    }

    /// Resolves `channel` by id or name; private channels the bot is not in do not exist.
    fn channel(&self, key: &str, access: Access) -> Result<&Channel, ApiErr> {
        let id = self
            .p
            .nonempty(key)
            .ok_or_else(|| err("channel_not_found"))?;
        let ch = self
            .ws
            .find_channel(&id)
            .ok_or_else(|| err("channel_not_found"))?;
        if ch.private && !ch.bot_member {
            return Err(err("channel_not_found"));
        }
        if access == Access::Member && !ch.bot_member {
            return Err(err("not_in_channel"));
        }
        Ok(ch)
    }

    fn auth_test(&mut self) -> MResult {
        let c = &self.ws.cfg;
        Ok(ok(json!({
            "url": format!("https://{}.slack.com/", c.team_domain),
            "team": c.team_name, "user": c.bot_user_name, "team_id": c.team_id,
            "user_id": c.bot_user_id, "bot_id": c.bot_id, "is_enterprise_install": false,
        })))
    }

    fn blocks_arg(&self) -> Result<Option<Value>, ApiErr> {
        let Some(b) = self.p.json("blocks") else {
            return Ok(None);
        };
        let b = b.map_err(|BadJson| err("invalid_blocks_format"))?;
        validate_blocks(&b)?;
        Ok(Some(b))
    }

    fn attachments_arg(&self) -> Result<Option<Value>, ApiErr> {
        let Some(a) = self.p.json("attachments") else {
            return Ok(None);
        };
        let Ok(Value::Array(mut items)) = a else {
            return Err(err("invalid_attachments"));
        };
        if items.len() > 100 {
            return Err(err("too_many_attachments"));
        }
        // Slack numbers attachments in the stored message.
        for (i, item) in items.iter_mut().enumerate() {
            if let Value::Object(o) = item {
                o.entry("id").or_insert(json!(i + 1));
            }
        }
        Ok(Some(Value::Array(items)))
    }

    /// `Some(None)` means "clear" (`{}` in `chat.update`).
    fn metadata_arg(&self) -> Result<Option<Option<Value>>, ApiErr> {
        let Some(md) = self.p.json("metadata") else {
            return Ok(None);
        };
        let md = md.map_err(|BadJson| err("invalid_metadata_format"))?;
        let Value::Object(o) = &md else {
            return Err(err("invalid_metadata_format"));
        };
        if o.is_empty() {
            return Ok(Some(None));
        }
        let type_ok = o
            .get("event_type")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let payload_ok = o.get("event_payload").is_some_and(Value::is_object);
        if !type_ok || !payload_ok {
            return Err(err("invalid_metadata_schema"));
        }
        Ok(Some(Some(md)))
    }

    fn custom_arg(&self) -> Result<Option<Custom>, ApiErr> {
        let c = Custom {
            username: self.p.nonempty("username"),
            icon_url: self.p.nonempty("icon_url"),
            icon_emoji: self.p.nonempty("icon_emoji"),
        };
        if c.username.is_none() && c.icon_url.is_none() && c.icon_emoji.is_none() {
            return Ok(None);
        }
        if self.ws.has_scope("chat:write.customize") {
            Ok(Some(c))
        } else if self.ws.cfg.quirks.customize_without_scope_error {
            Err(missing_scope(self.ws, "chat:write.customize"))
        } else {
            Ok(None)
        }
    }

    fn post_message(&mut self) -> MResult {
        need_scope(self.ws, "chat:write")?;
        let ch = self.channel("channel", Access::Visible)?;
        if ch.archived {
            return Err(err("is_archived"));
        }
        if !ch.bot_member && !self.ws.has_scope("chat:write.public") {
            return Err(err("not_in_channel"));
        }
        let channel = ch.id.clone();
        let text = self.p.str("text").filter(|t| !t.is_empty());
        let markdown = self.p.nonempty("markdown_text");
        let blocks = self.blocks_arg()?;
        let attachments = self.attachments_arg()?;
        if markdown.is_some() && (text.is_some() || blocks.is_some()) {
            return Err(err("markdown_text_conflict"));
        }
        if text.is_none() && blocks.is_none() && attachments.is_none() && markdown.is_none() {
            return Err(err("no_text"));
        }
        let metadata = self.metadata_arg()?.flatten();
        let custom = self.custom_arg()?;

        let mut warnings = Vec::new();
        let mut messages = Vec::new();
        let mut text = text.or(markdown).unwrap_or_default();
        if text.chars().count() > 40_000 {
            if self.ws.cfg.quirks.long_post == LongPost::Reject {
                return Err(err("msg_too_long"));
            }
            text = text.chars().take(40_000).collect();
            warnings.push("message_truncated".to_owned());
            messages.push(
                "[WARN] A message was truncated. The text field of a message should have no \
                 more than 40,000 characters."
                    .to_owned(),
            );
        }

        let root = match self.p.nonempty("thread_ts") {
            None => None,
            Some(t) => self.thread_root(&channel, &t)?,
        };
        let broadcast = root.is_some() && self.p.flag("reply_broadcast");
        let ts = self.ws.insert(
            &channel,
            NewMsg {
                author: Author::App,
                text,
                blocks,
                attachments,
                metadata,
                custom,
                client_msg_id: None,
                root,
                broadcast,
                files: Vec::new(),
            },
        )?;
        let ch = &self.ws.channels[&channel];
        let message = self.ws.render(
            ch,
            &ch.msgs[&ts],
            Render {
                metadata: true,
                root: false,
            },
        );
        let mut s = ok(json!({"channel": channel, "ts": ts, "message": message}));
        s.warnings = warnings;
        s.messages = messages;
        Ok(s)
    }

    /// The root a new reply attaches to, per the thread quirks.
    fn thread_root(&self, channel: &str, thread_ts: &str) -> Result<Option<String>, ApiErr> {
        let q = &self.ws.cfg.quirks;
        let found = self.ws.channels[channel]
            .msgs
            .get(thread_ts)
            .filter(|m| m.life != Life::Deleted);
        match found {
            Some(m) => match &m.parent {
                None => Ok(Some(m.ts.clone())),
                Some(root) => match q.reply_thread_ts {
                    ReplyThreadTs::AttachToRoot => Ok(Some(root.clone())),
                    ReplyThreadTs::Error => Err(err("cannot_reply_to_message")),
                },
            },
            None => match q.unknown_thread_ts {
                UnknownThread::Error => Err(err("thread_not_found")),
                UnknownThread::TopLevel => Ok(None),
            },
        }
    }

    /// The bot's own live message addressed by `channel` + `ts`.
    fn own_message(&self, ts_key: &str, denied: &str) -> Result<(String, String), ApiErr> {
        let ch = self.channel("channel", Access::Visible)?;
        if ch.archived {
            return Err(err("is_inactive"));
        }
        let ts = self
            .p
            .nonempty(ts_key)
            .ok_or_else(|| err("message_not_found"))?;
        let m = ch
            .msgs
            .get(&ts)
            .filter(|m| m.life != Life::Deleted)
            .ok_or_else(|| err("message_not_found"))?;
        if m.life == Life::Tombstone || m.author != Author::App {
            return Err(err(denied));
        }
        Ok((ch.id.clone(), ts))
    }

    fn update(&mut self) -> MResult {
        need_scope(self.ws, "chat:write")?;
        let (channel, ts) = self.own_message("ts", "cant_update_message")?;
        let text = self.p.str("text");
        let markdown = self.p.nonempty("markdown_text");
        let blocks = self.blocks_arg()?;
        let attachments = self.attachments_arg()?;
        let metadata = self.metadata_arg()?;
        let broadcast = self.p.flag("reply_broadcast");
        if markdown.is_some()
            && (text.as_deref().is_some_and(|t| !t.is_empty()) || blocks.is_some())
        {
            return Err(err("markdown_text_conflict"));
        }
        let msg = &self.ws.channels[&channel].msgs[&ts];
        if broadcast && msg.parent.is_none() {
            return Err(err("cant_broadcast_message"));
        }
        let new_text = markdown.or(text.clone());
        if let (Some(limit), Some(t)) = (self.ws.cfg.quirks.update_text_limit, &new_text)
            && t.chars().count() > limit
        {
            return Err(err("msg_too_long"));
        }
        // Retention rules (contract §2.3): text without blocks drops the blocks; omitted
        // attachments and metadata are kept.
        let next_blocks = match (&blocks, &new_text) {
            (Some(b), _) => Some(b.clone()).filter(|b| b.as_array().is_none_or(|a| !a.is_empty())),
            (None, Some(_)) => None,
            (None, None) => msg.blocks.clone(),
        };
        let next_attachments = attachments.or_else(|| msg.attachments.clone());
        let next_text = new_text.clone().unwrap_or_else(|| msg.text.clone());
        let changes_anything = new_text.is_some()
            || blocks.is_some()
            || self.p.has("attachments")
            || metadata.is_some()
            || broadcast;
        if !changes_anything
            || (next_text.is_empty() && next_blocks.is_none() && next_attachments.is_none())
        {
            return Err(err("no_text"));
        }
        let edited_by = self.ws.cfg.bot_id.clone();
        self.ws.edit(&channel, &ts, &edited_by, |m| {
            m.text = next_text;
            m.blocks = next_blocks;
            m.attachments = next_attachments;
            if let Some(md) = metadata {
                m.metadata = md;
            }
            if broadcast {
                m.broadcast = true;
            }
        })?;
        let ch = &self.ws.channels[&channel];
        let m = &ch.msgs[&ts];
        let mut message = self.ws.render(
            ch,
            m,
            Render {
                metadata: true,
                root: false,
            },
        );
        if let Value::Object(o) = &mut message {
            o.remove("ts");
        }
        Ok(ok(
            json!({"channel": channel, "ts": ts, "text": m.text, "message": message}),
        ))
    }

    // ---- files (docs/platforms/slack.md §2.12) -------------------------------------------

    /// Step 1 of the external upload: a one-time `upload_url` on this fake and a file id.
    fn upload_url(&mut self) -> MResult {
        need_scope(self.ws, "files:write")?;
        let name = self
            .p
            .nonempty("filename")
            .ok_or_else(|| err("invalid_arguments"))?;
        let length: u64 = self
            .p
            .nonempty("length")
            .and_then(|l| l.trim().parse().ok())
            .filter(|l| *l > 0)
            .ok_or_else(|| err("invalid_arguments"))?;
        if self
            .p
            .str("alt_txt")
            .is_some_and(|a| a.chars().count() > 1000)
        {
            return Err(err("alt_txt_too_large"));
        }
        let id = self.ws.new_file_id();
        let key = self.ws.ids.uuid().replace('-', "");
        let url = format!("{}/upload/v1/{key}", self.ws.base_url);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.ws.files.insert(
            id.clone(),
            SlackFile {
                id: id.clone(),
                title: name.clone(),
                mimetype: mime_of(&name).to_owned(),
                name,
                length,
                content: None,
                user: self.ws.cfg.bot_user_id.clone(),
                created,
                upload_key: key,
                completed: false,
                deleted: false,
            },
        );
        Ok(ok(json!({"upload_url": url, "file_id": id})))
    }

    /// Step 3: the uploaded files shared into `channel_id` (a thread with `thread_ts`) as one
    /// message from the bot; without a channel they stay private.
    fn complete_upload(&mut self) -> MResult {
        need_scope(self.ws, "files:write")?;
        // A JSON string in a form field, or an array in a JSON body.
        let listed: Value = match self.p.json("files") {
            Some(Ok(v)) => v,
            _ => return Err(err("invalid_arguments")),
        };
        let entries = listed
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| err("invalid_arguments"))?;
        let mut ids = Vec::new();
        for e in entries {
            let id = e
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| err("invalid_arguments"))?;
            let f = self
                .ws
                .files
                .get(id)
                .filter(|f| !f.deleted)
                .ok_or_else(|| err("file_not_found"))?;
            // Slack checks the uploaded bytes against the announced length.
            if f.content.as_ref().map(|c| c.len() as u64) != Some(f.length) {
                return Err(err("file_not_found"));
            }
            ids.push((
                id.to_owned(),
                e.get("title").and_then(Value::as_str).map(str::to_owned),
            ));
        }
        let channel = match self
            .p
            .nonempty("channel_id")
            .or_else(|| self.p.nonempty("channels"))
        {
            None => None,
            Some(c) => {
                let key = if self.p.nonempty("channel_id").is_some() {
                    "channel_id"
                } else {
                    "channels"
                };
                let ch = self.channel(key, Access::Member)?;
                if ch.archived {
                    return Err(err("is_archived"));
                }
                let _ = c;
                Some(ch.id.clone())
            }
        };
        let mut out = Vec::new();
        for (id, title) in &ids {
            let f = self.ws.files.get_mut(id).expect("checked above");
            if let Some(t) = title.as_ref().filter(|t| !t.is_empty()) {
                f.title = t.clone();
            }
            f.completed = true;
            out.push(json!({"id": f.id, "title": f.title}));
        }
        if let Some(channel) = channel {
            let root = match self.p.nonempty("thread_ts") {
                None => None,
                Some(t) => self.thread_root(&channel, &t)?,
            };
            let text = self.p.str("initial_comment").unwrap_or_default();
            self.ws.insert(
                &channel,
                NewMsg {
                    author: Author::App,
                    text,
                    blocks: None,
                    attachments: None,
                    metadata: None,
                    custom: None,
                    client_msg_id: None,
                    root,
                    broadcast: false,
                    files: ids.into_iter().map(|(id, _)| id).collect(),
                },
            )?;
        }
        Ok(ok(json!({"files": out})))
    }

    fn delete_file(&mut self) -> MResult {
        need_scope(self.ws, "files:write")?;
        let id = self
            .p
            .nonempty("file")
            .ok_or_else(|| err("file_not_found"))?;
        match self.ws.files.get(&id) {
            Some(f) if f.user != self.ws.cfg.bot_user_id && !f.deleted => {
                return Err(err("cant_delete_file"));
            }
            _ => {}
        }
        self.ws.delete_file(&id)?;
        Ok(ok(json!({})))
    }

    fn file_info(&mut self) -> MResult {
        need_scope(self.ws, "files:read")?;
        let id = self
            .p
            .nonempty("file")
            .ok_or_else(|| err("file_not_found"))?;
        let f = self
            .ws
            .files
            .get(&id)
            .filter(|f| !f.deleted)
            .ok_or_else(|| err("file_not_found"))?;
        Ok(ok(json!({"file": self.ws.file_json(f)})))
    }

    fn delete(&mut self) -> MResult {
        need_scope(self.ws, "chat:write")?;
        let (channel, ts) = self.own_message("ts", "cant_delete_message")?;
        self.ws.delete(&channel, &ts)?;
        Ok(ok(json!({"channel": channel, "ts": ts})))
    }

    fn permalink(&mut self) -> MResult {
        let ch = self.channel("channel", Access::Visible)?;
        let ts = self
            .p
            .nonempty("message_ts")
            .ok_or_else(|| err("message_not_found"))?;
        let m = ch
            .msgs
            .get(&ts)
            .filter(|m| m.life != Life::Deleted)
            .ok_or_else(|| err("message_not_found"))?;
        let mut link = format!(
            "https://{}.slack.com/archives/{}/p{}",
            self.ws.cfg.team_domain,
            ch.id,
            ts.replace('.', "")
        );
        if let Some(root) = &m.parent {
            link.push_str(&format!("?thread_ts={root}&cid={}", ch.id));
        }
        Ok(ok(json!({"channel": ch.id, "permalink": link})))
    }

    fn channel_json(&self, ch: &Channel, num_members: bool) -> Value {
        let mut v = json!({
            "id": ch.id, "name": ch.name, "is_channel": true, "is_group": false, "is_im": false,
            "is_mpim": false, "is_private": ch.private, "is_archived": ch.archived,
            "is_general": false, "is_member": ch.bot_member, "is_shared": false,
            "is_ext_shared": false, "is_org_shared": false, "is_pending_ext_shared": false,
            "created": ch.created, "creator": ch.creator, "unlinked": 0,
            "name_normalized": ch.name, "context_team_id": self.ws.cfg.team_id,
            "updated": ch.created * 1000,
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
            "previous_names": [],
        });
        if num_members {
            let humans = self.ws.users.values().filter(|u| !u.is_bot).count();
            v["num_members"] = json!(humans + usize::from(ch.bot_member));
        }
        if self.p.flag("include_locale") {
            v["locale"] = json!("en-US");
        }
        v
    }

    fn type_scope(&self, ch: &Channel, public: &str, private: &str) -> Result<(), ApiErr> {
        need_scope(self.ws, if ch.private { private } else { public })
    }

    fn conv_info(&mut self) -> MResult {
        need_any_scope(
            self.ws,
            &["channels:read", "groups:read", "im:read", "mpim:read"],
        )?;
        let ch = self.channel("channel", Access::Visible)?;
        self.type_scope(ch, "channels:read", "groups:read")?;
        let v = self.channel_json(ch, self.p.flag("include_num_members"));
        Ok(ok(json!({"channel": v})))
    }

    fn join(&mut self) -> MResult {
        need_scope(self.ws, "channels:join")?;
        let ch = self.channel("channel", Access::Visible)?;
        if ch.private {
            return Err(err("method_not_supported_for_channel_type"));
        }
        if ch.archived {
            return Err(err("is_archived"));
        }
        let id = ch.id.clone();
        let already = ch.bot_member;
        if !already {
            self.ws
                .set_bot_member(&id, true)
                .map_err(|_| err("channel_not_found"))?;
        }
        let v = self.channel_json(&self.ws.channels[&id], false);
        let mut s = ok(json!({"channel": v}));
        if already {
            s.warnings.push("already_in_channel".into());
        }
        Ok(s)
    }

    /// Shared argument handling of history and replies.
    fn window(&self) -> Result<Page, ApiErr> {
        let limit = match self.p.int("limit") {
            None => 100,
            Some(Ok(n)) if n <= 0 => 100,
            Some(Ok(n)) => usize::try_from(n.min(999)).unwrap_or(999),
            Some(Err(BadJson)) => return Err(err("invalid_limit")),
        };
        let ts_arg = |k: &str, e: &str| -> Result<Option<u64>, ApiErr> {
            match self.p.nonempty(k) {
                None => Ok(None),
                Some(s) => parse_ts(&s).map(Some).ok_or_else(|| err(e)),
            }
        };
        let oldest = ts_arg("oldest", "invalid_ts_oldest")?;
        let latest = ts_arg("latest", "invalid_ts_latest")?;
        let cursor = match self.p.nonempty("cursor") {
            None => None,
            Some(c) => Some(decode_cursor(&c).ok_or_else(|| err("invalid_cursor"))?),
        };
        Ok(Page {
            limit,
            oldest,
            latest,
            inclusive: self.p.flag("inclusive"),
            cursor,
            metadata: self.p.flag("include_all_metadata"),
        })
    }

    fn readable(&self) -> Result<&Channel, ApiErr> {
        need_any_scope(
            self.ws,
            &[
                "channels:history",
                "groups:history",
                "im:history",
                "mpim:history",
            ],
        )?;
        let ch = self.channel("channel", Access::Member)?;
        self.type_scope(ch, "channels:history", "groups:history")?;
        Ok(ch)
    }

    fn history(&mut self) -> MResult {
        let ch = self.readable()?;
        let page = self.window()?;
        let mut list: Vec<&Msg> = self
            .ws
            .history_msgs(ch)
            .into_iter()
            .filter(|m| page.in_range(&m.ts))
            .collect();
        list.reverse();
        let start = page.cursor.map_or(0, |c| {
            list.partition_point(|m| parse_ts(&m.ts).unwrap_or(0) > c)
        });
        let (items, next) = page.slice(&list, start);
        let msgs: Vec<Value> = items
            .iter()
            .map(|m| {
                self.ws.render(
                    ch,
                    m,
                    Render {
                        metadata: page.metadata,
                        root: true,
                    },
                )
            })
            .collect();
        let pins = ch
            .msgs
            .values()
            .filter(|m| m.pinned && m.life == Life::Live)
            .count();
        Ok(ok(json!({
            "messages": msgs, "has_more": next.is_some(), "pin_count": pins,
            "channel_actions_ts": null, "channel_actions_count": 0,
            "response_metadata": {"next_cursor": next.unwrap_or_default()},
        })))
    }

    fn replies(&mut self) -> MResult {
        let ch = self.readable()?;
        let ts = self
            .p
            .nonempty("ts")
            .ok_or_else(|| err("thread_not_found"))?;
        let m = ch
            .msgs
            .get(&ts)
            .filter(|m| m.life != Life::Deleted)
            .ok_or_else(|| err("thread_not_found"))?;
        let root = match &m.parent {
            Some(p) => ch.msgs.get(p).ok_or_else(|| err("thread_not_found"))?,
            None => m,
        };
        let page = self.window()?;
        // The parent is always part of the thread; time bounds only select replies.
        let list: Vec<&Msg> = self
            .ws
            .thread_msgs(ch, root)
            .into_iter()
            .filter(|m| m.ts == root.ts || page.in_range(&m.ts))
            .collect();
        let start = page.cursor.map_or(0, |c| {
            list.partition_point(|m| parse_ts(&m.ts).unwrap_or(0) < c)
        });
        let (items, next) = page.slice(&list, start);
        let msgs: Vec<Value> = items
            .iter()
            .map(|m| {
                self.ws.render(
                    ch,
                    m,
                    Render {
                        metadata: page.metadata,
                        root: false,
                    },
                )
            })
            .collect();
        Ok(ok(json!({
            "messages": msgs, "has_more": next.is_some(),
            "response_metadata": {"next_cursor": next.unwrap_or_default()},
        })))
    }

    /// `users.lookupByEmail`: the same user object as `users.info`; `users_not_found` for an
    /// address nobody has (compared without case), and the scope `users:read.email`.
    fn users_lookup_by_email(&mut self) -> MResult {
        need_scope(self.ws, "users:read.email")?;
        let email = self
            .p
            .nonempty("email")
            .ok_or_else(|| err("invalid_arguments"))?;
        let id = self
            .ws
            .users
            .values()
            .find(|u| !u.email.is_empty() && u.email.eq_ignore_ascii_case(&email))
            .map(|u| u.id.clone())
            .ok_or_else(|| err("users_not_found"))?;
        self.user_answer(&id)
    }

    fn users_info(&mut self) -> MResult {
        need_scope(self.ws, "users:read")?;
        let id = self
            .p
            .nonempty("user")
            .ok_or_else(|| err("user_not_found"))?;
        self.user_answer(&id)
    }

    fn user_answer(&mut self, id: &str) -> MResult {
        let u = self.ws.users.get(id).ok_or_else(|| err("user_not_found"))?;
        let img = |n: u32| super::state::avatar(u, n);
        let mut profile = json!({
            "real_name": u.real_name, "real_name_normalized": u.real_name,
            "display_name": u.display_name, "display_name_normalized": u.display_name,
            "avatar_hash": format!("g{:011x}", u.id.len() * 7919),
            "image_24": img(24), "image_32": img(32), "image_48": img(48), "image_72": img(72),
            "image_192": img(192), "image_512": img(512), "team": self.ws.cfg.team_id,
            "title": "", "phone": "", "skype": "", "status_text": "", "status_emoji": "",
        });
        // E-mail addresses need their own scope.
        if self.ws.has_scope("users:read.email") && !u.email.is_empty() {
            profile["email"] = json!(u.email);
        }
        if u.is_bot {
            profile["bot_id"] = json!(u.bot_id);
            profile["api_app_id"] = json!(u.app_id);
            profile["always_active"] = json!(true);
        }
        let mut user = json!({
            "id": u.id, "team_id": self.ws.cfg.team_id, "name": u.name, "deleted": false,
            "color": "9f69e7", "real_name": u.real_name, "tz": "Europe/Moscow",
            "tz_label": "Moscow Time", "tz_offset": 10800, "profile": profile,
            "is_admin": false, "is_owner": false, "is_primary_owner": false,
            "is_restricted": false, "is_ultra_restricted": false, "is_bot": u.is_bot,
            "is_app_user": false, "updated": u.updated,
        });
        if self.p.flag("include_locale") {
            user["locale"] = json!("en-US");
        }
        Ok(ok(json!({"user": user})))
    }

    /// `channel` + `timestamp` of pins and reactions.
    fn item(&self, access: Access) -> Result<(String, String), ApiErr> {
        let ch = self.channel("channel", access)?;
        let ts = self
            .p
            .nonempty("timestamp")
            .ok_or_else(|| err("no_item_specified"))?;
        if parse_ts(&ts).is_none() {
            return Err(err("bad_timestamp"));
        }
        if !ch.msgs.get(&ts).is_some_and(|m| m.life == Life::Live) {
            return Err(err("message_not_found"));
        }
        Ok((ch.id.clone(), ts))
    }

    /// `pins.add` (`already_pinned` when it is) and `pins.remove` (the docs' example answers
    /// `no_pin` for a message that is not pinned; older lists say `not_pinned`).
    fn pin(&mut self, pinned: bool) -> MResult {
        need_scope(self.ws, "pins:write")?;
        let (channel, ts) = self.item(Access::Member)?;
        let m = self
            .ws
            .channels
            .get_mut(&channel)
            .and_then(|c| c.msgs.get_mut(&ts))
            .ok_or_else(|| err("message_not_found"))?;
        if m.pinned == pinned {
            return Err(err(if pinned { "already_pinned" } else { "no_pin" }));
        }
        m.pinned = pinned;
        Ok(ok(json!({})))
    }

    fn reactions_add(&mut self) -> MResult {
        need_scope(self.ws, "reactions:write")?;
        let ch = self.channel("channel", Access::Visible)?;
        if ch.archived {
            return Err(err("is_archived"));
        }
        let (channel, ts) = self.item(Access::Visible)?;
        let name = self.p.str("name").unwrap_or_default();
        if !valid_reaction(&name) {
            return Err(err("invalid_name"));
        }
        let bot = self.ws.cfg.bot_user_id.clone();
        self.ws.add_reaction(&channel, &ts, &bot, &name)?;
        Ok(ok(json!({})))
    }

    fn connections_open(&mut self) -> MResult {
        if self.http_method != Method::POST {
            return Err(err("insecure_request"));
        }
        let ticket = self.ws.ids.uuid();
        self.tickets.insert(ticket.clone());
        Ok(ok(json!({
            "url": format!(
                "ws://127.0.0.1:{}/link/?ticket={ticket}&app_id={}",
                self.ws_port, self.ws.cfg.app_id
            ),
        })))
    }
}

struct Page {
    limit: usize,
    oldest: Option<u64>,
    latest: Option<u64>,
    inclusive: bool,
    cursor: Option<u64>,
    metadata: bool,
}

impl Page {
    fn in_range(&self, ts: &str) -> bool {
        let Some(t) = parse_ts(ts) else {
            return false;
        };
        let after = self
            .oldest
            .is_none_or(|o| if self.inclusive { t >= o } else { t > o });
        let before = self
            .latest
            .is_none_or(|l| if self.inclusive { t <= l } else { t < l });
        after && before
    }

    /// One page from `start`, and the cursor of the next page if there is one.
    fn slice<'m>(&self, list: &[&'m Msg], start: usize) -> (Vec<&'m Msg>, Option<String>) {
        let start = start.min(list.len());
        let end = (start + self.limit).min(list.len());
        let next = list
            .get(end)
            .map(|m| b64_encode(format!("next_ts:{}", m.ts.replace('.', "")).as_bytes()));
        (list[start..end].to_vec(), next)
    }
}

/// Cursors look like Slack's: base64 of `next_ts:<ts without the dot>`.
fn decode_cursor(c: &str) -> Option<u64> {
    let raw = String::from_utf8(b64_decode(c)?).ok()?;
    let digits = raw.strip_prefix("next_ts:")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ts = format!("{}.{}", &digits[..10], &digits[10..]);
    is_msg_ts(&ts).then(|| parse_ts(&ts)).flatten()
}

fn valid_reaction(name: &str) -> bool {
    let (base, tone) = match name.split_once("::") {
        Some((b, t)) => (b, Some(t)),
        None => (name, None),
    };
    let base_ok = !base.is_empty()
        && base
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_+-'".contains(c));
    let tone_ok = tone.is_none_or(|t| {
        t.strip_prefix("skin-tone-")
            .is_some_and(|n| matches!(n, "2" | "3" | "4" | "5" | "6"))
    });
    base_ok && tone_ok
}

const BLOCK_TYPES: &[&str] = &[
    "section",
    "divider",
    "image",
    "actions",
    "context",
    "header",
    "input",
    "rich_text",
    "file",
    "video",
    "markdown",
    "call",
    "table",
];

fn invalid_blocks(msg: String) -> ApiErr {
    let mut e = err("invalid_blocks");
    e.extra
        .insert("response_metadata".into(), json!({"messages": [msg]}));
    e
}

/// The subset of Block Kit validation a bridge can trip over.
fn validate_blocks(b: &Value) -> Result<(), ApiErr> {
    let Value::Array(blocks) = b else {
        return Err(err("invalid_blocks_format"));
    };
    if blocks.len() > 50 {
        return Err(invalid_blocks(
            "[ERROR] no more than 50 items allowed [json-pointer:/blocks]".into(),
        ));
    }
    for (i, block) in blocks.iter().enumerate() {
        let Some(kind) = block.get("type").and_then(Value::as_str) else {
            return Err(invalid_blocks(format!(
                "[ERROR] missing required field: type [json-pointer:/blocks/{i}]"
            )));
        };
        if !BLOCK_TYPES.contains(&kind) {
            return Err(invalid_blocks(format!(
                "[ERROR] unsupported type: {kind} [json-pointer:/blocks/{i}/type]"
            )));
        }
        let text_obj = |limit: usize, plain_only: bool| -> Result<(), ApiErr> {
            let Some(t) = block.get("text") else {
                return Ok(());
            };
            let ty = t.get("type").and_then(Value::as_str);
            let ty_ok = match ty {
                Some("plain_text") => true,
                Some("mrkdwn") => !plain_only,
                _ => false,
            };
            if !ty_ok {
                return Err(invalid_blocks(format!(
                    "[ERROR] must be a valid enum value [json-pointer:/blocks/{i}/text/type]"
                )));
            }
            let Some(s) = t.get("text").and_then(Value::as_str) else {
                return Err(invalid_blocks(format!(
                    "[ERROR] must provide a string [json-pointer:/blocks/{i}/text/text]"
                )));
            };
            if s.chars().count() > limit {
                return Err(invalid_blocks(format!(
                    "[ERROR] must be less than {} characters [json-pointer:/blocks/{i}/text/text]",
                    limit + 1
                )));
            }
            Ok(())
        };
        match kind {
            "section" => {
                if block.get("text").is_none() && block.get("fields").is_none() {
                    return Err(invalid_blocks(format!(
                        "[ERROR] must provide either text or fields [json-pointer:/blocks/{i}]"
                    )));
                }
                text_obj(3000, false)?;
            }
            "header" => {
                if block.get("text").is_none() {
                    return Err(invalid_blocks(format!(
                        "[ERROR] missing required field: text [json-pointer:/blocks/{i}]"
                    )));
                }
                text_obj(150, true)?;
            }
            "context" | "rich_text" | "actions"
                if block
                    .get("elements")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty) =>
            {
                return Err(invalid_blocks(format!(
                    "[ERROR] missing required field: elements [json-pointer:/blocks/{i}]"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let c = b64_encode(b"next_ts:1700000000000100");
        assert_eq!(decode_cursor(&c), Some(1_700_000_000_000_100));
        assert_eq!(decode_cursor("garbage!"), None);
        assert_eq!(decode_cursor(&b64_encode(b"next_ts:12")), None);
    }

    #[test]
    fn reaction_names() {
        assert!(valid_reaction("thumbsup"));
        assert!(valid_reaction("+1"));
        assert!(valid_reaction("thumbsup::skin-tone-2"));
        assert!(!valid_reaction(":thumbsup:"));
        assert!(!valid_reaction(""));
        assert!(!valid_reaction("Thumbs Up"));
    }

    #[test]
    fn block_validation() {
        assert!(validate_blocks(&json!([{"type": "divider"}])).is_ok());
        let e = validate_blocks(&json!([{"type": "section", "text": {"type": "mrkdwn"}}]))
            .err()
            .map(|e| (e.error, e.extra));
        let (code, extra) = e.unwrap_or_default();
        assert_eq!(code, "invalid_blocks");
        assert_eq!(
            extra["response_metadata"]["messages"][0],
            "[ERROR] must provide a string [json-pointer:/blocks/0/text/text]"
        );
        assert!(validate_blocks(&json!({"type": "divider"})).is_err());
    }

    #[test]
    fn finish_merges_warnings_and_cursor() {
        let mut s = ok(json!({"response_metadata": {"next_cursor": ""}}));
        s.warnings.push("already_in_channel".into());
        let (body, error, _) = finish(Ok(s), &["missing_charset"]);
        assert_eq!(error, None);
        assert_eq!(body["warning"], "already_in_channel,missing_charset");
        assert_eq!(
            body["response_metadata"],
            json!({"next_cursor": "", "warnings": ["already_in_channel", "missing_charset"]})
        );
    }
}
