//! Crash suite: the real `livefeed-bridge` binary against the sandbox, killed with SIGKILL at
//! moments a seeded generator picks and aborted at crash points (between a send and its
//! record, a journal write and its flush, a journal write and its acknowledgement), restarted
//! every time. At the end every live post is exactly one root message in each channel it maps
//! to with its latest text, every deleted post is gone, and every live reply is exactly one
//! comment.
//!
//! The short run is part of `./scripts/test-all.sh`. The long run, and replaying a seed:
//!
//! ```sh
//! CRASH_POSTS=300 CRASH_REPLIES=200 CRASH_KILLS=25 cargo test --release --test crash -- --nocapture
//! CRASH_SEED=12345 cargo test --test crash -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use livefeed_bridge::sandbox::bitrix::{FakePortal, NewPost, NewUser, PortalConfig};
use livefeed_bridge::sandbox::slack::{self as sl, FakeSlack, WorkspaceConfig};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

struct Params {
    seed: u64,
    posts: usize,
    replies: usize,
    kills: usize,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn params() -> Params {
    Params {
        seed: env_or("CRASH_SEED", fastrand::u64(..1_000_000)),
        posts: env_or("CRASH_POSTS", 60) as usize,
        replies: env_or("CRASH_REPLIES", 40) as usize,
        kills: env_or("CRASH_KILLS", 8) as usize,
    }
}

/// Print to the terminal even when libtest captures output.
macro_rules! say {
    ($($t:tt)*) => {{ let _ = writeln!(std::io::stderr(), $($t)*); }};
}

#[derive(Default, Debug)]
struct Stats {
    starts: usize,
    kills: usize,
    aborts: usize,
    final_exit: Option<i32>,
    stop_took: Duration,
}

enum Cmd {
    Kill,
    Stop,
}

/// Runs the bridge as a child process; restarts it whenever it dies until told to stop.
fn supervise(
    config: PathBuf,
    logs: PathBuf,
    seed: u64,
) -> (mpsc::UnboundedSender<Cmd>, tokio::task::JoinHandle<Stats>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stats = Stats::default();
        loop {
            stats.starts += 1;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&logs)
                .unwrap();
            let mut child: Child = Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info,livefeed_bridge=debug")
                .env(
                    "LIVEFEED_CRASHPOINTS",
                    "engine.sent:0.02,engine.commented:0.03,engine.recorded:0.01,journal.appended:0.005,slack.journaled:0.01",
                )
                .env("LIVEFEED_CRASH_SEED", (seed + stats.starts as u64).to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            // One child per turn of the outer loop: it ends by a crash point, a kill, or a stop.
            tokio::select! {
                status = child.wait() => {
                    let status = status.unwrap();
                    assert!(
                        status.code().is_none(),
                        "the bridge exited on its own with {status}; see {}",
                        logs.display()
                    );
                    stats.aborts += 1; // a crash point
                }
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Kill) => {
                        child.start_kill().unwrap(); // SIGKILL
                        child.wait().await.unwrap();
                        stats.kills += 1;
                    }
                    Some(Cmd::Stop) | None => {
                        let pid = child.id().unwrap();
                        let started = Instant::now();
                        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
                        let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
                        stats.stop_took = started.elapsed();
                        stats.final_exit = status.ok().and_then(|s| s.ok()).and_then(|s| s.code());
                        return stats;
                    }
                }
            }
        }
    });
    (tx, task)
}

#[derive(Debug, Clone)]
struct Post {
    /// Unique text marker: `post <label> v<version>`.
    label: usize,
    channels: Vec<String>,
    version: u32,
    deleted: bool,
    has_replies: bool,
}

#[derive(Debug, Clone)]
struct Reply {
    post: u64,
    channel: String,
    ts: String,
    text: String,
    deleted: bool,
}

