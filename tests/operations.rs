//! Operating the bridge: dead letters (listed and retried through the CLI while the bridge
//! runs), `/readyz` and `/metrics`, refused credentials, and hostile HTTP input. The real bridge
//! runs against the fake portal and workspace; every wait is on a condition.

#![recursion_limit = "256"]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use livefeed_sandbox::bitrix::NewPost;
use livefeed_sandbox::slack::{Fault as SlackFault, FaultKind as SlackFaultKind, SignMode};
use serde_json::Value;
use support::{Setup, World};

fn base(w: &World) -> String {
    format!("http://{}", w.running.as_ref().expect("running").http_addr)
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("the bridge answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("a body"))
}

async fn readyz(w: &World) -> (u16, Value) {
    w.readyz().await
}

async fn wait_readyz(w: &World, what: &str, pred: impl Fn(u16, &Value) -> bool) -> Value {
    w.wait_readyz(what, pred).await
}

/// Run `livefeed-bridge dead-letters …` against the running bridge's store. The bridge holds the
/// store's lock, so the command goes through the loopback admin API on `http.listen`.
fn dead_letters_cli(w: &World, args: &[&str]) -> (bool, String, String) {
    let addr = w.running.as_ref().expect("running").http_addr;
    let path = w.dir.path().join("cli.yaml");
    std::fs::write(&path, w.config_text(&addr.to_string())).expect("config written");
    let out = Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_and_retried_from_the_cli_while_running() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    // The bot is removed from #news: posts for everyone cannot be mirrored there.
    w.slack.set_bot_member(&w.news, false);
    let lost = w.post_all("Office move", "We move on Monday.");
    let group_post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Sprint review".into()),
            text: "Friday 15:00".into(),
            dest: vec![format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    );

    // The other mapping keeps flowing.
    w.wait_root(&w.dev.clone(), group_post).await;
    let ready = wait_readyz(&w, "one dead letter", |_, b| b["dead_letters"] == 1).await;
    assert_eq!(
        ready["ready"], true,
        "a dead letter does not make a side down"
    );
    w.settle().await;
    assert!(w.roots(&w.news).is_empty());

    let (ok, listed, err) = dead_letters_cli(&w, &["list"]);
    assert!(ok, "list failed: {err}");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one dead letter: {listed}");
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(fields.len(), 4, "id, time, action, error: {listed}");
    assert_eq!(fields[2], format!("post {lost} → slack:{}", w.news));
    assert!(fields[3].contains("not_in_channel"), "{listed}");

    let (_, body) = get(&format!("{}/metrics", base(&w))).await;
    assert!(
        body.lines().any(|l| l == "livefeed_bridge_dead_letters 1"),
        "{body}"
    );
    assert!(
        body.contains(r#"livefeed_bridge_effects_total{platform="slack",action="sync_mirror",outcome="dead_letter"} 1"#),
        "{body}"
    );

    // The operator fixes the cause and retries: exactly one root message, nothing left over.
    w.slack.set_bot_member(&w.news, true);
    let id = fields[0];
    let (ok, out, err) = dead_letters_cli(&w, &["retry", id]);
    assert!(ok, "retry failed: {err}");
    assert_eq!(out.trim(), format!("{id}: queued for retry"));
    w.wait_root(&w.news.clone(), lost).await;
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 1);
    assert_eq!(w.roots(&w.dev).len(), 1);
    let (ok, listed, _) = dead_letters_cli(&w, &["list"]);
    assert!(ok);
    assert_eq!(listed.trim(), "no dead letters");
    let (ok, _, err) = dead_letters_cli(&w, &["retry", id]);
    assert!(!ok, "retrying a dead letter twice is an error");
    assert_eq!(err.trim(), format!("{id}: no such dead letter"));

    // Stopped, the same commands work on the store directly.
    w.stop().await;
    let path = w.dir.path().join("cli.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
        .args(["dead-letters", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_channel_is_a_dead_letter_too() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let first = w.post_all("Before", "mirrored");
    w.wait_root(&w.news.clone(), first).await;
    w.slack.archive_channel(&w.news);
    let second = w.post_all("After", "cannot be mirrored");
    let ready = wait_readyz(&w, "one dead letter", |_, b| b["dead_letters"] == 1).await;
    assert_eq!(ready["ready"], true);
    let (ok, listed, _) = dead_letters_cli(&w, &["list"]);
    assert!(ok);
    assert!(
        listed.contains(&format!("post {second} → slack:{}", w.news))
            && listed.contains("is_archived"),
        "{listed}"
    );
    assert_eq!(w.roots(&w.news).len(), 1, "only the post from before");
}

/// `livefeed-bridge health`, the container's health check: ready → 0, not ready → 1 with the
/// answer, stopped → 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_reports_readyz() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let addr = w.running.as_ref().expect("running").http_addr;
    let path = w.dir.path().join("health.yaml");
    std::fs::write(&path, w.config_text(&addr.to_string())).expect("config written");
    let health = || {
        let out = Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
            .args(["health", "--config"])
            .arg(&path)
            .output()
            .expect("the binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = health();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("200 {"), "{out}");
    assert!(out.contains(r#""status":"ready""#), "{out}");

    w.slack.revoke_bot_token();
    w.post_all(
        "Revoked",
        "the bridge finds out when it tries to mirror this",
    );
    wait_readyz(&w, "Slack down", |status, _| status == 503).await;
    let (code, out) = health();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("503 {"), "{out}");
    assert!(out.contains(r#""status":"not_ready""#), "{out}");

    w.stop().await;
    let (code, out) = health();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("unreachable: "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_shows_in_readyz_and_is_not_retried_in_a_hot_loop() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let (status, body) = readyz(&w).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sides"]["slack"]["connected"], true);
    assert_eq!(body["sides"]["bitrix24"]["connected"], true);
    assert!(body["sides"]["bitrix24"]["last_ok_ms"].as_i64().unwrap() > 0);

    w.slack.revoke_bot_token();
    let post = w.post_all("Revoked", "nobody hears this");
    let body = wait_readyz(&w, "Slack down", |status, b| {
        status == 503 && b["sides"]["slack"]["auth_failed"] == true
    })
    .await;
    assert!(
        body["sides"]["slack"]["last_error"]
            .as_str()
            .unwrap()
            .contains("token_revoked"),
        "{body}"
    );
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["sides"]["bitrix24"]["connected"], true,
        "the other side is fine"
    );
    assert_eq!(body["journal_depth"], 1, "the post waits in the journal");

    // Observe the retry rate for a while (an observation window, not synchronisation): an auth
    // failure waits the longest backoff (300 ms in tests, a minute by default) between tries.
    let before = w.slack.request_count("chat.postMessage");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = w.slack.request_count("chat.postMessage") - before;
    assert!(tries <= 12, "{tries} tries in 3 s is a hot loop");
    assert!(w.root_for(&w.news, post).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_events_lag_calls_and_queues() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Metrics", "count me");
    let root = w.wait_root(&w.news.clone(), post).await;
    w.slack.reply(&w.anna, &w.news, &root.ts, "counted", false);
    w.wait_comments(post, 1).await;
    w.settle().await;

    let (status, body) = get(&format!("{}/metrics", base(&w))).await;
    assert_eq!(status, 200);
    for line in [
        r#"livefeed_bridge_events_accepted_total{source="bitrix24",kind="post_created"} 1"#,
        r#"livefeed_bridge_events_accepted_total{source="slack",kind="reply_posted"} 1"#,
        r#"livefeed_bridge_events_applied_total{source="bitrix24",kind="post_created"} 1"#,
        r#"livefeed_bridge_events_applied_total{source="slack",kind="reply_posted"} 1"#,
        r#"livefeed_bridge_lag_seconds_count{platform="slack"} 1"#,
        r#"livefeed_bridge_lag_seconds_count{platform="bitrix24"} 1"#,
        r#"livefeed_bridge_api_calls_total{platform="slack",method="chat.postMessage",outcome="ok"} 1"#,
        r#"livefeed_bridge_api_calls_total{platform="bitrix24",method="log.blogcomment.add",outcome="ok"} 1"#,
        "livefeed_bridge_journal_depth 0",
        "livefeed_bridge_dead_letters 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing `{line}` in:\n{body}"
        );
    }
    for family in ["# TYPE livefeed_bridge_lag_seconds histogram", "# EOF"] {
        assert!(body.contains(family), "missing `{family}` in:\n{body}");
    }
    // One 500 and one 429 from Slack: a retry and a rate-limit wait, then the post.
    w.slack
        .inject(SlackFault::on("chat.postMessage", SlackFaultKind::ServerError(500)).times(1));
    w.slack.inject(
        SlackFault::on(
            "chat.postMessage",
            SlackFaultKind::RateLimited { retry_after: 1 },
        )
        .times(1),
    );
    let second = w.post_all("Metrics", "after a fault");
    w.wait_root(&w.news.clone(), second).await;
    let (_, body) = get(&format!("{}/metrics", base(&w))).await;
    for (name, at_least) in [
        (r#"livefeed_bridge_retries_total{platform="slack"}"#, 1),
        (
            r#"livefeed_bridge_rate_limit_waits_total{platform="slack"}"#,
            1,
        ),
        (
            r#"livefeed_bridge_api_calls_total{platform="slack",method="chat.postMessage",outcome="rate_limited"}"#,
            1,
        ),
        (
            r#"livefeed_bridge_api_calls_total{platform="slack",method="chat.postMessage",outcome="server_error"}"#,
            1,
        ),
    ] {
        let value: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("missing `{name}` in:\n{body}"))
            .trim()
            .parse()
            .unwrap();
        assert!(value >= at_least, "{name} is {value}");
    }
    // Labels are names of platforms, methods and kinds only: no token, key or URL.
    let cfg = w.slack.config().clone();
    for secret in [cfg.bot_token, cfg.app_token, w.portal.webhook_url()] {
        assert!(!body.contains(&secret));
    }
    let (status, body) = get(&format!("{}/healthz", base(&w))).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = get(&format!("{}/nope", base(&w))).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_slack_requests_get_4xx_and_change_nothing() {
    let mut w = World::new(Setup {
        events_api: true,
        ..Setup::default()
    })
    .await;
    w.start().await;
    let post = w.post_all("Hostile", "input");
    let root = w.wait_root(&w.news.clone(), post).await;
    let url = format!("{}/slack/events", base(&w));
    let send = |body: Vec<u8>, mode: SignMode| {
        let (slack, url) = (w.slack.clone(), url.clone());
        async move { slack.send_signed(&url, &body, mode).await.unwrap().status }
    };

    let reply = |text: &str| {
        serde_json::json!({
            "type": "event_callback",
            "event_id": format!("Ev{}", text.len()),
            "event": {
                "type": "message", "channel": w.news, "user": w.anna, "text": text,
                "ts": "1795000000.000100", "thread_ts": root.ts,
            },
        })
        .to_string()
        .into_bytes()
    };
    // Forged, replayed and unsigned requests are refused before parsing.
    assert_eq!(send(reply("forged"), SignMode::BadSignature).await, 401);
    assert_eq!(send(reply("replayed"), SignMode::StaleTimestamp).await, 401);
    let unsigned = reqwest::Client::new()
        .post(&url)
        .body(reply("unsigned"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    // Signed but malformed.
    assert_eq!(send(b"{not json".to_vec(), SignMode::Valid).await, 400);
    assert_eq!(
        send(vec![0xff, 0xfe, b'{', b'}'], SignMode::Valid).await,
        400
    );
    assert_eq!(
        send(
            br#"{"type":"event_callback","event":"text"}"#.to_vec(),
            SignMode::Valid
        )
        .await,
        400
    );
    assert_eq!(send(vec![b' '; 2 << 20], SignMode::Valid).await, 413);
    // Unknown types are acknowledged (Slack would retry otherwise) and ignored.
    assert_eq!(
        send(br#"{"type":"no_such_thing"}"#.to_vec(), SignMode::Valid).await,
        200
    );
    assert_eq!(
        send(
            br#"{"type":"event_callback","event_id":"EvX","event":{"type":"no_such_event"}}"#
                .to_vec(),
            SignMode::Valid
        )
        .await,
        200
    );
    w.settle().await;
    assert!(w.comments(post).is_empty(), "nothing reached the feed");
    let log_checked = w.running.as_ref().unwrap().journal.store().journal_depth();
    assert_eq!(log_checked, 0);
}

/// SIGINT and SIGTERM: intake stops, in-flight work finishes or stays journaled, the store is
/// flushed, exit 0 within 10 s; the next start repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_and_sigterm_stop_cleanly_and_lose_nothing() {
    let mut w = World::new(Setup::default()).await;
    let path = w.dir.path().join("child.yaml");
    std::fs::write(&path, w.config_text("127.0.0.1:0")).unwrap();
    let mut posts = Vec::new();
    for signal in ["-INT", "-TERM"] {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
            .args(["run", "--config"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        w.polls(1).await;
        let post = w.post_all("Signals", signal);
        posts.push(post);
        w.wait_root(&w.news.clone(), post).await;
        // A second post is usually still in flight when the signal lands.
        posts.push(w.post_all("Signals", &format!("{signal} in flight")));
        w.polls(1).await;
        let pid = child.id().unwrap().to_string();
        let sent = Instant::now();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 10 s of {signal}"))
            .unwrap();
        let took = sent.elapsed();
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
            .await
            .unwrap();
        assert!(status.success(), "{signal}: {status}\n{stderr}");
        assert!(stderr.contains("stopped"), "{signal}: {stderr}");
        say!("{signal}: exit 0 after {took:?}");
    }
    // Whatever was in flight is mirrored after a restart, once.
    w.start().await;
    for post in &posts {
        w.wait_root(&w.news.clone(), *post).await;
    }
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), posts.len());
}
