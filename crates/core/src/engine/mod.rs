//! The engine: turns journal entries into effects on the platforms (ARCHITECTURE.md,
//! "Invariants").
//!
//! - **Dispatch** reads the journal in sequence order. A feed event updates the post's record
//!   and becomes one *mirror sync* per room; a chat event becomes one *reply* task.
//! - **Lanes** run tasks: one lane per chat room (root messages in a room keep their order and
//!   one slow room never blocks another) and a few feed lanes sharded by post (comments on one
//!   post, from any room, are written in journal order). Lanes retry transient failures with backoff and dead-letter
//!   permanent ones; either way the other lanes keep flowing.
//! - **Effects are state-based and idempotent.** A mirror sync makes the room's message match the
//!   post's *latest* record (create, edit if the content hash changed, delete); replaying an
//!   entry after a crash changes nothing that is already right. The only non-idempotent effects
//!   — creating a root message or a comment — are guarded by an intent flushed before the call;
//!   an intent found open means the call may have happened, so the engine first asks the
//!   platform (reconciliation) and only then sends.
//! - A journal entry is removed once all its tasks are done.
//!
//! Files: this one dispatches journal entries into lane tasks; [`lanes`] runs them (retries,
//! dead letters); [`mirror`] syncs a post's root message in one room; [`replies`] turns chat
//! replies into feed comments; [`intents`] guards the non-idempotent effects.

mod chat_posts;
mod conversation;
mod intents;
mod lanes;
mod mirror;
mod replies;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::adapters::{ChatAdapter, Directory, FeedAdapter, mentions_mut};
use crate::health::Health;
use crate::journal::Journal;
use crate::links::{Links, PeopleConfig};
use crate::metrics::Metrics;
use crate::model::{
    ChatEvent, Failure, FeedEvent, Inbound, MessageId, Platform, PostId, Room, ThreadId,
};
use crate::richtext::{Doc, MentionKind};
use crate::route::Routing;
use crate::store::{JournalEntry, PostRecord, Store, StoreError, ThreadReply};

/// The engine's knobs (tests shorten the retry delays).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lanes for replies going to the feed (sharded by post). Their comment writes run at
    /// once and, while they wait for the portal's rate limit, leave together in one `batch`:
    /// the more lanes, the more comments a request carries during a catch-up.
    pub feed_lanes: usize,
    /// First retry delay of a failed task; doubles up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay (also the delay after refused credentials).
    pub retry_max: Duration,
    /// Pin the root messages of important posts while they are important.
    pub pin_important: bool,
    /// Files up to this size are carried across; larger ones become a link (feed → chat) or
    /// a note in the comment (chat → feed).
    pub max_file_bytes: u64,
    /// Identity links, for mentions that notify on the other side.
    pub people: PeopleConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            feed_lanes: 16,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            pin_important: true,
            max_file_bytes: 20 * 1024 * 1024,
            people: PeopleConfig::default(),
        }
    }
}

/// Applies the journal: dispatches each entry into lanes of tasks and runs them (module doc).
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    journal: Journal,
    router: Routing,
    chats: BTreeMap<Platform, Arc<dyn ChatAdapter>>,
    feed: Arc<dyn FeedAdapter>,
    /// Who is who across the platforms, for mentions.
    links: Links,
    /// The feed's name, for metric labels and `/readyz` (`feed.platform()`, asked once).
    feed_platform: Platform,
    metrics: Arc<Metrics>,
    cfg: EngineConfig,
    cancel: CancellationToken,
    /// Where refused credentials show (`/readyz`): a side whose calls fail with an auth error
    /// is down until an operator acts, even while its intake stays connected.
    health: Arc<Health>,
    /// Intents this process wrote, by key: whether the effect was already tried. An intent in
    /// the store but not here was left by an earlier run and must be reconciled.
    intents: Mutex<HashMap<String, IntentState>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntentState {
    /// Durable, effect not tried yet: send without asking the platform first.
    Prepared,
    /// The effect was tried; a retry must first look whether it happened.
    Attempted,
}

