//! The engine against in-memory adapters: exact outcomes of the reliability contract (accept,
//! apply, reconcile after a crash, retry, dead-letter) without any network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livefeed_core::adapters::{BoxFuture, ChatAdapter, ChatPost, FeedAdapter, LayoutOptions};
use livefeed_core::engine::{Engine, EngineConfig};
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{
    Audience, ChatEvent, CommentId, Failure, FeedEvent, FeedPost, Inbound, Person, Platform,
    PostId, Room,
};
use livefeed_core::richtext::Doc;
use livefeed_core::route::{Route, Router};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// What a fake platform holds, with a version bump on every change so tests can await
/// conditions instead of sleeping.
#[derive(Default, Clone, Debug)]
struct ChatState {
    /// (room, id) → (post, text, deleted)
    messages: BTreeMap<(String, String), (PostId, String, bool)>,
    posts_sent: usize,
    edits: usize,
    /// Calls that reached a gate.
    gated: usize,
}

/// Wait until `pred` holds for the state behind `changed` (re-checked on every change).
async fn wait_for<T: std::fmt::Debug>(
    changed: &watch::Sender<u64>,
    state: &Mutex<T>,
    pred: impl Fn(&T) -> bool,
) {
    let mut rx = changed.subscribe();
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            if pred(&state.lock().unwrap()) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "condition not reached; state: {:?}",
        state.lock().unwrap()
    );
}

#[derive(Clone, Debug)]
enum Script {
    Fail(Failure),
    /// Perform the effect, then never answer (the process "crashes" mid-call).
    HangAfterEffect,
    /// Count the call as in flight, wait for the gate, then perform the effect.
    Gate(Arc<tokio::sync::Notify>),
}

struct MockChat {
    state: Mutex<ChatState>,
    changed: watch::Sender<u64>,
    script: Mutex<Vec<Script>>,
}

impl MockChat {
    fn new() -> Arc<Self> {
        Arc::new(MockChat {
            state: Mutex::new(ChatState::default()),
            changed: watch::channel(0).0,
            script: Mutex::new(Vec::new()),
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn next_script(&self) -> Option<Script> {
        let mut s = self.script.lock().unwrap();
        (!s.is_empty()).then(|| s.remove(0))
    }

    fn live(&self, room: &str) -> Vec<(PostId, String)> {
        self.state
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter(|((r, _), (_, _, deleted))| r == room && !deleted)
            .map(|(_, (p, t, _))| (*p, t.clone()))
            .collect()
    }

    async fn wait(&self, pred: impl Fn(&ChatState) -> bool) {
        wait_for(&self.changed, &self.state, pred).await;
    }
}

impl ChatAdapter for MockChat {
    fn platform(&self) -> Platform {
        Platform::Slack
    }

    fn layout(&self) -> LayoutOptions {
        LayoutOptions::default()
    }

    fn post<'a>(
        &'a self,
        room: &'a str,
        msg: &'a ChatPost,
    ) -> BoxFuture<'a, Result<String, Failure>> {
        Box::pin(async move {
            let script = self.next_script();
            if let Some(Script::Fail(f)) = script {
                return Err(f);
            }
            if let Some(Script::Gate(gate)) = &script {
                self.state.lock().unwrap().gated += 1;
                self.bump();
                gate.notified().await;
            }
            let id = {
                let mut s = self.state.lock().unwrap();
                s.posts_sent += 1;
                let id = format!("m{}", s.posts_sent);
                s.messages.insert(
                    (room.to_string(), id.clone()),
                    (msg.post, msg.doc.plain_text(), false),
                );
                id
            };
            self.bump();
            if let Some(Script::HangAfterEffect) = script {
                std::future::pending::<()>().await;
            }
            Ok(id)
        })
    }

    fn find_post<'a>(
        &'a self,
        room: &'a str,
        post: PostId,
        _since: i64,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(async move {
            Ok(self
                .state
                .lock()
                .unwrap()
                .messages
                .iter()
                .find(|((r, _), (p, _, _))| r == room && *p == post)
                .map(|((_, id), _)| id.clone()))
        })
    }

