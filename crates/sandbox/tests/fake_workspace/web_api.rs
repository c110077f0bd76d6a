//! Web API transport and method semantics.

use std::time::{Duration, Instant};

use livefeed_sandbox::slack::{
    Fault, FaultKind, LongPost, PostRate, Quirks, UnknownThread, WorkspaceConfig,
};
use serde_json::{Value, json};

use crate::common::{start, start_default};

#[tokio::test]
async fn auth_test_with_empty_json_body_and_exact_shape() {
    let s = start_default().await;
    let r = s
        .raw(
            s.http
                .post(s.url("auth.test"))
                .bearer_auth(s.bot())
                .header("Content-Type", "application/json;charset=utf-8"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json; charset=utf-8");
    // Slack names the token's scopes on every answer.
    let scopes = r.headers["x-oauth-scopes"].to_str().unwrap();
    assert!(
        scopes.contains("chat:write") && scopes.contains("pins:write"),
        "{scopes}"
    );
    assert_eq!(
        r.body,
        json!({"ok": true, "url": "https://b24-bridge.slack.com/", "team": "B24 Bridge Test",
               "user": "b24bridge", "team_id": "T0B24TEAM", "user_id": "U0B24BOT1",
               "bot_id": "B0B24BOT1", "is_enterprise_install": false})
    );
}

#[tokio::test]
async fn token_rules() {
    let s = start_default().await;
    let cfg = s.fake.config().clone();
    // No token at all.
    let r = s.raw(s.http.post(s.url("auth.test"))).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"ok": false, "error": "not_authed"}))
    );
    // A token inside a JSON body does not authenticate.
    let r = s
        .raw(
            s.http
                .post(s.url("auth.test"))
                .header("Content-Type", "application/json; charset=utf-8")
                .body(json!({"token": cfg.bot_token}).to_string()),
        )
        .await;
    assert_eq!(r.body["error"], "not_authed");
    // A form token does.
    let r = s
        .raw(
            s.http
                .post(s.url("auth.test"))
                .form(&[("token", cfg.bot_token.as_str())]),
        )
        .await;
    assert_eq!(r.body["ok"], true);
    // And so does a query-string token on GET.
    let r = s
        .raw(
            s.http
                .get(format!("{}?token={}", s.url("auth.test"), cfg.bot_token)),
        )
        .await;
    assert_eq!(r.body["ok"], true);
    let r = s
        .raw(
            s.http
                .post(s.url("auth.test"))
                .bearer_auth("xoxb-not-a-real-token"),
        )
        .await;
    assert_eq!(r.body["error"], "invalid_auth");
    let r = s
        .raw(s.http.post(s.url("auth.test")).bearer_auth(&cfg.app_token))
        .await;
    assert_eq!(r.body["error"], "not_allowed_token_type");
    let r = s
        .raw(
            s.http
                .post(s.url("apps.connections.open"))
                .bearer_auth(&cfg.bot_token),
        )
        .await;
    assert_eq!(r.body["error"], "not_allowed_token_type");
    // apps.connections.open takes its token in the header only.
    let r = s
        .raw(
            s.http
                .post(s.url("apps.connections.open"))
                .form(&[("token", cfg.app_token.as_str())]),
        )
        .await;
    assert_eq!(r.body["error"], "not_authed");
    s.fake.revoke_bot_token();
    let r = s.json("auth.test", json!({})).await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (200, json!("token_revoked"))
    );
    // The request log never carries tokens.
    let log = serde_json::to_string(
        &s.fake
            .requests()
            .iter()
            .map(|r| r.params.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    assert!(!log.contains("xoxb-") && !log.contains("xapp-"), "{log}");
}

#[tokio::test]
async fn transport_errors_and_warnings() {
    let s = start_default().await;
    let bad = s
        .raw(
            s.http
                .post(s.url("chat.postMessage"))
                .bearer_auth(s.bot())
                .header("Content-Type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(bad.body["error"], "invalid_json");
    let arr = s.json("chat.postMessage", json!([1, 2])).await;
    assert_eq!(arr.body["error"], "json_not_object");
    // JSON without charset: ok with a warning.
    let r = s
        .raw(
            s.http
                .post(s.url("auth.test"))
                .bearer_auth(s.bot())
                .header("Content-Type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(r.body["warning"], "missing_charset");
    assert_eq!(
        r.body["response_metadata"]["warnings"],
        json!(["missing_charset"])
    );
    let r = s
        .raw(
            s.http
                .post(s.url("auth.test"))
                .bearer_auth(s.bot())
                .header(
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body("a=1"),
        )
        .await;
    assert_eq!(r.body["warning"], "superfluous_charset");
    let r = s.json("no.such.method", json!({})).await;
    assert_eq!(
        r.body,
        json!({"ok": false, "error": "unknown_method", "req_method": "no.such.method"})
    );
    let r = s.json("files.upload", json!({})).await;
    assert_eq!(r.body["error"], "method_deprecated");
}

#[tokio::test]
async fn form_only_methods_ignore_json_arguments() {
    let s = start_default().await;
    let r = s
        .json("conversations.info", json!({"channel": s.feed}))
        .await;
    assert_eq!(r.body["error"], "channel_not_found");
    let r = s.form("conversations.info", &[("channel", &s.feed)]).await;
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["channel"]["id"], json!(s.feed));
    assert_eq!(r.body["channel"]["name"], "b24-feed");
    assert_eq!(r.body["channel"]["is_member"], true);
    assert_eq!(r.body["channel"]["is_private"], false);
    // Query-string arguments work for every method.
    let r = s
        .raw(
            s.http
                .get(format!(
                    "{}?channel={}",
                    s.url("conversations.info"),
                    s.feed
                ))
                .bearer_auth(s.bot()),
        )
        .await;
    assert_eq!(r.body["ok"], true);
}

#[tokio::test]
async fn post_message_success_shape_and_echo_event() {
    let s = start_default().await;
    let md = json!({"event_type": "b24_feed_post", "event_payload": {"b24_post_id": "4711"}});
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "*Quarterly plan*", "unfurl_links": false,
                   "metadata": md}),
        )
        .await;
    assert_eq!(r.status, 200);
    let b = r.body;
    let ts = b["ts"].as_str().expect("ts").to_owned();
    assert_eq!(ts.len(), 17);
    assert_eq!(&ts[10..11], ".");
    assert_eq!(b["ok"], true);
    assert_eq!(b["channel"], json!(s.feed));
    let m = &b["message"];
    assert_eq!(m["type"], "message");
    assert_eq!(m["user"], "U0B24BOT1");
    assert_eq!(m["bot_id"], "B0B24BOT1");
    assert_eq!(m["app_id"], "A0B24APP1");
    assert_eq!(m["text"], "*Quarterly plan*");
    assert_eq!(m["ts"], json!(ts));
    assert_eq!(m["team"], "T0B24TEAM");
    assert_eq!(m["metadata"], md);
    assert_eq!(m["bot_profile"]["id"], "B0B24BOT1");
    assert_eq!(m["bot_profile"]["app_id"], "A0B24APP1");
    assert!(m.get("subtype").is_none());

    let ev = s.last_event();
    assert_eq!(ev["type"], "event_callback");
    assert_eq!(ev["team_id"], "T0B24TEAM");
    assert_eq!(ev["api_app_id"], "A0B24APP1");
    assert!(ev["event_id"].as_str().is_some_and(|e| e.starts_with("Ev")));
    assert!(ev["event_time"].as_u64().is_some());
    assert_eq!(
        ev["authorizations"],
        json!([{"enterprise_id": null, "team_id": "T0B24TEAM", "user_id": "U0B24BOT1",
                "is_bot": true, "is_enterprise_install": false}])
    );
    let e = &ev["event"];
    assert_eq!(e["type"], "message");
    assert_eq!(e["channel"], json!(s.feed));
    assert_eq!(e["user"], "U0B24BOT1");
    assert_eq!(e["bot_id"], "B0B24BOT1");
    assert_eq!(e["app_id"], "A0B24APP1");
    assert_eq!(e["bot_profile"]["name"], "Bitrix24 Bridge");
    assert_eq!(e["ts"], json!(ts));
    assert_eq!(e["event_ts"], json!(ts));
    assert_eq!(e["channel_type"], "channel");
    // Metadata is not part of message events by default.
    assert!(e.get("metadata").is_none());
    let view = s.fake.message(&s.feed, &ts).expect("stored");
    assert_eq!(view.metadata, Some(md));
}

#[tokio::test]
async fn customised_post_with_and_without_scope() {
    let s = start_default().await;
    let args = json!({"channel": s.feed, "text": "hi", "username": "Ivan Petrov (Bitrix24)",
                      "icon_url": "https://b24.example.com/a/17.png"});
    let r = s.json("chat.postMessage", args.clone()).await;
    let m = &r.body["message"];
    assert_eq!(m["subtype"], "bot_message");
    assert_eq!(m["username"], "Ivan Petrov (Bitrix24)");
    assert_eq!(m["icons"]["image_48"], "https://b24.example.com/a/17.png");
    assert_eq!(m["bot_id"], "B0B24BOT1");
    assert_eq!(m["user"], "U0B24BOT1");
    let e = &s.last_event()["event"];
    assert_eq!(e["subtype"], "bot_message");
    assert_eq!(e["username"], "Ivan Petrov (Bitrix24)");
    assert_eq!(e["bot_id"], "B0B24BOT1");
    let view = s
        .fake
        .message(&s.feed, m["ts"].as_str().unwrap_or_default());
    let view = view.expect("stored");
    assert_eq!(view.username.as_deref(), Some("Ivan Petrov (Bitrix24)"));
    assert_eq!(
        view.icon_url.as_deref(),
        Some("https://b24.example.com/a/17.png")
    );

    // icon_emoji overrides icon_url.
    let mut with_emoji = args.clone();
    with_emoji["icon_emoji"] = json!(":robot_face:");
    let r = s.json("chat.postMessage", with_emoji).await;
    assert_eq!(r.body["message"]["icons"], json!({"emoji": ":robot_face:"}));

    s.fake.remove_scope("chat:write.customize");
    let r = s.json("chat.postMessage", args).await;
    assert_eq!(r.body["ok"], true);
    let m = &r.body["message"];
    assert!(m.get("subtype").is_none(), "{m}");
    assert!(m.get("username").is_none());
    assert!(m.get("icons").is_none());
    assert_eq!(m["user"], "U0B24BOT1");
}

#[tokio::test]
async fn customise_without_scope_can_be_an_error() {
    let s = start(WorkspaceConfig {
        quirks: Quirks {
            customize_without_scope_error: true,
            ..Quirks::default()
        },
        ..WorkspaceConfig::default()
    })
    .await;
    s.fake.remove_scope("chat:write.customize");
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "x", "username": "Z"}),
        )
        .await;
    assert_eq!(r.body["error"], "missing_scope");
    assert_eq!(r.body["needed"], "chat:write.customize");
    assert!(
        r.body["provided"]
            .as_str()
            .is_some_and(|p| p.starts_with("chat:write,channels:history"))
    );
}

