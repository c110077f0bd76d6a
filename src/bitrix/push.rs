//! `intake: push`: the portal posts each feed event to `bitrix24.push.path` on `http.listen`
//! (docs/platforms/bitrix24.md §5.2), as a PHP-style form: `event=ONLIVEFEEDPOSTADD`,
//! `data[FIELDS][POST_ID]=209`, `auth[application_token]=…` and more.
//!
//! The application token is the only proof a request comes from the portal, so it is checked
//! first, in constant time, before anything else in the body is interpreted: a missing or
//! wrong one gets 401 and changes nothing. The portal never retries a push, so the answer is
//! 200 only once the post is durably touched; a failure to write it answers 500 (the
//! reconcile poll will find the change).

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{debug, warn};

use super::events::{Touched, post_of};
use crate::secret::Secret;

/// The route's state.
#[derive(Clone)]
pub struct PushEndpoint {
    /// `bitrix24.push.path`.
    pub path: String,
    /// `bitrix24.push.application_token`.
    pub application_token: Secret,
    /// Where accepted events go.
    pub touched: Touched,
}

impl PushEndpoint {
    /// The route to serve on `http.listen`.
    pub fn routes(self) -> axum::Router {
        let path = self.path.clone();
        axum::Router::new()
            .route(&path, axum::routing::post(handle))
            .with_state(self)
    }
}

/// Equal without revealing where they differ (only whether the lengths do).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST <push.path>`: token, then journal, then 200.
pub async fn handle(
    State(endpoint): State<PushEndpoint>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            warn!(status = rejection.status().as_u16(), reason = %rejection.body_text(), "Bitrix24 push refused before reading");
            return rejection.into_response();
        }
    };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let token = field("auth[application_token]").unwrap_or("");
    if !constant_time_eq(
        token.as_bytes(),
        endpoint.application_token.expose().as_bytes(),
    ) {
        warn!(
            token_present = !token.is_empty(),
            "Bitrix24 push refused: wrong or missing application_token"
        );
        return (StatusCode::UNAUTHORIZED, "wrong application_token").into_response();
    }
    let event = field("event").unwrap_or("");
    let data = json!({ "FIELDS": { "POST_ID": field("data[FIELDS][POST_ID]") } });
    let Some(post) = post_of(event, &data) else {
        warn!(event, "Bitrix24 push names no feed post; ignored");
        return (StatusCode::BAD_REQUEST, "not a feed post event").into_response();
    };
    match endpoint.touched.touch(post, event).await {
        Ok(()) => {
            debug!(post, event, "Bitrix24 push accepted");
            StatusCode::OK.into_response()
        }
        Err(e) => {
            warn!(error = %e, post, "cannot journal a Bitrix24 push");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