fn write_config(
    dir: &Path,
    portal: &FakePortal,
    slack: &FakeSlack,
    chans: &[(&str, String)],
    store: &Path,
) -> PathBuf {
    let cfg = slack.config();
    let mut yaml = format!(
        "bitrix24:\n  webhook_url: {}\n  poll: {{ interval: 50ms, reconcile_window: 7d, reconcile_interval: 300ms }}\n  rate_limit: {{ per_second: 0 }}\n\
slack:\n  bot_token: {}\n  app_token: {}\n  api_base: {}\n  post_rate: {{ per_second: 0 }}\n\
store: {{ path: {} }}\nhttp: {{ listen: 127.0.0.1:0 }}\nmappings:\n",
        portal.webhook_url(),
        cfg.bot_token,
        cfg.app_token,
        slack.api_base(),
        store.display()
    );
    for (audience, channel) in chans {
        yaml.push_str(&format!(
            "  - name: m-{channel}\n    audience: [{audience}]\n    slack: {{ channel: {channel} }}\n"
        ));
    }
    let path = dir.join("bridge.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn root_of(slack: &FakeSlack, bot: &str, channel: &str, post: u64) -> Vec<sl::MessageView> {
    slack
        .history(channel)
        .into_iter()
        .filter(|m| {
            m.bot_id.as_deref() == Some(bot)
                && m.metadata
                    .as_ref()
                    .and_then(|md| md["event_payload"]["b24_post_id"].as_str())
                    == Some(post.to_string().as_str())
        })
        .collect()
}

/// Everything that is not as it should be, in words (empty = converged).
fn differences(
    portal: &FakePortal,
    slack: &FakeSlack,
    bot: &str,
    all_channels: &[String],
    posts: &BTreeMap<u64, Post>,
    replies: &[Reply],
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, p) in posts {
        for channel in all_channels {
            let roots = root_of(slack, bot, channel, *id);
            let want = usize::from(!p.deleted && p.channels.contains(channel));
            if roots.len() != want {
                out.push(format!(
                    "post {id} in {channel}: {} root message(s), want {want}",
                    roots.len()
                ));
            } else if want == 1
                && !roots[0]
                    .text
                    .contains(&format!("post {} v{}\n", p.label, p.version))
            {
                out.push(format!(
                    "post {id} in {channel}: stale text {:?}",
                    roots[0].text
                ));
            }
        }
    }
    let mut by_post: BTreeMap<u64, Vec<&Reply>> = BTreeMap::new();
    for r in replies {
        by_post.entry(r.post).or_default().push(r);
    }
    for (post, rs) in by_post {
        let comments: Vec<String> = portal.comments(post).into_iter().map(|c| c.text).collect();
        for r in &rs {
            let want = format!("[B]Anna Smirnova[/B] (Slack): {}", r.text);
            let n = comments.iter().filter(|c| **c == want).count();
            let expected = usize::from(!r.deleted);
            if n != expected {
                out.push(format!(
                    "reply {:?} on post {post}: {n} comment(s), want {expected}",
                    r.text
                ));
            }
        }
        let live = rs.iter().filter(|r| !r.deleted).count();
        if comments.len() != live {
            out.push(format!(
                "post {post}: {} comments, want {live}",
                comments.len()
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_survives_kill_9_at_any_moment() {
    let p = params();
    say!(
        "crash suite: seed {} ({} posts, {} replies, ≥{} kills); replay with CRASH_SEED={}",
        p.seed,
        p.posts,
        p.replies,
        p.kills,
        p.seed
    );
    let mut rng = fastrand::Rng::with_seed(p.seed);
    // The fakes get their own threads: the test's bookkeeping must never slow them down.
    let fakes_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (portal, slack) = fakes_rt
        .spawn(async {
            let portal = FakePortal::start(PortalConfig {
                rate_limit: None,
                ..PortalConfig::default()
            })
            .await
            .unwrap();
            let slack = FakeSlack::start(WorkspaceConfig {
                post_rate: None,
                ack_timeout: Duration::from_millis(500),
                ..WorkspaceConfig::default()
            })
            .await
            .unwrap();
            (portal, slack)
        })
        .await
        .unwrap();
    let ivan = portal.add_user(NewUser {
        name: "Ivan".into(),
        last_name: "Petrov".into(),
        ..Default::default()
    });
    let group = portal.add_group("Developers");
    portal.add_group_member(group, 1);
    let dept = portal.add_department("Sales", None);
    portal.set_user_departments(1, vec![dept]);
    let anna = slack.add_user(sl::NewUser {
        display_name: "Anna Smirnova".into(),
        ..sl::NewUser::new("anna", "Anna Smirnova")
    });
    let news = slack.add_channel("news", false, true);
    let dev = slack.add_channel("dev", false, true);
    let sales = slack.add_channel("sales", false, true);
    let chans = [
        ("all", news.clone()),
        (&*format!("group:{group}"), dev.clone()),
        (&*format!("department:{dept}"), sales.clone()),
    ];
    let audiences = [
        (vec!["UA".to_string()], vec![news.clone()]),
        (vec![format!("SG{group}")], vec![dev.clone()]),
        (vec![format!("DR{dept}")], vec![sales.clone()]),
        (
            vec!["UA".to_string(), format!("SG{group}")],
            vec![news.clone(), dev.clone()],
        ),
    ];
    let all_channels = vec![news.clone(), dev.clone(), sales.clone()];
    let bot = slack.config().bot_id.clone();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &portal,
        &slack,
        &chans,
        &dir.path().join("data"),
    );
    let logs = dir.path().join("bridge.log");
    let (ctl, supervisor) = supervise(config, logs.clone(), p.seed);
    // The first poll sets the baseline; posts from then on are mirrored.
    let reads = |p: &FakePortal| p.request_count("batch");
    assert!(
        portal
            .wait_until(Duration::from_secs(60), |p| reads(p) >= 1)
            .await,
        "the bridge never polled"
    );

    let mut posts: BTreeMap<u64, Post> = BTreeMap::new();
    let mut replies: Vec<Reply> = Vec::new();
    let (mut edits, mut deletes, mut reply_deletes, mut kills_sent) = (0, 0, 0, 0);
    let total_steps = p.posts + p.replies + p.posts / 2;
    let kill_every = (total_steps / p.kills.max(1)).max(1);
    let mut step = 0;
    while posts.len() < p.posts || replies.len() < p.replies {
        step += 1;
        let roll = rng.u32(..100);
        let live: Vec<u64> = posts
            .iter()
            .filter(|(_, p)| !p.deleted)
            .map(|(id, _)| *id)
            .collect();
        if posts.len() < p.posts && (roll < 45 || live.is_empty()) {
            let (dest, channels) = audiences[rng.usize(..audiences.len())].clone();
            let label = posts.len();
            let text = format!("post {label} v1");
            let id = portal.create_post(
                ivan,
                NewPost {
                    title: Some("Crash test".into()),
                    text,
                    dest,
                    important: false,
                },
            );
            posts.insert(
                id,
                Post {
                    label,
                    channels,
                    version: 1,
                    deleted: false,
                    has_replies: false,
                },
            );
        } else if roll < 60 && !live.is_empty() {
            let id = live[rng.usize(..live.len())];
            let post = posts.get_mut(&id).unwrap();
            post.version += 1;
            portal.update_post(
                id,
                Some("Crash test".into()),
                &format!("post {} v{}", post.label, post.version),
            );
            edits += 1;
        } else if roll < 67 && !live.is_empty() {
            let id = live[rng.usize(..live.len())];
            if !posts[&id].has_replies {
                portal.delete_post(id);
                posts.get_mut(&id).unwrap().deleted = true;
                deletes += 1;
            }
        } else if roll < 72 && replies.iter().any(|r| !r.deleted) {
            let candidates: Vec<usize> = (0..replies.len())
                .filter(|i| !replies[*i].deleted)
                .collect();
            let r = &mut replies[candidates[rng.usize(..candidates.len())]];
            slack.delete(&anna, &r.channel, &r.ts);
            r.deleted = true;
            reply_deletes += 1;
        } else if replies.len() < p.replies && !live.is_empty() {
            // Reply to a post whose root is already in a channel.
            let id = live[rng.usize(..live.len())];
            let post = posts.get_mut(&id).unwrap();
            let channel = post.channels[rng.usize(..post.channels.len())].clone();
            if let Some(root) = root_of(&slack, &bot, &channel, id).into_iter().next() {
                let text = format!("reply {} on post {id}", replies.len());
                let ts = slack.reply(&anna, &channel, &root.ts, &text, false);
                post.has_replies = true;
                replies.push(Reply {
                    post: id,
                    channel,
                    ts,
                    text,
                    deleted: false,
                });
            }
        }
        if step % kill_every == 0 && kills_sent < p.kills {
            ctl.send(Cmd::Kill).unwrap();
            kills_sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(5..40))).await; // pacing, not synchronisation
    }
    while kills_sent < p.kills {
        ctl.send(Cmd::Kill).unwrap();
        kills_sent += 1;
        tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
    }

    // The final state spans two fakes; it is checked a few times a second (cheaply) until right.
    let deadline = Instant::now() + Duration::from_secs(env_or("CRASH_CONVERGE_SECS", 180));
    let converged = loop {
        if differences(&portal, &slack, &bot, &all_channels, &posts, &replies).is_empty() {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ctl.send(Cmd::Stop).unwrap();
    let stats = supervisor.await.unwrap();
    let diff = differences(&portal, &slack, &bot, &all_channels, &posts, &replies);
    let live_posts = posts.values().filter(|p| !p.deleted).count();
    let live_replies = replies.iter().filter(|r| !r.deleted).count();
    say!(
        "crash suite: seed {} — {} posts ({} live, {} edits, {} deleted), {} replies ({} live, {} deleted), {} SIGKILLs, {} crash-point aborts, {} starts — {}",
        p.seed,
        posts.len(),
        live_posts,
        edits,
        deletes,
        replies.len(),
        live_replies,
        reply_deletes,
        stats.kills,
        stats.aborts,
        stats.starts,
        if diff.is_empty() {
            "exactly right"
        } else {
            "WRONG"
        }
    );
    if !converged || !diff.is_empty() {
        let kept = std::env::temp_dir().join(format!("livefeed-crash-{}.log", p.seed));
        let _ = std::fs::copy(&logs, &kept);
        say!(
            "crash suite: the bridge's log is kept at {}",
            kept.display()
        );
        let log = std::fs::read_to_string(&logs).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!(
            "seed {}: not converged:\n{}\nSlack gave up delivering: {:?}\n--- bridge log tail ---\n{}",
            p.seed,
            diff.join("\n"),
            slack.failed_deliveries(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(stats.kills, p.kills);
    assert_eq!(
        stats.final_exit,
        Some(0),
        "SIGTERM ends the bridge with exit 0"
    );
    assert!(
        stats.stop_took < Duration::from_secs(10),
        "stopped in {:?}",
        stats.stop_took
    );
    // The fakes' runtime may not be dropped inside this one.
    fakes_rt.shutdown_background();
}
