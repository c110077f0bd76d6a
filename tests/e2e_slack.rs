//! Bitrix24 Live Feed ⇄ Slack, end to end: the real bridge against the fake portal and the
//! fake workspace. Each test asserts exact outcomes: which messages, in which channel and
//! thread, how many.

// matrix-sdk's futures need a deeper trait-resolution limit (shared test support spawns them).
#![recursion_limit = "256"]

mod support;

use livefeed_sandbox::bitrix::{Fault as B24Fault, FaultKind as B24FaultKind, NewFile, NewPost};
use livefeed_sandbox::slack::{Fault as SlackFault, FaultKind as SlackFaultKind, SignMode};
use support::{IVAN_PHOTO, Setup, WAIT, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_for_everyone_becomes_exactly_one_root_message() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all(
        "Quarterly plan",
        "[B]Targets[/B] are set & [URL=https://example.com/plan?q=1&x=2]the plan[/URL] is out.\n[LIST][*]hire[*]ship[/LIST]",
    );
    let root = w.wait_root(&w.news.clone(), post).await;
    w.settle().await;

    assert_eq!(w.roots(&w.news).len(), 1, "exactly one root message");
    assert_eq!(
        w.roots(&w.dev).len(),
        0,
        "a post for all is not a group post"
    );
    assert_eq!(root.username.as_deref(), Some("Ivan Petrov"));
    assert_eq!(root.icon_url.as_deref(), Some(IVAN_PHOTO));
    assert_eq!(root.thread_ts, None, "a root, not a reply");
    let url = format!(
        "{}company/personal/user/{}/blog/{post}/",
        w.portal.base_url(),
        w.ivan
    );
    assert_eq!(
        root.text,
        format!(
            "*Quarterly plan*\n\n*Targets* are set &amp; <https://example.com/plan?q=1&amp;x=2|the plan> is out.\n\n• hire\n• ship\n\n<{url}|Open in Bitrix24>"
        )
    );
    let meta = root.metadata.expect("metadata");
    assert_eq!(meta["event_type"], "b24_feed_post");
    assert_eq!(meta["event_payload"]["b24_post_id"], post.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_post_reaches_only_the_group_channel() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let group_post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Sprint review".into()),
            text: "Friday 15:00".into(),
            dest: vec![format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    );
    let both = w.portal.create_post(
        w.ivan,
        NewPost {
            title: None,
            text: "For everyone and the developers".into(),
            dest: vec!["UA".into(), format!("SG{}", w.group)],
            important: true,
            files: Vec::new(),
        },
    );
    w.wait_root(&w.dev.clone(), group_post).await;
    let news_root = w.wait_root(&w.news.clone(), both).await;
    w.wait_root(&w.dev.clone(), both).await;
    w.settle().await;
    assert!(
        w.root_for(&w.news, group_post).is_none(),
        "a group post never reaches the company channel"
    );
    assert_eq!(w.roots(&w.news).len(), 1);
    assert_eq!(w.roots(&w.dev).len(), 2);
    // Micro post: no title line; important: marked.
    assert!(
        news_root
            .text
            .starts_with("❗ *Important*\n\nFor everyone and the developers"),
        "{}",
        news_root.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_update_and_deletions_delete_the_root_message() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Menu", "Soup on Monday");
    let root = w.wait_root(&w.news.clone(), post).await;
    w.portal
        .update_post(post, Some("Menu (updated)".into()), "Soup on Tuesday");
    let (news, ts) = (w.news.clone(), root.ts.clone());
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .message(&news, &ts)
                .is_some_and(|m| m.text.contains("Soup on Tuesday")))
            .await,
        "edit never arrived"
    );
    let edited = w.slack.message(&news, &ts).unwrap();
    assert!(edited.edited);
    assert!(
        edited.text.starts_with("*Menu (updated)*"),
        "{}",
        edited.text
    );

    w.portal.delete_post(post);
    assert!(
        w.slack
            .wait_until(WAIT, |s| s.message(&news, &ts).is_none())
            .await,
        "deletion never arrived"
    );
    assert!(w.slack.was_deleted(&news, &ts));
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 0);
    assert_eq!(w.slack.request_count("chat.postMessage"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_become_attributed_comments_and_deletions_follow() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Offsite", "Where shall we go?");
    let other = w.post_all("Unrelated", "Nothing to see");
    let root = w.wait_root(&w.news.clone(), post).await;
    w.wait_root(&w.news.clone(), other).await;

    let reply = w
        .slack
        .reply(&w.anna, &w.news, &root.ts, "The lake & the *forest*", false);
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(
        comments,
        vec!["[B]Anna Smirnova[/B] (Slack): The lake & the [B]forest[/B]".to_string()]
    );
    let broadcast = w
        .slack
        .reply(&w.anna, &w.news, &root.ts, "Also in the channel", true);
    w.wait_comments(post, 2).await;
    w.settle().await;
    assert_eq!(
        w.comments(other),
        Vec::<String>::new(),
        "replies land on the right post only"
    );
    assert_eq!(w.comments(post).len(), 2);
    // The post now has 2 comments, both the bridge's own: the root does not count them.
    assert!(!w.root_for(&w.news, post).unwrap().text.contains("comment"));

    w.slack.delete(&w.anna, &w.news, &reply);
    w.wait_comments(post, 1).await;
    w.slack.delete(&w.anna, &w.news, &broadcast);
    w.wait_comments(post, 0).await;
    w.settle().await;
    assert_eq!(w.portal.call_count("log.blogcomment.add"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_replies_replace_their_comment() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Poll", "Pizza or sushi?");
    let root = w.wait_root(&w.news.clone(), post).await;
    let reply = w.slack.reply(&w.anna, &w.news, &root.ts, "Pizza", false);
    w.wait_comments(post, 1).await;
    w.slack.edit(&w.anna, &w.news, &reply, "Sushi, actually");
    assert!(
        w.portal
            .wait_until(WAIT, |p| p
                .comments(post)
                .iter()
                .any(|c| c.text.ends_with("Sushi, actually")))
            .await
    );
    w.settle().await;
    assert_eq!(
        w.comments(post),
        vec!["[B]Anna Smirnova[/B] (Slack): Sushi, actually".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bots_own_messages_never_come_back() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Echo test", "Original");
    let root = w.wait_root(&w.news.clone(), post).await;
    w.portal
        .update_post(post, Some("Echo test".into()), "Edited");
    let (news, ts) = (w.news.clone(), root.ts.clone());
    assert!(
        w.slack
            .wait_until(WAIT, |s| s.message(&news, &ts).is_some_and(|m| m.edited))
            .await
    );
    // A human's top-level message is not a reply either.
    w.slack.post(&w.anna, &w.news, "hello channel");
    w.settle().await;
    let echoes = w
        .slack
        .events_sent()
        .into_iter()
        .filter(|e| {
            e["event"]["bot_id"] == w.slack.config().bot_id
                || e["event"]["message"]["bot_id"] == w.slack.config().bot_id
        })
        .count();
    assert!(
        echoes >= 2,
        "the fake echoed the bot's post and edit ({echoes})"
    );
    assert_eq!(w.portal.call_count("log.blogcomment.add"), 0);
    assert_eq!(w.comments(post), Vec::<String>::new());
    assert_eq!(w.slack.request_count("chat.postMessage"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_repost_nothing_and_catch_up_on_what_happened_meanwhile() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let before = w.post_all("Before", "posted while running");
    let root = w.wait_root(&w.news.clone(), before).await;
    w.settle().await;
    w.stop().await;

    let during = w.post_all("During", "posted while the bridge was down");
    // A reply made while the bridge is down is queued by Slack and delivered on reconnect.
    w.slack.reply(
        &w.anna,
        &w.news,
        &root.ts,
        "written during the outage",
        false,
    );
    w.start().await;
    w.wait_root(&w.news.clone(), during).await;
    w.wait_comments(before, 1).await;
    w.settle().await;

    // And a crash (no graceful stop) repeats nothing either.
    w.crash().await;
    w.start().await;
    let after = w.post_all("After", "posted after the crash");
    w.wait_root(&w.news.clone(), after).await;
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 3);
    assert_eq!(w.slack.request_count("chat.postMessage"), 3);
    assert_eq!(w.comments(before).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_on_both_sides_still_give_exactly_one_of_each() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    // Two audiences are watched, so the feed is read with one `batch` per cycle.
    w.portal.inject(B24Fault {
        method: Some("batch".into()),
        kind: B24FaultKind::QueryLimitExceeded,
        times: 3,
    });
    w.slack.inject(
        SlackFault::on(
            "chat.postMessage",
            SlackFaultKind::RateLimited { retry_after: 1 },
        )
        .times(1),
    );
    let post = w.post_all("Under pressure", "rate limited on both sides");
    let root = w.wait_root(&w.news.clone(), post).await;

    w.portal.inject(B24Fault {
        method: Some("log.blogcomment.add".into()),
        kind: B24FaultKind::QueryLimitExceeded,
        times: 2,
    });
    w.slack
        .reply(&w.anna, &w.news, &root.ts, "still one comment", false);
    w.wait_comments(post, 1).await;
    w.settle().await;
    assert_eq!(w.roots(&w.news).len(), 1);
    assert_eq!(w.comments(post).len(), 1);
    let limited = w
        .slack
        .requests()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    assert_eq!(limited, 1, "the injected 429 was hit");
    assert_eq!(
        w.slack.rate_limit_violations(),
        0,
        "nothing was sent inside the Retry-After window"
    );
    assert_eq!(
        w.portal
            .requests()
            .iter()
            .filter(|r| r.status == 503)
            .count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_refresh_mid_stream_loses_nothing() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Busy thread", "reply away");
    let root = w.wait_root(&w.news.clone(), post).await;
    let mut replies = Vec::new();
    for i in 0..6 {
        replies.push(w.slack.reply(
            &w.anna,
            &w.news,
            &root.ts,
            &format!("reply number {i}"),
            false,
        ));
        if i == 2 {
            w.slack.disconnect_sockets("refresh_requested");
        }
    }
    w.wait_comments(post, 6).await;
    w.settle().await;
    let mut got = w.comments(post);
    got.sort();
    let want: Vec<String> = (0..6)
        .map(|i| format!("[B]Anna Smirnova[/B] (Slack): reply number {i}"))
        .collect();
    assert_eq!(got, want);
    assert!(w.slack.acks() >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_api_delivery_is_verified_and_bridged() {
    let mut w = World::new(Setup {
        events_api: true,
        ..Setup::default()
    })
    .await;
    w.start().await;
    let post = w.post_all("Over HTTP", "Events API mode");
    let root = w.wait_root(&w.news.clone(), post).await;
    w.slack
        .reply(&w.anna, &w.news, &root.ts, "signed and delivered", false);
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(
        comments,
        vec!["[B]Anna Smirnova[/B] (Slack): signed and delivered".to_string()]
    );

    let url = format!(
        "http://{}/slack/events",
        w.running.as_ref().unwrap().http_addr
    );
    let body = r#"{"type":"url_verification","challenge":"c-123"}"#;
    let ok = w
        .slack
        .send_signed(&url, body.as_bytes(), SignMode::Valid)
        .await
        .unwrap();
    assert_eq!((ok.status, ok.body.as_str()), (200, "c-123"));
    let bad = w
        .slack
        .send_signed(&url, body.as_bytes(), SignMode::BadSignature)
        .await
        .unwrap();
    assert_eq!(bad.status, 401);
    let stale = w
        .slack
        .send_signed(&url, body.as_bytes(), SignMode::StaleTimestamp)
        .await
        .unwrap();
    assert_eq!(stale.status, 401);
    w.settle().await;
    assert_eq!(w.comments(post).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_comments_keep_the_count_line_current_without_counting_the_bridges_own() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.post_all("Lunch", "Who is in?");
    let root = w.wait_root(&w.news.clone(), post).await;
    // A comment from the chat (the bridge's own) does not count…
    w.slack.reply(&w.anna, &w.news, &root.ts, "me!", false);
    w.wait_comments(post, 1).await;
    // …comments people write in Bitrix24 do.
    w.portal.add_comment(post, w.olga, "Count me in");
    w.portal.add_comment(post, w.ivan, "Great");
    let (news, ts) = (w.news.clone(), root.ts.clone());
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .message(&news, &ts)
                .is_some_and(|m| m.text.contains("2 comments in Bitrix24")))
            .await,
        "count line never appeared: {:?}",
        w.slack.message(&news, &ts).map(|m| m.text)
    );
    let comment = w
        .portal
        .comments(post)
        .into_iter()
        .find(|c| c.author == w.olga)
        .unwrap();
    w.portal.delete_comment(comment.comment_id);
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .message(&news, &ts)
                .is_some_and(|m| m.text.ends_with("|1 comment in Bitrix24>")))
            .await
    );
    w.settle().await;
    assert_eq!(w.slack.request_count("chat.postMessage"), 1);
}

/// Comments on one post are written in the order their replies were made, whichever channels
/// they come from: one at a time per post. That is also what lets a comment repeated after a
/// crash be the bridge's latest on its post, which the portal's duplicate rule recognises;
/// written side by side, a second channel's comment could slip in between and the repeat
/// would become a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_one_post_from_two_channels_become_comments_in_order() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Both channels".into()),
            text: "reply in either".into(),
            dest: vec!["UA".into(), format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    );
    let news_root = w.wait_root(&w.news.clone(), post).await;
    let dev_root = w.wait_root(&w.dev.clone(), post).await;
    // Both roots recorded, not only visible in Slack: a reply in a thread whose root is not
    // recorded yet has a lane of its own until it is, and the order below is the per-post
    // lane's promise.
    w.settle().await;
    // The first comment takes a while to be written.
    w.portal.inject(B24Fault {
        method: Some("log.blogcomment.add".into()),
        kind: B24FaultKind::Delay(std::time::Duration::from_millis(800)),
        times: 1,
    });
    w.slack
        .reply(&w.anna, &w.news, &news_root.ts, "first, from news", false);
    assert!(
        w.portal.wait_until(WAIT, |p| p.faults_left() == 0).await,
        "the first comment is on its way"
    );
    w.slack.reply(
        &w.anna,
        &w.dev,
        &dev_root.ts,
        "second, from developers",
        false,
    );
    w.wait_comments(post, 2).await;
    w.settle().await;
    assert_eq!(
        w.comments(post),
        [
            "[B]Anna Smirnova[/B] (Slack): first, from news",
            "[B]Anna Smirnova[/B] (Slack): second, from developers",
        ]
    );
}

fn pinned(m: &livefeed_sandbox::slack::MessageView) -> bool {
    m.raw.get("pinned_to").is_some()
}

/// Wait until `post`'s root message in `channel` satisfies `pred`.
async fn wait_root_where(
    w: &World,
    channel: &str,
    post: u64,
    what: &str,
    pred: impl Fn(&livefeed_sandbox::slack::MessageView) -> bool,
) {
    let ok = w
        .slack
        .wait_until(WAIT, |s| {
            s.history(channel).iter().any(|m| {
                m.metadata
                    .as_ref()
                    .and_then(|md| md["event_payload"]["b24_post_id"].as_str())
                    == Some(post.to_string().as_str())
                    && pred(m)
            })
        })
        .await;
    assert!(
        ok,
        "post {post}: {what}; root: {:?}",
        w.root_for(channel, post)
    );
}

/// An important post's root message is pinned while the post is important and shows how many
/// have read it; when the importance ends, by an edit or by its end date, the message is
/// unpinned and the mark goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_important_post_is_pinned_shows_its_readers_and_is_unpinned_when_it_ends() {
    let mut w = World::new(Setup::default()).await;
    w.extra_config = "important: { readers_interval: 100ms }\n".into();
    w.start().await;
    let news = w.news.clone();
    let post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Travel policy".into()),
            text: "Read and confirm.".into(),
            dest: vec!["UA".into()],
            important: true,
            files: Vec::new(),
        },
    );
    // The portal counts the author as a reader of their own important post.
    wait_root_where(&w, &news, post, "pinned, read by 1", |m| {
        pinned(m)
            && m.text
                .starts_with("❗ *Important* · Read by 1\n\n*Travel policy*")
    })
    .await;
    w.portal.read_important(post, w.olga);
    wait_root_where(&w, &news, post, "read by 2", |m| {
        m.text.starts_with("❗ *Important* · Read by 2\n")
    })
    .await;
    let third = w.portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Pavel".into(),
        last_name: "Orlov".into(),
        active: true,
        ..Default::default()
    });
    w.portal.read_important(post, third);
    wait_root_where(&w, &news, post, "read by 3", |m| {
        m.text.starts_with("❗ *Important* · Read by 3\n")
    })
    .await;
    // The author takes the mark off.
    w.portal.set_important(post, false);
    wait_root_where(&w, &news, post, "unpinned and unmarked", |m| {
        !pinned(m) && m.text.starts_with("*Travel policy*")
    })
    .await;

    // Important until a moment from now: pinned, then unpinned when the date passes.
    let until = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Fire drill".into()),
            text: "Today only.".into(),
            dest: vec!["UA".into()],
            important: false,
            files: Vec::new(),
        },
    );
    w.wait_root(&news, until).await;
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2;
    w.portal.set_important_until(until, end);
    wait_root_where(&w, &news, until, "pinned until the end date", |m| {
        pinned(m) && m.text.starts_with("❗ *Important*")
    })
    .await;
    wait_root_where(&w, &news, until, "unpinned after the end date", |m| {
        !pinned(m) && m.text.starts_with("*Fire drill*")
    })
    .await;
    w.settle().await;
    assert_eq!(w.slack.request_count("pins.add"), 2);
    assert_eq!(w.slack.request_count("pins.remove"), 2);
    assert_eq!(w.roots(&news).len(), 2, "one root message per post");
}

