//! Events API intake: `POST /slack/events` (docs/platforms/slack.md §3–4).
//!
//! The v0 signature is checked in constant time over the raw body before anything is parsed;
//! requests older (or newer) than 5 minutes are refused as replays; bodies above the configured
//! size get 413 from the router's limit. A well-signed `event_callback` is journaled before the
//! 200 goes out; if it cannot be journaled the answer is 500 so Slack retries.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tracing::{debug, warn};

use super::intake::SlackIntake;
use crate::secret::Secret;
use livefeed_core::store::now_ms;

/// Maximum accepted distance between Slack's timestamp and our clock.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing.
    #[error("missing X-Slack-Request-Timestamp or X-Slack-Signature")]
    Missing,
    /// The timestamp is not a number.
    #[error("timestamp is not a number")]
    BadTimestamp,
    /// The request is older or newer than the window allows.
    #[error("timestamp outside the 5-minute window (possible replay)")]
    Stale,
    /// The HMAC does not match.
    #[error("signature does not match")]
    Mismatch,
}

/// Check a v0 signature: `v0=hex(HMAC-SHA256(secret, "v0:" + ts + ":" + body))`.
pub fn verify(
    secret: &Secret,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now_secs - ts).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    let hex_sig = signature
        .strip_prefix("v0=")
        .ok_or(SignatureError::Mismatch)?;
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::Mismatch)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The Events API endpoint's state: the signing secret and the intake.
#[derive(Clone)]
pub struct EventsApi {
    /// Slack's signing secret (Basic Information → Signing Secret).
    pub signing_secret: Secret,
    /// Where verified events go.
    pub intake: SlackIntake,
}

/// Where Slack posts events (the manifest's `request_url` ends with it).
pub const PATH: &str = "/slack/events";

impl EventsApi {
    /// The route to serve on `http.listen`.
    pub fn routes(self) -> axum::Router {
        axum::Router::new()
            .route(PATH, axum::routing::post(handle))
            .with_state(self)
    }
}

/// `POST /slack/events`: verify, then journal, then answer 200.
pub async fn handle(
    State(api): State<EventsApi>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            // Too large (413) or unreadable: say so in the log, answer what axum decided.
            warn!(status = rejection.status().as_u16(), reason = %rejection.body_text(), "Slack request refused before reading");
            return rejection.into_response();
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    ) else {
        warn!(error = %SignatureError::Missing, "Slack event refused");
        return (StatusCode::UNAUTHORIZED, "missing signature").into_response();
    };
    if let Err(e) = verify(&api.signing_secret, ts, &body, sig, now_ms() / 1000) {
        warn!(error = %e, "Slack event refused");
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        warn!(bytes = body.len(), "signed Slack request is not valid JSON");
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    match payload.get("type").and_then(Value::as_str) {
        Some("url_verification") => match payload.get("challenge").and_then(Value::as_str) {
            Some(challenge) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                challenge.to_string(),
            )
                .into_response(),
            None => (StatusCode::BAD_REQUEST, "missing challenge").into_response(),
        },
        Some("event_callback") => {
            if payload.get("event").is_none_or(|e| !e.is_object()) {
                warn!("event_callback without an event object");
                return (StatusCode::BAD_REQUEST, "missing event").into_response();
            }
            match api.intake.handle(&payload).await {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => {
                    warn!(error = %e, "cannot journal a Slack event; asking Slack to retry");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
        Some("app_rate_limited") => {
            warn!("Slack is rate limiting event delivery to this app (30,000 events/hour)");
            StatusCode::OK.into_response()
        }
        other => {
            debug!(kind = ?other, "Slack request of an unknown type ignored");
            StatusCode::OK.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from docs/platforms/slack.md §4, computed with python hmac and slack-sdk.
    const V2_BODY: &str = r#"{"token":"XXYYZZ","team_id":"T0001","api_app_id":"A0001","event":{"type":"message","channel":"C0001","user":"U0002","text":"hello &amp; <https://example.com|example>","ts":"1700000000.000100","thread_ts":"1699999999.000200","parent_user_id":"U0001","event_ts":"1700000000.000100","channel_type":"channel"},"type":"event_callback","event_id":"Ev0001","event_time":1700000000,"authorizations":[{"enterprise_id":null,"team_id":"T0001","user_id":"U0001","is_bot":true,"is_enterprise_install":false}],"is_ext_shared_channel":false,"event_context":"4-eyJldCI6Im1lc3NhZ2UifQ"}"#;

    #[test]
    fn slack_published_vector() {
        let secret = Secret::new("8f742231b10e8888abcd99yyyzzz85a5");
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(
            verify(&secret, "1531420618", body.as_bytes(), sig, 1531420618),
            Ok(())
        );
    }

    #[test]
    fn project_vectors_and_window() {
        let secret = Secret::new("bridge-test-signing-secret");
        let sig = "v0=8fe38785805887af2e425a591aec76328e780f9cce86908f5116fd2d33eb18d8";
        assert_eq!(
            verify(
                &secret,
                "1700000000",
                V2_BODY.as_bytes(),
                sig,
                1700000000 + 300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &secret,
                "1700000000",
                V2_BODY.as_bytes(),
                sig,
                1700000000 + 301
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(
                &secret,
                "1700000000",
                V2_BODY.as_bytes(),
                sig,
                1700000000 - 301
            ),
            Err(SignatureError::Stale)
        );
        let utf8 = "{\"text\":\"Привет, мир ✓\"}";
        let sig4 = "v0=ffaa6fcb6ff596497b99228d29c29a3144c02f8b394930b1db045134a1bdcc23";
        assert_eq!(
            verify(&secret, "1700000000", utf8.as_bytes(), sig4, 1700000000),
            Ok(())
        );
    }

    #[test]
    fn tampering_is_refused() {
        let secret = Secret::new("bridge-test-signing-secret");
        let sig = "v0=8fe38785805887af2e425a591aec76328e780f9cce86908f5116fd2d33eb18d8";
        let tampered = V2_BODY.replace("hello", "hallo");
        assert_eq!(
            verify(&secret, "1700000000", tampered.as_bytes(), sig, 1700000000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                &Secret::new("other"),
                "1700000000",
                V2_BODY.as_bytes(),
                sig,
                1700000000
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&secret, "soon", b"", sig, 0),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(&secret, "1700000000", b"", "v1=00", 1700000000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&secret, "1700000000", b"", "v0=zz", 1700000000),
            Err(SignatureError::Mismatch)
        );
    }
}
