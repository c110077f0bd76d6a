//! A seeded workload against the real `livefeed-bridge` binary (a child process) and the
//! sandbox: posts for several audiences with edits, importance marked and taken off, and
//! deletions, thread replies and reply deletions, optionally with SIGKILLs, crash points and
//! injected faults. It ends by checking the end state exactly: every live post one root message
//! per channel it maps to, with its latest text, marked and pinned exactly while important; every
//! deleted post gone; every live reply one comment; nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use livefeed_sandbox::bitrix::{
    FakePortal, FaultKind as B24Fault, LeakyBucket, NewFile, NewPost, NewUser, OAuthApp,
    PortalConfig,
};
use livefeed_sandbox::slack::{
    self as sl, FakeSlack, FaultKind as SlackFault, PostRate, WorkspaceConfig,
};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Print to the terminal even when libtest captures output.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stderr(), $($t)*); }};
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
pub struct Options {
    pub name: &'static str,
    pub seed: u64,
    pub posts: usize,
    pub replies: usize,
    /// SIGKILLs spread over the workload.
    pub kills: usize,
    /// Let the bridge abort itself at crash points.
    pub crashpoints: bool,
    /// Share of requests to every fake endpoint that fail (0.0 = none).
    pub faults: f64,
    /// Drop the Socket Mode connections every this many steps (0 = never).
    pub socket_drops_every: usize,
    /// Kills after which the bridge stays down longer than Slack keeps retrying an event
    /// (`slack_retention`), while the workload goes on: Slack gives those events up.
    pub outages: usize,
    /// How long the fake Slack keeps an event nobody acknowledges.
    pub slack_retention: Duration,
    /// Share of Slack requests answered 429 with a Retry-After (0.0 = none).
    pub slack_429s: f64,
    /// Keep the platforms' rate limits (and the bridge's pacing) on.
    pub real_limits: bool,
    pub converge: Duration,
    /// Extra environment for the bridge process (e.g. RUST_LOG).
    pub bridge_env: Vec<(String, String)>,
    /// `bitrix24.intake`: `poll`, or `offline` (the portal's event queue, through its OAuth
    /// app, with short-lived access tokens so refreshes happen between kills).
    pub intake: &'static str,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub starts: usize,
    pub kills: usize,
    /// Kills followed by an outage longer than Slack's retries.
    pub outages: usize,
    pub aborts: usize,
    pub final_exit: Option<i32>,
    pub stop_took: Duration,
}

pub struct Outcome {
    pub stats: Stats,
    pub posts: usize,
    pub live_posts: usize,
    pub edits: usize,
    pub deletes: usize,
    pub replies: usize,
    pub live_replies: usize,
    pub reply_deletes: usize,
    /// What is not as it should be (empty = exactly right).
    pub differences: Vec<String>,
    pub portal: FakePortal,
    pub slack: FakeSlack,
    pub log: String,
    pub config_text: String,
    /// Keeps the fakes running while the caller inspects them.
    pub fakes_rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // The fakes' runtime may not be dropped inside the test's runtime.
        if let Some(rt) = self.fakes_rt.take() {
            rt.shutdown_background();
        }
    }
}

enum Cmd {
    Kill,
    /// Kill, and stay down this long before the restart.
    Outage(Duration),
    Stop,
}