/// Bytes that start like a PDF and like a PNG: the fakes and Slack look at names and types,
/// not at the pictures.
fn pdf_bytes() -> Vec<u8> {
    let mut b = b"%PDF-1.4\n% livefeed test\n".to_vec();
    b.extend((0..1_000u32).map(|i| (i % 251) as u8));
    b
}

fn png_bytes() -> Vec<u8> {
    let mut b = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    b.extend((0..600u32).map(|i| (i % 239) as u8));
    b
}

/// The bot's messages in a thread, waiting until there are `n`.
async fn wait_bot_replies(
    w: &World,
    channel: &str,
    root: &str,
    what: &str,
    pred: impl Fn(&[livefeed_sandbox::slack::MessageView]) -> bool,
) -> Vec<livefeed_sandbox::slack::MessageView> {
    let bot = w.slack.config().bot_id.clone();
    let replies =
        |s: &livefeed_sandbox::slack::FakeSlack| -> Vec<livefeed_sandbox::slack::MessageView> {
            s.thread(channel, root)
                .into_iter()
                .filter(|m| m.ts != root && m.bot_id.as_deref() == Some(bot.as_str()))
                .collect()
        };
    let ok = w.slack.wait_until(WAIT, |s| pred(&replies(s))).await;
    assert!(ok, "{what}: {:?}", replies(&w.slack));
    replies(&w.slack)
}

