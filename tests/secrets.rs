//! Secrets never leak: the real binary runs a workload at TRACE level — with faults (errors
//! quote what failed), Socket Mode drops, SIGKILLs and restarts — and every line it wrote to
//! stderr is searched for the Bitrix24 webhook key and every Slack token. The in-process
//! suites check `/metrics`, `/readyz` and error texts (`operations`, `cli`). With a homeserver,
//! the Matrix side runs at TRACE too and its password and access token are searched for in the
//! log, `/metrics` and `/readyz`.

#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use support::workload::{Options, env_or, run};

/// The offline intake's OAuth secrets at TRACE: the client secret and every access and refresh
/// token the portal handed out (access tokens live 3 s in the workload, so there are many).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_oauth_secret_in_any_log_line_at_trace_level() {
    let seed = env_or("SECRETS_SEED", fastrand::u64(..1_000_000));
    let out = run(Options {
        name: "secrets (offline events)",
        seed,
        posts: 10,
        replies: 6,
        kills: 2,
        crashpoints: false,
        faults: 0.2,
        socket_drops_every: 0,
        outages: 0,
        slack_retention: Duration::from_secs(360),
        slack_429s: 0.0,
        real_limits: true,
        converge: Duration::from_secs(180),
        bridge_env: vec![("RUST_LOG".into(), "trace".into())],
        intake: "offline",
    })
    .await;
    say!("{}", out.summary("secrets (offline events)", seed));
    out.assert_exact(seed);
    assert!(
        out.log.contains("Bitrix24 request") && out.log.contains("event.offline"),
        "the log covers the offline intake"
    );
    let tokens = out.portal.issued_tokens();
    assert!(tokens.len() >= 4, "tokens were refreshed: {}", tokens.len());
    let app = livefeed_sandbox::bitrix::OAuthApp::default();
    for secret in tokens
        .iter()
        .map(String::as_str)
        .chain([app.client_secret.as_str()])
    {
        let hits = leaks(&out.log, secret);
        assert!(
            hits.is_empty(),
            "an OAuth secret leaked into the log:\n{hits:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line_at_trace_level() {
    let seed = env_or("SECRETS_SEED", fastrand::u64(..1_000_000));
    let out = run(Options {
        name: "secrets",
        seed,
        posts: 12,
        replies: 8,
        kills: 2,
        crashpoints: false,
        faults: 0.2,
        socket_drops_every: 6,
        outages: 0,
        slack_retention: Duration::from_secs(360),
        slack_429s: 0.0,
        real_limits: true,
        converge: Duration::from_secs(180),
        bridge_env: vec![("RUST_LOG".into(), "trace".into())],
        intake: "poll",
    })
    .await;
    say!("{}", out.summary("secrets", seed));
    out.assert_exact(seed);

    let webhook = out.portal.webhook_url();
    let key = webhook
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .expect("the webhook URL ends with its key")
        .to_owned();
    let cfg = out.slack.config().clone();
    let lines = out.log.lines().count();
    assert!(
        lines > 1000,
        "TRACE logging was on ({lines} lines is too few)"
    );
    assert!(
        out.log.contains("Bitrix24 request") && out.log.contains("OPERATION_TIME_LIMIT"),
        "the log covers requests and failures"
    );
    for (name, secret) in [
        ("Bitrix24 webhook key", key.as_str()),
        ("Slack bot token", cfg.bot_token.as_str()),
        ("Slack app token", cfg.app_token.as_str()),
        ("Slack signing secret", cfg.signing_secret.as_str()),
    ] {
        let hits = leaks(&out.log, secret);
        assert!(
            hits.is_empty(),
            "the {name} leaked into the log:\n{hits:#?}"
        );
    }
}

/// Lines that hold `secret`, or its last 12 characters alone: a secret cut short by a log
/// formatter is still a leak.
fn leaks<'a>(text: &'a str, secret: &str) -> Vec<&'a str> {
    let tail = &secret[secret.len() - 12..];
    text.lines()
        .filter(|l| l.contains(secret) || l.contains(tail))
        .take(3)
        .collect()
}

/// The Matrix side at TRACE level (matrix-sdk, hyper and reqwest included): the real binary
/// logs in with the bot's password, syncs, sends, receives a thread reply and writes it to the
/// feed. Neither the password nor the access token it obtained may appear in the log, in
/// `/metrics` or in `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matrix_password_or_token_in_logs_metrics_or_readyz() {
    let Some(hs) =
        support::matrix::Homeserver::from_env_or_skip("no_matrix_password_or_token_in_logs")
    else {
        return;
    };
    let w = support::World::with_matrix(support::Setup::default(), hs).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = w.dir.path().join("trace.yaml");
    std::fs::write(&path, w.config_text(&format!("127.0.0.1:{port}"))).unwrap();
    let log_path = w.dir.path().join("trace.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let m = w.m();
    for room in [&m.news_room, &m.dev_room] {
        m.alice
            .wait("the bot joins", |p| p.joined(room, &m.bot))
            .await;
    }
    w.polls(1).await;
    let post = w.post_all("Trace", "every secret stays out of the log");
    m.alice
        .wait("the root arrives", |p| {
            !p.roots(&m.news_room, &m.bot).is_empty()
        })
        .await;
    let root = m.alice.roots(&m.news_room, &m.bot)[0].event_id.clone();
    m.alice
        .thread_reply(&m.news_room, &root, "a reply", "a <b>reply</b>")
        .await;
    assert_eq!(
        w.wait_comments(post, 1).await,
        vec!["[B]Alice Liddell[/B] (Matrix): a [B]reply[/B]".to_string()]
    );
    let http = reqwest::Client::new();
    let mut exposed = String::new();
    for page in ["metrics", "readyz"] {
        let body = http
            .get(format!("http://127.0.0.1:{port}/{page}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        exposed.push_str(&body);
    }
    assert!(exposed.contains("livefeed_bridge_api_calls_total{platform=\"matrix\""));

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status}");

    // The token the password login obtained, as the bridge kept it.
    let store = livefeed_core::store::Store::open(&w.dir.path().join("data")).unwrap();
    let session: serde_json::Value = store.cursor("matrix/session").unwrap().unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines = log.lines().count();
    assert!(lines > 200, "TRACE logging was on ({lines} lines)");
    assert!(
        log.contains("/_matrix/client/"),
        "the log covers Matrix requests"
    );
    say!("matrix secrets: {lines} log lines checked");
    for (name, secret) in [
        ("Matrix password", m.bot_password.as_str()),
        ("Matrix access token", token.as_str()),
    ] {
        assert!(secret.len() >= 16, "{name} is long enough to search for");
        let hits = leaks(&log, secret);
        assert!(
            hits.is_empty(),
            "the {name} leaked into the log:\n{hits:#?}"
        );
        let hits = leaks(&exposed, secret);
        assert!(
            hits.is_empty(),
            "the {name} leaked into /metrics or /readyz:\n{hits:#?}"
        );
    }
}
