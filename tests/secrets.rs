//! Secrets never leak: the real binary runs a workload at TRACE level — with faults (errors
//! quote what failed), Socket Mode drops, SIGKILLs and restarts — and every line it wrote to
//! stderr is searched for the Bitrix24 webhook key and every Slack token. The in-process
//! suites check `/metrics`, `/readyz` and error texts (`operations`, `cli`).

#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use support::workload::{Options, env_or, run};

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
        real_limits: true,
        converge: Duration::from_secs(180),
        bridge_env: vec![("RUST_LOG".into(), "trace".into())],
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
        // Also the tail alone: a secret cut short by a log formatter is still a leak.
        let tail = &secret[secret.len() - 12..];
        let hits: Vec<&str> = out
            .log
            .lines()
            .filter(|l| l.contains(secret) || l.contains(tail))
            .take(3)
            .collect();
        assert!(
            hits.is_empty(),
            "the {name} leaked into the log:\n{hits:#?}"
        );
    }
}
