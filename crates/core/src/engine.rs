//! The engine: turns journal entries into effects on the platforms (DESIGN.md §3).
//!
//! - **Dispatch** reads the journal in sequence order. A feed event updates the post's record
//!   and becomes one *mirror sync* per room; a chat event becomes one *reply* task.
//! - **Lanes** run tasks: one lane per chat room (root messages in a room keep their order and
//!   one slow room never blocks another) and a few feed lanes sharded by thread (replies of one
//!   thread keep their order). Lanes retry transient failures with backoff and dead-letter
//!   permanent ones; either way the other lanes keep flowing.
//! - **Effects are state-based and idempotent.** A mirror sync makes the room's message match the
//!   post's *latest* record (create, edit if the content hash changed, delete); replaying an
//!   entry after a crash changes nothing that is already right. The only non-idempotent effects
//!   — creating a root message or a comment — are guarded by an intent flushed before the call;
//!   an intent found open means the call may have happened, so the engine first asks the
//!   platform (reconciliation) and only then sends.
//! - A journal entry is removed once all its tasks are done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::adapters::{ChatAdapter, ChatPost, FeedAdapter};
use super::journal::Journal;
use super::layout::{attributed_comment, content_hash, root_message};
use super::model::{
    ChatEvent, Failure, FailureKind, FeedEvent, Inbound, Person, Platform, PostId, Room,
};
use super::richtext::Doc;
use super::route::Router;
use super::store::{
    CommentRecord, Intent, JournalEntry, Mirror, PostRecord, Store, StoreError, comment_intent_key,
    now_ms, post_intent_key,
};
use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lanes for replies going to the feed (sharded by thread).
    pub feed_lanes: usize,
    /// First retry delay of a failed task; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            feed_lanes: 4,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }
}

pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    journal: Journal,
    router: Router,
    chats: BTreeMap<Platform, Arc<dyn ChatAdapter>>,
    feed: Arc<dyn FeedAdapter>,
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
    SyncMirror { post: PostId, room: Room },
    Reply(ChatEvent),
}

/// Completion tracking of one journal entry across its tasks.
struct Ticket {
    seq: u64,
    remaining: AtomicUsize,
    source: &'static str,
    kind: &'static str,
    source_ms: Option<i64>,
}

type LaneSender = mpsc::UnboundedSender<(Task, Arc<Ticket>)>;

/// The content hash of a message whose content is not known (found by reconciliation).
const UNKNOWN_CONTENT: u64 = 0;

/// Most tasks a lane takes at once (their intents share one flush).
const LANE_BATCH: usize = 256;