/// (name, content) of every file in these messages, sorted by name.
fn files_in(
    w: &World,
    messages: &[livefeed_sandbox::slack::MessageView],
) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = messages
        .iter()
        .flat_map(|m| m.files.iter())
        .map(|f| {
            (
                f.name.clone(),
                w.slack.file_content(&f.id).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A post with a PDF and an image gives exactly those two files in its thread, with their
/// bytes; a file over `files.max_bytes` becomes one link to the post. A file taken off the
/// post later leaves the thread, and one added appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posts_files_are_files_in_its_thread_and_a_large_one_is_a_link() {
    let mut w = World::new(Setup::default()).await;
    w.extra_config = "files: { max_bytes: 4KB }\n".into();
    w.start().await;
    let news = w.news.clone();
    let post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Regulations".into()),
            text: "New rules, see the files.".into(),
            dest: vec!["UA".into()],
            important: false,
            files: vec![
                NewFile {
                    name: "rules.pdf".into(),
                    bytes: pdf_bytes(),
                },
                NewFile {
                    name: "office.png".into(),
                    bytes: png_bytes(),
                },
                NewFile {
                    name: "recording.zip".into(),
                    bytes: vec![7; 10_000],
                },
            ],
        },
    );
    let root = w.wait_root(&news, post).await;
    let replies = wait_bot_replies(&w, &news, &root.ts, "two files and a link", |r| {
        r.len() == 3
    })
    .await;
    assert_eq!(
        files_in(&w, &replies),
        vec![
            ("office.png".to_string(), png_bytes()),
            ("rules.pdf".to_string(), pdf_bytes()),
        ]
    );
    let links: Vec<&livefeed_sandbox::slack::MessageView> =
        replies.iter().filter(|m| m.files.is_empty()).collect();
    assert_eq!(links.len(), 1);
    let url = format!(
        "{}company/personal/user/{}/blog/{post}/",
        w.portal.base_url(),
        w.ivan
    );
    assert_eq!(
        links[0].text,
        format!(
            "📎 <{url}|recording.zip> (9.8 KB): too large to attach here; open the post in Bitrix24"
        )
    );

    // The author swaps the picture for an agenda.
    let png_id = w
        .portal
        .post_files(post)
        .into_iter()
        .find(|(_, name)| name == "office.png")
        .expect("attached")
        .0;
    w.portal.remove_post_file(post, png_id);
    w.portal
        .add_post_file(post, "agenda.txt", b"1. rules\n2. questions\n");
    let replies = wait_bot_replies(&w, &news, &root.ts, "picture swapped for the agenda", |r| {
        let names: Vec<&str> = r
            .iter()
            .flat_map(|m| m.files.iter())
            .map(|f| f.name.as_str())
            .collect();
        names.len() == 2 && names.contains(&"agenda.txt") && names.contains(&"rules.pdf")
    })
    .await;
    w.settle().await;
    assert_eq!(
        files_in(&w, &replies),
        vec![
            (
                "agenda.txt".to_string(),
                b"1. rules\n2. questions\n".to_vec()
            ),
            ("rules.pdf".to_string(), pdf_bytes()),
        ]
    );
    assert_eq!(
        w.slack.ok_count("files.completeUploadExternal"),
        3,
        "no file sent twice"
    );
    assert_eq!(w.roots(&news).len(), 1);
}

