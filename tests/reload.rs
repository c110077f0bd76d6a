//! Configuration that changes without a restart: a new mapping starts mirroring (from now on,
//! no older posts), a removed one stops, a broken file changes nothing, a credential change is
//! refused with its reason, and SIGHUP reloads the binary.

// matrix-sdk's futures need a deeper trait-resolution limit (shared test support spawns them).
#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use livefeed_sandbox::bitrix::NewPost;
use support::{Setup, WAIT, World};

async fn generation(w: &World, n: u64) -> serde_json::Value {
    w.wait_readyz(&format!("configuration generation {n}"), |_, b| {
        b["config"]["generation"] == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_mapping_mirrors_from_now_on_and_a_removed_one_stops() {
    let mut w = World::new(Setup::default()).await;
    let late = w.slack.add_channel("late-news", false, true);
    w.start().await;
    let ready = generation(&w, 1).await;
    assert!(ready["config"]["loaded_at_ms"].as_i64().unwrap() > 0);
    let before = w.post_all("Before", "published before the mapping existed");
    w.wait_root(&w.news.clone(), before).await;

    // Add a mapping for everyone into #late-news, and drop the developers mapping.
    w.extra_mappings =
        format!("  - name: late\n    audience: [all]\n    slack: {{ channel: {late} }}\n");
    let text = w.config_text("127.0.0.1:0");
    let (head, tail) = text
        .split_once("  - name: developers")
        .expect("developers mapping");
    let without_dev = format!(
        "{head}{}",
        tail.split_once("  - name: late")
            .map(|(_, t)| format!("  - name: late{t}"))
            .unwrap()
    );
    w.write_config(&without_dev);
    generation(&w, 2).await;

    let after = w.post_all("After", "published after the reload");
    w.wait_root(&late, after).await;
    w.wait_root(&w.news.clone(), after).await;
    // An edit of the older post reaches its own room only.
    w.portal
        .update_post(before, Some("Before".into()), "edited after the reload");
    let news = w.news.clone();
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .history(&news)
                .iter()
                .any(|m| m.text.contains("edited after the reload")))
            .await,
        "the edit reached #company-news"
    );
    let group_post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Sprint".into()),
            text: "for developers".into(),
            dest: vec![format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    );
    w.settle().await;
    let ids = |ch: &str| -> Vec<Option<u64>> {
        w.roots(ch)
            .iter()
            .map(|m| {
                m.metadata
                    .as_ref()
                    .and_then(|md| md["event_payload"]["b24_post_id"].as_str()?.parse().ok())
            })
            .collect()
    };
    assert_eq!(
        ids(&late),
        vec![Some(after)],
        "only the post from after the reload"
    );
    assert_eq!(ids(&w.news), vec![Some(before), Some(after)]);
    assert!(
        w.roots(&w.dev).is_empty(),
        "the removed mapping got {group_post}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_mirroring_goes_on() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    generation(&w, 1).await;
    let good = w.config_text("127.0.0.1:0");
    w.write_config(&good.replace(
        "  - name: developers\n",
        "  - name: developers\n    audience: [nobody]\n",
    ));
    let body = w
        .wait_readyz("the reload is refused", |_, b| {
            b["config"]["last_error"].is_string()
        })
        .await;
    let error = body["config"]["last_error"].as_str().unwrap();
    let path = w.config_path().display().to_string();
    assert!(
        error.starts_with(&format!("{path}:")),
        "file:line:column first: {error}"
    );
    assert!(error.contains("audience"), "{error}");
    assert_eq!(body["config"]["generation"], 1);
    let post = w.post_all("Still here", "the old configuration keeps running");
    w.wait_root(&w.news.clone(), post).await;

    // Fixing the file applies it.
    w.write_config(&good.replace("replies: true", "replies: false"));
    let body = generation(&w, 2).await;
    assert!(body["config"]["last_error"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_change_is_refused_with_its_reason() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    generation(&w, 1).await;
    let bot = w.slack.config().bot_token.clone();
    let text = w
        .config_text("127.0.0.1:0")
        .replace(&bot, "xoxb-another-bot-token")
        .replace("interval: 40ms", "interval: 45ms");
    w.write_config(&text);
    let body = w
        .wait_readyz("the reload is refused", |_, b| {
            b["config"]["last_error"].is_string()
        })
        .await;
    assert_eq!(
        body["config"]["last_error"],
        "slack credentials or intake changed; that needs a restart (the running configuration stays until then)"
    );
    assert_eq!(body["config"]["generation"], 1);
    let post = w.post_all("Unchanged", "still mirrored with the old token");
    w.wait_root(&w.news.clone(), post).await;
}

/// SIGHUP reloads even when the file looks unchanged (the binary, as operators run it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let w = World::new(Setup::default()).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    w.write_config(&w.config_text(&listen));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
        .args(["run", "--config"])
        .arg(w.config_path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let readyz = format!("http://{listen}/readyz");
    let generation_is = |n: u64| {
        let readyz = readyz.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if let Ok(r) = reqwest::get(&readyz).await
                    && let Ok(b) = r.json::<serde_json::Value>().await
                    && b["config"]["generation"] == n
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never generation {n}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    generation_is(1).await;
    let pid = child.id().expect("running").to_string();
    let kill = |signal: &str| {
        std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs")
            .success()
    };
    assert!(kill("-HUP"), "SIGHUP sent");
    generation_is(2).await;
    assert!(kill("-TERM"), "SIGTERM sent");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status}");
}
