//! Bitrix24 Live Feed ⇄ Matrix, end to end against a real Synapse (scripts/synapse.sh) and the
//! fake portal. Skipped, with a notice, when no homeserver is configured.

#![recursion_limit = "256"]

mod support;

use matrix_sdk::ruma::OwnedEventId;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, Relation,
};
use support::matrix::Homeserver;
use support::{Setup, World};

macro_rules! homeserver {
    ($test:literal) => {
        match Homeserver::from_env_or_skip($test) {
            Some(hs) => hs,
            None => return,
        }
    };
}

fn matrix_only() -> Setup {
    Setup {
        slack: false,
        ..Setup::default()
    }
}

/// `(body, formatted_body)` of a text message.
fn text_of(m: &OriginalSyncRoomMessageEvent) -> (String, String) {
    match &m.content.msgtype {
        MessageType::Text(t) => (
            t.body.clone(),
            t.formatted
                .as_ref()
                .map(|f| f.body.clone())
                .unwrap_or_default(),
        ),
        other => panic!("not a text message: {other:?}"),
    }
}

fn replaces(m: &OriginalSyncRoomMessageEvent) -> Option<OwnedEventId> {
    match &m.content.relates_to {
        Some(Relation::Replacement(r)) => Some(r.event_id.clone()),
        _ => None,
    }
}

