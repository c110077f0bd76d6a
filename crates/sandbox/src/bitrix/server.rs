//! HTTP front. A REST request goes: leaky bucket → transport faults → routing (404
//! before auth) → auth → scope → method faults → handler → PHP-encoded envelope.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::config::{FaultKind, RequestRecord, SubCallRecord};
use super::control;
use super::events::{self, PendingPush};
use super::methods::{self, ApiError, Ctx};
use super::oauth;
use super::params;
use super::state::{FaultLevel, Portal};
use super::time::{self, MICROS};
use super::value::{Arr, JsonStyle, Value, to_php_json};

/// Large enough for base64 file uploads in tests and demos.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The portal behind a mutex plus a change counter that `wait_until` watches, and the
/// queue of the background event sender.
pub(crate) struct Shared {
    portal: Mutex<Portal>,
    changes: watch::Sender<u64>,
    pushes: OnceLock<mpsc::UnboundedSender<PendingPush>>,
}

impl Shared {
    pub(crate) fn new(portal: Portal) -> Self {
        Self {
            portal: Mutex::new(portal),
            changes: watch::Sender::new(0),
            pushes: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Portal> {
        // A panic elsewhere must not take the fake down with it.
        self.portal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&Portal) -> R) -> R {
        f(&self.lock())
    }

    /// Mutates the portal and wakes every `wait_until`. One write is one "hit" of the
    /// real server (a REST request, a UI action); the pushes it caused leave afterwards.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Portal) -> R) -> R {
        let (r, pushes) = {
            let mut p = self.lock();
            p.events.begin_hit();
            let r = f(&mut p);
            (r, std::mem::take(&mut p.events.outbox))
        };
        events::flush(pushes, self.pushes.get());
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        r
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

// ---- listener with per-connection reset -----------------------------------------------

/// TCP listener whose connections a handler can abort with a RST.
pub(crate) struct ResetListener(TcpListener);

pub(crate) struct ResetStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResetStream {
    fn is_reset(&self) -> bool {
        let reset = self.reset.load(Ordering::Acquire);
        if reset {
            // Zero linger turns the close into a RST instead of a FIN.
            let _ = self.inner.set_zero_linger();
        }
        reset
    }
}

fn reset_error<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
}

impl AsyncRead for ResetStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_reset() {
            return reset_error();
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_reset() {
            return reset_error();
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_reset() {
            return reset_error();
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.is_reset() {
            return reset_error();
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Listener for ResetListener {
    type Io = ResetStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    let stream = ResetStream {
                        inner,
                        reset: Arc::new(AtomicBool::new(false)),
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning.
                    tracing::debug!(error = %e, "bitrix sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Per-connection handle given to handlers: lets a fault reset the connection.
#[derive(Clone)]
pub(crate) struct ConnHandle {
    reset: Arc<AtomicBool>,
}

impl ConnHandle {
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::Release);
    }
}

impl Connected<IncomingStream<'_, ResetListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, ResetListener>) -> Self {
        ConnHandle {
            reset: stream.io().reset.clone(),
        }
    }
}

/// Binds `addr` and serves until the returned sender says stop (or is dropped).
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> io::Result<(SocketAddr, watch::Sender<bool>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let timeout = shared.read(|p| p.cfg.push_timeout);
    let _ = shared
        .pushes
        .set(events::start_sender(Arc::downgrade(&shared), timeout));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let app = router(shared).into_make_service_with_connect_info::<ConnHandle>();
    tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(ResetListener(listener), app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "bitrix sandbox server failed");
        }
    });
    Ok((local, stop_tx))
}

fn router(shared: Arc<Shared>) -> Router {
    control::routes()
        .merge(oauth::routes())
        .route("/rest/{*path}", any(rest))
        .route("/bitrix/tools/disk/uf.php", axum::routing::get(download))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

// ---- file downloads ---------------------------------------------------------------------

/// `GET DOWNLOAD_URL` (docs/platforms/bitrix24.md §8): the file with a valid token and a
/// `User-Agent`; without a `User-Agent`, nginx's 404 page (with a `Content-Disposition`, as
/// observed); with a wrong token, a 401 HTML page. Logged as `disk.download`, never with the
/// token.
async fn download(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().is_empty());
    shared.write(|p| {
        let token_ok = get("auth[auth]").is_some_and(|t| {
            let want = methods::download_token(p);
            constant_time_eq(t.as_bytes(), want.as_bytes())
        });
        let file = get("attachedId")
            .and_then(|a| a.parse::<u64>().ok())
            .and_then(|a| p.attachments.get(&a).copied())
            .or_else(|| get("objectId").and_then(|o| o.parse::<u64>().ok()))
            .and_then(|d| p.disk.get(&d))
            .map(|f| (f.name.clone(), f.content.clone()));
        let (status, response) = match (agent, token_ok, file) {
            (false, _, _) => {
                let mut r = html_error(404);
                r.headers_mut().insert(
                    HeaderName::from_static("content-disposition"),
                    HeaderValue::from_static("inline"),
                );
                (404, r)
            }
            (true, false, _) => (401, html_error(401)),
            (true, true, None) => (404, html_error(404)),
            (true, true, Some((name, bytes))) => {
                let mut r = (StatusCode::OK, Body::from(bytes)).into_response();
                let h = r.headers_mut();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(crate::mime_of(&name)),
                );
                let disposition = format!(
                    "attachment; filename=\"{}\"",
                    name.replace(['"', '\\', '\r', '\n'], "_")
                );
                if let Ok(v) = HeaderValue::from_str(&disposition) {
                    h.insert(HeaderName::from_static("content-disposition"), v);
                }
                (200, r)
            }
        };
        record(p, methods::DOWNLOAD_METHOD, "GET", status, None, Vec::new());
        response
    })
}

