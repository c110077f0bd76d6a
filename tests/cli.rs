//! The binary's contract: exit codes, config errors with file:line:column, `check` probes.

// matrix-sdk's futures need a deeper trait-resolution limit (shared test support spawns them).
#![recursion_limit = "256"]

mod support;

use std::process::Output;

use support::{Setup, World};
use tokio::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"));
    c.env_remove("LIVEFEED_BRIDGE_CONFIG")
        .env("RUST_LOG", "warn");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn with_config(yaml: &str, args: &[&str]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = bin()
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    (out, path.display().to_string())
}

const VALID: &str = "bitrix24:
  webhook_url: https://acme.bitrix24.com/rest/1/k3yS3cr3t0000001/
slack:
  bot_token: xoxb-1
  app_token: xapp-1
mappings:
  - name: news
    audience: [all]
    slack: { channel: C0123456789 }
";

/// The shipped binary carries no fakes: the demo is the sandbox crate's own binary.
#[tokio::test]
async fn help_lists_the_operator_commands_only() {
    let out = bin().arg("--help").output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a commands section")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .take_while(|w| !w.ends_with(':'))
        .collect();
    assert_eq!(
        commands,
        [
            "run",
            "check",
            "health",
            "dead-letters",
            "bitrix24",
            "version",
            "help"
        ],
        "{help}"
    );
}

#[tokio::test]
async fn a_valid_file_passes_offline_check() {
    let (out, _) = with_config(VALID, &["check", "--offline"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("is valid: 1 mapping(s), 1 room(s)"));
}

#[tokio::test]
async fn config_errors_exit_2_with_file_line_column() {
    let cases = [
        (
            VALID.replace("app_token", "app_tokn"),
            ":5:3: unknown field `app_tokn`",
        ),
        (
            VALID.replace("[all]", "[everyone]"),
            ":8:16: `everyone` is not an audience",
        ),
        (
            VALID.replace(
                "https://acme.bitrix24.com/rest/1/k3yS3cr3t0000001/",
                "${NOT_SET_ANYWHERE_B24}",
            ),
            ":2:16: bitrix24.webhook_url: environment variable NOT_SET_ANYWHERE_B24 is not set",
        ),
        (
            format!(
                "{VALID}  - name: news\n    audience: [all]\n    slack: {{ channel: C0123456789 }}\n"
            ),
            ":10:11: duplicate mapping name `news`",
        ),
        (
            VALID.replace("https://acme", "http://acme"),
            ":2:16: bitrix24.webhook_url: plain http is only allowed for loopback hosts and single-label container names",
        ),
    ];
    for (yaml, want) in cases {
        for cmd in [&["check", "--offline"][..], &["run"][..]] {
            let (out, path) = with_config(&yaml, cmd).await;
            let shown = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {shown}");
            assert!(
                shown.contains(&format!("{path}{want}")),
                "{cmd:?}: expected `{want}` in: {shown}"
            );
            assert!(
                shown.contains("hint:"),
                "every config error says what to write: {shown}"
            );
            assert!(
                !shown.contains("k3yS3cr3t"),
                "the webhook key leaked: {shown}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_file_is_a_config_error() {
    let out = bin()
        .args(["check", "--config", "/nonexistent/bridge.yaml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("/nonexistent/bridge.yaml: cannot read the config file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_every_credential_and_channel() {
    let w = World::new(Setup::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, w.config_text("127.0.0.1:0")).unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for want in [
        "[ok  ] Bitrix24 http://127.0.0.1",
        "webhook user 1 (Bridge Bot), portal admin",
        "[ok  ] Bitrix24 webhook scopes: log, user",
        "[ok  ] Slack: bot",
        "[ok  ] Slack: app-level token opens Socket Mode connections",
        &format!(
            "[ok  ] Slack channel {} (#company-news): bot is a member",
            w.news
        ),
        "all checks passed",
    ] {
        assert!(shown.contains(want), "missing `{want}` in:\n{shown}");
    }

    w.slack.archive_channel(&w.dev);
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "[FAIL] Slack channel {} (#dev) is archived",
            w.dev
        )),
        "{shown}"
    );
    assert!(shown.contains("1 check(s) failed"), "{shown}");
    assert!(!shown.contains(&w.slack.config().bot_token), "token leaked");
}