async fn root_of(
    w: &World,
    post: u64,
    room: &matrix_sdk::ruma::OwnedRoomId,
    n: usize,
) -> OriginalSyncRoomMessageEvent {
    let m = w.m();
    let bot = m.bot.clone();
    m.alice
        .wait(&format!("{n} root event(s) for post {post}"), |p| {
            p.roots(room, &bot).len() >= n
        })
        .await;
    m.alice.roots(room, &bot).into_iter().last().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_becomes_exactly_one_root_event_with_html_and_body() {
    let hs = homeserver!("a_post_becomes_exactly_one_root_event_with_html_and_body");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let post = w.post_all(
        "Quarterly plan",
        "[B]Targets[/B] are set & [URL=https://example.com/plan?q=1&x=2]the plan[/URL] is out.\n[LIST][*]hire[*]ship[/LIST]",
    );
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    w.settle().await;
    let (m, bot) = (w.m(), w.m().bot.clone());
    assert_eq!(
        m.alice.roots(&room, &bot).len(),
        1,
        "exactly one root event"
    );
    assert_eq!(
        m.alice.roots(&m.dev_room, &bot).len(),
        0,
        "not a group post"
    );
    let url = format!(
        "{}company/personal/user/{}/blog/{post}/",
        w.portal.base_url(),
        w.ivan
    );
    let (body, html) = text_of(&root);
    assert_eq!(
        html,
        format!(
            "<p><strong>Ivan Petrov</strong> in Bitrix24:</p><p><strong>Quarterly plan</strong></p><p><strong>Targets</strong> are set &amp; <a href=\"https://example.com/plan?q=1&amp;x=2\">the plan</a> is out.</p><ul><li>hire</li><li>ship</li></ul><p><a href=\"{url}\">Open in Bitrix24</a></p>"
        )
    );
    assert_eq!(
        body,
        format!(
            "Ivan Petrov in Bitrix24:\n\nQuarterly plan\n\nTargets are set & the plan (https://example.com/plan?q=1&x=2) is out.\n\n• hire\n• ship\n\nOpen in Bitrix24 ({url})"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_one_replacement_and_deletions_redact() {
    let hs = homeserver!("edits_are_one_replacement_and_deletions_redact");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let post = w.post_all("Menu", "Soup on Monday");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    w.portal
        .update_post(post, Some("Menu".into()), "Soup on Tuesday");
    let (m, bot) = (w.m(), w.m().bot.clone());
    let root_id = root.event_id.clone();
    m.alice
        .wait("an m.replace of the root", |p| {
            p.messages(&room, &bot)
                .iter()
                .any(|e| replaces(e).as_ref() == Some(&root_id))
        })
        .await;
    w.settle().await;
    let edits: Vec<_> = m
        .alice
        .messages(&room, &bot)
        .into_iter()
        .filter(|e| replaces(e).as_ref() == Some(&root_id))
        .collect();
    assert_eq!(edits.len(), 1, "one edit for one change");
    let Some(Relation::Replacement(r)) = &edits[0].content.relates_to else {
        unreachable!()
    };
    match &r.new_content.msgtype {
        MessageType::Text(t) => {
            assert!(t.body.contains("Soup on Tuesday"), "{}", t.body);
            assert!(
                t.formatted
                    .as_ref()
                    .unwrap()
                    .body
                    .contains("Soup on Tuesday")
            );
        }
        other => panic!("{other:?}"),
    }

    w.portal.delete_post(post);
    m.alice
        .wait("the root is redacted", |p| {
            p.redactions_of(&room, &root_id) == 1
        })
        .await;
    w.settle().await;
    assert_eq!(m.alice.redactions_of(&room, &root_id), 1);
    assert_eq!(
        m.alice.roots(&room, &bot).len(),
        1,
        "nothing new was posted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_edits_and_redactions_become_comment_changes() {
    let hs = homeserver!("thread_replies_edits_and_redactions_become_comment_changes");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let post = w.post_all("Offsite", "Where shall we go?");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    let alice = &w.m().alice;
    let reply = alice
        .thread_reply(
            &room,
            &root.event_id,
            "The lake & the forest",
            "The lake &amp; the <strong>forest</strong>",
        )
        .await;
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(
        comments,
        vec!["[B]Alice Liddell[/B] (Matrix): The lake & the [B]forest[/B]".to_string()]
    );
    // A plain reply (m.in_reply_to the root) counts too; a top-level message does not.
    alice.plain_reply(&room, &root.event_id, "Me too").await;
    alice.top_level(&room, "unrelated chatter").await;
    w.wait_comments(post, 2).await;

    alice.edit(&room, &reply, "Actually, the sea").await;
    assert!(
        w.portal
            .wait_until(support::WAIT, |p| p
                .comments(post)
                .iter()
                .any(|c| c.text.ends_with("Actually, the sea")))
            .await
    );
    alice.redact(&room, &reply).await;
    w.wait_comments(post, 1).await;
    w.settle().await;
    assert_eq!(
        w.comments(post),
        vec!["[B]Alice Liddell[/B] (Matrix): Me too".to_string()]
    );
    // The bridge's own root and edits never came back as comments.
    assert_eq!(w.portal.call_count("log.blogcomment.add"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_resend_nothing_and_miss_nothing() {
    let hs = homeserver!("restarts_resend_nothing_and_miss_nothing");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let before = w.post_all("Before", "posted while running");
    let room = w.m().news_room.clone();
    let root = root_of(&w, before, &room, 1).await;
    w.settle().await;
    w.stop().await;

    let during = w.post_all("During", "posted while the bridge was down");
    w.m()
        .alice
        .thread_reply(
            &room,
            &root.event_id,
            "written during the outage",
            "written during the outage",
        )
        .await;
    w.start().await;
    root_of(&w, during, &room, 2).await;
    w.wait_comments(before, 1).await;
    w.settle().await;
    w.crash().await;
    w.start().await;
    w.settle().await;
    let bot = w.m().bot.clone();
    assert_eq!(
        w.m().alice.roots(&room, &bot).len(),
        2,
        "nothing resent after a stop and a crash"
    );
    assert_eq!(
        w.comments(before).len(),
        1,
        "the reply made during the outage arrived once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_mapped_to_slack_and_matrix_arrives_once_in_each() {
    let hs = homeserver!("a_post_mapped_to_slack_and_matrix_arrives_once_in_each");
    let mut w = World::with_matrix(Setup::default(), hs).await;
    w.start().await;
    let post = w.post_all("Everywhere", "one post, two platforms");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    let slack_root = w.wait_root(&w.news.clone(), post).await;
    // Replies from both sides land on the same post.
    w.slack
        .reply(&w.anna, &w.news, &slack_root.ts, "from Slack", false);
    let matrix_reply = w
        .m()
        .alice
        .thread_reply(&room, &root.event_id, "from Matrix", "from Matrix")
        .await;
    w.wait_comments(post, 2).await;
    w.settle().await;
    let bot = w.m().bot.clone();
    assert_eq!(w.m().alice.roots(&room, &bot).len(), 1);
    assert_eq!(w.roots(&w.news).len(), 1);
    let mut comments = w.comments(post);
    comments.sort();
    assert_eq!(
        comments,
        vec![
            "[B]Alice Liddell[/B] (Matrix): from Matrix".to_string(),
            "[B]Anna Smirnova[/B] (Slack): from Slack".to_string(),
        ]
    );

    // One conversation: each reply is also copied into the other platform's thread, once.
    let in_thread = |p: &support::matrix::Person| -> Vec<String> {
        p.messages(&room, &bot)
            .into_iter()
            .filter(|m| matches!(&m.content.relates_to, Some(Relation::Thread(t)) if t.event_id == root.event_id))
            .map(|m| text_of(&m).0)
            .collect()
    };
    w.m()
        .alice
        .wait("the Slack reply copied into the Matrix thread", |p| {
            !in_thread(p).is_empty()
        })
        .await;
    let bot_id = w.slack.config().bot_id.clone();
    assert!(
        w.slack
            .wait_until(support::WAIT, |s| s
                .thread(&w.news, &slack_root.ts)
                .iter()
                .any(|m| m.bot_id.as_deref() == Some(bot_id.as_str())
                    && m.thread_ts.is_some()
                    && m.ts != slack_root.ts))
            .await,
        "the Matrix reply copied into the Slack thread"
    );
    let slack_copies: Vec<(Option<String>, String)> = w
        .slack
        .thread(&w.news, &slack_root.ts)
        .into_iter()
        .skip(1)
        .filter(|m| m.bot_id.as_deref() == Some(bot_id.as_str()))
        .map(|m| (m.username, m.text))
        .collect();
    assert_eq!(
        slack_copies,
        vec![(
            Some("Alice Liddell (Matrix)".to_string()),
            "from Matrix".to_string()
        )]
    );
    w.settle().await;
    assert_eq!(
        in_thread(&w.m().alice),
        vec!["Anna Smirnova (Slack): from Slack".to_string()]
    );
    assert_eq!(w.comments(post).len(), 2, "copies never become comments");

    // Edits and deletions follow the copies both ways.
    w.m()
        .alice
        .edit(&room, &matrix_reply, "from Matrix, edited")
        .await;
    assert!(
        w.slack
            .wait_until(support::WAIT, |s| s
                .thread(&w.news, &slack_root.ts)
                .iter()
                .any(|m| m.text == "from Matrix, edited"))
            .await,
        "the edit reached the Slack copy"
    );
    w.m().alice.redact(&room, &matrix_reply).await;
    assert!(
        w.slack
            .wait_until(support::WAIT, |s| !s
                .thread(&w.news, &slack_root.ts)
                .iter()
                .any(|m| m.text.starts_with("from Matrix")))
            .await,
        "the redaction deleted the Slack copy"
    );
    let slack_reply = w
        .slack
        .thread(&w.news, &slack_root.ts)
        .into_iter()
        .find(|m| m.text == "from Slack")
        .expect("Anna's reply")
        .ts;
    let copy = w
        .m()
        .alice
        .messages(&room, &bot)
        .into_iter()
        .find(|m| text_of(m).0 == "Anna Smirnova (Slack): from Slack")
        .expect("the copy")
        .event_id;
    w.slack.delete(&w.anna, &w.news, &slack_reply);
    w.m()
        .alice
        .wait("the Matrix copy redacted", |p| {
            p.redactions_of(&room, &copy) > 0
        })
        .await;
    w.wait_comments(post, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_rate_limits_still_deliver_every_post_once() {
    let hs = homeserver!("synapse_rate_limits_still_deliver_every_post_once");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    let bot = w.m().bot.clone();
    w.m().hs.limit_messages(&bot, 1, 2).await;
    w.start().await;
    let posts: Vec<u64> = (0..6)
        .map(|i| w.post_all(&format!("Post {i}"), "rate limited"))
        .collect();
    let room = w.m().news_room.clone();
    root_of(&w, posts[5], &room, 6).await;
    w.settle().await;
    let roots = w.m().alice.roots(&room, &bot);
    assert_eq!(roots.len(), 6, "every post once");
    let mut titles: Vec<String> = roots.iter().map(|r| text_of(r).0).collect();
    titles.sort();
    titles.dedup();
    assert_eq!(titles.len(), 6, "no duplicates");
    assert!(
        refused_sends(&w).await > 0,
        "the refusals are seen and counted"
    );
}

/// Paced as the homeserver limits the bot (`matrix.send_rate`), the bridge waits its turn
/// instead of being told to: every post arrives once and Synapse never refuses a send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_paced_like_its_limit_is_never_refused() {
    let hs = homeserver!("a_bot_paced_like_its_limit_is_never_refused");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    let bot = w.m().bot.clone();
    w.m().hs.limit_messages(&bot, 2, 3).await;
    w.matrix_extra = "  send_rate: { per_second: 2, burst: 3 }\n".into();
    w.start().await;
    let posts: Vec<u64> = (0..8)
        .map(|i| w.post_all(&format!("Paced {i}"), "at the bot's own rate"))
        .collect();
    let room = w.m().news_room.clone();
    root_of(&w, posts[7], &room, 8).await;
    w.settle().await;
    assert_eq!(w.m().alice.roots(&room, &bot).len(), 8, "every post once");
    assert_eq!(refused_sends(&w).await, 0, "Synapse refused no send");
}

/// Sends the homeserver refused with `M_LIMIT_EXCEEDED`, as the bridge's `/metrics` counts them.
async fn refused_sends(w: &World) -> u64 {
    let (_, metrics) = w.http_get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"livefeed_bridge_api_calls_total{platform="matrix",method="send",outcome="rate_limited"} "#,
            )
        })
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_works_both_ways() {
    let hs = homeserver!("an_encrypted_room_works_both_ways");
    let mut w = World::with_matrix(
        Setup {
            encrypted: true,
            ..matrix_only()
        },
        hs,
    )
    .await;
    w.start().await;
    let post = w.post_all("Secret plans", "[I]for members only[/I]");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    let (_, html) = text_of(&root);
    assert!(
        html.contains("<em>for members only</em>"),
        "decrypted by the person: {html}"
    );
    w.m()
        .alice
        .thread_reply(
            &room,
            &root.event_id,
            "encrypted reply",
            "encrypted <em>reply</em>",
        )
        .await;
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(
        comments,
        vec!["[B]Alice Liddell[/B] (Matrix): encrypted [I]reply[/I]".to_string()]
    );
    w.settle().await;
    let bot = w.m().bot.clone();
    assert_eq!(w.m().alice.roots(&room, &bot).len(), 1);
    let state = w
        .m()
        .alice
        .client
        .get_room(&room)
        .unwrap()
        .encryption_state();
    assert!(state.is_encrypted(), "the room really is encrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_matrix_membership_power_and_encryption() {
    let hs = homeserver!("check_probes_matrix_membership_power_and_encryption");
    let mut w = World::with_matrix(
        Setup {
            encrypted: true,
            ..matrix_only()
        },
        hs,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.yaml");
    let check = |path: std::path::PathBuf| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_livefeed-bridge"))
            .args(["check", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    std::fs::write(&path, w.config_text("127.0.0.1:0")).unwrap();
    let (code, shown) = check(path.clone()).await;
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains(&format!(
            "[ok  ] Matrix {}: signed in as {}",
            w.m().hs.url,
            w.m().bot
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "[warn] Matrix room {}: the bot is invited",
            w.m().news_room
        )),
        "{shown}"
    );

    w.start().await;
    let (code, shown) = check(path.clone()).await;
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains(&format!(
            "[ok  ] Matrix room {}: bot joined, power level 0, encrypted",
            w.m().news_room
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "[warn] Matrix room {}: the bot's power level 0 is below the 50 needed to pin",
            w.m().news_room
        )),
        "{shown}"
    );

    // A room the bot was never invited to fails the check.
    let stranger = w.m().alice.create_room("elsewhere", &[], false).await;
    std::fs::write(
        &path,
        w.config_text("127.0.0.1:0")
            .replace(w.m().dev_room.as_str(), stranger.as_str()),
    )
    .unwrap();
    let (code, shown) = check(path).await;
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "[FAIL] Matrix room {stranger}: the bot is not a member"
        )),
        "{shown}"
    );
    assert!(!shown.contains(&w.m().bot_password), "password leaked");
}

/// A room the bot was removed from is a permanent failure: a dead letter naming the room, while
/// the same post still reaches Slack and the other room keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_the_bot_was_removed_from_is_a_dead_letter_and_the_rest_flows() {
    let hs = homeserver!("a_room_the_bot_was_removed_from_is_a_dead_letter_and_the_rest_flows");
    let mut w = World::with_matrix(Setup::default(), hs).await;
    w.start().await;
    let (news_room, bot) = (w.m().news_room.clone(), w.m().bot.clone());
    w.m().alice.kick(&news_room, &bot).await;
    w.m()
        .alice
        .wait("the bot is out", |p| {
            p.membership(&news_room, &bot) == Some(MembershipState::Leave)
        })
        .await;

    let post = w.post_all("After the kick", "only Slack hears this");
    w.wait_root(&w.news.clone(), post).await;
    let running = w.running.as_ref().unwrap();
    let store = running.journal.store().clone();
    let deadline = std::time::Instant::now() + support::WAIT;
    while store.dead_letter_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    w.settle().await;
    let letters = store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].action,
        format!("post {post} → matrix:{news_room}")
    );
    // Before its next sync the bot still believes it is in the room and Synapse refuses the
    // send; after it, the bot knows it left and its join is refused. Either way it is said.
    let error = &letters[0].error;
    assert!(
        error.contains("cannot join") || error.contains("M_FORBIDDEN"),
        "{error}"
    );
    assert!(w.m().alice.roots(&news_room, &bot).is_empty());

    // The developers room is untouched.
    let group_post = w.portal.create_post(
        w.ivan,
        livefeed_sandbox::bitrix::NewPost {
            title: Some("Still here".into()),
            text: "dev room".into(),
            dest: vec![format!("SG{}", w.group)],
            important: false,
            files: Vec::new(),
        },
    );
    let dev_room = w.m().dev_room.clone();
    root_of(&w, group_post, &dev_room, 1).await;
    assert_eq!(store.dead_letter_count(), 1);
}

/// The latest replacement body of `root` as Alice sees it.
fn latest_edit(w: &World, room: &matrix_sdk::ruma::OwnedRoomId, root: &OwnedEventId) -> String {
    let m = w.m();
    let edits: Vec<_> = m
        .alice
        .messages(room, &m.bot)
        .into_iter()
        .filter(|e| replaces(e).as_ref() == Some(root))
        .collect();
    match edits.last().map(|e| &e.content.relates_to) {
        Some(Some(Relation::Replacement(r))) => match &r.new_content.msgtype {
            MessageType::Text(t) => t.body.clone(),
            other => panic!("{other:?}"),
        },
        _ => String::new(),
    }
}

/// An edit back to an earlier text reaches the room: each edit has its own transaction id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_back_to_an_earlier_text_reaches_the_room() {
    let hs = homeserver!("an_edit_back_to_an_earlier_text_reaches_the_room");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let post = w.post_all("Versions", "v1");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await.event_id;
    for (n, text) in ["v2", "v3", "v2"].into_iter().enumerate() {
        w.portal.update_post(post, Some("Versions".into()), text);
        let m = w.m();
        let bot = m.bot.clone();
        m.alice
            .wait(&format!("edit {} ({text})", n + 1), |p| {
                p.messages(&room, &bot)
                    .iter()
                    .filter(|e| replaces(e).as_ref() == Some(&root))
                    .count()
                    > n
            })
            .await;
        w.settle().await;
    }
    let body = latest_edit(&w, &room, &root);
    assert!(body.contains("v2") && !body.contains("v3"), "{body}");
    let m = w.m();
    let edits = m
        .alice
        .messages(&room, &m.bot)
        .into_iter()
        .filter(|e| replaces(e).as_ref() == Some(&root))
        .count();
    assert_eq!(edits, 3, "three edits, none swallowed");
}

/// A gap longer than one sync timeline (150 room events while the bridge was down) loses
/// nothing: the limited sync pages back to the early reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_of_150_events_loses_no_reply() {
    let hs = homeserver!("a_gap_of_150_events_loses_no_reply");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let post = w.post_all("Busy room", "reply below");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await.event_id;
    w.settle().await;
    w.stop().await;
    let m = w.m();
    m.alice
        .thread_reply(&room, &root, "early in the gap", "early in the gap")
        .await;
    for i in 0..150 {
        m.alice.top_level(&room, &format!("chatter {i}")).await;
    }
    m.alice
        .thread_reply(&room, &root, "late in the gap", "late in the gap")
        .await;
    w.start().await;
    let comments = w.wait_comments(post, 2).await;
    assert_eq!(
        comments,
        vec![
            "[B]Alice Liddell[/B] (Matrix): early in the gap",
            "[B]Alice Liddell[/B] (Matrix): late in the gap",
        ]
    );
    w.settle().await;
    assert_eq!(w.comments(post).len(), 2, "each reply once");
}

/// A person (the room's admin) redacts the bot's root: the post is detached from the room,
/// later edits send nothing there, and no dead letter piles up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_redacted_by_a_person_detaches_the_post() {
    let hs = homeserver!("a_root_redacted_by_a_person_detaches_the_post");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.start().await;
    let post = w.post_all("Detach me", "v1");
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await.event_id;
    w.m().alice.redact(&room, &root).await;
    w.settle().await;
    w.portal.update_post(post, Some("Detach me".into()), "v2");
    w.settle().await;
    w.settle().await;
    let m = w.m();
    let edits = m
        .alice
        .messages(&room, &m.bot)
        .into_iter()
        .filter(|e| replaces(e).as_ref() == Some(&root))
        .count();
    assert_eq!(edits, 0, "no edit of a message a person removed");
    let (_, body) = w.readyz().await;
    assert_eq!(body["dead_letters"], 0, "{body}");
}

/// An important post's root event is pinned (`m.room.pinned_events`) while the post is
/// important, where the bot's power level allows it, and unpinned when the mark goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_important_post_is_pinned_in_the_room_while_it_is_important() {
    let hs = homeserver!("an_important_post_is_pinned_in_the_room_while_it_is_important");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    let room = w.m().news_room.clone();
    let bot = w.m().bot.clone();
    // Pinning is a state event: power level 50 by default.
    w.m().alice.set_power(&room, &bot, 50).await;
    w.start().await;
    let post = w.portal.create_post(
        w.ivan,
        livefeed_sandbox::bitrix::NewPost {
            title: Some("Travel policy".into()),
            text: "Read and confirm.".into(),
            dest: vec!["UA".into()],
            important: true,
            files: Vec::new(),
        },
    );
    let root = root_of(&w, post, &room, 1).await;
    assert!(
        text_of(&root).0.starts_with("❗ Important"),
        "{:?}",
        text_of(&root)
    );
    let pinned = vec![root.event_id.clone()];
    w.m()
        .alice
        .wait("the root event is pinned", |p| {
            p.pinned(&room).as_ref() == Some(&pinned)
        })
        .await;
    w.portal.set_important(post, false);
    w.m()
        .alice
        .wait("the root event is unpinned", |p| {
            p.pinned(&room).is_some_and(|l| l.is_empty())
        })
        .await;
    w.settle().await;
    assert_eq!(root_of(&w, post, &room, 1).await.event_id, root.event_id);
}

