//! Catch-up: a backlog of posts written while the bridge was down, mirrored into 4 Slack
//! channels after a restart, then two thread replies per post coming back as feed comments.
//!
//! The platforms' rate limits bind here, so they are kept, but sped up `scale` times on both
//! sides (the fakes' limits and the bridge's configured pacing) so a run takes minutes. Every
//! figure is also given as a share of the ceiling that binds it, which does not depend on the
//! scale or the machine: 4 channels × Slack's 1 message/s for root messages, Bitrix24's
//! 2 requests/s for comments. Comments that wait for the portal's limit leave together in
//! one `batch` (up to 50 to a request), so they can pass the one-comment-per-request
//! ceiling; what they must not pass is the request budget.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::matrix::{self as mx, Homeserver};
use super::process::{Bridge, free_port, poll_until, temp_dir};
use super::{Fakes, Report};
use crate::bitrix::{FakePortal, LeakyBucket, NewPost, PortalConfig};
use crate::slack::{self as sl, FakeSlack, PostRate, WorkspaceConfig};

/// Bitrix24's bucket: drained at 2 requests/s, 50 deep (docs/platforms/bitrix24.md §2).
const B24_PER_SEC: f64 = 2.0;
const B24_BURST: f64 = 50.0;
/// Slack's `chat.postMessage`: about 1 message/s per channel, a short burst allowed.
const SLACK_PER_SEC: f64 = 1.0;
const SLACK_BURST: u32 = 3;
const CHANNELS: usize = 4;

/// What one catch-up run measured.
#[derive(Debug, Clone)]
pub struct CatchUp {
    /// Posts in the backlog.
    pub posts: usize,
    /// From the bridge's start to the last root message.
    pub posts_drained: Duration,
    /// Replies written in the threads.
    pub replies: usize,
    /// From the first reply to the last comment.
    pub replies_drained: Duration,
    /// Root messages per second over the ceiling for that time (burst included).
    pub posts_of_ceiling: f64,
    /// From the bridge's start to the first root message: the restart and the backlog's read.
    pub first_root_after: Duration,
    /// Root messages per second from the first to the last, over the ceiling for that time.
    pub posts_of_ceiling_sending: f64,
    /// Comments per second over the ceiling for that time (burst included).
    pub comments_of_ceiling: f64,
    /// Every portal request while the comments were written (the poll's reads too), per
    /// second, over the same ceiling: how much of the budget was used.
    pub bitrix_used_of_ceiling: f64,
    /// Those requests per second.
    pub bitrix_used_per_sec: f64,
    /// Those requests per comment written.
    pub bitrix_per_comment: f64,
    /// Requests to the portal while the posts were mirrored, per post.
    pub bitrix_per_post: f64,
    /// The same without the poll's steady reads (one per interval, found nothing new): what
    /// reading the backlog itself cost.
    pub backlog_per_post: f64,
    /// The methods that got 429s, with counts.
    pub slack_429_methods: Vec<(String, usize)>,
    /// Slack 429 answers (`ratelimited`).
    pub slack_429: usize,
    /// Portal `QUERY_LIMIT_EXCEEDED` answers.
    pub bitrix_limited: usize,
    /// Peak RSS of the bridge during the run.
    pub peak_rss: u64,
    /// The Matrix room's part, when a homeserver was there.
    pub matrix: Option<MatrixCatchUp>,
}

/// The encrypted Matrix room that gets the first channel's posts too.
#[derive(Debug, Clone)]
pub struct MatrixCatchUp {
    /// Posts it gets.
    pub posts: usize,
    /// From the bridge's start to the last of them sent.
    pub drained: Duration,
    /// Root messages per second over Synapse's limit on the bot for that time.
    pub of_ceiling: f64,
    /// Sends Synapse refused with `M_LIMIT_EXCEEDED`, over the whole run.
    pub limited: f64,
    /// RSS of the bridge idle after its first start: Slack and an encrypted Matrix room.
    pub idle_rss: u64,
}

