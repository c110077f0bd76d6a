//! Crash suite: the real `livefeed-bridge` binary against the sandbox, killed with SIGKILL at
//! moments a seeded generator picks and aborted at crash points (between a send and its
//! record, a journal write and its flush, a journal write and its acknowledgement), restarted
//! every time. Some kills are outages longer than Slack keeps retrying an event, while replies
//! go on being written, edited and deleted: Slack gives those events up and the bridge must
//! catch up by itself. Rate limits are on and some Slack answers are 429s: no call may land
//! inside a window Slack asked to wait out, also across restarts. At the end every live post
//! is exactly one root message in each channel it maps to with its latest text, every deleted
//! post is gone, and every live reply is exactly one comment. Ends with SIGTERM: exit 0 within
//! 10 s.
//!
//! The offline variant runs the same workload with the Bitrix24 intake on the portal's offline
//! event queue through its OAuth app (access tokens live 3 s, so they are refreshed between
//! kills), with crash points between journaling the queue's rows and clearing them.
//!
//! The short run is part of `./scripts/test-all.sh`. The long run, and replaying a seed:
//!
//! ```sh
//! CRASH_POSTS=300 CRASH_REPLIES=200 CRASH_KILLS=25 CRASH_OUTAGES=5 cargo test --test crash -- --nocapture
//! CRASH_SEED=12345 cargo test --test crash -- --nocapture
//! ```

#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use support::workload::{Options, env_or, run};

/// The bridge binary run by hand against a test world, its log in one file across runs.
struct Runs {
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    /// `LIVEFEED_CRASHPOINTS` for a run that should abort.
    crashpoint: &'static str,
}

impl Runs {
    fn new(w: &support::World, crashpoint: &'static str) -> Runs {
        Runs {
            config: w.config_path(),
            log: w.dir.path().join("bridge.log"),
            crashpoint,
        }
    }

    /// Start the bridge; with `crash`, it aborts at the crash point.
    fn bridge(&self, crash: bool) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"));
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            ))
            .kill_on_drop(true);
        if crash {
            cmd.env("LIVEFEED_CRASHPOINTS", self.crashpoint);
        }
        cmd.spawn().unwrap()
    }

    /// Wait until the bridge's log says `text`.
    async fn log_says(&self, text: &str) {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(text)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never said {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_survives_kill_9_at_any_moment() {
    crash_suite("crash suite", "poll", 60, 40, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_survives_kill_9_with_offline_events() {
    crash_suite("crash suite (offline events)", "offline", 30, 20, 5).await;
}

async fn crash_suite(
    name: &'static str,
    intake: &'static str,
    posts: u64,
    replies: u64,
    kills: u64,
) {
    let seed = env_or("CRASH_SEED", fastrand::u64(..1_000_000));
    let o = Options {
        name,
        seed,
        posts: env_or("CRASH_POSTS", posts) as usize,
        replies: env_or("CRASH_REPLIES", replies) as usize,
        kills: env_or("CRASH_KILLS", kills) as usize,
        crashpoints: true,
        faults: 0.0,
        socket_drops_every: 0,
        outages: env_or("CRASH_OUTAGES", 2) as usize,
        slack_retention: Duration::from_millis(800),
        slack_429s: 0.03,
        real_limits: true,
        converge: Duration::from_secs(env_or("CRASH_CONVERGE_SECS", 180)),
        bridge_env: Vec::new(),
        intake,
    };
    say!(
        "{name}: seed {seed} ({} posts, {} replies, {} kills); replay with CRASH_SEED={seed}",
        o.posts,
        o.replies,
        o.kills
    );
    let kills = o.kills;
    let out = run(o).await;
    say!("{}", out.summary(name, seed));
    out.assert_exact(seed);
    assert_eq!(out.stats.kills, kills);
    if out.slack.rate_limit_violations() > 0 {
        let kept = std::env::temp_dir().join(format!("livefeed-crash-violations-{seed}.log"));
        let _ = std::fs::write(&kept, &out.log);
        say!("the bridge's log is kept at {}", kept.display());
    }
    assert_eq!(
        out.slack.rate_limit_violations(),
        0,
        "calls inside a Retry-After window (also one from before a restart): {:?}",
        out.slack.rate_limit_violation_calls()
    );
    assert_eq!(
        out.stats.final_exit,
        Some(0),
        "SIGTERM ends the bridge with exit 0"
    );
    assert!(
        out.stats.stop_took < Duration::from_secs(10),
        "stopped in {:?}",
        out.stats.stop_took
    );
}

/// Killed right after Slack took a file and before the bridge recorded it, the bridge finds
/// the file on restart instead of uploading it again: the thread has each file once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_right_after_an_upload_sends_no_file_twice() {
    use livefeed_sandbox::bitrix::{NewFile, NewPost};
    use support::{Setup, WAIT, World};

    let w = World::new(Setup::default()).await;
    w.write_config(&w.config_text("127.0.0.1:0"));
    // Abort at the first file sent: after Slack has it, before the record.
    let runs = Runs::new(&w, "engine.file_sent:1");

    let mut first = runs.bridge(true);
    runs.log_says("first Bitrix24 poll done").await;
    let file = |name: &str| NewFile {
        name: name.into(),
        bytes: name.repeat(50).into_bytes(),
    };
    let post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Files".into()),
            text: "Two files.".into(),
            dest: vec!["UA".into()],
            important: false,
            files: vec![file("rules.pdf"), file("plan.png")],
        },
    );
    let status = tokio::time::timeout(WAIT, first.wait())
        .await
        .expect("the crash point aborts the bridge")
        .unwrap();
    assert!(status.code().is_none(), "aborted, not exited: {status}");
    assert_eq!(w.slack.ok_count("files.completeUploadExternal"), 1);

    let mut second = runs.bridge(false);
    let news = w.news.clone();
    let root = w.wait_root(&news, post).await;
    let bot = w.slack.config().bot_id.clone();
    let names = |s: &livefeed_sandbox::slack::FakeSlack| -> Vec<String> {
        let mut n: Vec<String> = s
            .thread(&news, &root.ts)
            .into_iter()
            .filter(|m| m.bot_id.as_deref() == Some(bot.as_str()) && m.ts != root.ts)
            .flat_map(|m| m.files.into_iter().map(|f| f.name))
            .collect();
        n.sort();
        n
    };
    let both = w.slack.wait_until(WAIT, |s| names(s).len() >= 2).await;
    assert!(both, "files in the thread: {:?}", names(&w.slack));
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    assert_eq!(
        names(&w.slack),
        vec!["plan.png".to_string(), "rules.pdf".to_string()]
    );
    assert_eq!(
        w.slack.ok_count("files.completeUploadExternal"),
        2,
        "the file sent before the kill was found, not sent again"
    );
}

/// Killed right after a reply's copy reached another channel and before the bridge recorded
/// it, the bridge finds the copy on restart instead of sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_right_after_a_reply_copy_sends_no_copy_twice() {
    use support::{Setup, WAIT, World};

    let mut w = World::new(Setup::default()).await;
    let hands = w.slack.add_channel("all-hands", false, true);
    w.extra_mappings =
        format!("  - name: all-hands\n    audience: [all]\n    slack: {{ channel: {hands} }}\n");
    w.write_config(&w.config_text("127.0.0.1:0"));
    // Abort at the first copy sent: after Slack has it, before the record.
    let runs = Runs::new(&w, "engine.reply_copied:1");

    let mut first = runs.bridge(true);
    runs.log_says("first Bitrix24 poll done").await;
    let post = w.post_all("Offsite", "Where shall we go?");
    let news_root = w.wait_root(&w.news.clone(), post).await;
    let hands_root = w.wait_root(&hands, post).await;
    w.slack
        .reply(&w.anna, &w.news, &news_root.ts, "The lake", false);
    let status = tokio::time::timeout(WAIT, first.wait())
        .await
        .expect("the crash point aborts the bridge")
        .unwrap();
    assert!(status.code().is_none(), "aborted, not exited: {status}");
    let bot = w.slack.config().bot_id.clone();
    let copies = |s: &livefeed_sandbox::slack::FakeSlack| -> Vec<String> {
        s.thread(&hands, &hands_root.ts)
            .into_iter()
            .filter(|m| m.bot_id.as_deref() == Some(bot.as_str()) && m.ts != hands_root.ts)
            .map(|m| m.text)
            .collect()
    };
    assert_eq!(copies(&w.slack), vec!["The lake".to_string()]);

    let mut second = runs.bridge(false);
    runs.log_says("found the copied reply sent before").await;
    w.wait_comments(post, 1).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    assert_eq!(
        copies(&w.slack),
        vec!["The lake".to_string()],
        "the copy sent before the kill was found, not sent again"
    );
}