/// A Slack reply with an image becomes one comment that carries the image; a file over the
/// limit stays in Slack and the comment says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_reply_with_an_image_is_one_comment_carrying_it() {
    let mut w = World::new(Setup::default()).await;
    w.extra_config = "files: { max_bytes: 4KB }\n".into();
    w.start().await;
    let news = w.news.clone();
    let post = w.post_all("Office move", "Send photos of your desk.");
    let root = w.wait_root(&news, post).await;
    w.slack.reply_with_file(
        &w.anna,
        &news,
        &root.ts,
        "Here is mine",
        "desk.png",
        &png_bytes(),
    );
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(
        comments,
        vec!["[B]Anna Smirnova[/B] (Slack): Here is mine".to_string()]
    );
    let first = w.portal.comments(post)[0].comment_id;
    assert_eq!(
        w.portal.comment_files(first),
        vec![("desk.png".to_string(), png_bytes())]
    );

    w.slack
        .reply_with_file(&w.anna, &news, &root.ts, "", "video.mp4", &[1; 9_000]);
    let comments = w.wait_comments(post, 2).await;
    assert_eq!(
        comments[1],
        "[B]Anna Smirnova[/B] (Slack): [I]📎 video.mp4 (8.8 KB) was too large to attach; it is in the Slack thread.[/I]"
    );
    let second = w.portal.comments(post)[1].comment_id;
    assert!(w.portal.comment_files(second).is_empty());
    w.settle().await;
    assert_eq!(w.portal.comment_count(), 2);
}

