//! The engine against in-memory adapters: exact outcomes of the reliability contract (accept,
//! apply, reconcile after a crash, retry, dead-letter) without any network.

use std::sync::Arc;
use std::time::Duration;

use livefeed_core::adapters::{ChatAdapter, FeedAdapter};
use livefeed_core::engine::{Engine, EngineConfig};
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{
    Audience, ChatEvent, Failure, FeedEvent, FeedPost, Inbound, PostId, ReplyId, Room, ThreadId,
};
use livefeed_core::richtext::Doc;
use livefeed_core::route::{Route, Router};
use livefeed_core::store::Store;
use livefeed_core::testing::{CHAT, FEED, MemoryChat, MemoryFeed, Script, WAIT, fixtures};
use tokio_util::sync::CancellationToken;

struct Harness {
    dir: tempfile::TempDir,
    chat: Arc<MemoryChat>,
    feed: Arc<MemoryFeed>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>, Journal)>,
}

const NEWS: &str = "CNEWS0001";
const DEV: &str = "CDEV00001";

fn router() -> Router {
    Router::new(vec![
        Route {
            name: "news".into(),
            audiences: vec![Audience::All],
            rooms: vec![Room::new(CHAT, NEWS)],
            replies: true,
            mirror_replies: true,
            posts_from_chat: false,
            since: 0,
        },
        Route {
            name: "dev".into(),
            audiences: vec![Audience::Group(5)],
            rooms: vec![Room::new(CHAT, DEV)],
            replies: false,
            mirror_replies: true,
            posts_from_chat: false,
            since: 0,
        },
    ])
}

impl Harness {
    fn new() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
            chat: MemoryChat::new(),
            feed: MemoryFeed::new(),
            running: None,
        }
    }

    async fn start(&mut self) {
        assert!(self.running.is_none());
        // sled lets go of its lock from its own threads a moment after a crash: wait as the
        // bridge does.
        let store = Store::open_waiting(self.dir.path(), Duration::from_secs(5))
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let journal = Journal::new(store, metrics.clone(), FEED);
        let cancel = CancellationToken::new();
        let engine = Engine::new(
            journal.clone(),
            router(),
            vec![self.chat.clone() as Arc<dyn ChatAdapter>],
            self.feed.clone() as Arc<dyn FeedAdapter>,
            metrics,
            EngineConfig {
                feed_lanes: 2,
                retry_base: Duration::from_millis(10),
                retry_max: Duration::from_millis(50),
                ..EngineConfig::default()
            },
            cancel.clone(),
        );
        let handle = tokio::spawn(async move {
            engine.run().await.unwrap();
        });
        self.running = Some((cancel, handle, journal));
    }

    /// Stop as a crash would: tasks abandoned wherever they are.
    async fn crash(&mut self) {
        let (cancel, handle, journal) = self.running.take().unwrap();
        cancel.cancel();
        handle.await.unwrap();
        drop(journal);
    }

    fn journal(&self) -> &Journal {
        &self.running.as_ref().unwrap().2
    }

    async fn accept(&self, event: Inbound) {
        self.journal()
            .accept(Batch {
                events: vec![(event, None)],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn settle(&self) {
        assert!(
            self.journal().wait_drained(WAIT).await,
            "journal never drained"
        );
    }
}

fn post(id: u64, audiences: &[Audience], text: &str) -> FeedPost {
    fixtures::post_for(id, audiences, text)
}

fn reply(thread: &str, reply: &str, text: &str) -> Inbound {
    Inbound::Chat(ChatEvent::ReplyPosted {
        room: Room::new(CHAT, NEWS),
        thread: ThreadId::from(thread),
        reply: ReplyId::from(reply),
        author: fixtures::person("U2", "Anna Smirnova"),
        body: Doc::plain(text),
        files: Vec::new(),
    })
}

#[tokio::test]
async fn posts_follow_their_audience_edits_and_deletions() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        1,
        &[Audience::All],
        "hello",
    ))))
    .await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        2,
        &[Audience::Group(5)],
        "group only",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 2).await;
    h.settle().await;
    assert_eq!(
        h.chat.live(NEWS).len(),
        1,
        "a group post never reaches the company channel"
    );
    assert_eq!(h.chat.live(DEV).len(), 1);
    assert!(h.chat.live(NEWS)[0].1.contains("hello"));

    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        1,
        &[Audience::All],
        "hello, edited",
    ))))
    .await;
    h.chat.wait(|s| s.edits == 1).await;
    // Same content again: no second edit.
    h.accept(Inbound::Feed(FeedEvent::CommentsChanged(post(
        1,
        &[Audience::All],
        "hello, edited",
    ))))
    .await;
    h.accept(Inbound::Feed(FeedEvent::PostDeleted(PostId(1))))
        .await;
    h.settle().await;
    let s = h.chat.state();
    assert_eq!(s.edits, 1);
    assert_eq!(h.chat.live(NEWS), vec![]);
    assert_eq!(s.sent, 2);
    // A stale snapshot after the deletion must not bring the post back.
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        1,
        &[Audience::All],
        "zombie",
    ))))
    .await;
    h.settle().await;
    assert_eq!(h.chat.state().sent, 2);
}