/// In an encrypted room, a post with a PDF and an image gives exactly those two files in its
/// thread, encrypted and decryptable by a member; a file a person sends into the thread
/// becomes one comment carrying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cross_an_encrypted_room_both_ways() {
    let hs = homeserver!("files_cross_an_encrypted_room_both_ways");
    let mut w = World::with_matrix(
        Setup {
            encrypted: true,
            ..matrix_only()
        },
        hs,
    )
    .await;
    w.start().await;
    let pdf = b"%PDF-1.4\n% a regulation\n".repeat(20);
    let png = [
        &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a][..],
        &[5; 300],
    ]
    .concat();
    let post = w.portal.create_post(
        w.ivan,
        livefeed_sandbox::bitrix::NewPost {
            title: Some("Regulations".into()),
            text: "See the files.".into(),
            dest: vec!["UA".into()],
            important: false,
            files: vec![
                livefeed_sandbox::bitrix::NewFile {
                    name: "rules.pdf".into(),
                    bytes: pdf.clone(),
                },
                livefeed_sandbox::bitrix::NewFile {
                    name: "office.png".into(),
                    bytes: png.clone(),
                },
            ],
        },
    );
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    let bot = w.m().bot.clone();
    let root_id = root.event_id.clone();
    w.m()
        .alice
        .wait("two files in the thread", |p| {
            p.messages(&room, &bot)
                .iter()
                .filter(|m| matches!(&m.content.relates_to, Some(Relation::Thread(t)) if t.event_id == root_id))
                .count()
                == 2
        })
        .await;
    let files = w.m().alice.thread_files(&room, &root.event_id, &bot).await;
    assert_eq!(
        files,
        vec![
            ("office.png".to_string(), png.clone()),
            ("rules.pdf".to_string(), pdf.clone()),
        ]
    );
    let encrypted = w
        .m()
        .alice
        .messages(&room, &bot)
        .iter()
        .filter_map(|m| match &m.content.msgtype {
            MessageType::File(f) => Some(f.source.clone()),
            MessageType::Image(f) => Some(f.source.clone()),
            _ => None,
        })
        .all(|s| matches!(s, matrix_sdk::ruma::events::room::MediaSource::Encrypted(_)));
    assert!(encrypted, "media in an encrypted room is encrypted");

    // Alice answers with a spreadsheet.
    let sheet = b"name,desk\nalice,12\n".to_vec();
    w.m()
        .alice
        .thread_file(
            &room,
            &root.event_id,
            "desks.csv",
            "text/csv",
            sheet.clone(),
        )
        .await;
    let comments = w.wait_comments(post, 1).await;
    assert_eq!(comments, vec!["[B]Alice Liddell[/B] (Matrix):".to_string()]);
    let comment = w.portal.comments(post)[0].comment_id;
    assert_eq!(
        w.portal.comment_files(comment),
        vec![("desks.csv".to_string(), sheet)]
    );
    w.settle().await;
    assert_eq!(w.m().alice.roots(&room, &bot).len(), 1);
    assert_eq!(
        w.m()
            .alice
            .thread_files(&room, &root.event_id, &bot)
            .await
            .len(),
        2
    );
}

