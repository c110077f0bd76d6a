//! The bridge's HTTP server on `http.listen`: `/healthz`, `/readyz`, `/metrics`,
//! `/admin/dead-letters` (loopback peers only; the `dead-letters` command uses it while the
//! bridge holds the store), plus the routes platform sides serve (Slack's `POST /slack/events`
//! when the Events API is configured). Request bodies are size-limited; unknown paths get 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use livefeed_core::health::Health;
use livefeed_core::journal::Journal;
use livefeed_core::metrics::Metrics;
use livefeed_core::store::Store;

/// What the bridge's own routes read.
#[derive(Clone)]
pub struct HttpState {
    /// Served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Served on `/readyz`.
    pub health: Arc<Health>,
    /// Journal depth and dead letters.
    pub store: Store,
    /// Woken when the admin API re-journals dead letters.
    pub journal: Journal,
}

/// The bridge's routes plus the sides' `extra` routes, every body limited to `max_body`.
pub fn router(state: HttpState, extra: Vec<Router>, max_body: usize) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/dead-letters", get(list_dead_letters))
        .route("/admin/dead-letters/retry", post(retry_dead_letters))
        .with_state(state);
    for routes in extra {
        app = app.merge(routes);
    }
    app.layer(DefaultBodyLimit::max(max_body))
}

async fn ready(State(s): State<HttpState>) -> Response {
    let sides = s.health.snapshot();
    let ready = !sides.is_empty() && sides.values().all(|h| h.connected);
    // Degraded still serves (200): it holds something back for an operator, which alerts
    // should catch through `status`.
    let degraded = sides.values().any(|h| h.degraded.is_some());
    let status = match (ready, degraded) {
        (false, _) => "not_ready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let body = json!({
        "ready": ready,
        "status": status,
        "sides": sides,
        "journal_depth": s.store.journal_depth(),
        "dead_letters": s.store.dead_letter_count(),
        "config": s.health.config(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    s.metrics.journal_depth.set(s.store.journal_depth() as i64);
    s.metrics
        .dead_letters
        .set(s.store.dead_letter_count() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// The admin API answers only the machine itself (`docker exec … dead-letters list` included):
/// `http.listen` is often `0.0.0.0` so Slack can reach `/slack/events`.
fn refuse_remote(peer: SocketAddr, path: &str) -> Option<Response> {
    if peer.ip().is_loopback() {
        return None;
    }
    warn!(%peer, path, "refused an admin request from a non-loopback address");
    Some(
        (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "the admin API answers loopback addresses only"})),
        )
            .into_response(),
    )
}

async fn list_dead_letters(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(s): State<HttpState>,
) -> Response {
    if let Some(refused) = refuse_remote(peer, "/admin/dead-letters") {
        return refused;
    }
    match s.store.dead_letters() {
        Ok(letters) => Json(json!({
            "dead_letters": letters
                .iter()
                .map(|l| json!({"id": l.id, "at_ms": l.at_ms, "action": l.action, "error": l.error}))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => {
            warn!(error = %e, "cannot read dead letters");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct RetryQuery {
    id: Option<u64>,
    #[serde(default)]
    all: bool,
}

async fn retry_dead_letters(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(s): State<HttpState>,
    query: Result<Query<RetryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refused) = refuse_remote(peer, "/admin/dead-letters/retry") {
        return refused;
    }
    let bad_request = |error: String| {
        warn!(%error, "bad dead-letter retry request");
        (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
    };
    let ids: Vec<u64> = match query {
        Err(e) => return bad_request(e.body_text()),
        Ok(Query(RetryQuery {
            id: Some(id),
            all: false,
        })) => vec![id],
        Ok(Query(RetryQuery {
            id: None,
            all: true,
        })) => match s.store.dead_letters() {
            Ok(letters) => letters.iter().map(|l| l.id).collect(),
            Err(e) => return bad_request(e.to_string()),
        },
        Ok(_) => return bad_request("pass exactly one of ?id=N and ?all=true".into()),
    };
    let (mut retried, mut missing) = (Vec::new(), Vec::new());
    for id in ids {
        match s.store.retry_dead_letter(id) {
            Ok(true) => retried.push(id),
            Ok(false) => missing.push(id),
            Err(e) => {
                warn!(id, error = %e, "cannot retry a dead letter");
                missing.push(id);
            }
        }
    }
    if !retried.is_empty() {
        if let Err(e) = s.store.sync().await {
            warn!(error = %e, "cannot flush the store after a dead-letter retry");
        }
        info!(?retried, "dead letters queued for retry");
        s.journal.publish_depth();
        s.journal.wake();
    }
    Json(json!({"retried": retried, "missing": missing})).into_response()
}
