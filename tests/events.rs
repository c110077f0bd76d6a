//! Feed events instead of polling (`bitrix24.intake: offline | push`), through the fake
//! portal's local OAuth app. The safety-net poll runs once an hour in these worlds, so what
//! arrives, arrives by events.

// matrix-sdk's futures need a deeper trait-resolution limit (shared test support spawns them).
#![recursion_limit = "256"]

mod support;

use livefeed_sandbox::bitrix::{Fault, FaultKind, OAuthApp};
use support::{Setup, WAIT, World};

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn offline() -> Setup {
    logs();
    Setup {
        bitrix_intake: "offline",
        ..Setup::default()
    }
}

fn push() -> Setup {
    Setup {
        bitrix_intake: "push",
        ..Setup::default()
    }
}

async fn wait_text(w: &World, post: u64, text: &str) {
    let news = w.news.clone();
    let want = text.to_string();
    let found = w
        .slack
        .wait_until(WAIT, |s| {
            s.history(&news).iter().any(|m| {
                m.text.contains(&want)
                    && m.metadata
                        .as_ref()
                        .and_then(|md| md["event_payload"]["b24_post_id"].as_str())
                        == Some(post.to_string().as_str())
            })
        })
        .await;
    assert!(found, "post {post} never showed `{text}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_a_post_an_edit_and_a_delete_each_arrive_once() {
    let mut w = World::new(offline()).await;
    w.start().await;
    let bound: Vec<(String, bool)> = w
        .portal
        .event_bindings()
        .into_iter()
        .map(|b| (b.event, b.offline))
        .collect();
    assert_eq!(
        bound,
        [
            ("ONLIVEFEEDPOSTADD".to_string(), true),
            ("ONLIVEFEEDPOSTUPDATE".to_string(), true),
            ("ONLIVEFEEDPOSTDELETE".to_string(), true)
        ],
        "the bridge binds the three offline events"
    );
    let post = w.post_all("Offline", "first version");
    w.wait_root(&w.news.clone(), post).await;
    w.portal
        .update_post(post, Some("Offline".into()), "second version");
    wait_text(&w, post, "second version").await;
    w.portal.delete_post(post);
    let news = w.news.clone();
    assert!(
        w.slack
            .wait_until(WAIT, |s| s.history(&news).is_empty())
            .await,
        "the root message is deleted"
    );
    w.settle().await;
    assert!(w.portal.offline_rows().is_empty(), "every row is cleared");
    assert_eq!(
        w.slack.request_count("chat.postMessage"),
        1,
        "one root message"
    );
    assert_eq!(w.slack.request_count("chat.update"), 1, "one edit");
    assert_eq!(w.slack.request_count("chat.delete"), 1, "one deletion");
}

/// Feed events are bound only once the first poll's baseline is recorded. Bound earlier, a
/// post written in between would be queued as an event, then counted as history by the
/// baseline, and never mirrored. A failed first poll is tried again within seconds, not
/// after the hour-long safety-net interval these worlds use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_events_are_bound_only_after_the_first_poll_is_recorded() {
    let mut w = World::new(offline()).await;
    // More failures than one call's retries (six in these tests): the first poll fails.
    for method in ["batch", "log.blogpost.get"] {
        w.portal.inject(Fault {
            method: Some(method.into()),
            kind: FaultKind::ServerError(500),
            times: 7,
        });
    }
    w.launch().await;
    let failed = |p: &livefeed_sandbox::bitrix::FakePortal| {
        p.request_count("batch") + p.request_count("log.blogpost.get") >= 7
    };
    assert!(
        w.portal.wait_until(WAIT, failed).await,
        "the first poll is tried"
    );
    assert!(
        w.portal.event_bindings().is_empty(),
        "no event is bound while the first poll fails"
    );
    w.wait_for_intake().await;
    assert_eq!(w.portal.event_bindings().len(), 3);
    let post = w.post_all("After the baseline", "mirrored by its event");
    w.wait_root(&w.news.clone(), post).await;
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 1);
}

