//! The feed side tells the truth: posts reach only the rooms they were addressed to, a post
//! that vanishes is verified before its mirrors go, a comment recovered after a crash is the
//! right post's, and a root message a person deleted is not fought over.

// matrix-sdk's futures need a deeper trait-resolution limit (shared test support spawns them).
#![recursion_limit = "256"]

mod support;

use std::sync::Arc;
use std::time::Duration;

use livefeed_bridge::bitrix::adapter::BitrixFeed;
use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::bitrix::client::{BitrixClient, Credentials};
use livefeed_bridge::secret::Secret;
use livefeed_core::adapters::FeedAdapter;
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{CommentId, FailureKind, FileContent, PostId, ReplyId, Room, ThreadId};
use livefeed_core::richtext::Doc;
use livefeed_core::store::{CommentRecord, Store, now_ms};
use livefeed_sandbox::bitrix::{FakePortal, NewPost, PortalConfig};
use support::{Setup, WAIT, World};

fn group_post(w: &World, author: u64, text: &str) -> u64 {
    w.portal.create_post(
        author,
        NewPost {
            title: None,
            text: text.into(),
            dest: vec![format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_audience_gets_posts_addressed_to_the_user_not_posts_the_user_wrote() {
    let mut w = World::new(Setup::default()).await;
    // The webhook's user (1) has a channel for posts addressed to them.
    let inbox = w.slack.add_channel("inbox", false, true);
    w.extra_mappings =
        format!("  - name: inbox\n    audience: [user:1]\n    slack: {{ channel: {inbox} }}\n");
    w.start().await;
    // User 1 writes to the group: the blog module adds U1 to the post's rights anyway.
    let own = group_post(&w, 1, "From the webhook user to the developers");
    // Ivan writes to user 1.
    let to_one = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("For you".into()),
            text: "Addressed to user 1".into(),
            dest: vec!["U1".into()],
            important: false,
            files: Vec::new(),
        },
    );
    w.wait_root(&w.dev.clone(), own).await;
    w.wait_root(&inbox, to_one).await;
    w.settle().await;
    assert!(
        w.root_for(&inbox, own).is_none(),
        "a post user 1 wrote for one group never reaches user 1's channel"
    );
    assert_eq!(w.roots(&inbox).len(), 1);
    assert!(
        w.root_for(&w.news, to_one).is_none(),
        "not a post for everyone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_access_to_a_group_deletes_nothing_and_raises_the_alert() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let dev = w.dev.clone();
    let first = group_post(&w, w.ivan, "Sprint review on Friday");
    let second = group_post(&w, w.ivan, "Retro on Monday");
    w.wait_root(&dev, first).await;
    w.wait_root(&dev, second).await;
    w.settle().await;

    // The webhook user leaves the group: both posts vanish from its feed.
    w.portal.remove_group_member(w.group, 1);
    let body = w
        .wait_readyz("the held deletions show", |_, b| b["status"] == "degraded")
        .await;
    assert_eq!(body["dead_letters"], 2, "{body}");
    assert!(
        body["sides"]["bitrix24"]["degraded"]
            .as_str()
            .is_some_and(|r| r.contains("2 feed deletion(s) held")),
        "{body}"
    );
    w.settle().await;
    assert_eq!(w.roots(&dev).len(), 2, "nothing was deleted");
    let (_, metrics) = w.http_get("/metrics").await;
    assert!(
        metrics.contains("livefeed_bridge_held_deletions 2"),
        "{metrics}"
    );

    // Access comes back: the holds are withdrawn, nothing happened in chat.
    w.portal.add_group_member(w.group, 1);
    let body = w
        .wait_readyz("the holds are withdrawn", |_, b| b["status"] == "ready")
        .await;
    assert_eq!(body["dead_letters"], 0, "{body}");
    assert_eq!(w.roots(&dev).len(), 2);

    // A real deletion in a group still readable goes through.
    w.portal.delete_post(first);
    let ts = w.root_for(&dev, first).expect("mirrored").ts;
    assert!(
        w.slack
            .wait_until(WAIT, |s| s.message(&dev, &ts).is_none())
            .await,
        "the deleted post's root stayed"
    );
    assert_eq!(w.roots(&dev).len(), 1);
    // So does the group's last post: its feed is empty now, but the webhook user is still a
    // member (sonet_group.user.groups), so the post is deleted, not lost from sight.
    w.portal.delete_post(second);
    let ts = w.root_for(&dev, second).expect("mirrored").ts;
    assert!(
        w.slack
            .wait_until(WAIT, |s| s.message(&dev, &ts).is_none())
            .await,
        "the group's last post was held instead of deleted"
    );
    let (_, body) = w.readyz().await;
    assert_eq!(body["status"], "ready", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_posts_vanishing_at_once_are_held_until_an_operator_releases_them() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let news = w.news.clone();
    let posts: Vec<u64> = (0..7)
        .map(|i| w.post_all(&format!("Post {i}"), "for everyone"))
        .collect();
    for p in &posts {
        w.wait_root(&news, *p).await;
    }
    w.settle().await;
    // Six vanish in one round: more than max_deletions_per_round (5).
    for p in &posts[..6] {
        w.portal.delete_post(*p);
    }
    let body = w
        .wait_readyz("six deletions held", |_, b| b["dead_letters"] == 6)
        .await;
    assert_eq!(body["status"], "degraded", "{body}");
    w.settle().await;
    assert_eq!(
        w.roots(&news).len(),
        7,
        "nothing deleted before the release"
    );

    // The operator releases them (`dead-letters retry --all`).
    let running = w.running.as_ref().expect("running");
    for letter in running.store.dead_letters().unwrap() {
        assert!(
            letter.action.contains("vanished from the feed"),
            "{letter:?}"
        );
        running.store.retry_dead_letter(letter.id).unwrap();
    }
    running.journal.wake();
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .history(&news)
                .iter()
                .filter(|m| m.bot_id.is_some())
                .count()
                == 1)
            .await,
        "released deletions never reached the channel"
    );
    w.wait_readyz("nothing held any more", |_, b| b["status"] == "ready")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_a_person_deleted_stays_deleted_and_the_post_is_detached_from_the_room() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let news = w.news.clone();
    let post = w.post_all("Announcement", "first text");
    let root = w.wait_root(&news, post).await;
    w.settle().await;
    // A workspace admin removes the bridge's message from the channel.
    w.slack.admin_delete(&news, &root.ts);
    w.settle().await;
    w.portal
        .update_post(post, Some("Announcement".into()), "second text");
    w.settle().await;
    w.portal
        .update_post(post, Some("Announcement".into()), "third text");
    w.settle().await;
    assert!(w.slack.message(&news, &root.ts).is_none(), "not re-created");
    assert_eq!(w.roots(&news).len(), 0);
    assert_eq!(w.slack.request_count("chat.postMessage"), 1);
    let (_, body) = w.readyz().await;
    assert_eq!(body["dead_letters"], 0, "no dead letters: {body}");
    // Its deletion in the feed leaves the room alone too.
    w.portal.delete_post(post);
    w.settle().await;
    assert_eq!(w.slack.request_count("chat.delete"), 0);
    let (_, body) = w.readyz().await;
    assert_eq!(body["dead_letters"], 0, "{body}");
}

/// A fake portal without rate limits and the bridge's feed adapter on it, over a fresh store
/// (kept in the returned directory).
async fn portal_and_feed() -> (FakePortal, BitrixFeed, Store, tempfile::TempDir) {
    let portal = FakePortal::start(PortalConfig {
        rate_limit: None,
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = BitrixClient::new(
        Credentials::Webhook(Secret::new(portal.webhook_url()), 1),
        None,
        Duration::from_secs(10),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let feed = BitrixFeed::new(client, store.clone());
    (portal, feed, store, dir)
}

/// A post for everyone by `author`.
fn post_for_all(portal: &FakePortal, author: u64, text: &str) -> u64 {
    portal.create_post(
        author,
        NewPost {
            title: None,
            text: text.into(),
            dest: vec!["UA".into()],
            important: false,
            files: Vec::new(),
        },
    )
}

/// The crash window of a comment: written, its id never recorded. Recovery must find this
/// post's comment, never another post's comment with the same text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_recovery_adopts_only_the_right_posts_comment() {
    let (portal, feed, store, _dir) = portal_and_feed().await;
    let author = portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Ivan".into(),
        last_name: "Petrov".into(),
        ..Default::default()
    });
    let new_post = |text: &str| post_for_all(&portal, author, text);
    let (a, b, c, d) = (new_post("a"), new_post("b"), new_post("c"), new_post("d"));
    let doc = Doc::plain("[B]Anna[/B] (Slack): Sounds good to me");
    let since = now_ms();
    let room = Room::new(livefeed_bridge::slack::PLATFORM, "C0123456789");
    let record = |post: u64, comment: CommentId, reply: &str| {
        store
            .record_comment(
                &room,
                &ReplyId::from(reply),
                &CommentRecord {
                    post: PostId(post),
                    comment,
                    thread: ThreadId::from("1.0"),
                    content_hash: 1,
                },
                "intent",
            )
            .unwrap();
    };

    // A reply on post A became a comment, recorded as the engine records it.
    let on_a = feed.add_comment(PostId(a), &doc, &[], None).await.unwrap();
    record(a, on_a, "r-a");
    // The same text on post B, written just before a crash: never recorded.
    let on_b = portal.add_comment(b, 1, &bbcode::render(&doc));
    // Post C has no such comment: nothing is adopted for it (not A's, not B's). The list
    // names feed entries, not posts, and C's entry is not known.
    assert_eq!(
        feed.find_comment(PostId(c), &doc, &[], None, since)
            .await
            .unwrap(),
        None
    );
    // B's entry is not known either, so text alone does not adopt B's comment ...
    assert_eq!(
        feed.find_comment(PostId(b), &doc, &[], None, since)
            .await
            .unwrap(),
        None
    );
    // ... but writing it again, the portal answers "Duplicate comment": B has it. The one
    // unrecorded candidate is adopted, and no second comment appears.
    assert_eq!(
        feed.add_comment(PostId(b), &doc, &[], None).await.unwrap(),
        CommentId(on_b)
    );
    assert_eq!(portal.comments(b).len(), 1);
    record(b, CommentId(on_b), "r-b");

    // Two unrecorded copies on posts whose entries are unknown: ambiguous, nothing adopted.
    let _on_c = portal.add_comment(c, 1, &bbcode::render(&doc));
    let _on_d = portal.add_comment(d, 1, &bbcode::render(&doc));
    let refused = feed
        .add_comment(PostId(d), &doc, &[], None)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, FailureKind::Permanent, "{refused}");

    // A's entry is known from its recorded comment: a crashed comment there is found by it.
    let doc2 = Doc::plain("[B]Anna[/B] (Slack): Sounds good to me, really");
    let again_a = portal.add_comment(a, 1, &bbcode::render(&doc2));
    let _also_d = portal.add_comment(d, 1, &bbcode::render(&doc2));
    assert_eq!(
        feed.find_comment(PostId(a), &doc2, &[], None, since)
            .await
            .unwrap(),
        Some(CommentId(again_a)),
        "found on A's own entry, although D has the same text"
    );
    // Nothing older than the window.
    assert_eq!(
        feed.find_comment(PostId(a), &doc2, &[], None, now_ms() + 3_600_000)
            .await
            .unwrap(),
        None
    );
}

/// A comment with files skips the portal's duplicate rule, so after a crash it is recognised
/// by its files: the one unrecorded comment with this text and exactly these files (by name
/// and size) is adopted even while the post's feed entry is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_recovery_recognises_a_comment_with_files_by_its_files() {
    let (portal, feed, _store, _dir) = portal_and_feed().await;
    let (b, c) = (post_for_all(&portal, 1, "b"), post_for_all(&portal, 1, "c"));
    let doc = Doc::plain("[B]Anna[/B] (Slack): The plan");
    let file = |name: &str, bytes: &[u8]| FileContent {
        name: name.into(),
        mime: "application/pdf".into(),
        bytes: bytes.to_vec(),
    };
    let plan = vec![file("plan.pdf", b"%PDF-1.4 plan")];
    let since = now_ms();

    // Written just before a crash, never recorded.
    let written = feed
        .add_comment(PostId(b), &doc, &plan, None)
        .await
        .unwrap();
    assert_eq!(
        feed.find_comment(PostId(b), &doc, &plan, None, since)
            .await
            .unwrap(),
        Some(written),
        "the one unrecorded comment with this text and these files"
    );
    assert_eq!(
        feed.find_comment(PostId(b), &doc, &[], None, since)
            .await
            .unwrap(),
        None,
        "text alone adopts nothing on an unknown entry"
    );
    let other = vec![file("plan.pdf", b"%PDF-1.4 another plan")];
    assert_eq!(
        feed.find_comment(PostId(b), &doc, &other, None, since)
            .await
            .unwrap(),
        None,
        "a file of another size is another file"
    );

    // The same text and file on a second post: two candidates, neither is adopted.
    feed.add_comment(PostId(c), &doc, &plan, None)
        .await
        .unwrap();
    assert_eq!(
        feed.find_comment(PostId(c), &doc, &plan, None, since)
            .await
            .unwrap(),
        None
    );
    assert_eq!(portal.comments(b).len(), 1);
}

