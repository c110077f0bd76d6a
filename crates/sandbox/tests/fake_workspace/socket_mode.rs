//! Socket Mode: tickets, hello, envelopes, acks, redelivery, disconnects.

use std::time::Duration;

use futures_util::StreamExt;
use livefeed_sandbox::slack::WorkspaceConfig;
use serde_json::{Value, json};

use crate::common::{GUARD, Sock, Ws, start};

fn cfg() -> WorkspaceConfig {
    WorkspaceConfig {
        post_rate: None,
        ping_interval: None,
        ..WorkspaceConfig::default()
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<usize> = s.split('-').map(str::len).collect();
    parts == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

async fn ticket_url(s: &Ws) -> String {
    let r = s
        .raw(
            s.http
                .post(s.url("apps.connections.open"))
                .bearer_auth(&s.fake.config().app_token),
        )
        .await;
    r.body["url"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn hello_envelope_ack() {
    let s = start(cfg()).await;
    let url = ticket_url(&s).await;
    assert!(
        url.starts_with("ws://127.0.0.1:")
            && url.contains("/link/?ticket=")
            && url.ends_with("&app_id=A0B24APP1"),
        "{url}"
    );
    let mut sock = Sock::connect(&url).await.expect("connect");
    let hello = sock.next_json().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["num_connections"], 1);
    assert_eq!(hello["connection_info"], json!({"app_id": "A0B24APP1"}));
    assert!(hello["debug_info"]["host"].is_string());
    assert!(hello["debug_info"]["approximate_connection_time"].is_u64());
    assert_eq!(s.fake.socket_connections(), 1);

    let ts = s.fake.post(&s.human, &s.feed, "hello bridge");
    let env = sock.next_json().await;
    assert_eq!(env["type"], "events_api");
    assert_eq!(env["accepts_response_payload"], false);
    assert_eq!(env["retry_attempt"], 0);
    assert_eq!(env["retry_reason"], "");
    assert!(env["envelope_id"].as_str().is_some_and(is_uuid), "{env}");
    assert_eq!(env["payload"], s.last_event());
    assert_eq!(env["payload"]["event"]["ts"], json!(ts));
    assert_eq!(s.fake.unacked_envelopes(), 1);
    sock.ack(&env).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.acks() == 1 && f.unacked_envelopes() == 0)
            .await
    );

    // The node SDK acks with an empty payload; that is an ack too.
    s.fake.post(&s.human, &s.feed, "second");
    let env = sock.next_json().await;
    sock.send_json(json!({"envelope_id": env["envelope_id"], "payload": {}}))
        .await;
    assert!(s.fake.wait_until(GUARD, |f| f.acks() == 2).await);

    // The bot's own post echoes over the socket too.
    s.post(&s.feed, "from the bridge").await;
    let env = sock.next_json().await;
    assert_eq!(env["payload"]["event"]["bot_id"], "B0B24BOT1");
}

#[tokio::test]
async fn unacked_envelope_is_redelivered_with_retry_attempt() {
    let s = start(WorkspaceConfig {
        ack_timeout: Duration::from_millis(200),
        ..cfg()
    })
    .await;
    let (mut sock, _) = s.open_socket().await;
    s.fake.post(&s.human, &s.feed, "please ack me");
    let first = sock.next_json().await;
    assert_eq!(first["retry_attempt"], 0);
    // No ack: the same event comes again.
    let second = sock.next_json().await;
    assert_eq!(second["type"], "events_api");
    assert_eq!(second["retry_attempt"], 1);
    assert_eq!(second["retry_reason"], "timeout");
    assert_eq!(second["payload"]["event_id"], first["payload"]["event_id"]);
    assert_ne!(second["envelope_id"], first["envelope_id"]);
    assert_eq!(second["payload"], first["payload"]);
    sock.ack(&second).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.acks() == 1 && f.unacked_envelopes() == 0)
            .await
    );
    // A late ack of the superseded envelope changes nothing.
    sock.ack(&first).await;
    s.fake.post(&s.human, &s.feed, "marker");
    let marker = sock.next_json().await;
    assert_eq!(marker["retry_attempt"], 0);
    assert_eq!(s.fake.acks(), 1);
    assert_eq!(s.fake.envelopes_sent().len(), 3);
}

