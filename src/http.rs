//! The bridge's HTTP server on `http.listen`: `/healthz`, `/readyz`, `/metrics`, and
//! `POST /slack/events` when the Events API is configured. Request bodies are size-limited;
//! unknown paths get 404.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::core::store::Store;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::slack::events::{self, EventsApi};

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub store: Store,
}

pub fn router(state: HttpState, slack_events: Option<EventsApi>, max_body: usize) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Some(events) = slack_events {
        app = app.merge(
            Router::new()
                .route("/slack/events", post(events::handle))
                .with_state(events),
        );
    }
    app.layer(DefaultBodyLimit::max(max_body))
}

async fn ready(State(s): State<HttpState>) -> Response {
    let sides = s.health.snapshot();
    let ready = !sides.is_empty() && sides.values().all(|h| h.connected);
    let body = json!({
        "ready": ready,
        "sides": sides,
        "journal_depth": s.store.journal_depth(),
        "dead_letters": s.store.dead_letter_count(),
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