#[tokio::test]
async fn thread_semantics_and_broadcast() {
    let s = start_default().await;
    let root = s.post(&s.feed, "root").await["ts"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r1 = s.fake.reply(&s.human, &s.feed, &root, "first", false);
    let r2 = s.fake.reply(&s.human2, &s.feed, &root, "second", false);
    let bot = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "bot reply", "thread_ts": root}),
        )
        .await;
    assert_eq!(bot.body["message"]["thread_ts"], json!(root));
    assert_eq!(bot.body["message"]["parent_user_id"], "U0B24BOT1");
    let bot_ts = bot.body["ts"].as_str().unwrap_or_default().to_owned();
    // A reply's ts as thread_ts attaches to the root.
    let via_reply = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "nested", "thread_ts": r1}),
        )
        .await;
    assert_eq!(via_reply.body["message"]["thread_ts"], json!(root));
    let bc = s
        .fake
        .reply(&s.human, &s.feed, &root, "also in channel", true);

    let th = s.fake.thread(&s.feed, &root);
    let ts: Vec<&str> = th.iter().map(|m| m.ts.as_str()).collect();
    let nested = via_reply.body["ts"].as_str().unwrap_or_default();
    assert_eq!(ts, vec![root.as_str(), &r1, &r2, &bot_ts, nested, &bc]);
    let parent = &th[0].raw;
    assert_eq!(parent["thread_ts"], json!(root));
    assert_eq!(parent["reply_count"], 5);
    assert_eq!(parent["reply_users_count"], 3);
    assert_eq!(
        parent["reply_users"],
        json!([s.human, s.human2, "U0B24BOT1"])
    );
    assert_eq!(parent["latest_reply"], json!(bc));
    assert_eq!(th[1].raw["parent_user_id"], "U0B24BOT1");
    assert_eq!(th[1].thread_ts.as_deref(), Some(root.as_str()));

    // History: root and the broadcast, not plain replies.
    let hist: Vec<(String, Option<String>)> = s
        .fake
        .history(&s.feed)
        .into_iter()
        .map(|m| (m.ts, m.subtype))
        .collect();
    assert_eq!(
        hist,
        vec![
            (root.clone(), None),
            (bc.clone(), Some("thread_broadcast".into()))
        ]
    );
    // The broadcast event carries the root.
    let e = &s.last_event()["event"];
    assert_eq!(e["subtype"], "thread_broadcast");
    assert_eq!(e["root"]["ts"], json!(root));
    assert_eq!(e["thread_ts"], json!(root));

    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "x", "thread_ts": "1111111111.000001"}),
        )
        .await;
    assert_eq!(r.body["error"], "thread_not_found");
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "x", "thread_ts": root, "reply_broadcast": "1"}),
        )
        .await;
    assert_eq!(r.body["message"]["subtype"], "thread_broadcast");
}