#[tokio::test]
async fn a_crash_after_sending_is_reconciled_not_resent() {
    let mut h = Harness::new();
    h.chat.script([Script::HangAfterEffect]);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        7,
        &[Audience::All],
        "once",
    ))))
    .await;
    // The message is out, but the engine never hears back: crash now.
    h.chat.wait(|s| s.sent == 1).await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    let s = h.chat.state();
    assert_eq!(
        s.sent, 1,
        "reconciliation found the message; nothing was resent"
    );
    assert_eq!(h.chat.live(NEWS).len(), 1);
    // The mapping is known now: a reply in that thread becomes a comment.
    h.accept(reply("m1", "r1", "after restart")).await;
    h.feed.wait(|f| f.comments.len() == 1).await;
}

/// Found by the crash suite (seed 877960): the message found after a restart was recorded with
/// the post's latest content while it still showed the text it was sent with.
#[tokio::test]
async fn a_message_found_by_reconciliation_gets_the_latest_edit() {
    let mut h = Harness::new();
    h.chat.script([Script::HangAfterEffect]);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        9,
        &[Audience::All],
        "first words",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        9,
        &[Audience::All],
        "second thoughts",
    ))))
    .await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    assert_eq!(h.chat.state().sent, 1, "nothing resent");
    let live = h.chat.live(NEWS);
    assert_eq!(live.len(), 1);
    assert!(live[0].1.contains("second thoughts"), "{live:?}");
}

/// Found by the fault suite (seed 792120): a deletion planned while the create was still in
/// flight saw no mirror, so the message the create then recorded stayed.
#[tokio::test]
async fn a_deletion_while_the_create_is_in_flight_still_deletes() {
    let mut h = Harness::new();
    let gate = Arc::new(tokio::sync::Notify::new());
    h.chat.script([Script::Gate(gate.clone())]);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        3,
        &[Audience::All],
        "short-lived",
    ))))
    .await;
    h.chat.wait(|s| s.gated == 1).await;
    h.accept(Inbound::Feed(FeedEvent::PostDeleted(PostId(3))))
        .await;
    gate.notify_one();
    h.settle().await;
    assert_eq!(h.chat.state().sent, 1);
    assert_eq!(h.chat.live(NEWS), vec![]);
}

/// The create went out, the post was deleted, the bridge crashed before recording either:
/// after the restart the message is found through its open intent and deleted.
#[tokio::test]
async fn a_crash_after_sending_a_post_deleted_meanwhile_deletes_it() {
    let mut h = Harness::new();
    h.chat.script([Script::HangAfterEffect]);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        8,
        &[Audience::All],
        "gone soon",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.accept(Inbound::Feed(FeedEvent::PostDeleted(PostId(8))))
        .await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    assert_eq!(h.chat.state().sent, 1, "nothing resent");
    assert_eq!(h.chat.live(NEWS), vec![], "the orphan was deleted");
}