/// A person linked in the config is a pill in the root message, with their id in
/// `m.mentions` so that their client notifies them; a pill in a reply becomes a feed mention.
/// A person nobody linked stays a name, and `@room` in a reply stays text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_of_linked_people_are_pills_that_notify() {
    let hs = homeserver!("mentions_of_linked_people_are_pills_that_notify");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    let alice_id = w.m().alice.user.clone();
    let alice_b24 = w.portal.add_user(livefeed_sandbox::bitrix::NewUser {
        name: "Alice".into(),
        last_name: "Liddell".into(),
        ..Default::default()
    });
    w.extra_config =
        format!("people:\n  links:\n    - {{ bitrix: {alice_b24}, matrix: \"{alice_id}\" }}\n");
    w.start().await;
    let post = w.post_all(
        "Rules",
        &format!(
            "[USER={alice_b24}]Alice Liddell[/USER] and [USER={}]Olga Kuznetsova[/USER]: please read",
            w.olga
        ),
    );
    let room = w.m().news_room.clone();
    let root = root_of(&w, post, &room, 1).await;
    let (body, html) = text_of(&root);
    assert!(
        html.contains(&format!(
            "<p><strong>Rules</strong></p><p><a href=\"https://matrix.to/#/{alice_id}\">Alice Liddell</a> and Olga Kuznetsova: please read</p>"
        )),
        "{html}"
    );
    assert!(
        body.contains("Alice Liddell and Olga Kuznetsova: please read"),
        "{body}"
    );
    let mentioned = root.content.mentions.as_ref().expect("m.mentions");
    assert_eq!(
        mentioned.user_ids.iter().cloned().collect::<Vec<_>>(),
        vec![alice_id.clone()]
    );
    assert!(!mentioned.room);

    w.m()
        .alice
        .thread_reply(
            &room,
            &root.event_id,
            "Alice Liddell: read. @room",
            &format!("<a href=\"https://matrix.to/#/{alice_id}\">Alice Liddell</a>: read. @room"),
        )
        .await;
    // Alice is linked and the webhook's user is an administrator: the comment is her own.
    w.wait_comments(post, 1).await;
    let comment = &w.portal.comments(post)[0];
    assert_eq!(
        comment.text,
        format!("[USER={alice_b24}]Alice Liddell[/USER]: read. @room")
    );
    assert_eq!(comment.author, alice_b24);
}