#[tokio::test]
async fn unknown_thread_can_post_top_level() {
    let s = start(WorkspaceConfig {
        quirks: Quirks {
            unknown_thread_ts: UnknownThread::TopLevel,
            ..Quirks::default()
        },
        ..WorkspaceConfig::default()
    })
    .await;
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "x", "thread_ts": "1111111111.000001"}),
        )
        .await;
    assert_eq!(r.body["ok"], true);
    assert!(r.body["message"].get("thread_ts").is_none());
}

#[tokio::test]
async fn channel_rules() {
    let s = start_default().await;
    let outside = s.fake.add_channel("outside", false, false);
    let secret = s.fake.add_channel("secret", true, false);
    let send = |c: String| s.json("chat.postMessage", json!({"channel": c, "text": "x"}));
    assert_eq!(send(outside.clone()).await.body["error"], "not_in_channel");
    assert_eq!(
        send(secret.clone()).await.body["error"],
        "channel_not_found"
    );
    assert_eq!(
        send("C0NOPE".into()).await.body["error"],
        "channel_not_found"
    );
    assert_eq!(
        s.json("chat.postMessage", json!({"text": "x"})).await.body["error"],
        "channel_not_found"
    );
    // By name works too.
    assert_eq!(send("#b24-feed".into()).await.body["ok"], true);

    let r = s
        .form("conversations.history", &[("channel", &outside)])
        .await;
    assert_eq!(r.body["error"], "not_in_channel");
    let r = s.form("conversations.info", &[("channel", &secret)]).await;
    assert_eq!(r.body["error"], "channel_not_found");

    // Join: member event, then already_in_channel.
    let r = s
        .json("conversations.join", json!({"channel": outside}))
        .await;
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["channel"]["is_member"], true);
    assert!(r.body.get("warning").is_none());
    let e = &s.last_event()["event"];
    assert_eq!(e["type"], "member_joined_channel");
    assert_eq!(e["user"], "U0B24BOT1");
    assert_eq!(e["channel"], json!(outside));
    let r = s
        .json("conversations.join", json!({"channel": outside}))
        .await;
    assert_eq!(r.body["warning"], "already_in_channel");
    assert_eq!(
        r.body["response_metadata"],
        json!({"warnings": ["already_in_channel"]})
    );
    let r = s
        .json("conversations.join", json!({"channel": secret}))
        .await;
    assert_eq!(r.body["error"], "channel_not_found");
    s.fake.set_bot_member(&secret, true);
    let r = s
        .json("conversations.join", json!({"channel": secret}))
        .await;
    assert_eq!(r.body["error"], "method_not_supported_for_channel_type");
    let r = s
        .json("chat.postMessage", json!({"channel": secret, "text": "x"}))
        .await;
    assert_eq!(r.body["ok"], true);
    assert_eq!(s.last_event()["event"]["channel_type"], "group");

    // Archived.
    let ts = s.post(&s.feed, "before").await["ts"].clone();
    s.fake.archive_channel(&s.feed);
    assert_eq!(send(s.feed.clone()).await.body["error"], "is_archived");
    let r = s
        .json(
            "chat.update",
            json!({"channel": s.feed, "ts": ts, "text": "y"}),
        )
        .await;
    assert_eq!(r.body["error"], "is_inactive");
    let r = s.form("conversations.info", &[("channel", &s.feed)]).await;
    assert_eq!(r.body["channel"]["is_archived"], true);
}

#[tokio::test]
async fn missing_scope_reports_needed_and_provided() {
    let s = start_default().await;
    s.fake.remove_scope("users:read");
    let r = s.form("users.info", &[("user", &s.human)]).await;
    assert_eq!(r.body["ok"], false);
    assert_eq!(r.body["error"], "missing_scope");
    assert_eq!(r.body["needed"], "users:read");
    assert_eq!(
        r.body["provided"],
        "chat:write,chat:write.customize,channels:history,groups:history,channels:read,\
         groups:read,channels:join,users:read.email,files:read,files:write,pins:write,\
         reactions:write,reactions:read"
    );
    s.fake.remove_scope("channels:history");
    // Without the history scope the app also stops hearing messages.
    let before = s.fake.events_sent().len();
    s.fake.post(&s.human, &s.feed, "unheard");
    assert_eq!(s.fake.events_sent().len(), before);
}