#[tokio::test]
async fn replies_become_one_comment_each_and_follow_edits_and_deletes() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        3,
        &[Audience::All],
        "root",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.accept(reply("m1", "r1", "Looks good")).await;
    h.accept(reply("m1", "r1", "Looks good")).await; // redelivery
    h.accept(reply("unknown-thread", "r9", "ignored")).await;
    h.feed.wait(|f| f.comments.len() == 1).await;
    h.settle().await;
    let f = h.feed.state();
    assert_eq!(f.adds, 1);
    let (post_id, text) = f.comments.values().next().unwrap().clone();
    assert_eq!(post_id, PostId(3));
    assert_eq!(text, "Anna Smirnova (Chat): Looks good");

    let room = Room::new(CHAT, NEWS);
    h.accept(Inbound::Chat(ChatEvent::ReplyEdited {
        room: room.clone(),
        thread: ThreadId::from("m1"),
        reply: ReplyId::from("r1"),
        author: fixtures::person("U2", "Anna Smirnova"),
        body: Doc::plain("Looks great"),
        files: Vec::new(),
    }))
    .await;
    h.feed
        .wait(|f| f.comments.values().any(|(_, t)| t.ends_with("Looks great")))
        .await;
    h.settle().await;
    assert_eq!(
        h.feed.state().comments.len(),
        1,
        "the old comment was replaced"
    );

    h.accept(Inbound::Chat(ChatEvent::ReplyDeleted {
        room,
        thread: Some(ThreadId::from("m1")),
        reply: ReplyId::from("r1"),
    }))
    .await;
    h.feed.wait(|f| f.comments.is_empty()).await;
    h.settle().await;
    // The mirrored post never showed the bridge's own comments in its count.
    assert_eq!(h.chat.state().edits, 0);
}

#[tokio::test]
async fn comment_counts_exclude_the_bridges_own() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        4,
        &[Audience::All],
        "root",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.accept(reply("m1", "r1", "from chat")).await;
    h.feed.wait(|f| f.comments.len() == 1).await;
    h.settle().await;
    // Bitrix24 now reports 1 comment: the bridge's. Then a person comments in the feed.
    let mut p = post(4, &[Audience::All], "root");
    p.num_comments = 1;
    h.accept(Inbound::Feed(FeedEvent::CommentsChanged(p.clone())))
        .await;
    h.settle().await;
    assert_eq!(h.chat.state().edits, 0, "own comment does not count");
    p.num_comments = 2;
    h.accept(Inbound::Feed(FeedEvent::CommentsChanged(p))).await;
    h.chat.wait(|s| s.edits == 1).await;
    assert!(h.chat.live(NEWS)[0].1.contains("1 comment in Feed"));
}

#[tokio::test]
async fn a_crash_after_commenting_is_reconciled() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        5,
        &[Audience::All],
        "root",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.feed.script([Script::HangAfterEffect]);
    h.accept(reply("m1", "r1", "exactly once")).await;
    h.feed.wait(|f| f.adds == 1).await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    let f = h.feed.state();
    assert_eq!((f.adds, f.comments.len()), (1, 1));
}

#[tokio::test]
async fn transient_failures_retry_and_permanent_ones_dead_letter_without_blocking_others() {
    let mut h = Harness::new();
    h.chat.script([
        Script::Fail(Failure::retry_after(
            "ratelimited",
            Duration::from_millis(20),
        )),
        Script::Fail(Failure::transient("HTTP 502")),
        Script::Fail(Failure::permanent("channel_not_found")),
    ]);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        10,
        &[Audience::All],
        "a",
    ))))
    .await;
    h.settle().await;
    let store = h.journal().store().clone();
    let letters = store.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error, "channel_not_found");
    assert_eq!(h.chat.state().sent, 0);
    // The next post flows; retrying the dead letter delivers the first one exactly once.
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        11,
        &[Audience::All],
        "b",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    assert!(store.retry_dead_letter(letters[0].id).unwrap());
    h.journal().wake();
    h.chat.wait(|s| s.sent == 2).await;
    h.settle().await;
    let posts: Vec<PostId> = h.chat.live(NEWS).into_iter().map(|(p, _)| p).collect();
    assert_eq!(posts.len(), 2);
    assert!(posts.contains(&PostId(10)) && posts.contains(&PostId(11)));
    assert_eq!(store.dead_letter_count(), 0);
}

