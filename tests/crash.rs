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