#[tokio::test]
async fn update_and_delete_ownership_and_echoes() {
    let s = start_default().await;
    let human_ts = s.fake.post(&s.human, &s.feed, "mine");
    let r = s
        .json(
            "chat.update",
            json!({"channel": s.feed, "ts": human_ts, "text": "x"}),
        )
        .await;
    assert_eq!(r.body["error"], "cant_update_message");
    let r = s
        .json("chat.delete", json!({"channel": s.feed, "ts": human_ts}))
        .await;
    assert_eq!(r.body["error"], "cant_delete_message");
    let r = s
        .json(
            "chat.update",
            json!({"channel": s.feed, "ts": "1111111111.000001", "text": "x"}),
        )
        .await;
    assert_eq!(r.body["error"], "message_not_found");
    let r = s
        .json(
            "chat.delete",
            json!({"channel": s.feed, "ts": "1111111111.000001"}),
        )
        .await;
    assert_eq!(r.body["error"], "message_not_found");

    let md = json!({"event_type": "b24_feed_post", "event_payload": {"id": "1"}});
    let blocks = json!([{"type": "section", "text": {"type": "mrkdwn", "text": "v1"}}]);
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "v1", "blocks": blocks, "metadata": md}),
        )
        .await;
    let ts = r.body["ts"].as_str().unwrap_or_default().to_owned();
    // Blocks-only update keeps the text; text-only update drops the blocks; metadata stays.
    let r = s
        .json(
            "chat.update",
            json!({"channel": s.feed, "ts": ts, "text": "v2"}),
        )
        .await;
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["channel"], json!(s.feed));
    assert_eq!(r.body["ts"], json!(ts));
    assert_eq!(r.body["text"], "v2");
    assert_eq!(r.body["message"]["edited"]["user"], "B0B24BOT1");
    assert!(
        r.body["message"]["edited"]["ts"]
            .as_str()
            .is_some_and(|t| t.ends_with(".000000"))
    );
    let view = s.fake.message(&s.feed, &ts).expect("message");
    assert_eq!(view.text, "v2");
    assert_eq!(view.blocks, None);
    assert_eq!(view.metadata, Some(md.clone()));
    assert!(view.edited);

    let ev = s.last_event();
    let e = &ev["event"];
    assert_eq!(e["subtype"], "message_changed");
    assert_eq!(e["hidden"], true);
    assert_eq!(e["message"]["ts"], json!(ts));
    assert_eq!(e["message"]["text"], "v2");
    assert_eq!(e["message"]["bot_id"], "B0B24BOT1");
    assert_eq!(e["previous_message"]["text"], "v1");
    assert_ne!(e["ts"], json!(ts), "the outer ts is the change's own");
    assert_eq!(e["ts"], e["event_ts"]);

    // `{}` clears metadata.
    let r = s
        .json(
            "chat.update",
            json!({"channel": s.feed, "ts": ts, "metadata": {}}),
        )
        .await;
    assert_eq!(r.body["ok"], true);
    assert_eq!(s.fake.message(&s.feed, &ts).and_then(|m| m.metadata), None);
    let r = s
        .json("chat.update", json!({"channel": s.feed, "ts": ts}))
        .await;
    assert_eq!(r.body["error"], "no_text");
    let long = "x".repeat(4001);
    let r = s
        .json(
            "chat.update",
            json!({"channel": s.feed, "ts": ts, "text": long}),
        )
        .await;
    assert_eq!(r.body["error"], "msg_too_long");

    let r = s
        .json("chat.delete", json!({"channel": s.feed, "ts": ts}))
        .await;
    assert_eq!(r.body, json!({"ok": true, "channel": s.feed, "ts": ts}));
    let e = &s.last_event()["event"];
    assert_eq!(e["subtype"], "message_deleted");
    assert_eq!(e["deleted_ts"], json!(ts));
    assert_eq!(e["previous_message"]["text"], "v2");
    assert_eq!(e["previous_message"]["bot_id"], "B0B24BOT1");
    assert!(s.fake.was_deleted(&s.feed, &ts));
    assert!(s.fake.message(&s.feed, &ts).is_none());
    let r = s
        .json("chat.delete", json!({"channel": s.feed, "ts": ts}))
        .await;
    assert_eq!(r.body["error"], "message_not_found");
}

#[tokio::test]
async fn deleting_a_parent_with_replies_leaves_a_tombstone() {
    let s = start_default().await;
    let root = s.post(&s.feed, "root").await["ts"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let reply = s.fake.reply(&s.human, &s.feed, &root, "answer", false);
    let r = s
        .json("chat.delete", json!({"channel": s.feed, "ts": root}))
        .await;
    assert_eq!(r.body["ok"], true);
    let e = &s.last_event()["event"];
    assert_eq!(e["subtype"], "message_changed");
    assert_eq!(e["message"]["subtype"], "tombstone");
    assert_eq!(e["message"]["reply_count"], 1);
    let hist = s.fake.history(&s.feed);
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].subtype.as_deref(), Some("tombstone"));
    // The placeholder disappears with its last reply.
    s.fake.delete(&s.human, &s.feed, &reply);
    assert!(s.fake.history(&s.feed).is_empty());
    let evs = s.fake.events_sent();
    let n = evs.len();
    assert_eq!(evs[n - 2]["event"]["deleted_ts"], json!(reply));
    assert_eq!(evs[n - 1]["event"]["deleted_ts"], json!(root));
}