/// Killed right after the portal took a post written from chat and before the bridge recorded
/// it, the bridge finds the post on restart instead of publishing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_right_after_a_post_from_chat_publishes_it_once() {
    use support::{Setup, WAIT, World};

    let mut w = World::new(Setup::default()).await;
    let board = w.slack.add_channel("board", false, true);
    w.extra_mappings = format!(
        "  - name: board\n    audience: [group:{}]\n    slack: {{ channel: {board} }}\n    posts_from_chat: true\n",
        w.group
    );
    w.write_config(&w.config_text("127.0.0.1:0"));
    // Abort at the first post from chat: after the portal has it, before the record.
    let runs = Runs::new(&w, "engine.posted:1");

    let mut first = runs.bridge(true);
    runs.log_says("first Bitrix24 poll done").await;
    let before = w.portal.posts().len();
    let ts = w.slack.post(&w.anna, &board, "Release tonight");
    let status = tokio::time::timeout(WAIT, first.wait())
        .await
        .expect("the crash point aborts the bridge")
        .unwrap();
    assert!(status.code().is_none(), "aborted, not exited: {status}");
    assert_eq!(w.portal.posts().len(), before + 1);
    let post = w.portal.posts().last().unwrap().id;

    let mut second = runs.bridge(false);
    runs.log_says("found the post written before").await;
    // The post's thread is the message's: a reply there is a comment on it.
    let dev_root = w.wait_root(&w.dev.clone(), post).await;
    w.slack.reply(&w.anna, &board, &ts, "Count me in", false);
    w.wait_comments(post, 1).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    assert_eq!(w.portal.posts().len(), before + 1, "published once");
    assert_eq!(
        w.roots(&board).len(),
        0,
        "no root of the bot's where it was written"
    );
    assert_eq!(w.roots(&w.dev).len(), 1);
    assert_eq!(w.roots(&w.dev)[0].ts, dev_root.ts);
}