#[tokio::test]
async fn a_deletion_that_overtakes_its_reply_keeps_the_reply_out() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        6,
        &[Audience::All],
        "root",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    // Slack redelivered the reply after its deletion (a lost ack): deletion first.
    let room = Room::new(CHAT, NEWS);
    h.accept(Inbound::Chat(ChatEvent::ReplyDeleted {
        room,
        thread: Some(ThreadId::from("m1")),
        reply: ReplyId::from("r1"),
    }))
    .await;
    h.accept(reply("m1", "r1", "deleted already")).await;
    h.accept(reply("m1", "r2", "still here")).await;
    h.feed.wait(|f| f.adds == 1).await;
    h.settle().await;
    let f = h.feed.state();
    assert_eq!(f.adds, 1);
    assert_eq!(
        f.comments.values().next().unwrap().1,
        "Anna Smirnova (Chat): still here"
    );
}

#[tokio::test]
async fn replies_in_rooms_without_replies_are_not_written_back() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        20,
        &[Audience::Group(5)],
        "dev",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.accept(Inbound::Chat(ChatEvent::ReplyPosted {
        room: Room::new(CHAT, DEV),
        thread: ThreadId::from("m1"),
        reply: ReplyId::from("r1"),
        author: fixtures::person("U2", "Anna"),
        body: Doc::plain("no"),
        files: Vec::new(),
    }))
    .await;
    h.settle().await;
    assert_eq!(h.feed.state().adds, 0);
}

/// Each edit of a message carries its own number: v1 → v2 → v3 → v2 is three edits, and the
/// last is not mistaken for the first (a platform that deduplicates by id would drop it).
#[tokio::test]
async fn edits_are_numbered_so_an_edit_back_is_a_new_edit() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        30,
        &[Audience::All],
        "v1",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    for (n, text) in ["v2", "v3", "v2"].into_iter().enumerate() {
        h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
            30,
            &[Audience::All],
            text,
        ))))
        .await;
        h.chat.wait(|s| s.edits == n + 1).await;
    }
    h.settle().await;
    assert_eq!(h.chat.state().edit_numbers, vec![0, 1, 2]);
    assert!(h.chat.live(NEWS)[0].1.contains("v2"));
}

/// A person deleted the root in the room: the post is detached there. Its edits and its
/// deletion leave the room alone, and nothing becomes a dead letter.
#[tokio::test]
async fn a_root_deleted_in_the_room_detaches_the_post() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        31,
        &[Audience::All],
        "announcement",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.accept(Inbound::Chat(ChatEvent::ReplyDeleted {
        room: Room::new(CHAT, NEWS),
        thread: None,
        reply: ReplyId::from("m1"),
    }))
    .await;
    h.settle().await;
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        31,
        &[Audience::All],
        "announcement, edited",
    ))))
    .await;
    h.accept(Inbound::Feed(FeedEvent::PostDeleted(PostId(31))))
        .await;
    h.settle().await;
    let s = h.chat.state();
    assert_eq!((s.edits, s.deletes), (0, 0), "the room is left alone");
    assert_eq!(h.journal().store().dead_letter_count(), 0);
}

/// An edit the platform answers "that message is gone" detaches the post instead of
/// becoming a dead letter, and no later edit is tried there.
#[tokio::test]
async fn an_edit_of_a_message_that_is_gone_detaches_instead_of_dead_lettering() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        32,
        &[Audience::All],
        "v1",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.chat
        .script([Script::Fail(Failure::gone("message_not_found"))]);
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        32,
        &[Audience::All],
        "v2",
    ))))
    .await;
    h.settle().await;
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        32,
        &[Audience::All],
        "v3",
    ))))
    .await;
    h.settle().await;
    assert_eq!(
        h.chat.state().edits,
        0,
        "no edit after the first was refused"
    );
    assert_eq!(h.journal().store().dead_letter_count(), 0);
}