/// A picture a post shows (`[IMG]`) is fetched from its address and put into the thread as a
/// file; an inline `[DISK FILE ID=…]` shows the attached file's name in the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picture_in_a_posts_text_is_a_file_in_its_thread() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A web server with one picture on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = png_bytes();
    let body = served.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let news = w.news.clone();
    let post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Floor plan".into()),
            text: format!("The new floor: [IMG]http://{addr}/img/floor.png[/IMG] and the rules:"),
            dest: vec!["UA".into()],
            important: false,
            files: vec![NewFile {
                name: "rules.pdf".into(),
                bytes: pdf_bytes(),
            }],
        },
    );
    let attached = w.portal.post_files(post)[0].0;
    w.portal.update_post(
        post,
        Some("Floor plan".into()),
        &format!("The new floor: [IMG]http://{addr}/img/floor.png[/IMG] and the rules: [DISK FILE ID={attached}]"),
    );
    let root = w.wait_root(&news, post).await;
    let replies = wait_bot_replies(&w, &news, &root.ts, "the picture and the PDF", |r| {
        r.iter().map(|m| m.files.len()).sum::<usize>() == 2
    })
    .await;
    w.settle().await;
    assert_eq!(
        files_in(&w, &replies),
        vec![
            ("floor.png".to_string(), served),
            ("rules.pdf".to_string(), pdf_bytes()),
        ]
    );
    let root = w.root_for(&news, post).expect("mirrored");
    assert!(root.text.contains("📎 rules.pdf"), "{}", root.text);
    assert_eq!(w.slack.ok_count("files.completeUploadExternal"), 2);
}

