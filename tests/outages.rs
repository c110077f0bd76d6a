//! Nothing missed after an outage: Slack replies written, edited and deleted while the bridge
//! was down longer than Slack keeps retrying; rate-limit waits that outlive a restart; and
//! acknowledgements that never wait for a directory lookup.

// matrix-sdk's futures need a deeper trait-resolution limit (shared test support spawns them).
#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use livefeed_sandbox::slack::{Fault as SlackFault, FaultKind as SlackFaultKind};
use support::{Setup, WAIT, World};

/// Slack gives an unacknowledged event up after this in these tests (about six minutes at
/// Slack); the outages below last longer.
const RETENTION: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_written_edited_and_deleted_during_a_long_outage_are_caught_up() {
    let mut w = World::new(Setup {
        slack_retention: RETENTION,
        ..Setup::default()
    })
    .await;
    w.start().await;
    let post = w.post_all("Outage drill", "Reply while the bridge is down");
    let news = w.news.clone();
    let root = w.wait_root(&news, post).await;
    let kept = w
        .slack
        .reply(&w.anna, &news, &root.ts, "First thoughts", false);
    let doomed = w
        .slack
        .reply(&w.anna, &news, &root.ts, "Never mind this one", false);
    w.wait_comments(post, 2).await;
    w.settle().await;
    w.stop().await;

    let failed_before = w.slack.failed_deliveries().len();
    let new = w
        .slack
        .reply(&w.anna, &news, &root.ts, "Written during the outage", false);
    w.slack.edit(&w.anna, &news, &kept, "Second thoughts");
    w.slack.delete(&w.anna, &news, &doomed);
    // Slack gives the three events up: nobody was connected to take them.
    assert!(
        w.slack
            .wait_until(WAIT, |s| s.failed_deliveries().len() >= failed_before + 3)
            .await,
        "the fake never gave the events up"
    );

    w.start().await;
    let want = vec![
        "[B]Anna Smirnova[/B] (Slack): Second thoughts".to_string(),
        "[B]Anna Smirnova[/B] (Slack): Written during the outage".to_string(),
    ];
    let caught_up = w
        .portal
        .wait_until(WAIT, |p| {
            p.comments(post)
                .into_iter()
                .map(|c| c.text)
                .collect::<Vec<_>>()
                == want
        })
        .await;
    assert!(
        caught_up,
        "the new reply arrived once, the edit replaced its comment, the deleted reply's comment is gone: {:?}",
        w.comments(post)
    );
    w.settle().await;
    let comments_now = w.comments(post);
    assert_eq!(comments_now, want, "stable once caught up");
    let (_, metrics) = w.http_get("/metrics").await;
    assert!(
        metrics.contains("livefeed_bridge_catch_up_events_total{platform=\"slack\"} 3"),
        "{metrics}"
    );
    let _ = new;

    // Another reconnect catches up again and changes nothing.
    w.slack.disconnect_sockets("refresh_requested");
    let slack = w.slack.clone();
    assert!(
        slack.wait_until(WAIT, |s| s.socket_connections() > 0).await,
        "no reconnect"
    );
    w.settle().await;
    assert_eq!(w.comments(post), comments_now);
    assert_eq!(w.portal.call_count("log.blogcomment.add"), 4);
}

/// A backlog of posts written during an outage is read in two requests, not one per page:
/// the first round reads one page per audience, the next reads ahead as many pages as a
/// `batch` holds. Every post is mirrored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_posts_is_read_ahead_and_mirrored_once_each() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let first = w.post_all("Before", "Written before the outage");
    let news = w.news.clone();
    w.wait_root(&news, first).await;
    w.settle().await;
    w.stop().await;

    // Four and a half pages of 50.
    let backlog: Vec<u64> = (0..225)
        .map(|i| {
            w.post_all(
                &format!("Backlog {i}"),
                &format!("written during the outage ({i})"),
            )
        })
        .collect();
    let requests_before = w.portal.requests().len();
    w.start().await;
    let slack = w.slack.clone();
    assert!(
        slack
            .wait_until(WAIT * 2, |s| s.history(&news).len() >= 226)
            .await,
        "the backlog was not mirrored: {} roots",
        w.roots(&news).len()
    );
    w.settle().await;
    let roots = w.roots(&news);
    assert_eq!(roots.len(), 226, "each post once");
    for (i, post) in backlog.iter().enumerate() {
        let text = format!("written during the outage ({i})");
        assert_eq!(
            roots.iter().filter(|r| r.text.contains(&text)).count(),
            1,
            "post {post} mirrored once"
        );
    }
    // The feed was read before anything was sent: one request for the first page of each
    // audience, one for the pages after it. One request per page would be five.
    let first_root_us = w
        .slack
        .requests()
        .iter()
        .filter(|r| r.method == "chat.postMessage" && r.ok)
        .map(|r| r.arrived_us)
        .nth(1) // the first is the post before the outage
        .expect("roots were sent");
    let reads = w.portal.requests()[requests_before..]
        .iter()
        .filter(|r| r.answered_us < first_root_us)
        // Feed pages (alone, or in a batch), not the reconcile's re-reads by `POST_ID`.
        .filter(|r| {
            r.method == "log.blogpost.get"
                || r.sub_calls.iter().any(|c| c.query.contains("LOG_RIGHTS"))
        })
        .count();
    assert_eq!(reads, 2, "the backlog's pages in two reads: {reads}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_from_before_a_crash_is_honoured_after_it() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let first = w.post_all("One", "before the limit");
    w.wait_root(&w.news.clone(), first).await;
    w.settle().await;
    // The next post is answered 429 with a Retry-After of 2 s; the bridge dies right then.
    w.slack.inject(
        SlackFault::on(
            "chat.postMessage",
            SlackFaultKind::RateLimited { retry_after: 2 },
        )
        .times(1),
    );
    let second = w.post_all("Two", "after the limit");
    // The 429 came back; crash the moment the bridge has taken it in (its bookkeeping of
    // the wait, if it keeps any, is what a crash a moment later would find).
    let slack = w.slack.clone();
    assert!(
        slack
            .wait_until(WAIT, |s| s.request_count("chat.postMessage") >= 2)
            .await
    );
    let store = w.running.as_ref().expect("running").store.clone();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while store
            .cursors_with_prefix::<i64>("ratelimit/slack/")
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(store);
    w.crash().await;
    w.start().await;
    w.wait_root(&w.news.clone(), second).await;
    w.settle().await;
    assert_eq!(
        w.slack.rate_limit_violations(),
        0,
        "no call inside a window Slack asked us to wait out"
    );
    assert_eq!(w.roots(&w.news).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_acknowledged_before_names_are_looked_up() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Names", "who replied?");
    let news = w.news.clone();
    let root = w.wait_root(&news, post).await;
    w.settle().await;
    // users.info is rate limited for a while: the directory is slow.
    w.slack.inject(
        SlackFault::on("users.info", SlackFaultKind::RateLimited { retry_after: 1 }).times(3),
    );
    let acks = w.slack.acks();
    w.slack.reply(&w.anna, &news, &root.ts, "Anna here", false);
    let slack = w.slack.clone();
    assert!(
        slack.wait_until(WAIT, |s| s.acks() > acks).await,
        "the event was never acknowledged"
    );
    // Acknowledged while every users.info so far was refused: the ack did not wait for it.
    let answered = w
        .slack
        .requests()
        .into_iter()
        .filter(|r| r.method == "users.info" && r.ok)
        .count();
    assert_eq!(answered, 0, "acknowledged before any name was known");
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(comments, vec!["[B]Anna Smirnova[/B] (Slack): Anna here"]);
}