/// In a room whose mapping has `posts_from_chat`, a person's top-level message becomes a feed
/// post for the mapping's audience, with their message as its root there; a threaded reply to
/// it becomes a comment, an edit updates the post and a redaction deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_a_posting_room_becomes_a_feed_post() {
    let hs = homeserver!("a_message_in_a_posting_room_becomes_a_feed_post");
    let mut w = World::with_matrix(matrix_only(), hs).await;
    w.dev_posts_from_chat = true;
    w.start().await;
    let room = w.m().dev_room.clone();
    let before = w.portal.posts().len();
    let alice = &w.m().alice;
    let message = alice.top_level(&room, "Release tonight").await;
    assert!(
        w.portal
            .wait_until(support::WAIT, |p| p.posts().len() == before + 1)
            .await,
        "the message became a post"
    );
    let post = w.portal.posts().last().unwrap().clone();
    assert_eq!(post.text, "[B]Alice Liddell[/B] (Matrix): Release tonight");
    assert_eq!(post.dest, vec![format!("SG{}", w.group)]);

    alice
        .wait("her own message", |p| {
            !p.messages(&room, &p.user.clone()).is_empty()
        })
        .await;
    alice
        .thread_reply(&room, &message, "Count me in", "Count me in")
        .await;
    assert_eq!(
        w.wait_comments(post.id, 1).await,
        vec!["[B]Alice Liddell[/B] (Matrix): Count me in".to_string()]
    );
    alice.edit(&room, &message, "Release tomorrow").await;
    assert!(
        w.portal
            .wait_until(support::WAIT, |p| p.post(post.id).unwrap().text
                == "[B]Alice Liddell[/B] (Matrix): Release tomorrow")
            .await,
        "the edit reached the post"
    );
    alice.redact(&room, &message).await;
    assert!(
        w.portal
            .wait_until(support::WAIT, |p| p.post(post.id).unwrap().deleted)
            .await,
        "the redaction deleted the post"
    );
    w.settle().await;
    let bot = w.m().bot.clone();
    assert!(
        w.m().alice.roots(&room, &bot).is_empty(),
        "the bot sent no root where the post was written"
    );
    assert_eq!(w.portal.posts().len(), before + 1, "one post");
}