/// A webhook without the `disk` scope cannot describe or download a post's files: the post is
/// mirrored without them, the side stays up, and later posts flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_disk_scope_posts_are_mirrored_without_their_files() {
    let mut w = World::new(Setup::default()).await;
    w.portal
        .set_scopes(&["log", "user", "department", "sonet_group"]);
    w.start().await;
    let news = w.news.clone();
    let with_file = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Regulations".into()),
            text: "See the file.".into(),
            dest: vec!["UA".into()],
            important: false,
            files: vec![NewFile {
                name: "rules.pdf".into(),
                bytes: pdf_bytes(),
            }],
        },
    );
    let root = w.wait_root(&news, with_file).await;
    let later = w.post_all("Later", "Still flowing.");
    w.wait_root(&news, later).await;
    w.settle().await;
    assert!(
        w.slack.thread(&news, &root.ts).len() == 1,
        "no file in the thread: {:?}",
        w.slack.thread(&news, &root.ts)
    );
    assert_eq!(w.slack.request_count("files.getUploadURLExternal"), 0);
    let (status, ready) = w.readyz().await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["sides"]["bitrix24"]["auth_failed"], false);
}

/// People linked by e-mail (Anna: the same address in both directories, in another case) or
/// by the config (Olga ⇄ Bob) are mentioned so that they are notified: `<@U…>` in Slack,
/// `[USER=n]` in the feed. Everyone else stays a plain name, and a channel broadcast never
/// becomes a mention in the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_of_linked_people_notify_on_the_other_side() {
    let mut w = World::new(Setup::default()).await;
    let anna_b24 = w.portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Anna".into(),
        last_name: "Smirnova".into(),
        email: Some("Anna@Example.com".into()),
        ..Default::default()
    });
    let bob = w
        .slack
        .add_user(livefeed_sandbox::slack::NewUser::new("bob", "Bob Jones"));
    let carl = w
        .slack
        .add_user(livefeed_sandbox::slack::NewUser::new("carl", "Carl Ray"));
    w.extra_config = format!(
        "people:\n  links:\n    - {{ bitrix: {}, slack: {bob} }}\n",
        w.olga
    );
    w.start().await;

    let post = w.post_all(
        "Rules",
        &format!(
            "[USER={anna_b24}]Anna Smirnova[/USER], [USER={olga}]Olga Kuznetsova[/USER] and [USER={ivan}]Ivan Petrov[/USER]: please read",
            olga = w.olga,
            ivan = w.ivan
        ),
    );
    let root = w.wait_root(&w.news.clone(), post).await;
    assert!(
        root.text.starts_with(&format!(
            "*Rules*\n\n<@{}>, <@{bob}> and Ivan Petrov: please read\n\n",
            w.anna
        )),
        "{}",
        root.text
    );

    w.slack.reply(
        &w.anna,
        &w.news,
        &root.ts,
        &format!("Done @{} @{bob} @{carl} @channel", w.anna),
        false,
    );
    // Anna is linked and the webhook's user is an administrator: the comment is her own.
    w.wait_comments(post, 1).await;
    let comment = &w.portal.comments(post)[0];
    assert_eq!(
        comment.text,
        format!(
            "Done [USER={anna_b24}]Anna Smirnova[/USER] [USER={}]Bob Jones[/USER] @Carl Ray @channel",
            w.olga
        )
    );
    assert_eq!(comment.author, anna_b24);
}

/// With an administrator's webhook, a linked person's reply is written as their own comment,
/// without the attribution line, and edits and deletions follow it; an unlinked person's
/// reply keeps the attribution; `people.comments_as_author: false` keeps it for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_persons_reply_is_their_own_comment() {
    let mut w = World::new(Setup::default()).await;
    let anna_b24 = w.portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Anna".into(),
        last_name: "Smirnova".into(),
        email: Some("anna@example.com".into()),
        ..Default::default()
    });
    let carl = w
        .slack
        .add_user(livefeed_sandbox::slack::NewUser::new("carl", "Carl Ray"));
    w.start().await;
    let post = w.post_all("Offsite", "Where shall we go?");
    let root = w.wait_root(&w.news.clone(), post).await;

    let reply = w.slack.reply(&w.anna, &w.news, &root.ts, "The lake", false);
    w.wait_comments(post, 1).await;
    w.slack.reply(&carl, &w.news, &root.ts, "The forest", false);
    w.wait_comments(post, 2).await;
    let by = |p: &World| -> Vec<(u64, String)> {
        p.portal
            .comments(post)
            .into_iter()
            .map(|c| (c.author, c.text))
            .collect()
    };
    assert_eq!(
        by(&w),
        vec![
            (anna_b24, "The lake".to_string()),
            (1, "[B]Carl Ray[/B] (Slack): The forest".to_string()),
        ]
    );

    // Her edit replaces her comment, still as her; her deletion deletes it.
    w.slack.edit(&w.anna, &w.news, &reply, "The sea");
    assert!(
        w.portal
            .wait_until(WAIT, |p| p
                .comments(post)
                .iter()
                .any(|c| c.text == "The sea"))
            .await
    );
    w.settle().await;
    assert_eq!(
        by(&w),
        vec![
            (1, "[B]Carl Ray[/B] (Slack): The forest".to_string()),
            (anna_b24, "The sea".to_string()),
        ]
    );
    w.slack.delete(&w.anna, &w.news, &reply);
    w.wait_comments(post, 1).await;

    // Switched off, everyone is attributed again (as with a webhook of a non-administrator,
    // below).
    w.stop().await;
    w.extra_config = "people:\n  comments_as_author: false\n".into();
    w.start().await;
    w.slack
        .reply(&w.anna, &w.news, &root.ts, "Back again", false);
    w.wait_comments(post, 2).await;
    assert_eq!(
        by(&w)[1],
        (1, "[B]Anna Smirnova[/B] (Slack): Back again".to_string())
    );
}