/// Run one catch-up of `posts` posts, two replies each, with limits sped up `scale` times.
pub async fn measure(posts: usize, scale: u32) -> CatchUp {
    let scale_f = f64::from(scale);
    let fakes = Fakes::start(
        PortalConfig {
            rate_limit: Some(LeakyBucket {
                burst: B24_BURST,
                drain_per_sec: B24_PER_SEC * scale_f,
            }),
            ..PortalConfig::default()
        },
        WorkspaceConfig {
            post_rate: Some(PostRate {
                per_sec: SLACK_PER_SEC * scale_f,
                burst: SLACK_BURST,
            }),
            ..WorkspaceConfig::default()
        },
    )
    .await;
    let Fakes {
        portal,
        slack,
        author,
    } = fakes;
    let anna = slack.add_user(sl::NewUser::new("anna", "Anna Smirnova"));
    let mut groups = Vec::new();
    let mut channels = Vec::new();
    let mut mappings = String::new();
    for i in 0..CHANNELS {
        let group = portal.add_group(&format!("Team {i}"));
        portal.add_group_member(group, 1);
        portal.add_group_member(group, author);
        let channel = slack.add_channel(&format!("team-{i}"), false, true);
        mappings.push_str(&format!(
            "  - name: team-{i}\n    audience: [group:{group}]\n    slack: {{ channel: {channel} }}\n"
        ));
        groups.push(group);
        channels.push(channel);
    }
    // The first channel's posts also go to an encrypted Matrix room, when there is a homeserver.
    let matrix = match Homeserver::from_env() {
        Some(hs) => Some(hs.room_for_bot(mx::PER_SEC * scale, mx::BURST).await),
        None => None,
    };
    let mut matrix_section = String::new();
    if let Some(m) = &matrix {
        mappings = mappings.replacen(
            "\n  - name: team-1",
            &format!("\n    matrix: {{ room: \"{}\" }}\n  - name: team-1", m.room),
            1,
        );
        matrix_section = m.config(f64::from(mx::PER_SEC * scale), mx::BURST);
    }
    let dir = temp_dir();
    let port = free_port();
    let cfg = slack.config();
    // The default 5 s poll, sped up like everything else.
    let poll_interval = Duration::from_millis(u64::from((5_000 / scale).max(1)));
    let config = format!(
        "bitrix24:\n  webhook_url: {}\n  poll: {{ interval: {}ms, reconcile_interval: 1h }}\n  rate_limit: {{ per_second: {}, burst: {} }}\nslack:\n  bot_token: {}\n  app_token: {}\n  api_base: {}\n  post_rate: {{ per_second: {}, burst: {SLACK_BURST} }}\nstore: {{ path: {} }}\nhttp: {{ listen: 127.0.0.1:{port} }}\n{matrix_section}mappings:\n{mappings}",
        portal.webhook_url(),
        poll_interval.as_millis(),
        B24_PER_SEC * scale_f,
        B24_BURST,
        cfg.bot_token,
        cfg.app_token,
        slack.api_base(),
        SLACK_PER_SEC * scale_f,
        dir.join("data").display(),
    );
    // The first start sets the baseline; the backlog is written while the bridge is down.
    let bridge = Bridge::start(&dir, &config, port, Duration::from_secs(30)).await;
    assert!(
        portal
            .wait_until(Duration::from_secs(30), |p| p.request_count("batch") >= 2)
            .await,
        "no first poll"
    );
    let mut matrix_idle_rss = 0;
    if matrix.is_some() {
        // Signed in, keys uploaded, first sync done: what a Matrix bridge costs at rest.
        tokio::time::sleep(Duration::from_secs(3)).await;
        matrix_idle_rss = bridge.rss_bytes().unwrap_or(0);
    }
    bridge.stop().await;
    let mut ids = Vec::with_capacity(posts);
    for i in 0..posts {
        ids.push(portal.create_post(
            author,
            NewPost {
                title: Some(format!("Backlog {i}")),
                text: format!("written while the bridge was down ({i})"),
                dest: vec![format!("SG{}", groups[i % CHANNELS])],
                important: false,
                files: Vec::new(),
            },
        ));
    }
    let b24_before = portal.requests().len();
    let slack_before = slack.requests().len();
    let roots_before = slack.ok_count("chat.postMessage");
    let started = Instant::now();
    let started_us = unix_micros();
    let bridge = Bridge::start(&dir, &config, port, Duration::from_secs(30)).await;
    let ms = Duration::from_millis;
    let roots = |s: &FakeSlack| s.ok_count("chat.postMessage") - roots_before;
    let patience = Duration::from_secs_f64(posts as f64 / (CHANNELS as f64 * scale_f) * 4.0 + 60.0);
    assert!(
        poll_until(ms(20), patience, || roots(&slack) >= posts).await,
        "the backlog was not mirrored within {patience:?}: {} of {posts}",
        roots(&slack)
    );
    let posts_drained = started.elapsed();
    let bitrix_posts_phase = portal.requests().len() - b24_before;
    let matrix_posts = posts.div_ceil(CHANNELS);
    let mut matrix_drained = None;
    if matrix.is_some() {
        let patience = Duration::from_secs_f64(
            matrix_posts as f64 / f64::from(mx::PER_SEC * scale) * 4.0 + 60.0,
        );
        let deadline = Instant::now() + patience;
        loop {
            let sent = mx::sample(&bridge.metrics().await, mx::SENT) as usize;
            if sent >= matrix_posts {
                matrix_drained = Some(started.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Matrix room did not get its {matrix_posts} posts within {patience:?}: {sent}"
            );
            tokio::time::sleep(ms(50)).await;
        }
    }
    let mut peak_rss = bridge.peak_rss_bytes().unwrap_or(0);

    // Two replies per post, written in the threads now; each becomes one comment.
    let b24_replies_before = portal.requests().len();
    let replies_started = Instant::now();
    let mut replies = 0;
    for channel in &channels {
        for root in slack.history(channel) {
            for n in 0..2 {
                slack.reply(&anna, channel, &root.ts, &format!("reply {n}"), false);
                replies += 1;
            }
        }
    }
    let comments = |p: &FakePortal| p.comment_count();
    let patience = Duration::from_secs_f64(replies as f64 / (B24_PER_SEC * scale_f) * 4.0 + 60.0);
    assert!(
        poll_until(ms(20), patience, || comments(&portal) >= replies).await,
        "the replies did not become comments within {patience:?}: {} of {replies}",
        comments(&portal)
    );
    let replies_drained = replies_started.elapsed();
    let bitrix_replies_phase = portal.requests().len() - b24_replies_before;
    peak_rss = peak_rss.max(bridge.peak_rss_bytes().unwrap_or(0));
    let matrix_limited = mx::sample(&bridge.metrics().await, mx::LIMITED);
    bridge.stop().await;

    let root_times: Vec<i64> = slack.requests()[slack_before..]
        .iter()
        .filter(|r| r.method == "chat.postMessage" && r.ok)
        .map(|r| r.arrived_us)
        .collect();
    let first_root_us = root_times.iter().min().copied().unwrap_or(started_us);
    let last_root_us = root_times.iter().max().copied().unwrap_or(started_us);
    let limited: Vec<String> = slack.requests()[slack_before..]
        .iter()
        .filter(|r| r.status == 429 || r.error.as_deref() == Some("ratelimited"))
        .map(|r| r.method.clone())
        .collect();
    let slack_429 = limited.len();
    let mut slack_429_methods: Vec<(String, usize)> = Vec::new();
    for m in limited {
        match slack_429_methods.iter_mut().find(|(k, _)| *k == m) {
            Some((_, n)) => *n += 1,
            None => slack_429_methods.push((m, 1)),
        }
    }
    let bitrix_limited = portal.requests()[b24_before..]
        .iter()
        .filter(|r| r.error.as_deref() == Some("QUERY_LIMIT_EXCEEDED"))
        .count();
    super::process::remove_dir(&dir);
    let secs = posts_drained.as_secs_f64();
    let steady_polls = (secs / poll_interval.as_secs_f64()).floor() as usize;
    let post_ceiling =
        CHANNELS as f64 * (SLACK_PER_SEC * scale_f * secs + f64::from(SLACK_BURST)) / secs;
    let sending = ((last_root_us - first_root_us) as f64 / 1e6).max(f64::MIN_POSITIVE);
    let sending_ceiling =
        CHANNELS as f64 * (SLACK_PER_SEC * scale_f * sending + f64::from(SLACK_BURST)) / sending;
    let rsecs = replies_drained.as_secs_f64();
    let comment_ceiling = (B24_PER_SEC * scale_f * rsecs + B24_BURST) / rsecs;
    CatchUp {
        posts,
        posts_drained,
        replies,
        replies_drained,
        posts_of_ceiling: posts as f64 / secs / post_ceiling,
        first_root_after: Duration::from_micros((first_root_us - started_us).max(0) as u64),
        posts_of_ceiling_sending: posts as f64 / sending / sending_ceiling,
        comments_of_ceiling: replies as f64 / rsecs / comment_ceiling,
        bitrix_used_of_ceiling: bitrix_replies_phase as f64 / rsecs / comment_ceiling,
        bitrix_used_per_sec: bitrix_replies_phase as f64 / rsecs,
        bitrix_per_comment: bitrix_replies_phase as f64 / replies as f64,
        bitrix_per_post: bitrix_posts_phase as f64 / posts as f64,
        backlog_per_post: bitrix_posts_phase.saturating_sub(steady_polls) as f64 / posts as f64,
        slack_429_methods,
        slack_429,
        bitrix_limited,
        peak_rss,
        matrix: matrix_drained.map(|drained| {
            let secs = drained.as_secs_f64();
            let rate = f64::from(mx::PER_SEC * scale);
            let ceiling = (rate * secs + f64::from(mx::BURST)) / secs;
            MatrixCatchUp {
                posts: matrix_posts,
                drained,
                of_ceiling: matrix_posts as f64 / secs / ceiling,
                limited: matrix_limited,
                idle_rss: matrix_idle_rss,
            }
        }),
    }
}

/// The scenario, into `report`.
pub async fn run(report: &mut Report, posts: usize, scale: u32) {
    let c = measure(posts, scale).await;
    let s = "catch-up";
    report.add(
        s,
        &format!(
            "{} posts into {CHANNELS} Slack channels: drained in",
            c.posts
        ),
        c.posts_drained.as_secs_f64(),
        "s",
        None,
        None,
    );
    report.add(
        s,
        "root messages per second",
        c.posts as f64 / c.posts_drained.as_secs_f64(),
        "msg/s",
        Some(c.posts_of_ceiling),
        Some("≥ 97 % of 4 × 1/s (scaled)"),
    );
    report.add(
        s,
        "  first root message after the start",
        c.first_root_after.as_secs_f64(),
        "s",
        None,
        None,
    );
    report.add(
        s,
        "  root messages per second from the first to the last",
        c.posts as f64 / (c.posts_drained - c.first_root_after).as_secs_f64(),
        "msg/s",
        Some(c.posts_of_ceiling_sending),
        None,
    );
    report.add(
        s,
        &format!("{} thread replies into comments: drained in", c.replies),
        c.replies_drained.as_secs_f64(),
        "s",
        None,
        None,
    );
    report.add(
        s,
        "comments per second (ceiling: one comment per request)",
        c.replies as f64 / c.replies_drained.as_secs_f64(),
        "msg/s",
        Some(c.comments_of_ceiling),
        None,
    );
    report.add(
        s,
        "  all Bitrix24 requests meanwhile (polls included)",
        c.bitrix_used_per_sec,
        "req/s",
        Some(c.bitrix_used_of_ceiling),
        Some("≥ 97 % of 2/s (scaled)"),
    );
    report.add(
        s,
        "  Bitrix24 requests per comment",
        c.bitrix_per_comment,
        "req",
        None,
        None,
    );
    report.add(
        s,
        "Bitrix24 requests per mirrored post",
        c.bitrix_per_post,
        "req",
        None,
        Some("≤ 0.01"),
    );
    report.add(
        s,
        "  … without the poll's steady reads (the backlog's own)",
        c.backlog_per_post,
        "req",
        None,
        Some("≤ 0.01"),
    );
    let methods: Vec<String> = c
        .slack_429_methods
        .iter()
        .map(|(m, n)| format!("{m} ×{n}"))
        .collect();
    report.add(
        s,
        &format!("Slack 429 answers {}", methods.join(", ")),
        c.slack_429 as f64,
        "",
        None,
        Some("0"),
    );
    report.add(
        s,
        "Bitrix24 QUERY_LIMIT_EXCEEDED answers",
        c.bitrix_limited as f64,
        "",
        None,
        Some("0"),
    );
    match &c.matrix {
        Some(m) => {
            report.add(
                s,
                &format!(
                    "{} of them also into 1 encrypted Matrix room: drained in",
                    m.posts
                ),
                m.drained.as_secs_f64(),
                "s",
                None,
                None,
            );
            report.add(
                s,
                "Matrix root messages per second",
                m.posts as f64 / m.drained.as_secs_f64(),
                "msg/s",
                Some(m.of_ceiling),
                Some("≥ 97 % of the bot's 1/s (scaled)"),
            );
            report.add(
                s,
                "Matrix M_LIMIT_EXCEEDED answers",
                m.limited,
                "",
                None,
                Some("0"),
            );
            report.add(
                s,
                "RSS idle, Slack and an encrypted Matrix room",
                m.idle_rss as f64 / 1_048_576.0,
                "MiB",
                None,
                Some("≤ 60 MB"),
            );
        }
        None => report.add(
            s,
            "Matrix: not measured (no homeserver; see docs/performance.md)",
            0.0,
            "",
            None,
            None,
        ),
    }
    report.add(
        s,
        "peak RSS during catch-up",
        c.peak_rss as f64 / 1_048_576.0,
        "MiB",
        None,
        None,
    );
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