/// A `clear` that fails for good leaves the rows reserved under the saved `process_id`, hidden
/// from any other `get`; only fetching them again with that id can clear them. Nothing is
/// doubled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_rows_fetched_again_after_a_failed_clear_count_once() {
    let mut w = World::new(offline()).await;
    w.start().await;
    // More failures than one call's retries (six in these tests): the first round gives up.
    w.portal.inject(Fault {
        method: Some("event.offline.clear".into()),
        kind: FaultKind::ServerError(500),
        times: 10,
    });
    let post = w.post_all("Twice fetched", "still one root");
    w.wait_root(&w.news.clone(), post).await;
    assert!(
        w.portal
            .wait_until(WAIT, |p| p.offline_rows().is_empty())
            .await,
        "the reserved rows are cleared in the end"
    );
    assert!(
        w.portal.request_count("event.offline.clear") >= 11,
        "the first round's clear failed for good"
    );
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 1);
    assert_eq!(w.slack.request_count("chat.postMessage"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_expiring_mid_run_is_refreshed_and_the_rotation_survives_a_restart() {
    let mut w = World::new(offline()).await;
    w.start().await;
    let first = w.post_all("Before expiry", "one");
    w.wait_root(&w.news.clone(), first).await;
    let refreshes = w.portal.oauth_refreshes();
    w.portal.expire_access_tokens();
    let second = w.post_all("After expiry", "two");
    w.wait_root(&w.news.clone(), second).await;
    assert_eq!(w.portal.oauth_refreshes(), refreshes + 1, "one refresh");

    // The configured refresh token was spent long ago; the store holds the rotated one.
    w.stop().await;
    w.start().await;
    let third = w.post_all("After restart", "three");
    w.wait_root(&w.news.clone(), third).await;
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_shows_in_readyz() {
    let mut w = World::new(offline()).await;
    w.start().await;
    w.portal.revoke_grants();
    w.portal.expire_access_tokens();
    let body = w
        .wait_readyz("Bitrix24 down", |status, b| {
            status == 503 && b["sides"]["bitrix24"]["auth_failed"] == true
        })
        .await;
    let error = body["sides"]["bitrix24"]["last_error"].as_str().unwrap();
    assert!(error.contains("invalid_grant"), "{error}");
    let refresh = &w.refresh_token;
    assert!(!error.contains(refresh.as_str()), "no secret in /readyz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_a_forged_push_gets_401_and_a_real_one_mirrors_the_post_once() {
    let mut w = World::new(push()).await;
    w.start().await;
    let url = format!("http://127.0.0.1:{}/bitrix24/events", w.push_port.unwrap());
    let handlers: Vec<Option<String>> = w
        .portal
        .event_bindings()
        .into_iter()
        .map(|b| b.handler)
        .collect();
    assert_eq!(handlers, vec![Some(url.clone()); 3], "bound to the handler");

    // Forged or missing tokens: 401, and nothing is touched (the handler writes before it
    // answers 200, so a 401 means nothing was written).
    for token in ["not-the-application-token", ""] {
        let status = w
            .portal
            .push_with_token("ONLIVEFEEDPOSTADD", 999_999, &url, token)
            .await;
        assert_eq!(status, Some(401), "token `{token}`");
    }
    let store = &w.running.as_ref().unwrap().store;
    let touched: Vec<(String, serde_json::Value)> =
        store.cursors_with_prefix("bitrix24/touched/").unwrap();
    assert!(touched.is_empty(), "{touched:?}");

    // A real push mirrors the post, once.
    let post = w.post_all("Pushed", "arrives by a push");
    w.wait_root(&w.news.clone(), post).await;
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 1);
    let pushed: Vec<(String, u64, Option<u16>)> = w
        .portal
        .pushes()
        .into_iter()
        .map(|p| (p.event, p.post_id, p.status))
        .collect();
    assert_eq!(
        pushed,
        vec![("ONLIVEFEEDPOSTADD".to_string(), post, Some(200))]
    );
    let good = w
        .portal
        .push_with_token(
            "ONLIVEFEEDPOSTADD",
            post,
            &url,
            &OAuthApp::default().application_token,
        )
        .await;
    assert_eq!(
        good,
        Some(200),
        "a repeated push is accepted and changes nothing"
    );
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 1);
}

/// `livefeed-bridge bitrix24 authorize`: an administrator's code becomes the grant in the
/// store, and the bridge runs on it without any refresh token in the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_keeps_the_grant_in_the_store_and_the_bridge_runs_on_it() {
    let mut w = World::new(offline()).await;
    w.refresh_token = String::new();
    w.write_config(&w.config_text("127.0.0.1:0"));
    let authorize = |code: String| {
        let path = w.config_path();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
                .args(["bitrix24", "authorize", "--code", &code, "--config"])
                .arg(&path)
                .output()
                .await
                .expect("the binary runs");
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let code = w.portal.authorization_code();
    let redirect = format!("https://bridge.example.invalid/bitrix24/oauth?code={code}&state=x");
    let (ok, out) = authorize(redirect).await;
    assert!(ok, "{out}");
    assert!(out.contains("Authorized: the app acts as user 1"), "{out}");
    assert!(!out.contains(&code), "the code is not echoed");
    let (ok, out) = authorize(code).await;
    assert!(!ok, "a code works once: {out}");
    assert!(out.contains("the portal refused the code"), "{out}");

    w.start().await;
    let post = w.post_all("Authorized", "runs on the stored grant");
    w.wait_root(&w.news.clone(), post).await;
}

/// `check` in the offline mode: the grant refreshes, the plan allows reserving rows, the
/// bindings; a revoked grant fails with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_the_offline_mode_needs() {
    let w = World::new(offline()).await;
    w.write_config(&w.config_text("127.0.0.1:0"));
    let check = || {
        let path = w.config_path();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .await
                .expect("the binary runs");
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let (code, out) = check().await;
    for want in [
        "[ok  ] Bitrix24 app: the OAuth grant refreshes",
        "app user 1 (Bridge Bot), portal admin",
        "[ok  ] Bitrix24 intake offline: rest_offline_extended is available",
        "[ok  ] Bitrix24 intake offline: ONLIVEFEEDPOSTADD, ONLIVEFEEDPOSTUPDATE, ONLIVEFEEDPOSTDELETE will be bound at start",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(&w.refresh_token), "no secret in the report");

    w.portal.revoke_grants();
    let (code, out) = check().await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("[FAIL] Bitrix24 app: the OAuth grant does not refresh: invalid_grant"),
        "{out}"
    );
    assert!(
        out.contains("run `livefeed-bridge bitrix24 authorize`"),
        "{out}"
    );
}

/// Push without an app: an outgoing webhook set up in the portal's UI pushes (played here by
/// the test, with the token the portal shows), the incoming webhook reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_from_an_outgoing_webhook_with_the_incoming_webhook_for_reading() {
    logs();
    let mut w = World::new(Setup {
        bitrix_intake: "push-webhook",
        ..Setup::default()
    })
    .await;
    w.start().await;
    assert!(
        w.portal.event_bindings().is_empty(),
        "nothing bound by the bridge"
    );
    let url = format!("http://127.0.0.1:{}/bitrix24/events", w.push_port.unwrap());
    let post = w.post_all("Outgoing", "pushed by an outgoing webhook");
    let forged = w
        .portal
        .push_with_token("ONLIVEFEEDPOSTADD", post, &url, "guess")
        .await;
    assert_eq!(forged, Some(401));
    let token = OAuthApp::default().application_token;
    let pushed = w
        .portal
        .push_with_token("ONLIVEFEEDPOSTADD", post, &url, &token)
        .await;
    assert_eq!(pushed, Some(200));
    w.wait_root(&w.news.clone(), post).await;
    w.portal
        .update_post(post, Some("Outgoing".into()), "edited, pushed again");
    let pushed = w
        .portal
        .push_with_token("ONLIVEFEEDPOSTUPDATE", post, &url, &token)
        .await;
    assert_eq!(pushed, Some(200));
    wait_text(&w, post, "edited, pushed again").await;
    assert_eq!(w.roots(&w.news).len(), 1);
    assert_eq!(w.slack.request_count("chat.postMessage"), 1);
}