/// How to start a non-idempotent effect.
enum Begin {
    Send,
    /// The effect may have happened since `since_ms`: look before sending again.
    Reconcile {
        since_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Room(Room),
    Feed(usize),
}

#[derive(Debug, Clone)]
enum Task {
    SyncMirror {
        post: PostId,
        room: Room,
    },
    /// Someone deleted the post's root message in the room.
    Detach {
        post: PostId,
        room: Room,
        message: MessageId,
    },
    Reply(ChatEvent),
    /// Copy a reply (or its edit or deletion) into another room's thread of the post.
    MirrorReply {
        event: ChatEvent,
        target: Room,
    },
}

/// Completion tracking of one journal entry across its tasks.
struct Ticket {
    seq: u64,
    remaining: AtomicUsize,
    source: Platform,
    kind: &'static str,
    source_ms: Option<i64>,
}

type LaneSender = mpsc::UnboundedSender<(Task, Arc<Ticket>)>;

/// The content hash of a message whose content is not known (found by reconciliation).
const UNKNOWN_CONTENT: u64 = 0;

/// Most tasks a lane takes at once (their intents share one flush).
const LANE_BATCH: usize = 256;

impl Engine {
    /// An engine over `journal`, routing with `router` to `chats` and writing comments to
    /// `feed`. It runs when [`Engine::run`] is awaited and stops when `cancel` fires.
    pub fn new(
        journal: Journal,
        router: impl Into<Routing>,
        chats: Vec<Arc<dyn ChatAdapter>>,
        feed: Arc<dyn FeedAdapter>,
        metrics: Arc<Metrics>,
        cfg: EngineConfig,
        cancel: CancellationToken,
    ) -> Self {
        let chats = chats.into_iter().map(|c| (c.platform(), c)).collect();
        let journal_store = journal.store().clone();
        Engine {
            inner: Arc::new(Inner {
                store: journal.store().clone(),
                journal,
                router: router.into(),
                chats,
                links: Links::new(journal_store.clone(), cfg.people.clone()),
                feed_platform: feed.platform(),
                feed,
                metrics,
                cfg,
                cancel,
                health: Arc::new(Health::default()),
                intents: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Report auth failures and recoveries of outbound calls to `health`.
    #[must_use]
    pub fn reporting_to(mut self, health: Arc<Health>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.health = health;
        }
        self
    }

    /// Run until cancelled: first whatever the journal still holds (a restart), then each new
    /// entry as it is accepted.
    pub async fn run(self) -> Result<(), StoreError> {
        let inner = self.inner;
        let mut lanes: HashMap<LaneKey, LaneSender> = HashMap::new();
        let mut workers = JoinSet::new();
        let mut last: Option<u64> = None;
        let pending = inner.store.journal_depth();
        if pending > 0 {
            info!(pending, "replaying the journal");
        }
        let result = loop {
            let notified = inner.journal.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let dispatched = loop {
                let batch = match inner.store.journal_after(last, 512) {
                    Ok(b) => b,
                    Err(e) => break Err(e),
                };
                if batch.is_empty() {
                    break Ok(());
                }
                for (seq, entry) in batch {
                    last = Some(seq);
                    if let Err(e) = inner.dispatch(seq, entry, &mut lanes, &mut workers) {
                        warn!(seq, error = %e, "dispatch failed; the entry stays in the journal");
                    }
                }
            };
            if let Err(e) = dispatched {
                break Err(e);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = inner.cancel.cancelled() => break Ok(()),
            }
        };
        drop(lanes);
        inner.cancel.cancel();
        while workers.join_next().await.is_some() {}
        result
    }
}

impl Inner {
    fn dispatch(
        self: &Arc<Self>,
        seq: u64,
        entry: JournalEntry,
        lanes: &mut HashMap<LaneKey, LaneSender>,
        workers: &mut JoinSet<()>,
    ) -> Result<(), StoreError> {
        let tasks = match &entry.event {
            Inbound::Feed(event) => self.plan_feed(seq, event)?,
            Inbound::Refresh(post) => self
                .live_mirror_rooms(*post)?
                .into_iter()
                .map(|room| sync_task(*post, room))
                .collect(),
            Inbound::SyncRoom { post, room } => vec![sync_task(*post, room.clone())],
            Inbound::Chat(event) => self.plan_chat(event)?,
        };
        let ticket = Arc::new(Ticket {
            seq,
            remaining: AtomicUsize::new(tasks.len()),
            source: entry.event.source(&self.feed_platform).clone(),
            kind: entry.event.kind(),
            source_ms: entry.source_ms,
        });
        if tasks.is_empty() {
            self.finish(&ticket);
            return Ok(());
        }
        for (lane, task) in tasks {
            let sender = lanes.entry(lane.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                workers.spawn(self.clone().lane(lane, rx));
                tx
            });
            // A closed lane means we are shutting down; the entry stays journaled.
            let _ = sender.send((task, ticket.clone()));
        }
        Ok(())
    }

    fn plan_feed(&self, seq: u64, event: &FeedEvent) -> Result<Vec<(LaneKey, Task)>, StoreError> {
        let id = event.post_id();
        // Every change keeps the newest snapshot: an entry older than the record's (replayed
        // after a restart) changes nothing, and its tasks sync the rooms to the newest.
        let record = match event {
            FeedEvent::PostCreated(post)
            | FeedEvent::PostEdited(post)
            | FeedEvent::CommentsChanged(post) => {
                self.store.update_post(id, |current| match current {
                    // A deleted post stays deleted: a stale snapshot must not bring it back.
                    Some(rec) if rec.deleted || rec.seq > seq => None,
                    Some(mut rec) => {
                        rec.post = post.clone();
                        rec.seq = seq;
                        Some(rec)
                    }
                    None => Some(PostRecord {
                        post: post.clone(),
                        deleted: false,
                        bridge_comments: 0,
                        seq,
                    }),
                })?
            }
            FeedEvent::ImportanceChanged {
                important, readers, ..
            } => self.store.update_post(id, |current| {
                current
                    .filter(|r| !r.deleted && r.seq <= seq)
                    .map(|mut rec| {
                        rec.post.important = *important;
                        if readers.is_some() {
                            rec.post.readers = *readers;
                        }
                        rec.seq = seq;
                        rec
                    })
            })?,
            FeedEvent::PostDeleted(_) => self.store.update_post(id, |current| {
                current.filter(|r| !r.deleted).map(|mut rec| {
                    rec.deleted = true;
                    rec.seq = rec.seq.max(seq);
                    rec
                })
            })?,
        };
        let Some(record) = record else {
            return Ok(Vec::new());
        };
        // A deletion goes to every room the post maps to, not only those with a recorded
        // message: a create still queued or in flight in a room's lane has no mirror yet, and
        // the deletion must run after it in that lane.
        let mut rooms: BTreeSet<Room> = self.live_mirror_rooms(id)?.into_iter().collect();
        rooms.extend(self.router.current().rooms_for(&record.post));
        Ok(rooms.into_iter().map(|room| sync_task(id, room)).collect())
    }

    fn plan_chat(&self, event: &ChatEvent) -> Result<Vec<(LaneKey, Task)>, StoreError> {
        let room = event.room();
        if !self.router.current().serves(room) {
            debug!(%room, "event for a room no mapping names; ignored");
            return Ok(Vec::new());
        }
        // A top-level message (or its edit) becomes a feed post where the room publishes to
        // the feed; the message's events share one lane.
        if let ChatEvent::MessagePosted { message, .. } | ChatEvent::MessageEdited { message, .. } =
            event
        {
            if self.router.current().chat_post_audience(room).is_none() {
                debug!(%room, "the room does not publish to the feed; message ignored");
                return Ok(Vec::new());
            }
            return Ok(vec![(
                self.chat_post_lane(room, message),
                Task::Reply(event.clone()),
            )]);
        }
        if let ChatEvent::ReplyDeleted {
            thread: None,
            reply,
            ..
        } = event
        {
            // A deleted message that is itself a thread root: the bridge's root message, or
            // the person's message a post from chat came from.
            let root = MessageId(reply.0.clone());
            if let Some(post) = self
                .store
                .post_for_thread(room, &ThreadId::rooted_at(&root))?
            {
                if self.store.mirror(post, room)?.is_some_and(|m| m.foreign) {
                    return Ok(vec![(
                        self.chat_post_lane(room, reply),
                        Task::Reply(event.clone()),
                    )]);
                }
                let task = Task::Detach {
                    post,
                    room: room.clone(),
                    message: root,
                };
                return Ok(vec![(LaneKey::Room(room.clone()), task)]);
            }
        }
        let thread = match event {
            ChatEvent::ReplyPosted { thread, .. } | ChatEvent::ReplyEdited { thread, .. } => {
                Some(thread.clone())
            }
            ChatEvent::ReplyDeleted { thread, reply, .. } => match thread {
                Some(t) => Some(t.clone()),
                None => self.store.comment_for_reply(room, reply)?.map(|c| c.thread),
            },
            // Planned above.
            ChatEvent::MessagePosted { .. } | ChatEvent::MessageEdited { .. } => None,
        };
        // Copies of the reply in other rooms (those recorded, for a deletion whose thread is
        // not known any more).
        let mut copies: Vec<(LaneKey, Task)> = self
            .store
            .reply_mirrors(room, event.reply())?
            .into_iter()
            .map(|(target, _)| target)
            .chain(match &thread {
                Some(t) => match self.store.post_for_thread(room, t)? {
                    Some(post) => self.reply_targets(room, post)?,
                    // The thread's root is being sent right now, so its post is not known
                    // yet: every room may carry it. Each copy task waits for the root's
                    // record, then copies only where the post has a message.
                    None if self.store.has_post_intent_in(room)? => {
                        let router = self.router.current();
                        if router.mirrors_replies(room) {
                            router
                                .rooms()
                                .into_iter()
                                .filter(|r| r != room && router.mirrors_replies(r))
                                .collect()
                        } else {
                            Vec::new()
                        }
                    }
                    None => Vec::new(),
                },
                None => Vec::new(),
            })
            .collect::<BTreeSet<Room>>()
            .into_iter()
            .map(|target| {
                let task = Task::MirrorReply {
                    event: event.clone(),
                    target: target.clone(),
                };
                (LaneKey::Room(target), task)
            })
            .collect();
        // The conversation so far is kept for rooms that get the post later.
        if let Some(t) = &thread
            && let Some(post) = self.store.post_for_thread(room, t)?
        {
            match event {
                ChatEvent::ReplyPosted {
                    reply,
                    author,
                    body,
                    ..
                }
                | ChatEvent::ReplyEdited {
                    reply,
                    author,
                    body,
                    ..
                } => {
                    let entry = ThreadReply {
                        thread: t.clone(),
                        author: author.clone(),
                        body: body.clone(),
                    };
                    self.store.log_thread_reply(post, room, reply, &entry)?
                }
                ChatEvent::ReplyDeleted { reply, .. } => {
                    self.store.unlog_thread_reply(post, room, reply)?
                }
                ChatEvent::MessagePosted { .. } | ChatEvent::MessageEdited { .. } => {}
            }
        }
        let Some(thread) = thread else {
            if copies.is_empty() {
                debug!(%room, "deleted message was never bridged; ignored");
            }
            return Ok(copies);
        };
        // One lane per post, not per thread: comments on a post are written one at a time in
        // journal order, so after a crash the repeated comment is the bridge's latest on that
        // post and the feed's duplicate rule recognises it (docs/platforms/bitrix24.md §4.7).
        // A thread whose root is not recorded yet keeps its own lane until it is.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match self.store.post_for_thread(room, &thread)? {
            Some(post) => post.hash(&mut h),
            None => (room, &thread).hash(&mut h),
        }
        let shard = (h.finish() % self.cfg.feed_lanes.max(1) as u64) as usize;
        copies.insert(0, (LaneKey::Feed(shard), Task::Reply(event.clone())));
        Ok(copies)
    }

    /// The feed lane of a top-level message's events (posted, edited, deleted).
    fn chat_post_lane(&self, room: &Room, message: &crate::model::ReplyId) -> LaneKey {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (room, message).hash(&mut h);
        LaneKey::Feed((h.finish() % self.cfg.feed_lanes.max(1) as u64) as usize)
    }

    fn live_mirror_rooms(&self, post: PostId) -> Result<Vec<Room>, StoreError> {
        Ok(self
            .store
            .mirrors(post)?
            .into_iter()
            .filter(|(_, m)| !m.deleted)
            .map(|(room, _)| room)
            .collect())
    }

    /// Where `platform`'s people can be looked up by e-mail, if anywhere.
    fn directory(&self, platform: &Platform) -> Option<&dyn Directory> {
        if *platform == self.feed_platform {
            self.feed.directory()
        } else {
            self.chats.get(platform).and_then(|c| c.directory())
        }
    }

    /// Give the mentions of people in `doc`, written on `from`, their ids on `to` where an
    /// identity link knows them: `to`'s renderer then mentions them so that they are notified.
    /// The others stay plain names.
    async fn link_mentions(&self, doc: &mut Doc, from: &Platform, to: &Platform) {
        let mut ids: Vec<String> = mentions_mut(doc)
            .into_iter()
            .filter(|m| m.kind == MentionKind::User)
            .map(|m| m.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        let mut found = HashMap::new();
        for id in ids {
            let from_side = (from, self.directory(from));
            let to_side = (to, self.directory(to));
            if let Some(target) = self.links.counterpart(from_side, &id, to_side).await {
                found.insert(id, target);
            }
        }
        for m in mentions_mut(doc) {
            if m.kind == MentionKind::User {
                m.target = found.get(&m.id).cloned();
            }
        }
    }

    fn chat(&self, platform: &Platform) -> Result<&Arc<dyn ChatAdapter>, Failure> {
        self.chats
            .get(platform)
            .ok_or_else(|| Failure::permanent(format!("{platform} is not configured")))
    }
}

fn sync_task(post: PostId, room: Room) -> (LaneKey, Task) {
    (LaneKey::Room(room.clone()), Task::SyncMirror { post, room })
}

fn store_failure(e: StoreError) -> Failure {
    Failure::transient(e.to_string())
}