impl Engine {
    pub fn new(
        journal: Journal,
        router: Router,
        chats: Vec<Arc<dyn ChatAdapter>>,
        feed: Arc<dyn FeedAdapter>,
        metrics: Arc<Metrics>,
        cfg: EngineConfig,
        cancel: CancellationToken,
    ) -> Self {
        let chats = chats.into_iter().map(|c| (c.platform(), c)).collect();
        Engine {
            inner: Arc::new(Inner {
                store: journal.store().clone(),
                journal,
                router,
                chats,
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
            Inbound::Feed(event) => self.plan_feed(event)?,
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
            source: entry.event.source(),
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

    fn plan_feed(&self, event: &FeedEvent) -> Result<Vec<(LaneKey, Task)>, StoreError> {
        let id = event.post_id();
        let record = match event {
            FeedEvent::PostCreated(post)
            | FeedEvent::PostEdited(post)
            | FeedEvent::CommentsChanged(post) => {
                self.store.update_post(id, |current| match current {
                    // A deleted post stays deleted: a stale snapshot must not bring it back.
                    Some(rec) if rec.deleted => None,
                    Some(mut rec) => {
                        rec.post = post.clone();
                        Some(rec)
                    }
                    None => Some(PostRecord {
                        post: post.clone(),
                        deleted: false,
                        bridge_comments: 0,
                    }),
                })?
            }
            FeedEvent::PostDeleted(_) => self.store.update_post(id, |current| {
                current.filter(|r| !r.deleted).map(|mut rec| {
                    rec.deleted = true;
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
        rooms.extend(self.router.rooms_for(&record.post));
        Ok(rooms.into_iter().map(|room| sync_task(id, room)).collect())
    }

    fn plan_chat(&self, event: &ChatEvent) -> Result<Vec<(LaneKey, Task)>, StoreError> {
        let room = event.room();
        if !self.router.serves(room) {
            debug!(%room, "event for a room no mapping names; ignored");
            return Ok(Vec::new());
        }
        let thread = match event {
            ChatEvent::ReplyPosted { thread, .. } | ChatEvent::ReplyEdited { thread, .. } => {
                Some(thread.clone())
            }
            ChatEvent::ReplyDeleted { thread, reply, .. } => match thread {
                Some(t) => Some(t.clone()),
                None => self.store.comment_for_reply(room, reply)?.map(|c| c.thread),
            },
        };
        let Some(thread) = thread else {
            debug!(%room, "deleted message was never bridged; ignored");
            return Ok(Vec::new());
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (room, &thread).hash(&mut h);
        let shard = (h.finish() % self.cfg.feed_lanes.max(1) as u64) as usize;
        Ok(vec![(LaneKey::Feed(shard), Task::Reply(event.clone()))])
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

    /// A lane: runs its tasks one after another until the engine stops.
    async fn lane(
        self: Arc<Self>,
        key: LaneKey,
        mut rx: mpsc::UnboundedReceiver<(Task, Arc<Ticket>)>,
    ) {
        'lane: loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = self.cancel.cancelled() => None,
            };
            let Some(first) = next else { break };
            // Take whatever else is queued: its intents share one flush.
            let mut batch = vec![first];
            while batch.len() < LANE_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            self.prepare_intents(&batch).await;
            for (task, ticket) in batch {
                let done = tokio::select! {
                    done = self.run_task(&task) => done,
                    // Stopping mid-effect is safe: the entry stays journaled and any open
                    // intent is reconciled on the next start.
                    _ = self.cancel.cancelled() => false,
                };
                if !done {
                    break 'lane;
                }
                if ticket.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.finish(&ticket);
                    if let Some(source_ms) = ticket.source_ms {
                        // Labelled by where the change was mirrored to.
                        let to = match &key {
                            LaneKey::Room(room) => room.platform.as_str(),
                            LaneKey::Feed(_) => "bitrix24",
                        };
                        self.metrics
                            .lag(to, (now_ms() - source_ms).max(0) as f64 / 1000.0);
                    }
                }
            }
        }
    }

    /// Write the intents of every root message this batch will create, with one flush.
    async fn prepare_intents(&self, batch: &[(Task, Arc<Ticket>)]) {
        let mut prepared = Vec::new();
        for (task, _) in batch {
            let Task::SyncMirror { post, room } = task else {
                continue;
            };
            let key = post_intent_key(*post, room);
            let creates = matches!(self.store.post(*post), Ok(Some(r)) if !r.deleted)
                && matches!(self.store.mirror(*post, room), Ok(None))
                && matches!(self.store.intent(&key), Ok(None))
                && self.intent_state(&key).is_none();
            if creates
                && self
                    .store
                    .put_intent(
                        &key,
                        &Intent {
                            started_ms: now_ms(),
                        },
                    )
                    .is_ok()
            {
                prepared.push(key);
            }
        }
        // Unflushed intents stay unmarked: their tasks reconcile first, which is safe.
        if !prepared.is_empty() && self.store.sync().await.is_ok() {
            let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
            for key in prepared {
                intents.insert(key, IntentState::Prepared);
            }
        }
    }

    fn intent_state(&self, key: &str) -> Option<IntentState> {
        self.intents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    fn set_intent_state(&self, key: &str, state: Option<IntentState>) {
        let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => {
                intents.insert(key.to_string(), s);
            }
            None => {
                intents.remove(key);
            }
        }
    }

    /// Start a non-idempotent effect guarded by the intent `key`: either it is certainly new
    /// (send), or it may have happened (reconcile first).
    async fn begin(&self, key: &str) -> Result<Begin, Failure> {
        match self.intent_state(key) {
            Some(IntentState::Prepared) => {
                self.set_intent_state(key, Some(IntentState::Attempted));
                return Ok(Begin::Send);
            }
            Some(IntentState::Attempted) => {
                let since_ms = self
                    .store
                    .intent(key)
                    .map_err(store_failure)?
                    .map_or(0, |i| i.started_ms);
                return Ok(Begin::Reconcile { since_ms });
            }
            None => {}
        }
        if let Some(intent) = self.store.intent(key).map_err(store_failure)? {
            // Left by an earlier run: the effect may have happened before the stop.
            self.set_intent_state(key, Some(IntentState::Attempted));
            return Ok(Begin::Reconcile {
                since_ms: intent.started_ms,
            });
        }
        self.store
            .put_intent(
                key,
                &Intent {
                    started_ms: now_ms(),
                },
            )
            .map_err(store_failure)?;
        self.store.sync().await.map_err(store_failure)?;
        self.set_intent_state(key, Some(IntentState::Attempted));
        Ok(Begin::Send)
    }

    fn finish(&self, ticket: &Ticket) {
        if let Err(e) = self.store.complete(ticket.seq) {
            warn!(seq = ticket.seq, error = %e, "cannot remove an applied journal entry; it will be replayed");
        }
        self.metrics.applied(ticket.source, ticket.kind);
        self.journal.publish_depth();
    }

    /// Run a task to its end: success, or a dead letter. Returns false only if the engine
    /// stopped first.
    async fn run_task(&self, task: &Task) -> bool {
        let mut attempt: u32 = 0;
        loop {
            let (platform, action) = self.describe(task);
            let result = self.execute(task).await;
            match &result {
                Err(failure) if failure.kind == FailureKind::Auth => {
                    self.health.error(platform, &failure.reason, true);
                }
                Ok(()) if attempt > 0 => self.health.recovered(platform),
                _ => {}
            }
            match result {
                Ok(()) => return true,
                Err(failure) if failure.kind == FailureKind::Permanent => {
                    self.metrics.effect(platform, action, "dead_letter");
                    self.dead_letter(task, &failure);
                    return true;
                }
                Err(failure) => {
                    attempt += 1;
                    self.metrics.effect(platform, action, "retry");
                    let delay = self.backoff(attempt, &failure);
                    warn!(
                        task = %self.task_label(task),
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %failure,
                        "effect failed; will retry"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => return false,
                    }
                }
            }
        }
    }

    fn backoff(&self, attempt: u32, failure: &Failure) -> Duration {
        let base = self.cfg.retry_base.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.min(16).saturating_sub(1));
        let mut ms = exp.min(self.cfg.retry_max.as_millis() as u64);
        // ±20% jitter so lanes that failed together do not retry together.
        ms = ms * (80 + fastrand::u64(0..=40)) / 100;
        if failure.kind == FailureKind::Auth {
            // Credentials will not fix themselves quickly: no hot loop.
            ms = ms.max(self.cfg.retry_max.as_millis() as u64);
        }
        let mut delay = Duration::from_millis(ms);
        if let Some(hint) = failure.retry_hint() {
            delay = delay.max(hint);
        }
        delay
    }

    fn describe(&self, task: &Task) -> (&'static str, &'static str) {
        match task {
            Task::SyncMirror { room, .. } => (room.platform.as_str(), "sync_mirror"),
            Task::Reply(e) => ("bitrix24", e.kind()),
        }
    }

    fn task_label(&self, task: &Task) -> String {
        match task {
            Task::SyncMirror { post, room } => format!("post {post} → {room}"),
            Task::Reply(e) => match e {
                ChatEvent::ReplyPosted { room, reply, .. } => {
                    format!("reply {room}/{reply} → feed")
                }
                ChatEvent::ReplyEdited { room, reply, .. } => {
                    format!("edit of {room}/{reply} → feed")
                }
                ChatEvent::ReplyDeleted { room, reply, .. } => {
                    format!("deletion of {room}/{reply} → feed")
                }
            },
        }
    }

    fn dead_letter(&self, task: &Task, failure: &Failure) {
        let event = match task {
            Task::SyncMirror { post, room } => {
                // The creation will not be retried on its own: its intent has no meaning now.
                let key = post_intent_key(*post, room);
                let _ = self.store.remove_intent(&key);
                self.set_intent_state(&key, None);
                Inbound::SyncRoom {
                    post: *post,
                    room: room.clone(),
                }
            }
            Task::Reply(e) => {
                if let ChatEvent::ReplyPosted { room, reply, .. }
                | ChatEvent::ReplyEdited { room, reply, .. } = e
                {
                    let key = comment_intent_key(room, reply);
                    let _ = self.store.remove_intent(&key);
                    self.set_intent_state(&key, None);
                }
                Inbound::Chat(e.clone())
            }
        };
        let label = self.task_label(task);
        match self
            .store
            .add_dead_letter(label.clone(), failure.reason.clone(), event)
        {
            Ok(letter) => warn!(
                dead_letter = letter.id,
                task = %label,
                error = %failure,
                "permanent failure; moved to dead letters"
            ),
            Err(e) => {
                warn!(task = %label, error = %e, "permanent failure and the dead letter could not be stored")
            }
        }
        self.metrics
            .dead_letters
            .set(self.store.dead_letter_count() as i64);
    }

    async fn execute(&self, task: &Task) -> Result<(), Failure> {
        match task {
            Task::SyncMirror { post, room } => self.sync_mirror(*post, room).await,
            Task::Reply(event) => self.apply_reply(event).await,
        }
    }

    /// Make `room`'s message for `post` match the post's latest record.
    async fn sync_mirror(&self, post: PostId, room: &Room) -> Result<(), Failure> {
        let Some(record) = self.store.post(post).map_err(store_failure)? else {
            return Ok(());
        };
        let chat = self.chat(room.platform)?;
        let platform = room.platform.as_str();
        let mirror = self.store.mirror(post, room).map_err(store_failure)?;
        if record.deleted {
            match mirror {
                Some(mut m) if !m.deleted => {
                    chat.delete(&room.id, &m.message_id).await?;
                    m.deleted = true;
                    self.store
                        .put_mirror(post, room, &m)
                        .map_err(store_failure)?;
                    self.metrics.effect(platform, "delete", "ok");
                    info!(%post, %room, "mirror deleted");
                }
                Some(_) => {}
                None => self.delete_unrecorded(post, room, chat.as_ref()).await?,
            }
            return Ok(());
        }
        let comments = record
            .post
            .num_comments
            .saturating_sub(record.bridge_comments);
        let msg = ChatPost {
            post,
            author: record.post.author.clone(),
            doc: root_message(&record.post, comments, chat.layout()),
        };
        let hash = content_hash(&(&msg.author, &msg.doc));
        match mirror {
            None => {
                let key = post_intent_key(post, room);
                let (message_id, reconciled) = match self.begin(&key).await? {
                    Begin::Send => (chat.post(&room.id, &msg).await?, false),
                    Begin::Reconcile { since_ms } => {
                        let id = match chat.find_post(&room.id, post, since_ms).await? {
                            Some(found) => {
                                info!(%post, %room, "found the root message sent before");
                                found
                            }
                            // A platform that deduplicates sends may return the earlier one.
                            None => chat.post(&room.id, &msg).await?,
                        };
                        (id, true)
                    }
                };
                crate::crashpoint::hit("engine.sent");
                // A message sent before a stop shows the post as it was then, which an edit
                // since may have changed: recorded as unknown content, it is edited below (and
                // by the retry, if that edit fails).
                let mirror = Mirror {
                    message_id,
                    content_hash: if reconciled { UNKNOWN_CONTENT } else { hash },
                    deleted: false,
                };
                self.store
                    .record_mirror(post, room, &mirror, &key)
                    .map_err(store_failure)?;
                self.set_intent_state(&key, None);
                crate::crashpoint::hit("engine.recorded");
                self.metrics.effect(platform, "post", "ok");
                info!(%post, %room, message = %mirror.message_id, "post mirrored");
                if reconciled {
                    self.edit_mirror(post, room, chat.as_ref(), mirror, &msg, hash)
                        .await?;
                }
            }
            Some(m) if m.deleted || m.content_hash == hash => {}
            Some(m) => {
                self.edit_mirror(post, room, chat.as_ref(), m, &msg, hash)
                    .await?
            }
        }
        Ok(())
    }

    async fn edit_mirror(
        &self,
        post: PostId,
        room: &Room,
        chat: &dyn ChatAdapter,
        mut m: Mirror,
        msg: &ChatPost,
        hash: u64,
    ) -> Result<(), Failure> {
        chat.edit(&room.id, &m.message_id, msg).await?;
        m.content_hash = hash;
        self.store
            .put_mirror(post, room, &m)
            .map_err(store_failure)?;
        self.metrics.effect(room.platform.as_str(), "edit", "ok");
        info!(%post, %room, "mirror updated");
        Ok(())
    }

    /// A deleted post without a recorded message may still have one: a create whose intent
    /// is open was sent, or may have been, before a crash. Find it and delete it.
    async fn delete_unrecorded(
        &self,
        post: PostId,
        room: &Room,
        chat: &dyn ChatAdapter,
    ) -> Result<(), Failure> {
        let key = post_intent_key(post, room);
        let Some(intent) = self.store.intent(&key).map_err(store_failure)? else {
            return Ok(());
        };
        // Prepared in this run but never attempted: nothing can have been sent.
        if self.intent_state(&key) != Some(IntentState::Prepared)
            && let Some(found) = chat.find_post(&room.id, post, intent.started_ms).await?
        {
            chat.delete(&room.id, &found).await?;
            self.metrics.effect(room.platform.as_str(), "delete", "ok");
            info!(%post, %room, "deleted a root message sent before a stop");
        }
        self.store.remove_intent(&key).map_err(store_failure)?;
        self.set_intent_state(&key, None);
        Ok(())
    }

    async fn apply_reply(&self, event: &ChatEvent) -> Result<(), Failure> {
        match event {
            ChatEvent::ReplyPosted {
                room,
                thread,
                reply,
                author,
                body,
            } => self.add_comment(room, thread, reply, author, body).await,
            ChatEvent::ReplyEdited {
                room,
                thread,
                reply,
                author,
                body,
            } => {
                let doc = attributed_comment(author, room.platform, body);
                if let Some(existing) = self
                    .store
                    .comment_for_reply(room, reply)
                    .map_err(store_failure)?
                {
                    if existing.content_hash == content_hash(&doc) {
                        return Ok(());
                    }
                    // Feed comments cannot be edited through the API: replace the comment.
                    self.remove_comment(room, reply, &existing).await?;
                }
                self.add_comment(room, thread, reply, author, body).await
            }
            ChatEvent::ReplyDeleted { room, reply, .. } => {
                match self
                    .store
                    .comment_for_reply(room, reply)
                    .map_err(store_failure)?
                {
                    Some(existing) => self.remove_comment(room, reply, &existing).await?,
                    None => {
                        // Not bridged (yet): if the reply itself arrives late, it stays out.
                        debug!(%room, reply, "deleted reply was never a comment; remembered");
                        self.store
                            .put_reply_tombstone(room, reply)
                            .map_err(store_failure)?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn add_comment(
        &self,
        room: &Room,
        thread: &str,
        reply: &str,
        author: &Person,
        body: &Doc,
    ) -> Result<(), Failure> {
        if !self.router.replies_enabled(room) {
            debug!(%room, "replies are off for this room; reply ignored");
            return Ok(());
        }
        if self
            .store
            .comment_for_reply(room, reply)
            .map_err(store_failure)?
            .is_some()
        {
            return Ok(());
        }
        if self
            .store
            .reply_tombstoned(room, reply)
            .map_err(store_failure)?
        {
            debug!(%room, reply, "reply deleted before it arrived; not bridged");
            return Ok(());
        }
        let Some(post) = self
            .store
            .post_for_message(room, thread)
            .map_err(store_failure)?
        else {
            if self.store.has_post_intent_in(room).map_err(store_failure)? {
                // The root may be one the bridge is sending right now; wait for its record.
                return Err(Failure::retry_after(
                    "thread root not recorded yet",
                    Duration::from_millis(200),
                ));
            }
            debug!(%room, thread, "reply in a thread the bridge did not start; ignored");
            return Ok(());
        };
        match self.store.post(post).map_err(store_failure)? {
            Some(rec) if !rec.deleted => {}
            _ => {
                debug!(%post, "reply to a deleted post; ignored");
                return Ok(());
            }
        }
        let doc = attributed_comment(author, room.platform, body);
        let key = comment_intent_key(room, reply);
        let comment = match self.begin(&key).await? {
            Begin::Send => self.feed.add_comment(post, &doc).await?,
            Begin::Reconcile { since_ms } => {
                match self.feed.find_comment(post, &doc, since_ms).await? {
                    Some(found) => {
                        info!(%post, %room, "found the comment written before");
                        found
                    }
                    None => self.feed.add_comment(post, &doc).await?,
                }
            }
        };
        crate::crashpoint::hit("engine.commented");
        let record = CommentRecord {
            post,
            comment,
            thread: thread.to_string(),
            content_hash: content_hash(&doc),
        };
        self.store
            .record_comment(room, reply, &record, &key)
            .map_err(store_failure)?;
        self.set_intent_state(&key, None);
        self.journal.publish_depth();
        self.journal.wake();
        self.metrics.effect("bitrix24", "comment_add", "ok");
        info!(%post, %room, comment = %comment, "reply added as a feed comment");
        Ok(())
    }

    async fn remove_comment(
        &self,
        room: &Room,
        reply: &str,
        existing: &CommentRecord,
    ) -> Result<(), Failure> {
        self.feed.delete_comment(existing.comment).await?;
        self.store
            .remove_comment(room, reply, existing)
            .map_err(store_failure)?;
        self.journal.publish_depth();
        self.journal.wake();
        self.metrics.effect("bitrix24", "comment_delete", "ok");
        info!(post = %existing.post, comment = %existing.comment, "feed comment deleted");
        Ok(())
    }

    fn chat(&self, platform: Platform) -> Result<&Arc<dyn ChatAdapter>, Failure> {
        self.chats
            .get(&platform)
            .ok_or_else(|| Failure::permanent(format!("{platform} is not configured")))
    }
}

fn sync_task(post: PostId, room: Room) -> (LaneKey, Task) {
    (LaneKey::Room(room.clone()), Task::SyncMirror { post, room })
}

fn store_failure(e: StoreError) -> Failure {
    Failure::transient(e.to_string())
}