/// Written as a linked person (an administrator's webhook), a comment is found after a crash
/// through that person's comment list, which shows an administrator no text: only the one
/// unrecorded comment of theirs on the post's known feed entry is taken, and none when they
/// also wrote one by hand there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_recovery_as_the_linked_author_takes_only_an_unambiguous_comment() {
    let (portal, feed, store, _dir) = portal_and_feed().await;
    let anna = portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Anna".into(),
        last_name: "Smirnova".into(),
        ..Default::default()
    });
    let post = post_for_all(&portal, 1, "p");
    assert!(
        feed.writes_as_others().await,
        "the webhook's user is an admin"
    );
    let who = anna.to_string();
    let since = now_ms();
    let first = Doc::plain("The lake");
    let written = feed
        .add_comment(PostId(post), &first, &[], Some(&who))
        .await
        .unwrap();
    assert_eq!(portal.comments(post)[0].author, anna);
    // The post's entry is not known yet: nothing is taken blind.
    assert_eq!(
        feed.find_comment(PostId(post), &first, &[], Some(&who), since)
            .await
            .unwrap(),
        None
    );
    let room = Room::new(livefeed_bridge::slack::PLATFORM, "C0123456789");
    store
        .record_comment(
            &room,
            &ReplyId::from("r1"),
            &CommentRecord {
                post: PostId(post),
                comment: written,
                thread: ThreadId::from("1.0"),
                content_hash: 1,
            },
            "intent",
        )
        .unwrap();
    // Recorded, the comment teaches the entry; a crashed second one is then found.
    let second = Doc::plain("The sea");
    feed.find_comment(PostId(post), &second, &[], Some(&who), since)
        .await
        .unwrap();
    let crashed = feed
        .add_comment(PostId(post), &second, &[], Some(&who))
        .await
        .unwrap();
    assert_eq!(
        feed.find_comment(PostId(post), &second, &[], Some(&who), since)
            .await
            .unwrap(),
        Some(crashed)
    );
    // Anna also comments by hand: two candidates, neither is taken.
    portal.add_comment(post, anna, "My own words");
    assert_eq!(
        feed.find_comment(PostId(post), &second, &[], Some(&who), since)
            .await
            .unwrap(),
        None
    );
}