    fn edit<'a>(
        &'a self,
        room: &'a str,
        message: &'a str,
        msg: &'a ChatPost,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if let Some(Script::Fail(f)) = self.next_script() {
                return Err(f);
            }
            {
                let mut s = self.state.lock().unwrap();
                s.edits += 1;
                if let Some(m) = s.messages.get_mut(&(room.to_string(), message.to_string())) {
                    m.1 = msg.doc.plain_text();
                }
            }
            self.bump();
            Ok(())
        })
    }

    fn delete<'a>(&'a self, room: &'a str, message: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if let Some(m) = self
                .state
                .lock()
                .unwrap()
                .messages
                .get_mut(&(room.to_string(), message.to_string()))
            {
                m.2 = true;
            }
            self.bump();
            Ok(())
        })
    }
}

#[derive(Default, Clone, Debug)]
struct FeedState {
    /// comment id → (post, text)
    comments: BTreeMap<u64, (PostId, String)>,
    next_id: u64,
    adds: usize,
}

struct MockFeed {
    state: Mutex<FeedState>,
    changed: watch::Sender<u64>,
    script: Mutex<Vec<Script>>,
}

impl MockFeed {
    fn new() -> Arc<Self> {
        Arc::new(MockFeed {
            state: Mutex::new(FeedState {
                next_id: 300,
                ..Default::default()
            }),
            changed: watch::channel(0).0,
            script: Mutex::new(Vec::new()),
        })
    }

    async fn wait(&self, pred: impl Fn(&FeedState) -> bool) {
        wait_for(&self.changed, &self.state, pred).await;
    }
}

impl FeedAdapter for MockFeed {
    fn add_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
    ) -> BoxFuture<'a, Result<CommentId, Failure>> {
        Box::pin(async move {
            let script = {
                let mut s = self.script.lock().unwrap();
                (!s.is_empty()).then(|| s.remove(0))
            };
            if let Some(Script::Fail(f)) = script {
                return Err(f);
            }
            let id = {
                let mut s = self.state.lock().unwrap();
                s.next_id += 1;
                s.adds += 1;
                let id = s.next_id;
                s.comments.insert(id, (post, doc.plain_text()));
                id
            };
            self.changed.send_modify(|v| *v += 1);
            if let Some(Script::HangAfterEffect) = script {
                std::future::pending::<()>().await;
            }
            Ok(CommentId(id))
        })
    }

    fn find_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        _since: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>> {
        Box::pin(async move {
            let text = doc.plain_text();
            Ok(self
                .state
                .lock()
                .unwrap()
                .comments
                .iter()
                .rev()
                .find(|(_, (p, t))| *p == post && *t == text)
                .map(|(id, _)| CommentId(*id)))
        })
    }

    fn delete_comment<'a>(&'a self, comment: CommentId) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.state.lock().unwrap().comments.remove(&comment.0);
            self.changed.send_modify(|v| *v += 1);
            Ok(())
        })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    chat: Arc<MockChat>,
    feed: Arc<MockFeed>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>, Journal)>,
}

const NEWS: &str = "CNEWS0001";
const DEV: &str = "CDEV00001";

fn router() -> Router {
    Router::new(vec![
        Route {
            name: "news".into(),
            audiences: vec![Audience::All],
            rooms: vec![Room::new(Platform::Slack, NEWS)],
            replies: true,
        },
        Route {
            name: "dev".into(),
            audiences: vec![Audience::Group(5)],
            rooms: vec![Room::new(Platform::Slack, DEV)],
            replies: false,
        },
    ])
}

