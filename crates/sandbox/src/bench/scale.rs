//! Scale: a store with many mapped posts. The store is made the way a real one is, by the
//! bridge mirroring the posts (limits off, so it takes a minute instead of a day), then the
//! bridge is restarted on it and measured: time to `/readyz`, RSS at idle, bytes on disk per
//! mapped post, and one reconcile round over the window.

use std::path::Path;
use std::time::Duration;

use super::process::{Bridge, free_port, poll_until, temp_dir};
use super::{Fakes, Report};
use crate::bitrix::{FakePortal, NewPost};

/// What a store with `posts` mapped posts costs.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Mapped posts in the store.
    pub posts: usize,
    /// From spawning the bridge on that store to `/readyz` answering 200.
    pub ready: Duration,
    /// RSS once started and idle.
    pub idle_rss: u64,
    /// RSS of a bridge on an empty store, idle, for comparison.
    pub empty_rss: u64,
    /// The store's size on disk, per mapped post.
    pub bytes_per_post: f64,
    /// Requests of one reconcile round over the window (limits off).
    pub reconcile_requests: usize,
    /// How long that round took with limits off.
    pub reconcile_took: Duration,
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn poll(reconcile: &str) -> String {
    format!(
        "{{ interval: 50ms, reconcile_interval: {reconcile}, max_deletions_per_round: 1000000 }}"
    )
}

/// Build a store of `posts` mapped posts and measure a bridge on it.
pub async fn measure(posts: usize) -> Scale {
    let fakes = Fakes::unlimited().await;
    let (portal, slack, author) = (fakes.portal.clone(), fakes.slack.clone(), fakes.author);
    let news = slack.add_channel("company-news", false, true);
    let dir = temp_dir();
    let port = free_port();
    let polls = |p: &FakePortal| p.request_count("batch") + p.request_count("log.blogpost.get");

    // Empty store: the reference RSS.
    let text = fakes.unlimited_config(&poll("1h"), &news, &dir, port);
    let bridge = Bridge::start(&dir, &text, port, Duration::from_secs(30)).await;
    let ms = Duration::from_millis;
    assert!(
        poll_until(ms(20), ms(30_000), || polls(&portal) >= 2).await,
        "no first poll"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let empty_rss = bridge.rss_bytes().unwrap_or(0);

    // Mirror `posts` posts, a thousand at a time (a poll reads up to 20 pages of 50).
    let mut written = 0;
    while written < posts {
        let n = (posts - written).min(1000);
        for i in written..written + n {
            portal.create_post(
                author,
                NewPost {
                    title: Some(format!("Post {i}")),
                    text: format!("one of many ({i})"),
                    dest: vec!["UA".into()],
                    important: false,
                    files: Vec::new(),
                },
            );
        }
        written += n;
        let want = written;
        assert!(
            poll_until(ms(100), ms(600_000), || slack.ok_count("chat.postMessage")
                >= want)
            .await,
            "only {} of {want} posts mirrored",
            slack.ok_count("chat.postMessage")
        );
    }
    bridge.stop().await;
    let bytes_per_post = dir_size(&dir.join("data")) as f64 / posts as f64;

    // Restart on the full store (no reconcile due): ready, idle RSS.
    let text = fakes.unlimited_config(&poll("1h"), &news, &dir, port);
    let bridge = Bridge::start(&dir, &text, port, Duration::from_secs(120)).await;
    let ready = bridge.ready_after;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = bridge.rss_bytes().unwrap_or(0);
    bridge.stop().await;
    // Once more with the reconcile due at once: it re-reads every tracked post in the window
    // with `batch`es of 50 `log.blogpost.get`. Timed from ready to its last batch.
    let before = portal.requests().len();
    let base = portal.request_count("batch");
    let text = fakes.unlimited_config(&poll("1s"), &news, &dir, port);
    let bridge = Bridge::start(&dir, &text, port, Duration::from_secs(120)).await;
    let rounds = posts.div_ceil(50);
    let batches = |p: &FakePortal| {
        p.requests()[before..]
            .iter()
            .filter(|r| r.method == "batch")
            .map(|r| r.answered_us)
            .collect::<Vec<_>>()
    };
    // The first batch is the poll's read of the feed; the round's follow.
    assert!(
        poll_until(ms(100), ms(3_600_000), || portal.request_count("batch")
            > base + rounds)
        .await,
        "no reconcile round"
    );
    let answered = batches(&portal);
    let reconcile_took = Duration::from_micros((answered[rounds] - answered[0]).max(0) as u64);
    bridge.stop().await;
    super::process::remove_dir(&dir);
    Scale {
        posts,
        ready,
        idle_rss,
        empty_rss,
        bytes_per_post,
        reconcile_requests: posts.div_ceil(50),
        reconcile_took,
    }
}

/// The scenario, into `report`.
pub async fn run(report: &mut Report, posts: usize) {
    let c = measure(posts).await;
    let s = "scale";
    let mib = |b: u64| b as f64 / 1_048_576.0;
    report.add(
        s,
        &format!("{} mapped posts: from start to /readyz", c.posts),
        c.ready.as_secs_f64() * 1000.0,
        "ms",
        None,
        Some("≤ 300 ms"),
    );
    report.add(
        s,
        "RSS idle, empty store",
        mib(c.empty_rss),
        "MiB",
        None,
        Some("≤ 25 MB"),
    );
    report.add(
        s,
        &format!("RSS idle, {} mapped posts", c.posts),
        mib(c.idle_rss),
        "MiB",
        None,
        Some("≤ empty + 20 MB per 100k"),
    );
    report.add(
        s,
        "store on disk per mapped post",
        c.bytes_per_post,
        "bytes",
        None,
        None,
    );
    report.add(
        s,
        "one reconcile round over the window: batch requests",
        c.reconcile_requests as f64,
        "req",
        None,
        None,
    );
    report.add(
        s,
        "  … its time with limits off",
        c.reconcile_took.as_secs_f64(),
        "s",
        None,
        None,
    );
    report.add(
        s,
        "  … its time at Bitrix24's 2 requests/s",
        c.reconcile_requests as f64 / 2.0,
        "s",
        None,
        None,
    );
}