#[tokio::test]
async fn text_limits_and_content_rules() {
    let s = start_default().await;
    let r = s.json("chat.postMessage", json!({"channel": s.feed})).await;
    assert_eq!(r.body["error"], "no_text");
    let r = s
        .json("chat.postMessage", json!({"channel": s.feed, "text": ""}))
        .await;
    assert_eq!(r.body["error"], "no_text");
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "a", "markdown_text": "**b**"}),
        )
        .await;
    assert_eq!(r.body["error"], "markdown_text_conflict");
    let long = "é".repeat(40_005);
    let r = s
        .json("chat.postMessage", json!({"channel": s.feed, "text": long}))
        .await;
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["warning"], "message_truncated");
    assert_eq!(
        r.body["response_metadata"]["warnings"],
        json!(["message_truncated"])
    );
    assert!(
        r.body["response_metadata"]["messages"][0]
            .as_str()
            .is_some_and(|m| m.starts_with("[WARN]"))
    );
    assert_eq!(
        r.body["message"]["text"]
            .as_str()
            .map(|t| t.chars().count()),
        Some(40_000)
    );
    // Blocks as a JSON string in a form field, and validation.
    let r = s
        .form(
            "chat.postMessage",
            &[
                ("channel", &s.feed),
                ("text", "fallback"),
                ("blocks", r#"[{"type":"section","text":{"type":"mrkdwn"}}]"#),
            ],
        )
        .await;
    assert_eq!(r.body["error"], "invalid_blocks");
    assert_eq!(
        r.body["response_metadata"]["messages"],
        json!(["[ERROR] must provide a string [json-pointer:/blocks/0/text/text]"])
    );
    let r = s
        .form(
            "chat.postMessage",
            &[("channel", &s.feed), ("text", "x"), ("blocks", "[{")],
        )
        .await;
    assert_eq!(r.body["error"], "invalid_blocks_format");
    let r = s
        .form(
            "chat.postMessage",
            &[
                ("channel", &s.feed),
                ("text", "x"),
                ("metadata", r#"{"event_type":"t","event_payload":{"a":1}}"#),
            ],
        )
        .await;
    assert_eq!(
        r.body["message"]["metadata"],
        json!({"event_type": "t", "event_payload": {"a": 1}})
    );
    let r = s
        .form(
            "chat.postMessage",
            &[
                ("channel", &s.feed),
                ("text", "x"),
                ("metadata", r#"{"a":1}"#),
            ],
        )
        .await;
    assert_eq!(r.body["error"], "invalid_metadata_schema");
}

#[tokio::test]
async fn long_posts_can_be_rejected() {
    let s = start(WorkspaceConfig {
        quirks: Quirks {
            long_post: LongPost::Reject,
            ..Quirks::default()
        },
        ..WorkspaceConfig::default()
    })
    .await;
    let r = s
        .json(
            "chat.postMessage",
            json!({"channel": s.feed, "text": "x".repeat(40_001)}),
        )
        .await;
    assert_eq!(r.body["error"], "msg_too_long");
}

#[tokio::test]
async fn history_pagination_cursors_and_metadata() {
    let s = start(WorkspaceConfig {
        post_rate: None,
        ..WorkspaceConfig::default()
    })
    .await;
    let md = json!({"event_type": "t", "event_payload": {"n": 1}});
    let mut top = Vec::new();
    for i in 0..5 {
        let r = s
            .json(
                "chat.postMessage",
                json!({"channel": s.feed, "text": format!("m{i}"), "metadata": md}),
            )
            .await;
        top.push(r.body["ts"].as_str().unwrap_or_default().to_owned());
    }
    s.fake
        .reply(&s.human, &s.feed, &top[0], "hidden reply", false);

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let mut args = vec![("channel", s.feed.as_str()), ("limit", "2")];
        if !cursor.is_empty() {
            args.push(("cursor", cursor.as_str()));
        }
        let r = s.form("conversations.history", &args).await;
        assert_eq!(r.body["ok"], true, "{}", r.body);
        pages += 1;
        for m in r.body["messages"].as_array().into_iter().flatten() {
            assert!(
                m.get("metadata").is_none(),
                "metadata needs include_all_metadata"
            );
            seen.push(m["ts"].as_str().unwrap_or_default().to_owned());
        }
        cursor = r.body["response_metadata"]["next_cursor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(r.body["has_more"], json!(!cursor.is_empty()));
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = top.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let r = s
        .form(
            "conversations.history",
            &[
                ("channel", &s.feed),
                ("limit", "1"),
                ("include_all_metadata", "true"),
            ],
        )
        .await;
    assert_eq!(r.body["messages"][0]["metadata"], md);
    let r = s
        .form(
            "conversations.history",
            &[("channel", &s.feed), ("cursor", "bm9wZQ==")],
        )
        .await;
    assert_eq!(r.body["error"], "invalid_cursor");
    let r = s
        .form(
            "conversations.history",
            &[("channel", &s.feed), ("oldest", "abc")],
        )
        .await;
    assert_eq!(r.body["error"], "invalid_ts_oldest");
    // oldest/latest are exclusive unless inclusive=1.
    let r = s
        .form(
            "conversations.history",
            &[
                ("channel", &s.feed),
                ("oldest", &top[1]),
                ("latest", &top[3]),
            ],
        )
        .await;
    assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(1));
    let r = s
        .form(
            "conversations.history",
            &[
                ("channel", &s.feed),
                ("oldest", &top[1]),
                ("latest", &top[3]),
                ("inclusive", "1"),
            ],
        )
        .await;
    assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(3));
    // The thread parent carries thread fields in history.
    let r = s
        .form("conversations.history", &[("channel", &s.feed)])
        .await;
    let parent = r.body["messages"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(parent["reply_count"], 1);
    assert_eq!(parent["reply_users"], json!([s.human]));
}

#[tokio::test]
async fn replies_pagination_parent_first() {
    let s = start_default().await;
    let root = s.fake.post(&s.human, &s.feed, "question");
    let replies: Vec<String> = (0..4)
        .map(|i| {
            s.fake
                .reply(&s.human2, &s.feed, &root, &format!("r{i}"), false)
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut args = vec![
            ("channel", s.feed.as_str()),
            ("ts", replies[2].as_str()),
            ("limit", "2"),
        ];
        if !cursor.is_empty() {
            args.push(("cursor", &cursor));
        }
        let r = s.form("conversations.replies", &args).await;
        assert_eq!(r.body["ok"], true, "{}", r.body);
        for m in r.body["messages"].as_array().into_iter().flatten() {
            seen.push(m["ts"].as_str().unwrap_or_default().to_owned());
            if m["ts"] != json!(root) {
                assert_eq!(m["thread_ts"], json!(root));
                assert_eq!(m["parent_user_id"], json!(s.human));
            }
        }
        cursor = r.body["response_metadata"]["next_cursor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    let mut expected = vec![root.clone()];
    expected.extend(replies);
    assert_eq!(seen, expected);
    let r = s
        .form(
            "conversations.replies",
            &[("channel", &s.feed), ("ts", "1111111111.000001")],
        )
        .await;
    assert_eq!(r.body["error"], "thread_not_found");
    let lone = s.fake.post(&s.human, &s.feed, "alone");
    let r = s
        .form(
            "conversations.replies",
            &[("channel", &s.feed), ("ts", &lone)],
        )
        .await;
    assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["has_more"], false);
    assert_eq!(r.body["response_metadata"]["next_cursor"], "");
}

#[tokio::test]
async fn human_text_is_stored_escaped_with_links() {
    let s = start_default().await;
    let ts = s.fake.post(&s.human, &s.feed, "a < b & c https://x.y");
    let m = s.fake.message(&s.feed, &ts).expect("stored");
    assert_eq!(m.text, "a &lt; b &amp; c <https://x.y>");
    assert_eq!(m.user.as_deref(), Some(s.human.as_str()));
    assert_eq!(m.bot_id, None);
    let e = &s.last_event()["event"];
    assert_eq!(e["text"], "a &lt; b &amp; c <https://x.y>");
    assert_eq!(e["user"], json!(s.human));
    assert!(e["client_msg_id"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(e["blocks"][0]["type"], "rich_text");
    assert_eq!(
        e["blocks"][0]["elements"][0]["elements"],
        json!([{"type": "text", "text": "a < b & c "}, {"type": "link", "url": "https://x.y"}])
    );
    // Edits by people come through as message_changed with edited.user = the person.
    s.fake.edit(&s.human, &s.feed, &ts, "now with @anna");
    let e = &s.last_event()["event"];
    assert_eq!(e["subtype"], "message_changed");
    assert_eq!(
        e["message"]["text"],
        json!(format!("now with <@{}>", s.human2))
    );
    assert_eq!(e["message"]["edited"]["user"], json!(s.human));
    assert_eq!(
        e["previous_message"]["text"],
        "a &lt; b &amp; c <https://x.y>"
    );
}

#[tokio::test]
async fn users_info_shapes() {
    let s = start_default().await;
    s.fake.remove_scope("users:read.email");
    let r = s.form("users.info", &[("user", &s.human)]).await;
    let u = &r.body["user"];
    assert_eq!(u["id"], json!(s.human));
    assert_eq!(u["name"], "ivan");
    assert_eq!(u["real_name"], "Ivan Petrov");
    assert_eq!(u["is_bot"], false);
    assert_eq!(u["profile"]["display_name"], "ivan.p");
    assert_eq!(u["profile"]["real_name"], "Ivan Petrov");
    assert_eq!(
        u["profile"]["image_72"],
        "https://avatars.example/ivan_72.png"
    );
    assert!(
        u["profile"].get("email").is_none(),
        "email needs users:read.email"
    );
    let r = s.form("users.info", &[("user", &s.human2)]).await;
    assert_eq!(r.body["user"]["profile"]["display_name"], "");
    s.fake.add_scope("users:read.email");
    let r = s.form("users.info", &[("user", &s.human2)]).await;
    assert_eq!(r.body["user"]["profile"]["email"], "anna@example.com");
    let r = s.form("users.info", &[("user", "U0B24BOT1")]).await;
    assert_eq!(r.body["user"]["is_bot"], true);
    assert_eq!(r.body["user"]["profile"]["bot_id"], "B0B24BOT1");
    let r = s.form("users.info", &[("user", "U0NOBODY")]).await;
    assert_eq!(r.body["error"], "user_not_found");

    // users.lookupByEmail: the same user object, the address compared without case.
    let r = s
        .form("users.lookupByEmail", &[("email", "ANNA@example.com")])
        .await;
    assert_eq!(r.body["user"]["id"], json!(s.human2));
    assert_eq!(r.body["user"]["profile"]["email"], "anna@example.com");
    let r = s
        .form("users.lookupByEmail", &[("email", "nobody@example.com")])
        .await;
    assert_eq!(r.body["error"], "users_not_found");
    s.fake.remove_scope("users:read.email");
    let r = s
        .form("users.lookupByEmail", &[("email", "anna@example.com")])
        .await;
    assert_eq!(r.body["error"], "missing_scope");
    assert_eq!(r.body["needed"], "users:read.email");
}

#[tokio::test]
async fn pins_reactions_and_permalinks() {
    let s = start_default().await;
    let root = s.fake.post(&s.human, &s.feed, "hello");
    let reply = s.fake.reply(&s.human2, &s.feed, &root, "hi", false);
    let r = s
        .json("pins.add", json!({"channel": s.feed, "timestamp": root}))
        .await;
    assert_eq!(r.body, json!({"ok": true}));
    let r = s
        .json("pins.add", json!({"channel": s.feed, "timestamp": root}))
        .await;
    assert_eq!(r.body["error"], "already_pinned");
    let r = s
        .json("pins.add", json!({"channel": s.feed, "ts": root}))
        .await;
    assert_eq!(r.body["error"], "no_item_specified");
    let r = s
        .json(
            "pins.add",
            json!({"channel": s.feed, "timestamp": "yesterday"}),
        )
        .await;
    assert_eq!(r.body["error"], "bad_timestamp");
    let r = s
        .json("pins.remove", json!({"channel": s.feed, "timestamp": root}))
        .await;
    assert_eq!(r.body, json!({"ok": true}));
    let r = s
        .json("pins.remove", json!({"channel": s.feed, "timestamp": root}))
        .await;
    assert_eq!(r.body["error"], "no_pin", "the docs' example answer");
    assert!(
        s.fake
            .history(&s.feed)
            .iter()
            .all(|m| m.raw.get("pinned_to").is_none()),
        "nothing pinned any more"
    );

    let r = s
        .json(
            "reactions.add",
            json!({"channel": s.feed, "timestamp": root, "name": "thumbsup"}),
        )
        .await;
    assert_eq!(r.body, json!({"ok": true}));
    let e = &s.last_event()["event"];
    assert_eq!(e["type"], "reaction_added");
    assert_eq!(e["reaction"], "thumbsup");
    assert_eq!(e["user"], "U0B24BOT1");
    assert_eq!(e["item_user"], json!(s.human));
    let r = s
        .json(
            "reactions.add",
            json!({"channel": s.feed, "timestamp": root, "name": "thumbsup"}),
        )
        .await;
    assert_eq!(r.body["error"], "already_reacted");
    let r = s
        .json(
            "reactions.add",
            json!({"channel": s.feed, "timestamp": root, "name": ":tada:"}),
        )
        .await;
    assert_eq!(r.body["error"], "invalid_name");
    let r = s
        .json(
            "reactions.add",
            json!({"channel": s.feed, "timestamp": "1111111111.000001", "name": "tada"}),
        )
        .await;
    assert_eq!(r.body["error"], "message_not_found");

    let r = s
        .form(
            "chat.getPermalink",
            &[("channel", &s.feed), ("message_ts", &root)],
        )
        .await;
    assert_eq!(
        r.body["permalink"],
        json!(format!(
            "https://b24-bridge.slack.com/archives/{}/p{}",
            s.feed,
            root.replace('.', "")
        ))
    );
    let r = s
        .form(
            "chat.getPermalink",
            &[("channel", &s.feed), ("message_ts", &reply)],
        )
        .await;
    assert_eq!(
        r.body["permalink"],
        json!(format!(
            "https://b24-bridge.slack.com/archives/{}/p{}?thread_ts={root}&cid={}",
            s.feed,
            reply.replace('.', ""),
            s.feed
        ))
    );
    let r = s
        .form(
            "chat.getPermalink",
            &[("channel", &s.feed), ("message_ts", "1.2")],
        )
        .await;
    assert_eq!(r.body["error"], "message_not_found");
}

#[tokio::test]
async fn rate_limit_429_with_retry_after_and_violations() {
    let s = start_default().await;
    s.fake.inject(Fault::on(
        "chat.postMessage",
        FaultKind::RateLimited { retry_after: 1 },
    ));
    let r = s
        .json("chat.postMessage", json!({"channel": s.feed, "text": "a"}))
        .await;
    let given = Instant::now();
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body, json!({"ok": false, "error": "ratelimited"}));
    assert_eq!(s.fake.rate_limit_violations(), 0);
    // Inside the window: a violation (the request itself is served).
    let r = s
        .json("chat.postMessage", json!({"channel": s.feed, "text": "b"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.fake.rate_limit_violations(), 1);
    // Another channel is not covered by the window.
    let other = s.fake.add_channel("other", false, true);
    s.json("chat.postMessage", json!({"channel": other, "text": "c"}))
        .await;
    assert_eq!(s.fake.rate_limit_violations(), 1);
    // After Retry-After has passed: no violation. (The wait is the behaviour under test.)
    tokio::time::sleep(
        Duration::from_secs(1).saturating_sub(given.elapsed()) + Duration::from_millis(50),
    )
    .await;
    let r = s
        .json("chat.postMessage", json!({"channel": s.feed, "text": "d"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.fake.rate_limit_violations(), 1);
    let rec = s.fake.requests();
    assert_eq!(rec[0].status, 429);
    assert_eq!(rec[0].retry_after, Some(1));
    assert_eq!(s.fake.request_count("chat.postMessage"), 4);
}

#[tokio::test]
async fn post_pacing_per_channel_token_bucket() {
    let s = start(WorkspaceConfig {
        post_rate: Some(PostRate {
            per_sec: 1.0,
            burst: 2,
        }),
        ..WorkspaceConfig::default()
    })
    .await;
    let other = s.fake.add_channel("other", false, true);
    let send = |c: &str, t: &str| s.json("chat.postMessage", json!({"channel": c, "text": t}));
    assert_eq!(send(&s.feed, "1").await.status, 200);
    assert_eq!(send(&s.feed, "2").await.status, 200);
    let r = send(&s.feed, "3").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body["error"], "ratelimited");
    // Separate bucket per channel.
    assert_eq!(send(&other, "x").await.status, 200);
    // Hammering inside the window counts as a violation.
    assert_eq!(send(&s.feed, "4").await.status, 429);
    assert_eq!(s.fake.rate_limit_violations(), 1);
    assert_eq!(s.fake.history(&s.feed).len(), 2);
}

#[tokio::test]
async fn per_method_tier_limits() {
    let s = start(WorkspaceConfig {
        method_rates: vec![("users.info".into(), 60.0, 1)],
        ..WorkspaceConfig::default()
    })
    .await;
    assert_eq!(
        s.form("users.info", &[("user", &s.human)]).await.status,
        200
    );
    let r = s.form("users.info", &[("user", &s.human)]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "1");
}

#[tokio::test]
async fn injected_faults() {
    let s = start_default().await;
    s.fake
        .inject(Fault::on("auth.test", FaultKind::ServerError(503)));
    let r = s.json("auth.test", json!({})).await;
    assert_eq!(r.status, 503);
    assert!(
        r.headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/html"))
    );
    assert!(r.body.as_str().is_some_and(|b| b.contains("<html>")));

    s.fake
        .inject(Fault::on("auth.test", FaultKind::RateLimited200));
    let r = s.json("auth.test", json!({})).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (200, json!({"ok": false, "error": "rate_limited"}))
    );

    s.fake.inject(Fault::on(
        "auth.test",
        FaultKind::ApiError("internal_error".into()),
    ));
    assert_eq!(
        s.json("auth.test", json!({})).await.body["error"],
        "internal_error"
    );

    s.fake
        .inject(Fault::on("auth.test", FaultKind::ConnectionReset));
    let res = s
        .http
        .post(s.url("auth.test"))
        .bearer_auth(s.bot())
        .send()
        .await;
    assert!(res.is_err(), "expected a transport error, got {res:?}");
    assert_eq!(s.fake.requests().last().map(|r| r.status), Some(0));

    s.fake.inject(Fault::on(
        "auth.test",
        FaultKind::Delay(Duration::from_millis(300)),
    ));
    let started = Instant::now();
    let res = s
        .http
        .post(s.url("auth.test"))
        .bearer_auth(s.bot())
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(res.is_err_and(|e| e.is_timeout()));
    assert!(started.elapsed() < Duration::from_millis(300));

    // Channel-scoped faults only hit that channel; `times` is honoured.
    let other = s.fake.add_channel("other", false, true);
    s.fake.inject(
        Fault::on(
            "chat.postMessage",
            FaultKind::ApiError("fatal_error".into()),
        )
        .in_channel(&other)
        .times(2),
    );
    let send = |c: &str| s.json("chat.postMessage", json!({"channel": c, "text": "x"}));
    assert_eq!(send(&s.feed).await.body["ok"], true);
    assert_eq!(send(&other).await.body["error"], "fatal_error");
    assert_eq!(send(&other).await.body["error"], "fatal_error");
    assert_eq!(send(&other).await.body["ok"], true);
}

#[tokio::test]
async fn seeded_fault_ratio_is_reproducible() {
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let s = start_default().await;
        s.fake.set_fault_ratio(
            Some("auth.test"),
            0.5,
            vec![FaultKind::ApiError("internal_error".into())],
        );
        let mut run = Vec::new();
        for _ in 0..20 {
            run.push(s.json("auth.test", json!({})).await.body["ok"] == true);
        }
        outcomes.push(run);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert!(outcomes[0].contains(&true) && outcomes[0].contains(&false));
}

#[tokio::test]
async fn control_api_for_demos() {
    let s = start_default().await;
    let base = s.fake.base_url();
    let r: Value = s
        .http
        .post(format!("{base}/_sandbox/users"))
        .json(&json!({"name": "olga", "real_name": "Olga K"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let olga = r["id"].as_str().unwrap_or_default().to_owned();
    assert!(olga.starts_with('U'));
    let r: Value = s
        .http
        .post(format!("{base}/_sandbox/post"))
        .json(&json!({"user": olga, "channel": s.feed, "text": "hi & bye"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ts = r["ts"].as_str().unwrap_or_default().to_owned();
    let r: Value = s
        .http
        .post(format!("{base}/_sandbox/reply"))
        .json(&json!({"user": olga, "channel": s.feed, "thread_ts": ts, "text": "more"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(r["ok"], true);
    let h: Value = s
        .http
        .get(format!("{base}/_sandbox/history/{}", s.feed))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(h["messages"][0]["text"], "hi &amp; bye");
    assert_eq!(h["messages"][0]["reply_count"], 1);
    let t: Value = s
        .http
        .get(format!("{base}/_sandbox/thread/{}/{ts}", s.feed))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(t["messages"].as_array().map(Vec::len), Some(2));
    // Bad input is a 400, never a crash.
    let r = s
        .http
        .post(format!("{base}/_sandbox/post"))
        .body("{oops")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let r = s
        .http
        .post(format!("{base}/_sandbox/edit"))
        .json(&json!({"user": "U0NOBODY", "channel": s.feed, "ts": ts, "text": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn other_bots_and_booleans() {
    let s = start_default().await;
    let other_bot = s.fake.add_user(livefeed_sandbox::slack::NewUser {
        is_bot: true,
        ..livefeed_sandbox::slack::NewUser::new("jira", "Jira Cloud")
    });
    s.fake.post(&other_bot, &s.feed, "ticket created");
    let e = &s.last_event()["event"];
    assert_eq!(e["user"], json!(other_bot));
    assert!(e["bot_id"].as_str().is_some_and(|b| b != "B0B24BOT1"));
    // Booleans: "1", "true", true are all true; "0"/"false"/false are not.
    let root = s.fake.post(&s.human, &s.feed, "root");
    for (i, v) in [json!("1"), json!("true"), json!(true)]
        .into_iter()
        .enumerate()
    {
        let r = s
            .json(
                "chat.postMessage",
                json!({"channel": s.feed, "text": format!("b{i}"), "thread_ts": root,
                       "reply_broadcast": v}),
            )
            .await;
        assert_eq!(r.body["message"]["subtype"], "thread_broadcast", "{v}");
    }
}

#[tokio::test]
async fn pacing_can_answer_200_rate_limited() {
    let s = start(WorkspaceConfig {
        post_rate: Some(PostRate {
            per_sec: 1.0,
            burst: 1,
        }),
        quirks: Quirks {
            rate_limit_as_200: true,
            ..Quirks::default()
        },
        ..WorkspaceConfig::default()
    })
    .await;
    let send = || s.json("chat.postMessage", json!({"channel": s.feed, "text": "x"}));
    assert_eq!(send().await.body["ok"], true);
    let r = send().await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("retry-after").is_none());
    assert_eq!(r.body, json!({"ok": false, "error": "rate_limited"}));
    // No Retry-After was given, so nothing can violate it.
    send().await;
    assert_eq!(s.fake.rate_limit_violations(), 0);
}

#[tokio::test]
async fn human_composer_formats() {
    let s = start_default().await;
    let ts = s.fake.post(
        &s.human,
        &s.feed,
        "ping @anna in #b24-feed: see [the plan](https://b24.example.com/p/1) :tada: mail ivan@example.com",
    );
    let m = s.fake.message(&s.feed, &ts).expect("stored");
    assert_eq!(
        m.text,
        format!(
            "ping <@{}> in <#{}|b24-feed>: see <https://b24.example.com/p/1|the plan> :tada: \
             mail <mailto:ivan@example.com|ivan@example.com>",
            s.human2, s.feed
        )
    );
    let els = &m.blocks.expect("blocks")[0]["elements"][0]["elements"];
    assert_eq!(els[1], json!({"type": "user", "user_id": s.human2}));
    assert_eq!(els[3], json!({"type": "channel", "channel_id": s.feed}));
    assert_eq!(
        els[5],
        json!({"type": "link", "url": "https://b24.example.com/p/1", "text": "the plan"})
    );
    assert_eq!(
        els[7],
        json!({"type": "emoji", "name": "tada", "unicode": "1f389"})
    );
    // The clock is injectable: later ts values follow it.
    s.fake.advance_clock(Duration::from_secs(86_400));
    let later = s.fake.post(&s.human, &s.feed, "tomorrow");
    let secs = |t: &str| {
        t.split('.')
            .next()
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(secs(&later) >= secs(&ts) + 86_400);
    // `thread()` accepts any member of the thread.
    let r = s.fake.reply(&s.human2, &s.feed, &ts, "ok", false);
    assert_eq!(s.fake.thread(&s.feed, &r).len(), 2);
}

/// The external upload as the official SDK's `files_upload_v2` drives it (form bodies, raw
/// bytes without a token, `files` as a JSON string), shared into a thread; the bot's file is
/// echoed; `url_private` serves the bytes only to the bot token; `files.delete` takes the
/// message with it; a person's file reply is a `file_share` message.
#[tokio::test]
async fn files_upload_into_a_thread_download_and_delete() {
    let s = start_default().await;
    let root = s.fake.post(&s.human, &s.feed, "the post");
    let r = s
        .form(
            "files.getUploadURLExternal",
            &[("filename", "a.txt"), ("length", "0")],
        )
        .await;
    assert_eq!(r.body["error"], "invalid_arguments", "length 0 is refused");
    let r = s
        .form(
            "files.getUploadURLExternal",
            &[("filename", "a.txt"), ("length", "10")],
        )
        .await;
    assert_eq!(r.body["ok"], true, "{}", r.body);
    let id = r.body["file_id"].as_str().unwrap().to_string();
    let upload = r.body["upload_url"].as_str().unwrap().to_string();
    assert!(id.starts_with('F') && upload.starts_with(&s.fake.base_url()));
    let files = json!([{"id": id, "title": "a.txt"}]).to_string();
    let early = s
        .form(
            "files.completeUploadExternal",
            &[("files", &files), ("channel_id", &s.feed)],
        )
        .await;
    assert_eq!(
        early.body["error"], "file_not_found",
        "nothing uploaded yet"
    );
    // No Authorization header: the URL authorises.
    let up = s
        .http
        .post(&upload)
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(up.status().as_u16(), 200);
    assert_eq!(up.text().await.unwrap(), "OK - 10");
    let done = s
        .form(
            "files.completeUploadExternal",
            &[
                ("files", &files),
                ("channel_id", &s.feed),
                ("thread_ts", &root),
            ],
        )
        .await;
    assert_eq!(
        done.body,
        json!({"ok": true, "files": [{"id": id, "title": "a.txt"}]})
    );
    let thread = s.fake.thread(&s.feed, &root);
    assert_eq!(thread.len(), 2);
    let shared = &thread[1];
    assert_eq!(shared.files.len(), 1);
    assert_eq!(
        (shared.files[0].name.as_str(), shared.files[0].size),
        ("a.txt", 10)
    );
    assert!(shared.bot_id.is_some(), "shared as the bot");
    let echo = s.last_event();
    assert_eq!(echo["event"]["files"][0]["id"], json!(id));
    assert!(
        echo["event"]["bot_id"].is_string(),
        "the echo names the bot"
    );

    let url = shared.raw["files"][0]["url_private_download"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = s.http.get(&url).bearer_auth(s.bot()).send().await.unwrap();
    assert_eq!(bytes.bytes().await.unwrap().as_ref(), b"0123456789");
    let page = s.http.get(&url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let r = s.json("files.delete", json!({"file": id})).await;
    assert_eq!(r.body, json!({"ok": true}));
    assert!(
        s.fake.was_deleted(&s.feed, &shared.ts),
        "a file-only message goes with its file"
    );
    let r = s.json("files.delete", json!({"file": id})).await;
    assert_eq!(r.body["error"], "file_not_found");

    let ts = s
        .fake
        .reply_with_file(&s.human2, &s.feed, &root, "my desk", "desk.png", b"PNG");
    let m = s.fake.message(&s.feed, &ts).unwrap();
    assert_eq!(m.subtype.as_deref(), Some("file_share"));
    assert_eq!(m.files[0].name, "desk.png");
    assert_eq!(s.fake.file_content(&m.files[0].id), Some(b"PNG".to_vec()));
    assert_eq!(
        s.form("files.upload", &[]).await.body["error"],
        "method_deprecated"
    );
}