#[tokio::test]
async fn gives_up_after_configured_retries() {
    let s = start(WorkspaceConfig {
        ack_timeout: Duration::from_millis(50),
        socket_retries: 2,
        ..cfg()
    })
    .await;
    let (mut sock, _) = s.open_socket().await;
    s.fake.post(&s.human, &s.feed, "never acked");
    for attempt in 0..3 {
        assert_eq!(sock.next_json().await["retry_attempt"], attempt);
    }
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.failed_deliveries().len() == 1)
            .await
    );
    assert_eq!(s.fake.unacked_envelopes(), 0);
}

#[tokio::test]
async fn refresh_requested_then_reconnect_loses_nothing() {
    let s = start(WorkspaceConfig {
        refresh_grace: Duration::from_millis(300),
        ..cfg()
    })
    .await;
    let (mut old, _) = s.open_socket().await;
    s.fake.post(&s.human, &s.feed, "before");
    let env = old.next_json().await;
    old.ack(&env).await;
    assert!(s.fake.wait_until(GUARD, |f| f.acks() == 1).await);

    s.fake.disconnect_sockets("refresh_requested");
    let frame = old.next_json().await;
    assert_eq!(frame["type"], "disconnect");
    assert_eq!(frame["reason"], "refresh_requested");
    // Produced while the only socket is going away: held for the next connection.
    s.fake.post(&s.human, &s.feed, "during");
    assert_eq!(s.fake.unacked_envelopes(), 1);

    let (mut new, hello) = s.open_socket().await;
    assert_eq!(hello["type"], "hello");
    let env = new.next_json().await;
    assert_eq!(env["payload"]["event"]["text"], "during");
    new.ack(&env).await;
    // The old socket is closed after the grace period.
    assert_eq!(old.try_next_json().await, None);
    s.fake.post(&s.human, &s.feed, "after");
    let env = new.next_json().await;
    assert_eq!(env["payload"]["event"]["text"], "after");
    new.ack(&env).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.acks() == 3
                && f.unacked_envelopes() == 0
                && f.socket_connections() == 1)
            .await
    );
    assert_eq!(s.fake.events_sent().len(), 3);
}

#[tokio::test]
async fn other_disconnect_reasons() {
    let s = start(WorkspaceConfig {
        warning_grace: Duration::from_millis(100),
        ..cfg()
    })
    .await;
    for reason in ["warning", "link_disabled", "too_many_websockets"] {
        let (mut sock, _) = s.open_socket().await;
        s.fake.disconnect_sockets(reason);
        let frame = sock.next_json().await;
        assert_eq!(frame["type"], "disconnect");
        assert_eq!(frame["reason"], reason);
        assert_eq!(
            sock.try_next_json().await,
            None,
            "{reason}: closed afterwards"
        );
        assert!(
            s.fake
                .wait_until(GUARD, |f| f.socket_connections() == 0)
                .await
        );
    }
}

#[tokio::test]
async fn tickets_are_single_use() {
    let s = start(cfg()).await;
    let url = ticket_url(&s).await;
    let mut first = Sock::connect(&url).await.expect("first use");
    assert_eq!(first.next_json().await["type"], "hello");
    let again = Sock::connect(&url).await;
    assert!(again.is_err(), "a used ticket must not open a socket");
    let forged = url.replace("ticket=", "ticket=x");
    assert!(Sock::connect(&forged).await.is_err());
    assert_eq!(s.fake.socket_connections(), 1);
}

#[tokio::test]
async fn events_while_disconnected_are_queued_and_unacked() {
    let s = start(cfg()).await;
    s.fake.post(&s.human, &s.feed, "one");
    s.fake.post(&s.human, &s.feed, "two");
    assert_eq!(s.fake.unacked_envelopes(), 2);
    let (mut sock, hello) = s.open_socket().await;
    assert_eq!(hello["type"], "hello");
    let a = sock.next_json().await;
    let b = sock.next_json().await;
    assert_eq!(a["payload"]["event"]["text"], "one");
    assert_eq!(b["payload"]["event"]["text"], "two");
    sock.ack(&a).await;
    sock.ack(&b).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.unacked_envelopes() == 0)
            .await
    );
}

