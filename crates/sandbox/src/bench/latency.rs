//! Added latency: from the portal's answer that first shows a post to the `chat.postMessage`
//! that mirrors it, as both fakes timestamp them (one process, one clock). That span holds
//! only the bridge: parsing the page, journaling, the engine, the intent's flush to disk and
//! rendering, plus two loopback hops. Upstream time is outside it, and Slack's pacing is off.
//!
//! Each post is written within 2 ms of a poll answer and the bridge polls every 100 ms, so the
//! next poll answer is the one that first shows it.

use std::time::Duration;

use super::process::{Bridge, free_port, poll_until, temp_dir};
use super::{Fakes, Report};
use crate::bitrix::{FakePortal, NewPost};
use crate::slack::FakeSlack;

/// Added latency per post, microseconds, in post order.
pub async fn measure(posts: usize) -> Vec<i64> {
    let fakes = Fakes::unlimited().await;
    let (portal, slack, author) = (fakes.portal.clone(), fakes.slack.clone(), fakes.author);
    let news = slack.add_channel("company-news", false, true);
    let dir = temp_dir();
    let port = free_port();
    let config = fakes.unlimited_config(
        "{ interval: 100ms, reconcile_interval: 1h }",
        &news,
        &dir,
        port,
    );
    let bridge = Bridge::start(&dir, &config, port, Duration::from_secs(30)).await;
    let polls = |p: &FakePortal| p.request_count("batch") + p.request_count("log.blogpost.get");
    let ms = Duration::from_millis;
    assert!(
        poll_until(ms(20), ms(30_000), || polls(&portal) >= 2).await,
        "no first poll"
    );
    // The author is looked up once, with the first post: not what is measured.
    let warm = 1;
    let mut out = Vec::with_capacity(posts);
    for i in 0..posts + warm {
        let seen = polls(&portal);
        assert!(
            poll_until(ms(2), ms(10_000), || polls(&portal) > seen).await,
            "the poll stopped"
        );
        let written_after = portal.requests().len();
        let mirrored = slack.ok_count("chat.postMessage");
        let id = portal.create_post(
            author,
            NewPost {
                title: Some(format!("Latency {i}")),
                text: "how long until it is in Slack".into(),
                dest: vec!["UA".into()],
                important: false,
                files: Vec::new(),
            },
        );
        let tag = id.to_string();
        assert!(
            poll_until(ms(5), ms(10_000), || slack.ok_count("chat.postMessage")
                > mirrored)
            .await,
            "post {id} was not mirrored"
        );
        let sent = |s: &FakeSlack| {
            s.requests().into_iter().rev().find(|r| {
                r.method == "chat.postMessage"
                    && r.params["metadata"]["event_payload"]["b24_post_id"].as_str()
                        == Some(tag.as_str())
            })
        };
        let posted = sent(&slack).expect("just seen").arrived_us;
        let answer = portal.requests()[written_after..]
            .iter()
            .find(|r| r.method == "batch" || r.method == "log.blogpost.get")
            .map(|r| r.answered_us)
            .expect("a poll answer after the post was written");
        if i >= warm {
            out.push(posted - answer);
        }
    }
    bridge.stop().await;
    super::process::remove_dir(&dir);
    out
}

/// The `q`-quantile (0..=1) of sorted values.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The scenario, into `report`.
pub async fn run(report: &mut Report, posts: usize) {
    let mut us = measure(posts).await;
    us.sort_unstable();
    let ms = |v: i64| v as f64 / 1000.0;
    let s = "latency";
    let what = format!("poll answer → chat.postMessage, {posts} posts");
    report.add(
        s,
        &format!("{what}: p50"),
        ms(quantile(&us, 0.5)),
        "ms",
        None,
        None,
    );
    report.add(
        s,
        &format!("{what}: p99"),
        ms(quantile(&us, 0.99)),
        "ms",
        None,
        Some("≤ 5 ms"),
    );
    report.add(
        s,
        &format!("{what}: max"),
        ms(*us.last().unwrap_or(&0)),
        "ms",
        None,
        None,
    );
}