/// Runs the bridge as a child process; restarts it whenever it dies until told to stop.
fn supervise(
    config: PathBuf,
    logs: PathBuf,
    seed: u64,
    crashpoints: bool,
    env: Vec<(String, String)>,
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
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"));
            cmd.args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info,livefeed_bridge=debug")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true);
            if crashpoints {
                cmd.env(
                    "LIVEFEED_CRASHPOINTS",
                    // Not `bitrix24.oauth.answered`: the portal has already spent the old refresh
                    // token then, so no client can survive a crash there (see src/bitrix/oauth.rs).
                    "engine.sent:0.02,engine.commented:0.03,engine.file_sent:0.05,engine.reply_copied:0.05,engine.recorded:0.01,journal.appended:0.005,slack.journaled:0.01,bitrix24.offline.journaled:0.05,bitrix24.offline.cleared:0.02,bitrix24.oauth.stored:0.05",
                )
                .env("LIVEFEED_CRASH_SEED", (seed + stats.starts as u64).to_string());
            }
            for (k, v) in &env {
                cmd.env(k, v);
            }
            let mut child: Child = cmd.spawn().unwrap();
            // One child per turn of the loop: it ends by a crash point, a kill, or a stop.
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
                    Some(Cmd::Outage(down)) => {
                        child.start_kill().unwrap(); // SIGKILL, then a long outage
                        child.wait().await.unwrap();
                        stats.kills += 1;
                        stats.outages += 1;
                        tokio::time::sleep(down).await; // the outage itself
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
    /// Marked important: its roots are pinned and marked.
    important: bool,
    /// The names of its files (each file's content is [`file_bytes`] of its name).
    files: Vec<String>,
}

#[derive(Debug, Clone)]
struct Reply {
    post: u64,
    channel: String,
    ts: String,
    text: String,
    deleted: bool,
    /// The file it carries, by name.
    file: Option<String>,
}

/// The content of a workload file: its name, repeated (distinct per file, a few hundred bytes).
fn file_bytes(name: &str) -> Vec<u8> {
    name.repeat(40).into_bytes()
}

/// The names of the files the bot put into the thread of `root` in `channel`.
fn thread_files(slack: &FakeSlack, bot: &str, channel: &str, root: &str) -> Vec<String> {
    let mut names: Vec<String> = slack
        .thread(channel, root)
        .into_iter()
        .filter(|m| m.ts != root && m.bot_id.as_deref() == Some(bot))
        .flat_map(|m| m.files.into_iter().map(|f| f.name))
        .collect();
    names.sort();
    names
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
            } else if want == 1
                && thread_files(slack, bot, channel, &roots[0].ts) != sorted(&p.files)
            {
                out.push(format!(
                    "post {id} in {channel}: files {:?} in the thread, want {:?}",
                    thread_files(slack, bot, channel, &roots[0].ts),
                    sorted(&p.files)
                ));
            } else if want == 1 {
                let marked = roots[0].text.starts_with("❗");
                let pinned = roots[0].raw.get("pinned_to").is_some();
                if marked != p.important || pinned != p.important {
                    out.push(format!(
                        "post {id} in {channel}: important {}, but marked {marked} and pinned {pinned}",
                        p.important
                    ));
                }
            }
        }
    }
    let mut by_post: BTreeMap<u64, Vec<&Reply>> = BTreeMap::new();
    for r in replies {
        by_post.entry(r.post).or_default().push(r);
    }
    for (post, rs) in by_post {
        let views = portal.comments(post);
        let comments: Vec<String> = views.iter().map(|c| c.text.clone()).collect();
        for r in &rs {
            let want = format!("[B]Anna Smirnova[/B] (Slack): {}", r.text);
            let n = comments.iter().filter(|c| **c == want).count();
            let expected = usize::from(!r.deleted);
            if n != expected {
                out.push(format!(
                    "reply {:?} on post {post}: {n} comment(s), want {expected}",
                    r.text
                ));
            } else if let (1, Some(name)) = (n, &r.file) {
                let comment = views.iter().find(|c| c.text == want).expect("counted");
                let files = portal.comment_files(comment.comment_id);
                if files != vec![(name.clone(), file_bytes(name))] {
                    let names: Vec<&String> = files.iter().map(|(n, _)| n).collect();
                    out.push(format!(
                        "reply {:?} on post {post}: comment files {names:?}, want [{name:?}]",
                        r.text
                    ));
                }
            }
        }
        // A reply in one channel of a post in two is copied once into the other.
        for r in &rs {
            let Some(p) = posts.get(&post).filter(|p| !p.deleted) else {
                continue;
            };
            for channel in p.channels.iter().filter(|c| **c != r.channel) {
                let Some(root) = root_of(slack, bot, channel, post).into_iter().next() else {
                    continue;
                };
                let n = slack
                    .thread(channel, &root.ts)
                    .iter()
                    .filter(|m| {
                        m.bot_id.as_deref() == Some(bot)
                            && m.metadata.as_ref().map(|md| md["event_type"].clone())
                                == Some(serde_json::json!("b24_reply_copy"))
                            && (m.text == r.text || m.text.starts_with(&format!("{}\n", r.text)))
                    })
                    .count();
                let expected = usize::from(!r.deleted);
                if n != expected {
                    out.push(format!(
                        "reply {:?} on post {post}: {n} copies in {channel}, want {expected}",
                        r.text
                    ));
                }
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

fn sorted(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names
}

fn config_text(
    portal: &FakePortal,
    slack: &FakeSlack,
    chans: &[(String, String)],
    store: &Path,
    limits: bool,
    intake: &str,
) -> String {
    let cfg = slack.config();
    let (b24_rate, slack_rate) = if limits {
        // Under the fakes' limits below: the bridge must pace itself, not learn from errors.
        (
            "{ per_second: 15, burst: 30 }",
            "{ per_second: 4, burst: 4 }",
        )
    } else {
        ("{ per_second: 0 }", "{ per_second: 0 }")
    };
    let bitrix = if intake == "offline" {
        let app = livefeed_sandbox::bitrix::OAuthApp::default();
        let url = portal.portal_url();
        // The poll is the safety net here, compressed in time like everything in this suite.
        format!(
            "bitrix24:\n  intake: offline\n  oauth:\n    portal: {url}\n    server: {url}/\n    client_id: {}\n    client_secret: {}\n    refresh_token: {}\n  offline: {{ interval: 50ms, idle_interval: 200ms }}\n  poll: {{ interval: 2s, reconcile_window: 7d, reconcile_interval: 1s, max_deletions_per_round: 1000 }}\n  rate_limit: {b24_rate}\n",
            app.client_id,
            app.client_secret,
            portal.issue_refresh_token(),
        )
    } else {
        format!(
            "bitrix24:\n  webhook_url: {}\n  poll: {{ interval: 50ms, reconcile_window: 7d, reconcile_interval: 300ms, max_deletions_per_round: 1000 }}\n  rate_limit: {b24_rate}\n",
            portal.webhook_url()
        )
    };
    let mut yaml = format!(
        "{bitrix}slack:\n  bot_token: {}\n  app_token: {}\n  api_base: {}\n  post_rate: {slack_rate}\n  catch_up_rate: {{ per_second: 0 }}\n\
store: {{ path: {} }}\nhttp: {{ listen: 127.0.0.1:0 }}\nmappings:\n",
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
    yaml
}

pub async fn run(o: Options) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(o.seed);
    // The fakes get their own threads: the test's bookkeeping must never slow them down.
    let fakes_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limits = o.real_limits;
    let seed = o.seed;
    let o_retention = o.slack_retention;
    let (portal, slack) = fakes_rt
        .spawn(async move {
            let portal = FakePortal::start(PortalConfig {
                rate_limit: limits.then_some(LeakyBucket {
                    burst: 50.0,
                    drain_per_sec: 20.0,
                }),
                seed,
                oauth: OAuthApp {
                    access_ttl: Duration::from_secs(3),
                    ..OAuthApp::default()
                },
                ..PortalConfig::default()
            })
            .await
            .unwrap();
            let slack = FakeSlack::start(WorkspaceConfig {
                post_rate: limits.then_some(PostRate {
                    per_sec: 5.0,
                    burst: 5,
                }),
                ack_timeout: Duration::from_millis(500),
                undelivered_retention: o_retention,
                seed,
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
    let chans = vec![
        ("all".to_string(), news.clone()),
        (format!("group:{group}"), dev.clone()),
        (format!("department:{dept}"), sales.clone()),
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
    let text = config_text(
        &portal,
        &slack,
        &chans,
        &dir.path().join("data"),
        o.real_limits,
        o.intake,
    );
    let config = dir.path().join("bridge.yaml");
    std::fs::write(&config, &text).unwrap();
    let logs = dir.path().join("bridge.log");
    let (ctl, supervisor) = supervise(
        config,
        logs.clone(),
        o.seed,
        o.crashpoints,
        o.bridge_env.clone(),
    );
    // The first poll sets the baseline; posts from then on are mirrored. A kill can land
    // between its read and its record, so wait for the record itself. Faults start after.
    let baselined = async {
        loop {
            let log = std::fs::read_to_string(&logs).unwrap_or_default();
            if log.contains("first Bitrix24 poll done") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(60), baselined)
            .await
            .is_ok(),
        "the bridge never finished its first poll"
    );
    if o.faults > 0.0 {
        portal.set_fault_ratio(
            None,
            o.faults,
            vec![
                B24Fault::ServerError(500),
                B24Fault::ServerError(502),
                B24Fault::ServerError(503),
                B24Fault::QueryLimitExceeded,
                B24Fault::OperationTimeLimit,
                B24Fault::ConnectionReset,
                B24Fault::Delay(Duration::from_millis(300)),
            ],
        );
        slack.set_fault_ratio(
            None,
            o.faults,
            vec![
                SlackFault::RateLimited { retry_after: 1 },
                SlackFault::ServerError(500),
                SlackFault::ServerError(502),
                SlackFault::ServerError(503),
                SlackFault::ConnectionReset,
                SlackFault::Delay(Duration::from_millis(300)),
            ],
        );
    }

    if o.slack_429s > 0.0 {
        slack.set_fault_ratio(
            None,
            o.slack_429s,
            vec![SlackFault::RateLimited { retry_after: 1 }],
        );
    }

    let mut posts: BTreeMap<u64, Post> = BTreeMap::new();
    let mut replies: Vec<Reply> = Vec::new();
    let (mut edits, mut deletes, mut reply_deletes, mut kills_sent) = (0, 0, 0, 0);
    // Files added and importance toggled later, bounded like edits: while the workload waits
    // for roots it keeps rolling, and unbounded they would pile up on a slow run.
    let (mut files_added, mut toggles) = (0, 0);
    let total_steps = o.posts + o.replies + o.posts / 2;
    let kill_every = (total_steps / o.kills.max(1)).max(1);
    let mut step = 0;
    // Replies need roots, so a bridge that stops mirroring would stall the workload: give up
    // at the deadline and report it as a difference.
    let workload_deadline = Instant::now() + o.converge;
    let mut stalled = None;
    while posts.len() < o.posts || replies.len() < o.replies {
        if Instant::now() > workload_deadline {
            stalled = Some(format!(
                "workload stalled: {} of {} posts and {} of {} replies made (roots never appeared)",
                posts.len(),
                o.posts,
                replies.len(),
                o.replies
            ));
            break;
        }
        let steps_before =
            edits + deletes + reply_deletes + files_added + toggles + posts.len() + replies.len();
        let roll = rng.u32(..100);
        let live: Vec<u64> = posts
            .iter()
            .filter(|(_, p)| !p.deleted)
            .map(|(id, _)| *id)
            .collect();
        if posts.len() < o.posts && (roll < 45 || live.is_empty()) {
            let (dest, channels) = audiences[rng.usize(..audiences.len())].clone();
            let label = posts.len();
            // Every fourth post comes with a file.
            let files: Vec<String> = if rng.u32(..4) == 0 {
                vec![format!("post-{label}.pdf")]
            } else {
                Vec::new()
            };
            let id = portal.create_post(
                ivan,
                NewPost {
                    title: Some("Workload".into()),
                    text: format!("post {label} v1"),
                    dest,
                    important: false,
                    files: files
                        .iter()
                        .map(|name| NewFile {
                            name: name.clone(),
                            bytes: file_bytes(name),
                        })
                        .collect(),
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
                    important: false,
                    files,
                },
            );
        } else if roll < 49 && !live.is_empty() && files_added < posts.len() / 4 + 1 {
            // The author attaches another file to a post.
            let id = live[rng.usize(..live.len())];
            let post = posts.get_mut(&id).unwrap();
            let name = format!("post-{}-{}.png", post.label, post.files.len());
            portal.add_post_file(id, &name, &file_bytes(&name));
            post.files.push(name);
            files_added += 1;
        } else if roll < 52 && !live.is_empty() && toggles < posts.len() / 4 + 1 {
            // The author marks the post important, or takes the mark off.
            let id = live[rng.usize(..live.len())];
            let post = posts.get_mut(&id).unwrap();
            post.important = !post.important;
            portal.set_important(id, post.important);
            toggles += 1;
        } else if roll < 60 && !live.is_empty() && edits < 2 * posts.len() {
            let id = live[rng.usize(..live.len())];
            let post = posts.get_mut(&id).unwrap();
            post.version += 1;
            portal.update_post(
                id,
                Some("Workload".into()),
                &format!("post {} v{}", post.label, post.version),
            );
            edits += 1;
        } else if roll < 67 && live.len() > 3 && deletes < posts.len() / 8 + 1 {
            // Some posts always stay, so there is something left to reply to.
            let id = live[rng.usize(..live.len())];
            if !posts[&id].has_replies {
                portal.delete_post(id);
                posts.get_mut(&id).unwrap().deleted = true;
                deletes += 1;
            }
        } else if roll < 72
            && reply_deletes < replies.len() / 4 + 1
            && replies.iter().any(|r| !r.deleted)
        {
            let candidates: Vec<usize> = (0..replies.len())
                .filter(|i| !replies[*i].deleted)
                .collect();
            let r = &mut replies[candidates[rng.usize(..candidates.len())]];
            slack.delete(&anna, &r.channel, &r.ts);
            r.deleted = true;
            reply_deletes += 1;
        } else if replies.len() < o.replies && !live.is_empty() {
            // Reply to a post whose root is already in a channel.
            let id = live[rng.usize(..live.len())];
            let post = posts.get_mut(&id).unwrap();
            let channel = post.channels[rng.usize(..post.channels.len())].clone();
            if let Some(root) = root_of(&slack, &bot, &channel, id).into_iter().next() {
                let text = format!("reply {} on post {id}", replies.len());
                // Every fifth reply carries a file.
                let file = (rng.u32(..5) == 0).then(|| format!("reply-{}.png", replies.len()));
                let ts = match &file {
                    Some(name) => slack.reply_with_file(
                        &anna,
                        &channel,
                        &root.ts,
                        &text,
                        name,
                        &file_bytes(name),
                    ),
                    None => slack.reply(&anna, &channel, &root.ts, &text, false),
                };
                post.has_replies = true;
                replies.push(Reply {
                    post: id,
                    channel,
                    ts,
                    text,
                    deleted: false,
                    file,
                });
            }
        }
        if edits + deletes + reply_deletes + files_added + toggles + posts.len() + replies.len()
            == steps_before
        {
            // Nothing to do yet (no root to reply to): wait a moment without counting a step.
            tokio::time::sleep(Duration::from_millis(50)).await; // pacing, not synchronisation
            continue;
        }
        step += 1;
        if o.kills > 0 && step % kill_every == 0 && kills_sent < o.kills {
            // Every few kills the bridge stays down past Slack's retries.
            let outage_every = (o.kills / o.outages.max(1)).max(1);
            let long = o.outages > 0 && kills_sent % outage_every == outage_every / 2;
            if long {
                let down = o.slack_retention * 2 + Duration::from_millis(rng.u64(0..500));
                ctl.send(Cmd::Outage(down)).unwrap();
            } else {
                ctl.send(Cmd::Kill).unwrap();
            }
            kills_sent += 1;
        }
        if o.socket_drops_every > 0 && step % o.socket_drops_every == 0 {
            slack.drop_sockets();
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(5..40))).await; // pacing, not synchronisation
    }
    while kills_sent < o.kills {
        ctl.send(Cmd::Kill).unwrap();
        kills_sent += 1;
        tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
    }

    // The final state spans two fakes; it is checked a few times a second (cheaply) until right.
    let deadline = Instant::now() + o.converge;
    loop {
        if differences(&portal, &slack, &bot, &all_channels, &posts, &replies).is_empty()
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ctl.send(Cmd::Stop).unwrap();
    let stats = supervisor.await.unwrap();
    let mut diff = differences(&portal, &slack, &bot, &all_channels, &posts, &replies);
    diff.extend(stalled);
    let log = std::fs::read_to_string(&logs).unwrap_or_default();
    if !diff.is_empty() {
        let kept = std::env::temp_dir().join(format!("livefeed-{}-{}.log", o.name, o.seed));
        let _ = std::fs::write(&kept, &log);
        let _ = writeln!(
            std::io::stderr(),
            "{}: the bridge's log is kept at {}",
            o.name,
            kept.display()
        );
    }
    Outcome {
        stats,
        posts: posts.len(),
        live_posts: posts.values().filter(|p| !p.deleted).count(),
        edits,
        deletes,
        replies: replies.len(),
        live_replies: replies.iter().filter(|r| !r.deleted).count(),
        reply_deletes,
        differences: diff,
        portal,
        slack,
        log,
        config_text: text,
        fakes_rt: Some(fakes_rt),
    }
}

impl Outcome {
    pub fn summary(&self, name: &str, seed: u64) -> String {
        format!(
            "{name}: seed {seed} — {} posts ({} live, {} edits, {} deleted), {} replies ({} live, {} deleted), {} SIGKILLs ({} with an outage longer than Slack's retries; Slack gave up {} events), {} crash-point aborts, {} starts — {}",
            self.posts,
            self.live_posts,
            self.edits,
            self.deletes,
            self.replies,
            self.live_replies,
            self.reply_deletes,
            self.stats.kills,
            self.stats.outages,
            self.slack.failed_deliveries().len(),
            self.stats.aborts,
            self.stats.starts,
            if self.differences.is_empty() {
                "exactly right"
            } else {
                "WRONG"
            }
        )
    }

    /// Panic with the differences, what Slack gave up on, and the end of the bridge's log.
    pub fn assert_exact(&self, seed: u64) {
        if self.differences.is_empty() {
            return;
        }
        let tail: Vec<&str> = self.log.lines().rev().take(60).collect();
        panic!(
            "seed {seed}: not converged:\n{}\nSlack gave up delivering: {:?}\n--- bridge log tail ---\n{}",
            self.differences.join("\n"),
            self.slack.failed_deliveries(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}