// ---- REST pipeline ----------------------------------------------------------------------

/// `/rest/{uid}/{secret}/{method}[.json]` or `/rest/{method}[.json]`.
struct RestPath {
    method: String,
    webhook: Option<(String, String)>,
}

impl RestPath {
    fn parse(path: &str) -> Self {
        let rest = path.strip_prefix("/rest/").unwrap_or("");
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<&str> = rest.split('/').collect();
        let (webhook, method) = match segments.as_slice() {
            [m] => (None, *m),
            [uid, key, m] => (Some(((*uid).to_owned(), (*key).to_owned())), *m),
            _ => (None, ""),
        };
        let method = method.to_ascii_lowercase();
        let method = method.strip_suffix(".json").unwrap_or(&method).to_owned();
        RestPath { method, webhook }
    }
}

async fn rest(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    http_method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = time::wall_micros();
    let route = RestPath::parse(uri.path());
    let verb = http_method.as_str().to_owned();

    // The cloud limiter sits in front of the application and sees every request.
    if !shared.write(Portal::bucket_admit) {
        let e = ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
        return shared.write(|p| error_response(p, &route.method, &verb, e, Vec::new()));
    }
    match shared.write(|p| p.take_fault(&route.method, FaultLevel::Transport)) {
        Some(FaultKind::ConnectionReset) => {
            shared.write(|p| {
                record(
                    p,
                    &route.method,
                    &verb,
                    0,
                    Some("CONNECTION_RESET"),
                    Vec::new(),
                );
            });
            conn.reset();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(FaultKind::ServerError(status)) => {
            shared.write(|p| record(p, &route.method, &verb, status, None, Vec::new()));
            return html_error(status);
        }
        Some(FaultKind::QueryLimitExceeded) => {
            let e = ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
            return shared.write(|p| error_response(p, &route.method, &verb, e, Vec::new()));
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }

    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let params = params::collect(uri.query(), content_type, &body);
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    shared.write(|p| process(p, &route, &verb, params, bearer.as_deref(), started))
}

/// `preg_replace('/^Bearer\s+/i', '', $header)` when the header matches.
fn bearer_token(header: &str) -> Option<String> {
    let scheme = header.get(..6)?;
    let rest = header.get(6..)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some(rest.trim_start().to_owned())
}

fn process(
    p: &mut Portal,
    route: &RestPath,
    verb: &str,
    mut params: Arr,
    bearer: Option<&str>,
    started_wall: i64,
) -> Response {
    let Some(spec) = methods::lookup(&route.method) else {
        return error_response(
            p,
            &route.method,
            verb,
            ApiError::method_not_found(),
            Vec::new(),
        );
    };
    let ctx = match authenticate(p, route, &mut params, bearer) {
        Ok(ctx) => ctx,
        Err(e) => return error_response(p, spec.name, verb, e, Vec::new()),
    };
    if let Err(e) = methods::check_scope(p, &ctx, spec, false) {
        return error_response(p, spec.name, verb, e, Vec::new());
    }
    let mut sub_calls = Vec::new();
    let clock = Instant::now();
    let outcome = methods::run(p, &ctx, spec, params, &mut sub_calls);
    let processing = clock.elapsed().as_secs_f64();
    let out = match outcome {
        Ok(out) => out,
        Err(e) => return error_response(p, spec.name, verb, e, sub_calls),
    };
    // `batch` itself is not metered, its sub-calls are.
    let operating =
        (p.cfg.cloud && spec.name != "batch").then(|| p.record_operating(spec.name, processing));
    let seq = record(p, spec.name, verb, 200, None, sub_calls);
    let start = p.to_portal(started_wall);
    let finish = p.to_portal(time::wall_micros());
    let mut body = Arr::new();
    body.insert("result", out.result);
    if let Some(next) = out.next {
        body.insert("next", Value::Int(next));
    }
    if let Some(total) = out.total {
        body.insert("total", Value::Int(total));
    }
    body.insert(
        "time",
        time_object(p, start, finish, processing, seq, operating),
    );
    let json = to_php_json(&Value::Arr(body), style(p));
    // The answer is ready only now: the portal's time spent writing its body is upstream time,
    // which the bench's latency figures leave out.
    if let Some(r) = p.requests.iter_mut().rev().find(|r| r.seq == seq) {
        r.answered_us = time::wall_micros();
    }
    let mut resp = json_response(StatusCode::OK, json);
    let h = resp.headers_mut();
    let secs = HeaderValue::from_str(&format!("{processing:.10}")).ok();
    if let Some(secs) = secs {
        h.insert(HeaderName::from_static("x-bitrix-rest-time"), secs.clone());
        h.insert(HeaderName::from_static("x-bitrix-rest-user-time"), secs);
        h.insert(
            HeaderName::from_static("x-bitrix-rest-system-time"),
            HeaderValue::from_static("0.0000000000"),
        );
    }
    resp
}

/// Webhook credentials come from the path (or the `aplogin`/`ap` parameters it is
/// rewritten to); otherwise an access token of the local app from the `Authorization:
/// Bearer` header, then `auth`, then `access_token` (`Bitrix\Rest\OAuth\Auth::getAuthKey`).
fn authenticate(
    p: &Portal,
    route: &RestPath,
    params: &mut Arr,
    bearer: Option<&str>,
) -> Result<Ctx, ApiError> {
    let login = params.remove("aplogin");
    let key = params.remove("ap");
    let auth = params.remove("auth");
    let token = params.remove("access_token");
    let connector = params.remove("auth_connector");
    params.remove("state");
    let from_params = match (login, key) {
        (Some(l), Some(k)) => Some((l.to_php_string(), k.to_php_string())),
        _ => None,
    };
    if let Some((uid, key)) = route.webhook.clone().or(from_params) {
        let valid = uid == p.cfg.webhook_user.to_string()
            && constant_time_eq(key.as_bytes(), p.cfg.webhook_secret.as_bytes())
            && p.users.get(&p.cfg.webhook_user).is_some_and(|u| u.active);
        return if valid {
            Ok(Ctx {
                user: p.cfg.webhook_user,
                scopes: p.cfg.scopes.clone(),
                oauth: false,
                auth_connector: String::new(),
            })
        } else {
            Err(ApiError::new(
                p.cfg.invalid_credentials_status,
                "INVALID_CREDENTIALS",
                "Invalid request credentials",
            ))
        };
    }
    let scalar = |v: Option<Value>| v.filter(|v| !matches!(v, Value::Arr(_)));
    let key = bearer
        .map(str::to_owned)
        .or_else(|| scalar(auth).map(|v| v.to_php_string()))
        .or_else(|| scalar(token).map(|v| v.to_php_string()));
    if let Some(key) = key {
        let user = p.check_access(&key)?;
        return Ok(Ctx {
            user,
            scopes: p.cfg.oauth.scopes.clone(),
            oauth: true,
            auth_connector: connector.map(|v| v.to_php_string()).unwrap_or_default(),
        });
    }
    Err(ApiError::new(
        401,
        "NO_AUTH_FOUND",
        "Wrong authorization data",
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn style(p: &Portal) -> JsonStyle {
    JsonStyle {
        escape_unicode: p.cfg.escape_unicode,
    }
}

/// Appends to the request log and traces the outcome (method only: the path holds the
/// secret). Returns the request's sequence number.
fn record(
    p: &mut Portal,
    method: &str,
    verb: &str,
    status: u16,
    error: Option<&str>,
    sub_calls: Vec<SubCallRecord>,
) -> u64 {
    let seq = p.next_seq();
    tracing::debug!(
        seq,
        method,
        http_method = verb,
        status,
        error = error.unwrap_or(""),
        sub_calls = sub_calls.len(),
        "bitrix sandbox request"
    );
    p.requests.push(RequestRecord {
        seq,
        method: method.to_owned(),
        http_method: verb.to_owned(),
        status,
        error: error.map(str::to_owned),
        sub_calls,
        answered_us: time::wall_micros(),
    });
    seq
}

/// Error envelope: no `time`, status from the error.
fn error_response(
    p: &mut Portal,
    method: &str,
    verb: &str,
    e: ApiError,
    sub_calls: Vec<SubCallRecord>,
) -> Response {
    record(p, method, verb, e.status, Some(&e.code), sub_calls);
    let mut body = Arr::new();
    body.insert("error", Value::Str(e.code));
    body.insert("error_description", Value::Str(e.description));
    if let Some(argument) = e.argument {
        body.insert("argument", Value::Str(argument));
    }
    let body = Value::Arr(body);
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, to_php_json(&body, style(p)))
}

fn json_response(status: StatusCode, json: String) -> Response {
    let mut resp = (status, Body::from(json)).into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static("access-control-allow-origin"),
        HeaderValue::from_static("*"),
    );
    resp
}

/// What nginx in front of the portal answers when the backend fails.
pub(crate) fn html_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = format!(
        "{} {}",
        code.as_u16(),
        code.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut resp = (code, body).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The `time` object. `start` and `processing` alternate between JSON integers and
/// floats from one response to the next, because the wire has both.
pub(crate) fn time_object(
    p: &Portal,
    start: i64,
    finish: i64,
    processing: f64,
    variant: u64,
    operating: Option<(f64, i64)>,
) -> Value {
    let start_f = start as f64 / MICROS as f64;
    let finish_f = finish as f64 / MICROS as f64;
    let mut a = Arr::new();
    a.insert(
        "start",
        if !variant.is_multiple_of(2) {
            Value::Int(start.div_euclid(MICROS))
        } else {
            Value::Float(start_f)
        },
    );
    a.insert("finish", Value::Float(finish_f));
    a.insert("duration", Value::Float((finish_f - start_f).max(0.0)));
    a.insert(
        "processing",
        if variant.is_multiple_of(2) {
            Value::Int(processing.trunc() as i64)
        } else {
            Value::Float(processing)
        },
    );
    a.insert("date_start", Value::Str(p.iso(start)));
    a.insert("date_finish", Value::Str(p.iso(finish)));
    if let Some((operating, reset_at)) = operating {
        a.insert("operating_reset_at", Value::Int(reset_at));
        a.insert("operating", Value::Float(operating));
    }
    Value::Arr(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_paths() {
        let r = RestPath::parse("/rest/1/k3y/Log.BlogPost.Get.json");
        assert_eq!(r.method, "log.blogpost.get");
        assert_eq!(r.webhook, Some(("1".to_owned(), "k3y".to_owned())));
        let r = RestPath::parse("/rest/profile/");
        assert_eq!((r.method.as_str(), r.webhook), ("profile", None));
        assert_eq!(RestPath::parse("/rest/1/k3y").method, "");
    }
}