impl Harness {
    fn new() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
            chat: MockChat::new(),
            feed: MockFeed::new(),
            running: None,
        }
    }

    async fn start(&mut self) {
        assert!(self.running.is_none());
        // sled lets go of its lock from its own threads a moment after a crash: wait as the
        // bridge does.
        let store =
            livefeed_core::store::Store::open_waiting(self.dir.path(), Duration::from_secs(5))
                .await
                .unwrap();
        let metrics = Arc::new(Metrics::new());
        let journal = Journal::new(store, metrics.clone());
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
    FeedPost {
        id: PostId(id),
        author: Person {
            id: "5".into(),
            name: "Ivan Petrov".into(),
            avatar_url: None,
        },
        title: Some(format!("Post {id}")),
        body: Doc::plain(text),
        important: false,
        audiences: audiences.iter().copied().collect(),
        url: format!("https://acme.bitrix24.com/company/personal/user/5/blog/{id}/"),
        published_at: 0,
        num_comments: 0,
    }
}

fn reply(thread: &str, reply: &str, text: &str) -> Inbound {
    Inbound::Chat(ChatEvent::ReplyPosted {
        room: Room::new(Platform::Slack, NEWS),
        thread: thread.into(),
        reply: reply.into(),
        author: Person {
            id: "U2".into(),
            name: "Anna Smirnova".into(),
            avatar_url: None,
        },
        body: Doc::plain(text),
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
    h.chat.wait(|s| s.posts_sent == 2).await;
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
    let s = h.chat.state.lock().unwrap().clone();
    assert_eq!(s.edits, 1);
    assert_eq!(h.chat.live(NEWS), vec![]);
    assert_eq!(s.posts_sent, 2);
    // A stale snapshot after the deletion must not bring the post back.
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        1,
        &[Audience::All],
        "zombie",
    ))))
    .await;
    h.settle().await;
    assert_eq!(h.chat.state.lock().unwrap().posts_sent, 2);
}

#[tokio::test]
async fn a_crash_after_sending_is_reconciled_not_resent() {
    let mut h = Harness::new();
    h.chat.script.lock().unwrap().push(Script::HangAfterEffect);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        7,
        &[Audience::All],
        "once",
    ))))
    .await;
    // The message is out, but the engine never hears back: crash now.
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    let s = h.chat.state.lock().unwrap().clone();
    assert_eq!(
        s.posts_sent, 1,
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
    h.chat.script.lock().unwrap().push(Script::HangAfterEffect);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        9,
        &[Audience::All],
        "first words",
    ))))
    .await;
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.accept(Inbound::Feed(FeedEvent::PostEdited(post(
        9,
        &[Audience::All],
        "second thoughts",
    ))))
    .await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    assert_eq!(h.chat.state.lock().unwrap().posts_sent, 1, "nothing resent");
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
    h.chat
        .script
        .lock()
        .unwrap()
        .push(Script::Gate(gate.clone()));
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
    assert_eq!(h.chat.state.lock().unwrap().posts_sent, 1);
    assert_eq!(h.chat.live(NEWS), vec![]);
}