/// Comments that wait for the rate limiter at the same time leave together in one `batch`,
/// the way a backlog of replies does after an outage: each still lands on its own post with
/// exactly its text and answers with its own id, and a comment the portal refuses fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_waiting_for_the_limiter_share_one_batch_and_keep_their_own_answers() {
    use livefeed_bridge::upstream::ratelimit::RateLimit;
    use livefeed_sandbox::bitrix::LeakyBucket;

    let portal = FakePortal::start(PortalConfig {
        rate_limit: Some(LeakyBucket {
            burst: 2.0,
            drain_per_sec: 2.0,
        }),
        ..PortalConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = BitrixClient::new(
        Credentials::Webhook(Secret::new(portal.webhook_url()), 1),
        Some(RateLimit {
            per_second: 2.0,
            burst: 2,
        }),
        Duration::from_secs(10),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let feed = BitrixFeed::new(client, store);
    let posts: Vec<u64> = (0..12)
        .map(|i| post_for_all(&portal, 1, &format!("post {i}")))
        .collect();
    let missing = PostId(999_999);
    // Characters the command line of a batch must carry intact.
    let docs: Vec<Doc> = (0..12)
        .map(|i| Doc::plain(&format!("Q&A #{i}: 100% + ünï = ok?\nsecond line")))
        .collect();
    let refused = Doc::plain("on a post that is not there");

    let mut calls: Vec<_> = posts
        .iter()
        .zip(&docs)
        .map(|(post, doc)| feed.add_comment(PostId(*post), doc, &[], None))
        .collect();
    calls.push(feed.add_comment(missing, &refused, &[], None));
    let answers = futures_util::future::join_all(calls).await;

    for ((post, doc), answer) in posts.iter().zip(&docs).zip(&answers) {
        let id = answer.as_ref().expect("written");
        let comments = portal.comments(*post);
        assert_eq!(comments.len(), 1, "exactly one comment on post {post}");
        assert_eq!(comments[0].comment_id, id.0, "its own id came back");
        assert_eq!(comments[0].text, bbcode::render(doc));
    }
    let failure = answers[12].as_ref().expect_err("no such post");
    assert_eq!(failure.kind, FailureKind::Permanent, "{failure}");
    assert_eq!(portal.comment_count(), 12);
    // The first call found a token and went alone; the other twelve waited for the next one.
    assert_eq!(portal.call_count("log.blogcomment.add"), 13);
    assert_eq!(portal.request_count("log.blogcomment.add"), 1);
    assert_eq!(portal.request_count("batch"), 1);
    let limited = portal
        .requests()
        .iter()
        .filter(|r| r.error.as_deref() == Some("QUERY_LIMIT_EXCEEDED"))
        .count();
    assert_eq!(limited, 0);
}