#[tokio::test]
async fn envelopes_go_to_one_connection_each() {
    let s = start(cfg()).await;
    let (mut a, _) = s.open_socket().await;
    let (mut b, hello) = s.open_socket().await;
    assert_eq!(hello["num_connections"], 2);
    for i in 0..4 {
        s.fake.post(&s.human, &s.feed, &format!("m{i}"));
    }
    let mut ids = Vec::new();
    for sock in [&mut a, &mut b] {
        for _ in 0..2 {
            let env = sock.next_json().await;
            sock.ack(&env).await;
            ids.push(
                env["payload"]["event_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    assert!(s.fake.wait_until(GUARD, |f| f.acks() == 4).await);
    assert_eq!(s.fake.envelopes_sent().len(), 4);
}

#[tokio::test]
async fn connection_limit() {
    let s = start(WorkspaceConfig {
        max_socket_connections: 2,
        ..cfg()
    })
    .await;
    let _a = s.open_socket().await;
    let _b = s.open_socket().await;
    let url = ticket_url(&s).await;
    let mut c = Sock::connect(&url).await.expect("handshake");
    let frame = c.next_json().await;
    assert_eq!(
        (frame["type"].clone(), frame["reason"].clone()),
        (json!("disconnect"), json!("too_many_websockets"))
    );
    assert_eq!(c.try_next_json().await, None);
    assert_eq!(s.fake.socket_connections(), 2);
}

#[tokio::test]
async fn abrupt_drop_then_redelivery_on_the_next_socket() {
    let s = start(WorkspaceConfig {
        ack_timeout: Duration::from_millis(200),
        ..cfg()
    })
    .await;
    let (mut sock, _) = s.open_socket().await;
    s.fake.post(&s.human, &s.feed, "lost in transit");
    let first = sock.next_json().await;
    s.fake.drop_sockets();
    assert_eq!(sock.try_next_json().await, None);
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.socket_connections() == 0)
            .await
    );
    let (mut next, _) = s.open_socket().await;
    let again = next.next_json().await;
    assert_eq!(again["retry_attempt"], 1);
    assert_eq!(again["payload"]["event_id"], first["payload"]["event_id"]);
    next.ack(&again).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.unacked_envelopes() == 0)
            .await
    );
}

#[tokio::test]
async fn half_open_socket_loses_envelopes_until_redelivered_elsewhere() {
    let s = start(WorkspaceConfig {
        ack_timeout: Duration::from_millis(150),
        ..cfg()
    })
    .await;
    let (_frozen, _) = s.open_socket().await;
    s.fake.freeze_sockets();
    s.fake.post(&s.human, &s.feed, "into the void");
    let (mut live, _) = s.open_socket().await;
    let env = live.next_json().await;
    assert!(
        env["retry_attempt"].as_u64().is_some_and(|n| n >= 1),
        "{env}"
    );
    assert_eq!(env["payload"]["event"]["text"], "into the void");
    live.ack(&env).await;
    assert!(
        s.fake
            .wait_until(GUARD, |f| f.unacked_envelopes() == 0)
            .await
    );
}

#[tokio::test]
async fn server_pings_are_answered() {
    let s = start(WorkspaceConfig {
        ping_interval: Some(Duration::from_millis(50)),
        ..cfg()
    })
    .await;
    let (sock, _) = s.open_socket().await;
    // Reading drives tungstenite's automatic pongs.
    let mut ws = sock.ws;
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    assert!(s.fake.wait_until(GUARD, |f| f.pongs() >= 2).await);
    reader.abort();
}

#[tokio::test]
async fn only_member_channels_produce_events() {
    let s = start(cfg()).await;
    let elsewhere = s.fake.add_channel("random", false, false);
    s.fake.post(&s.human, &elsewhere, "not for the bot");
    assert!(s.fake.events_sent().is_empty());
    s.fake.set_bot_member(&elsewhere, true);
    let evs: Vec<Value> = s.fake.events_sent();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["event"]["type"], "member_joined_channel");
    s.fake.post(&s.human, &elsewhere, "now heard");
    assert_eq!(s.fake.events_sent().len(), 2);
}

#[tokio::test]
async fn client_pings_get_pongs() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = start(cfg()).await;
    let (mut sock, _) = s.open_socket().await;
    sock.ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(GUARD, async {
        while let Some(Ok(msg)) = sock.ws.next().await {
            if let Message::Pong(p) = msg {
                return Some(p);
            }
        }
        None
    })
    .await
    .expect("guard");
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
}

#[tokio::test]
async fn duplicate_delivery_reuses_event_id() {
    let s = start(cfg()).await;
    s.fake.set_duplicate_ratio(1.0);
    let (mut sock, _) = s.open_socket().await;
    s.fake.post(&s.human, &s.feed, "twice");
    let a = sock.next_json().await;
    let b = sock.next_json().await;
    assert_eq!(a["payload"]["event_id"], b["payload"]["event_id"]);
    assert_ne!(a["envelope_id"], b["envelope_id"]);
    assert_eq!(s.fake.events_sent().len(), 1);
}