/// The create went out, the post was deleted, the bridge crashed before recording either:
/// after the restart the message is found through its open intent and deleted.
#[tokio::test]
async fn a_crash_after_sending_a_post_deleted_meanwhile_deletes_it() {
    let mut h = Harness::new();
    h.chat.script.lock().unwrap().push(Script::HangAfterEffect);
    h.start().await;
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        8,
        &[Audience::All],
        "gone soon",
    ))))
    .await;
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.accept(Inbound::Feed(FeedEvent::PostDeleted(PostId(8))))
        .await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    assert_eq!(h.chat.state.lock().unwrap().posts_sent, 1, "nothing resent");
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
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.settle().await;
    h.accept(reply("m1", "r1", "Looks good")).await;
    h.accept(reply("m1", "r1", "Looks good")).await; // redelivery
    h.accept(reply("unknown-thread", "r9", "ignored")).await;
    h.feed.wait(|f| f.comments.len() == 1).await;
    h.settle().await;
    let f = h.feed.state.lock().unwrap().clone();
    assert_eq!(f.adds, 1);
    let (post_id, text) = f.comments.values().next().unwrap().clone();
    assert_eq!(post_id, PostId(3));
    assert_eq!(text, "Anna Smirnova (Slack): Looks good");

    let room = Room::new(Platform::Slack, NEWS);
    h.accept(Inbound::Chat(ChatEvent::ReplyEdited {
        room: room.clone(),
        thread: "m1".into(),
        reply: "r1".into(),
        author: Person {
            id: "U2".into(),
            name: "Anna Smirnova".into(),
            avatar_url: None,
        },
        body: Doc::plain("Looks great"),
    }))
    .await;
    h.feed
        .wait(|f| f.comments.values().any(|(_, t)| t.ends_with("Looks great")))
        .await;
    h.settle().await;
    assert_eq!(
        h.feed.state.lock().unwrap().comments.len(),
        1,
        "the old comment was replaced"
    );

    h.accept(Inbound::Chat(ChatEvent::ReplyDeleted {
        room,
        thread: Some("m1".into()),
        reply: "r1".into(),
    }))
    .await;
    h.feed.wait(|f| f.comments.is_empty()).await;
    h.settle().await;
    // The mirrored post never showed the bridge's own comments in its count.
    assert_eq!(h.chat.state.lock().unwrap().edits, 0);
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
    h.chat.wait(|s| s.posts_sent == 1).await;
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
    assert_eq!(
        h.chat.state.lock().unwrap().edits,
        0,
        "own comment does not count"
    );
    p.num_comments = 2;
    h.accept(Inbound::Feed(FeedEvent::CommentsChanged(p))).await;
    h.chat.wait(|s| s.edits == 1).await;
    assert!(h.chat.live(NEWS)[0].1.contains("1 comment in Bitrix24"));
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
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.settle().await;
    h.feed.script.lock().unwrap().push(Script::HangAfterEffect);
    h.accept(reply("m1", "r1", "exactly once")).await;
    h.feed.wait(|f| f.adds == 1).await;
    h.crash().await;
    h.start().await;
    h.settle().await;
    let f = h.feed.state.lock().unwrap().clone();
    assert_eq!((f.adds, f.comments.len()), (1, 1));
}

#[tokio::test]
async fn transient_failures_retry_and_permanent_ones_dead_letter_without_blocking_others() {
    let mut h = Harness::new();
    h.chat.script.lock().unwrap().extend([
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
    assert_eq!(h.chat.state.lock().unwrap().posts_sent, 0);
    // The next post flows; retrying the dead letter delivers the first one exactly once.
    h.accept(Inbound::Feed(FeedEvent::PostCreated(post(
        11,
        &[Audience::All],
        "b",
    ))))
    .await;
    h.chat.wait(|s| s.posts_sent == 1).await;
    assert!(store.retry_dead_letter(letters[0].id).unwrap());
    h.journal().wake();
    h.chat.wait(|s| s.posts_sent == 2).await;
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
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.settle().await;
    // Slack redelivered the reply after its deletion (a lost ack): deletion first.
    let room = Room::new(Platform::Slack, NEWS);
    h.accept(Inbound::Chat(ChatEvent::ReplyDeleted {
        room,
        thread: Some("m1".into()),
        reply: "r1".into(),
    }))
    .await;
    h.accept(reply("m1", "r1", "deleted already")).await;
    h.accept(reply("m1", "r2", "still here")).await;
    h.feed.wait(|f| f.adds == 1).await;
    h.settle().await;
    let f = h.feed.state.lock().unwrap().clone();
    assert_eq!(f.adds, 1);
    assert_eq!(
        f.comments.values().next().unwrap().1,
        "Anna Smirnova (Slack): still here"
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
    h.chat.wait(|s| s.posts_sent == 1).await;
    h.settle().await;
    h.accept(Inbound::Chat(ChatEvent::ReplyPosted {
        room: Room::new(Platform::Slack, DEV),
        thread: "m1".into(),
        reply: "r1".into(),
        author: Person {
            id: "U2".into(),
            name: "Anna".into(),
            avatar_url: None,
        },
        body: Doc::plain("no"),
    }))
    .await;
    h.settle().await;
    assert_eq!(h.feed.state.lock().unwrap().adds, 0);
}