/// A reply that shows up again after its deletion (a catch-up that read the thread just
/// before the deletion, a redelivery) does not bring its comment back.
#[tokio::test]
async fn a_deleted_reply_that_shows_up_again_stays_deleted() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        33,
        &[Audience::All],
        "root",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    h.accept(reply("m1", "r1", "here for a moment")).await;
    h.feed.wait(|f| f.comments.len() == 1).await;
    h.accept(Inbound::Chat(ChatEvent::ReplyDeleted {
        room: Room::new(CHAT, NEWS),
        thread: Some(ThreadId::from("m1")),
        reply: ReplyId::from("r1"),
    }))
    .await;
    h.feed.wait(|f| f.comments.is_empty()).await;
    h.accept(reply("m1", "r1", "here for a moment")).await;
    h.settle().await;
    let f = h.feed.state();
    assert_eq!((f.adds, f.comments.len()), (1, 0), "not written again");
}

fn file(id: &str, name: &str, size: u64) -> livefeed_core::model::FeedFile {
    livefeed_core::model::FeedFile {
        id: id.into(),
        name: name.into(),
        size,
    }
}

#[tokio::test]
async fn a_posts_files_follow_it_into_the_thread_and_out_again() {
    let mut h = Harness::new();
    h.start().await;
    let mut p = post(1, &[Audience::All], "with files");
    p.files = vec![
        file("505", "rules.pdf", 2_000),
        file("506", "plan.png", 300),
        // Over the 20 MB limit: a link, not an upload.
        file("507", "video.mp4", 30 * 1024 * 1024),
    ];
    h.accept(Inbound::Feed(FeedEvent::PostCreated(p.clone())))
        .await;
    h.chat.wait(|s| s.attachments.len() == 3).await;
    h.settle().await;
    let state = h.chat.state();
    let root = state.messages.keys().next().unwrap().1.clone();
    let mut labels: Vec<(String, String)> = state.attachments.values().cloned().collect();
    labels.sort();
    assert_eq!(
        labels,
        vec![
            (root.clone(), "link:video.mp4".to_string()),
            (root.clone(), "plan.png".to_string()),
            (root.clone(), "rules.pdf".to_string()),
        ]
    );

    // The same post again changes nothing; a file taken off the post leaves the thread.
    h.accept(Inbound::Feed(FeedEvent::PostEdited(p.clone())))
        .await;
    p.files.remove(1);
    h.accept(Inbound::Feed(FeedEvent::PostEdited(p.clone())))
        .await;
    h.chat.wait(|s| s.attachments.len() == 2).await;
    h.settle().await;
    assert_eq!(h.chat.state().attachments_sent, 3, "nothing sent twice");

    // The post's deletion takes its files along.
    h.accept(Inbound::Feed(FeedEvent::PostDeleted(PostId(1))))
        .await;
    h.chat.wait(|s| s.attachments.is_empty()).await;
}

#[tokio::test]
async fn a_replys_files_are_attached_to_its_comment_and_a_large_one_is_noted() {
    let mut h = Harness::new();
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        3,
        &[Audience::All],
        "post",
    ))))
    .await;
    h.chat.wait(|s| s.sent == 1).await;
    h.settle().await;
    let root = h.chat.state().messages.keys().next().unwrap().1.clone();
    let chat_file = |name: &str, size: u64| livefeed_core::model::ChatFile {
        name: name.into(),
        size,
        mime: "image/png".into(),
        source: format!("src-{name}"),
    };
    h.accept(Inbound::Chat(ChatEvent::ReplyPosted {
        room: Room::new(CHAT, NEWS),
        thread: ThreadId::from(root.as_str()),
        reply: ReplyId::from("r1"),
        author: fixtures::person("U2", "Anna Smirnova"),
        body: Doc::plain("See attached"),
        files: vec![
            chat_file("chart.png", 1_000),
            chat_file("huge.zip", 21 * 1024 * 1024),
        ],
    }))
    .await;
    h.feed.wait(|s| s.adds == 1).await;
    let f = h.feed.state();
    let (id, (_, text)) = f.comments.iter().next().unwrap();
    assert_eq!(f.comment_files[id], vec!["chart.png".to_string()]);
    assert_eq!(
        text,
        "Anna Smirnova (Chat): See attached\n\n\
         📎 huge.zip (21.0 MB) was too large to attach; it is in the Chat thread."
    );
}