/// One post in two channels is one conversation: a reply in either thread is copied into the
/// other, under its author's name and the channel's platform, once; edits and deletions
/// follow; the feed gets each reply once; a mapping with `mirror_replies: false` keeps its
/// thread to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_one_channel_are_copied_into_the_posts_other_channels() {
    let mut w = World::new(Setup::default()).await;
    let all_hands = w.slack.add_channel("all-hands", false, true);
    let quiet = w.slack.add_channel("quiet", false, true);
    w.extra_mappings = format!(
        "  - name: all-hands\n    audience: [all]\n    slack: {{ channel: {all_hands} }}\n  - name: quiet\n    audience: [all]\n    slack: {{ channel: {quiet} }}\n    mirror_replies: false\n"
    );
    let carl = w
        .slack
        .add_user(livefeed_sandbox::slack::NewUser::new("carl", "Carl Ray"));
    w.start().await;
    let post = w.post_all("Offsite", "Where shall we go?");
    let news_root = w.wait_root(&w.news.clone(), post).await;
    let hands_root = w.wait_root(&all_hands, post).await;
    let quiet_root = w.wait_root(&quiet, post).await;

    let bot = w.slack.config().bot_id.clone();
    let copies = |w: &World, channel: &str, root: &str| -> Vec<(String, String)> {
        w.slack
            .thread(channel, root)
            .into_iter()
            .skip(1)
            .filter(|m| m.bot_id.as_deref() == Some(bot.as_str()))
            .map(|m| (m.username.unwrap_or_default(), m.text))
            .collect()
    };
    let wait_copies = |channel: String, root: String, n: usize| {
        let bot = bot.clone();
        let slack = w.slack.clone();
        async move {
            assert!(
                slack
                    .wait_until(WAIT, |s| s
                        .thread(&channel, &root)
                        .iter()
                        .skip(1)
                        .filter(|m| m.bot_id.as_deref() == Some(bot.as_str()))
                        .count()
                        == n)
                    .await,
                "{n} copies in {channel}"
            );
        }
    };

    let reply = w
        .slack
        .reply(&w.anna, &w.news, &news_root.ts, "The lake", false);
    wait_copies(all_hands.clone(), hands_root.ts.clone(), 1).await;
    w.slack
        .reply(&carl, &all_hands, &hands_root.ts, "The forest", false);
    wait_copies(w.news.clone(), news_root.ts.clone(), 1).await;
    w.wait_comments(post, 2).await;
    w.settle().await;
    assert_eq!(
        copies(&w, &all_hands, &hands_root.ts),
        vec![("Anna Smirnova (Slack)".to_string(), "The lake".to_string())]
    );
    assert_eq!(
        copies(&w, &w.news, &news_root.ts),
        vec![("Carl Ray (Slack)".to_string(), "The forest".to_string())]
    );
    assert_eq!(
        copies(&w, &quiet, &quiet_root.ts),
        vec![],
        "mirror_replies: false"
    );
    assert_eq!(w.comments(post).len(), 2, "each reply once in the feed");

    w.slack.edit(&w.anna, &w.news, &reply, "The sea");
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .thread(&all_hands, &hands_root.ts)
                .iter()
                .any(|m| m.text == "The sea"))
            .await
    );
    w.slack.delete(&w.anna, &w.news, &reply);
    wait_copies(all_hands.clone(), hands_root.ts.clone(), 0).await;
    w.wait_comments(post, 1).await;
    w.settle().await;
    assert_eq!(
        copies(&w, &w.news, &news_root.ts).len(),
        1,
        "Carl's copy stays"
    );
}

