//! Events API delivery over signed HTTP POSTs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livefeed_sandbox::slack::{SignMode, WorkspaceConfig, sign_v0};
use serde_json::json;

use crate::common::{GUARD, Receiver, Step, Ws, start};

fn cfg() -> WorkspaceConfig {
    WorkspaceConfig {
        post_rate: None,
        http_retry_delays: vec![Duration::from_millis(20); 3],
        http_timeout: Duration::from_millis(300),
        ..WorkspaceConfig::default()
    }
}

async fn with_receiver(cfg: WorkspaceConfig) -> (Ws, Receiver) {
    let s = start(cfg).await;
    let rx = Receiver::new(&s.fake.config().signing_secret);
    let url = rx.clone().start().await;
    s.fake.set_events_url(Some(url));
    (s, rx)
}

#[test]
fn public_signer_matches_contract_vector_2() {
    let body = r#"{"token":"XXYYZZ","team_id":"T0001","api_app_id":"A0001","event":{"type":"message","channel":"C0001","user":"U0002","text":"hello &amp; <https://example.com|example>","ts":"1700000000.000100","thread_ts":"1699999999.000200","parent_user_id":"U0001","event_ts":"1700000000.000100","channel_type":"channel"},"type":"event_callback","event_id":"Ev0001","event_time":1700000000,"authorizations":[{"enterprise_id":null,"team_id":"T0001","user_id":"U0001","is_bot":true,"is_enterprise_install":false}],"is_ext_shared_channel":false,"event_context":"4-eyJldCI6Im1lc3NhZ2UifQ"}"#;
    assert_eq!(
        sign_v0("bridge-test-signing-secret", "1700000000", body.as_bytes()),
        "v0=8fe38785805887af2e425a591aec76328e780f9cce86908f5116fd2d33eb18d8"
    );
}

#[tokio::test]
async fn signed_delivery() {
    let (s, rx) = with_receiver(cfg()).await;
    let ts = s.fake.post(&s.human, &s.feed, "over http");
    let hits = rx.wait_hits(1).await;
    let hit = &hits[0];
    assert!(hit.signature_ok);
    let stamp = hit.header("x-slack-request-timestamp").unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    assert!(stamp.parse::<u64>().is_ok_and(|t| now.abs_diff(t) <= 5));
    assert_eq!(
        hit.header("x-slack-signature"),
        Some(sign_v0(&s.fake.config().signing_secret, &stamp, &hit.body))
    );
    assert_eq!(
        hit.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        hit.header("user-agent")
            .is_some_and(|u| u.starts_with("Slackbot 1.0"))
    );
    assert_eq!(hit.header("x-slack-retry-num"), None);
    let body = hit.json();
    assert_eq!(body, s.last_event());
    assert_eq!(body["event"]["ts"], json!(ts));
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.unacked_envelopes() == 0)
            .await
    );
    assert_eq!(
        s.fake.envelopes_sent().len(),
        0,
        "no socket delivery in HTTP mode"
    );
}

#[tokio::test]
async fn retries_on_errors_and_timeouts_with_same_event_id() {
    let (s, rx) = with_receiver(cfg()).await;
    rx.script(&[
        Step::status(500),
        Step {
            delay: Duration::from_millis(600),
            ..Step::status(200)
        },
    ]);
    s.fake.post(&s.human, &s.feed, "flaky receiver");
    let hits = rx.wait_hits(3).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.unacked_envelopes() == 0)
            .await
    );
    let ids: Vec<_> = hits.iter().map(|h| h.json()["event_id"].clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    assert_eq!(hits[1].header("x-slack-retry-num").as_deref(), Some("1"));
    assert_eq!(
        hits[1].header("x-slack-retry-reason").as_deref(),
        Some("http_error")
    );
    assert_eq!(hits[2].header("x-slack-retry-num").as_deref(), Some("2"));
    assert_eq!(
        hits[2].header("x-slack-retry-reason").as_deref(),
        Some("http_timeout")
    );
    assert!(hits.iter().all(|h| h.signature_ok), "retries are re-signed");
    let log = s.fake.http_deliveries();
    let statuses: Vec<_> = log.iter().map(|d| d.status).collect();
    assert_eq!(statuses, vec![Some(500), None, Some(200)]);
    assert_eq!(log[1].error.as_deref(), Some("http_timeout"));
}

#[tokio::test]
async fn no_retry_header_is_honoured() {
    let (s, rx) = with_receiver(cfg()).await;
    rx.script(&[Step {
        no_retry: true,
        ..Step::status(503)
    }]);
    s.fake.post(&s.human, &s.feed, "do not retry");
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.unacked_envelopes() == 0)
            .await
    );
    assert_eq!(rx.hits().len(), 1);
    let log = s.fake.http_deliveries();
    assert_eq!(log.len(), 1);
    assert!(log[0].no_retry);
    assert!(s.fake.failed_deliveries().is_empty());
}

#[tokio::test]
async fn exhausted_retries_are_reported() {
    let (s, rx) = with_receiver(cfg()).await;
    rx.script(&[Step::status(500); 4]);
    s.fake.post(&s.human, &s.feed, "doomed");
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.failed_deliveries().len() == 1)
            .await
    );
    assert_eq!(rx.hits().len(), 4);
    assert_eq!(s.fake.unacked_envelopes(), 0);
}

#[tokio::test]
async fn url_verification_bad_signature_and_stale_timestamp() {
    let s = start(cfg()).await;
    let rx = Receiver::new(&s.fake.config().signing_secret);
    let url = rx.clone().start().await;
    let (challenge, reply) = s.fake.send_url_verification(&url).await.expect("send");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, challenge);
    assert!(!challenge.is_empty());
    let body = br#"{"type":"event_callback","event_id":"Ev0TEST"}"#;
    let r = s
        .fake
        .send_signed(&url, body, SignMode::BadSignature)
        .await
        .expect("send");
    assert_eq!(r.status, 401);
    let r = s
        .fake
        .send_signed(&url, body, SignMode::StaleTimestamp)
        .await
        .expect("send");
    assert_eq!(r.status, 401);
    let r = s
        .fake
        .send_signed(&url, body, SignMode::Valid)
        .await
        .expect("send");
    assert_eq!(r.status, 200);
    let r = s.fake.send_app_rate_limited(&url).await.expect("send");
    assert_eq!(r.status, 200);
    let last = rx.hits().last().map(|h| h.json()).unwrap_or_default();
    assert_eq!(last["type"], "app_rate_limited");
    assert_eq!(last["api_app_id"], "A0B24APP1");
    assert!(
        last["minute_rate_limited"]
            .as_u64()
            .is_some_and(|m| m % 60 == 0)
    );
}

#[tokio::test]
async fn bot_echoes_are_delivered_over_http_too() {
    let (s, rx) = with_receiver(cfg()).await;
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "x", "username": "Ivan (Bitrix24)"}),
        )
        .await;
    let ts = r.body["ts"].clone();
    s.json("chat.delete", json!({"channel": s.feed, "ts": ts}))
        .await;
    let hits = rx.wait_hits(2).await;
    let first = hits[0].json();
    assert_eq!(first["event"]["subtype"], "bot_message");
    assert_eq!(first["event"]["username"], "Ivan (Bitrix24)");
    let second = hits[1].json();
    assert_eq!(second["event"]["subtype"], "message_deleted");
    assert_eq!(second["event"]["previous_message"]["bot_id"], "B0B24BOT1");
}