/// In a mapping with `posts_from_chat`, a person's top-level message becomes a feed post for
/// the mapping's audience; the message is its root there (the bot sends none), other mappings of
/// that audience get a root as usual, replies in its thread become comments, and the message's
/// edit and deletion follow the post.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_a_posting_channel_becomes_a_feed_post() {
    let mut w = World::new(Setup::default()).await;
    let board = w.slack.add_channel("board", false, true);
    w.extra_mappings = format!(
        "  - name: board\n    audience: [group:{}]\n    slack: {{ channel: {board} }}\n    posts_from_chat: true\n",
        w.group
    );
    w.start().await;
    let before = w.portal.posts().len();
    let ts = w.slack.post(&w.anna, &board, "Release *tonight*");
    assert!(
        w.portal
            .wait_until(WAIT, |p| p.posts().len() == before + 1)
            .await,
        "the message became a post"
    );
    let post = w.portal.posts().last().unwrap().clone();
    assert_eq!(
        post.text,
        "[B]Anna Smirnova[/B] (Slack): Release [B]tonight[/B]"
    );
    assert_eq!(post.dest, vec![format!("SG{}", w.group)]);
    assert_eq!(post.author, 1, "attributed, written by the webhook's user");

    // The group's other channel gets a root; the board keeps the person's message only.
    let dev_root = w.wait_root(&w.dev.clone(), post.id).await;
    assert!(
        dev_root.text.contains("Release *tonight*"),
        "{}",
        dev_root.text
    );
    w.settle().await;
    assert_eq!(
        w.roots(&board).len(),
        0,
        "no second root where it was written"
    );
    assert!(
        w.root_for(&w.news, post.id).is_none(),
        "a group post stays in the group"
    );

    // Its thread works both ways: a reply there is a comment and a copy in the other
    // channel's thread, and a reply there comes back into the message's thread.
    w.slack.reply(&w.anna, &board, &ts, "Count me in", false);
    assert_eq!(
        w.wait_comments(post.id, 1).await,
        vec!["[B]Anna Smirnova[/B] (Slack): Count me in".to_string()]
    );
    let bot = w.slack.config().bot_id.clone();
    let copies =
        |s: &livefeed_sandbox::slack::FakeSlack, channel: &str, root: &str| -> Vec<String> {
            s.thread(channel, root)
                .into_iter()
                .filter(|m| m.bot_id.as_deref() == Some(bot.as_str()) && m.ts != root)
                .map(|m| m.text)
                .collect()
        };
    assert!(
        w.slack
            .wait_until(WAIT, |s| copies(s, &w.dev, &dev_root.ts) == ["Count me in"])
            .await,
        "copied into the other channel: {:?}",
        copies(&w.slack, &w.dev, &dev_root.ts)
    );
    w.slack
        .reply(&w.anna, &w.dev, &dev_root.ts, "Me too", false);
    assert!(
        w.slack
            .wait_until(WAIT, |s| copies(s, &board, &ts) == ["Me too"])
            .await,
        "copied into the message's thread: {:?}",
        copies(&w.slack, &board, &ts)
    );
    w.wait_comments(post.id, 2).await;

    w.slack.edit(&w.anna, &board, &ts, "Release tomorrow");
    assert!(
        w.portal
            .wait_until(WAIT, |p| p.post(post.id).unwrap().text
                == "[B]Anna Smirnova[/B] (Slack): Release tomorrow")
            .await,
        "the edit reached the post"
    );
    assert!(
        w.slack
            .wait_until(WAIT, |s| s
                .history(&w.dev)
                .iter()
                .any(|m| m.ts == dev_root.ts && m.text.contains("Release tomorrow")))
            .await,
        "and the other channel's root"
    );

    w.slack.delete(&w.anna, &board, &ts);
    assert!(
        w.portal
            .wait_until(WAIT, |p| p.post(post.id).unwrap().deleted)
            .await,
        "the deletion reached the post"
    );
    assert!(
        w.slack
            .wait_until(WAIT, |_| w.root_for(&w.dev, post.id).is_none())
            .await,
        "and removed the other channel's root"
    );
    // The person's message was theirs to delete; the bridge never tried.
    assert_eq!(
        w.slack.ok_count("chat.delete"),
        1,
        "only the other channel's root"
    );
    w.settle().await;
    assert_eq!(w.portal.posts().len(), before + 1, "one post, never two");
}

/// With a webhook whose user is not a portal administrator, a linked person's reply is
/// attributed like anyone's, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_webhook_every_comment_is_attributed() {
    let mut w = World::new(Setup {
        non_admin_webhook: true,
        ..Setup::default()
    })
    .await;
    w.portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Anna".into(),
        last_name: "Smirnova".into(),
        email: Some("anna@example.com".into()),
        ..Default::default()
    });
    w.start().await;
    let post = w.post_all("Offsite", "Where shall we go?");
    let root = w.wait_root(&w.news.clone(), post).await;
    w.slack.reply(&w.anna, &w.news, &root.ts, "The lake", false);
    w.wait_comments(post, 1).await;
    w.settle().await;
    let comments = w.portal.comments(post);
    assert_eq!(
        (comments[0].author, comments[0].text.as_str()),
        (1, "[B]Anna Smirnova[/B] (Slack): The lake")
    );
    let (status, body) = w.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_letters"], 0, "nothing failed: {body}");
}

/// A post shared later with more people reaches another channel late: that channel's thread
/// gets the conversation so far, each reply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_gets_a_post_late_gets_its_conversation_so_far() {
    let mut w = World::new(Setup::default()).await;
    w.start().await;
    let post = w.portal.create_post(
        w.ivan,
        NewPost {
            title: Some("Group first".into()),
            text: "for the group".into(),
            dest: vec![format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    );
    let dev_root = w.wait_root(&w.dev.clone(), post).await;
    w.settle().await;
    w.slack
        .reply(&w.anna, &w.dev, &dev_root.ts, "Early reply", false);
    w.wait_comments(post, 1).await;
    w.settle().await;

    w.portal.share_post(post, vec!["UA".into()]);
    let news_root = w.wait_root(&w.news.clone(), post).await;
    let bot = w.slack.config().bot_id.clone();
    let copies = |s: &livefeed_sandbox::slack::FakeSlack| -> Vec<(Option<String>, String)> {
        s.thread(&w.news, &news_root.ts)
            .into_iter()
            .filter(|m| m.bot_id.as_deref() == Some(bot.as_str()) && m.ts != news_root.ts)
            .map(|m| (m.username, m.text))
            .collect()
    };
    assert!(
        w.slack.wait_until(WAIT, |s| !copies(s).is_empty()).await,
        "the conversation reached the late channel"
    );
    w.settle().await;
    assert_eq!(
        copies(&w.slack),
        vec![(
            Some("Anna Smirnova (Slack)".to_string()),
            "Early reply".to_string()
        )]
    );
    assert_eq!(w.comments(post).len(), 1);
}
