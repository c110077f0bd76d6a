//! Matrix intake: `/sync` as the bot, thread replies → chat events.
//!
//! The sync token lives in the bridge's store and advances only in the same transaction that
//! journals what the sync brought (ARCHITECTURE.md, "Accept durably, then acknowledge"): a
//! crash replays at most one sync, and a restart neither replays history nor misses what
//! happened while the bridge was down. The
//! first sync only sets the token. A timeline the server cut short (`limited`) is filled in by
//! paging back with `/messages` to the events already seen.
//!
//! What counts: `m.room.message` events in a thread (`m.thread`) or replying to a root
//! (`m.in_reply_to`), their edits (`m.replace`, using `m.new_content`, never the `* ` fallback),
//! and redactions. The bot's own events never count. The bot joins mapped rooms it is invited
//! to. Encrypted events are decrypted by the SDK; one that cannot be decrypted yet is retried
//! on later syncs while its room key may still arrive.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::{TimelineEvent, TimelineEventKind};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::filter::{FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::room::message::{
    MessageType, Relation, RoomMessageEventContentWithoutRelation, SyncRoomMessageEvent,
};
use matrix_sdk::ruma::events::room::redaction::SyncRoomRedactionEvent;
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UInt};
use matrix_sdk::sync::SyncResponse;
use matrix_sdk::{Client, Room};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::PLATFORM;
use super::html;
use super::session::sdk_failure;
use crate::upstream::{self, ErrorClass};
use livefeed_core::health::Health;
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::model::{
    ChatEvent, ChatFile, FailureKind, Inbound, Person, ReplyId, Room as ChatRoom, ThreadId,
};
use livefeed_core::richtext::Doc;
use livefeed_core::route::Served;
use livefeed_core::store::Store;

const TOKEN_KEY: &str = "matrix/sync_token";
/// Events per room and sync; a longer gap is paged in with `/messages`.
const TIMELINE_LIMIT: u32 = 100;
/// Pages of history read to fill one gap.
const GAP_PAGES: usize = 20;
/// How long an undecryptable event is retried before it is given up (logged).
const UTD_PATIENCE: Duration = Duration::from_secs(600);

/// A Matrix event reduced to what the bridge acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A person replied in a thread (or replied to a root message).
    Reply {
        /// The thread's root event.
        thread: String,
        /// What they wrote.
        body: Doc,
        /// The file they sent (`m.image`, `m.file`, `m.video`, `m.audio`).
        files: Vec<ChatFile>,
    },
    /// A person edited a message.
    Edited {
        /// The edited event.
        replaces: String,
        /// The new content.
        body: Doc,
        /// The file the new content carries.
        files: Vec<ChatFile>,
    },
    /// A person wrote a message outside any thread: a feed post where the room's mapping
    /// publishes chat messages, nothing elsewhere.
    TopLevel {
        /// What they wrote.
        body: Doc,
    },
    /// A message was redacted.
    Deleted {
        /// The redacted event.
        redacts: String,
    },
    /// Nothing for the bridge, and why.
    Ignored(&'static str),
}

/// Decide what a (decrypted) timeline event means. Pure apart from deserialisation.
pub fn classify(event: &AnySyncTimelineEvent, own: &str) -> Incoming {
    if event.sender().as_str() == own {
        return Incoming::Ignored("the bridge's own event");
    }
    match event {
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
            SyncRoomMessageEvent::Original(m),
        )) => match &m.content.relates_to {
            Some(Relation::Thread(t)) => Incoming::Reply {
                thread: t.event_id.to_string(),
                body: body_of(&m.content.msgtype),
                files: files_of(&m.content.msgtype),
            },
            Some(Relation::Reply(r)) => Incoming::Reply {
                thread: r.in_reply_to.event_id.to_string(),
                body: body_of(&m.content.msgtype),
                files: files_of(&m.content.msgtype),
            },
            Some(Relation::Replacement(r)) => Incoming::Edited {
                replaces: r.event_id.to_string(),
                body: new_body(&r.new_content),
                files: files_of(&r.new_content.msgtype),
            },
            _ => Incoming::TopLevel {
                body: body_of(&m.content.msgtype),
            },
        },
        AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomRedaction(
            SyncRoomRedactionEvent::Original(r),
        )) => {
            // Room versions 11+ carry `redacts` in the content, older ones at the top level.
            match r.content.redacts.as_ref().or(r.redacts.as_ref()) {
                Some(id) => Incoming::Deleted {
                    redacts: id.to_string(),
                },
                None => Incoming::Ignored("redaction without a target"),
            }
        }
        _ => Incoming::Ignored("not a message or redaction"),
    }
}

fn new_body(c: &RoomMessageEventContentWithoutRelation) -> Doc {
    body_of(&c.msgtype)
}

/// The formatted body when there is one (never the plain fallback), else the plain body. A
/// file's body is its caption, when it has one apart from the file name, else empty.
fn body_of(msgtype: &MessageType) -> Doc {
    let (body, formatted) = match msgtype {
        MessageType::Text(t) => (&t.body, t.formatted.as_ref()),
        MessageType::Notice(n) => (&n.body, n.formatted.as_ref()),
        MessageType::Emote(e) => (&e.body, e.formatted.as_ref()),
        MessageType::Image(c) => return caption(c.caption(), c.formatted.as_ref()),
        MessageType::File(c) => return caption(c.caption(), c.formatted.as_ref()),
        MessageType::Video(c) => return caption(c.caption(), c.formatted.as_ref()),
        MessageType::Audio(c) => return caption(c.caption(), c.formatted.as_ref()),
        other => return Doc::plain(other.body()),
    };
    match formatted {
        Some(f) if f.format.as_str() == "org.matrix.custom.html" => html::parse(&f.body),
        _ => html::parse_plain(body),
    }
}

fn caption(
    plain: Option<&str>,
    formatted: Option<&matrix_sdk::ruma::events::room::message::FormattedBody>,
) -> Doc {
    match (plain, formatted) {
        (Some(_), Some(f)) if f.format.as_str() == "org.matrix.custom.html" => html::parse(&f.body),
        (Some(text), _) => html::parse_plain(text),
        (None, _) => Doc::default(),
    }
}

/// The file a media message carries. Its source (with the key of an encrypted attachment) is
/// kept as JSON for the adapter to fetch and decrypt.
fn files_of(msgtype: &MessageType) -> Vec<ChatFile> {
    let (name, source, size, mime) = match msgtype {
        MessageType::Image(c) => {
            let info = c.info.as_deref();
            (
                c.filename(),
                &c.source,
                info.and_then(|i| i.size),
                info.and_then(|i| i.mimetype.clone()),
            )
        }
        MessageType::File(c) => {
            let info = c.info.as_deref();
            (
                c.filename(),
                &c.source,
                info.and_then(|i| i.size),
                info.and_then(|i| i.mimetype.clone()),
            )
        }
        MessageType::Video(c) => {
            let info = c.info.as_deref();
            (
                c.filename(),
                &c.source,
                info.and_then(|i| i.size),
                info.and_then(|i| i.mimetype.clone()),
            )
        }
        MessageType::Audio(c) => {
            let info = c.info.as_deref();
            (
                c.filename(),
                &c.source,
                info.and_then(|i| i.size),
                info.and_then(|i| i.mimetype.clone()),
            )
        }
        _ => return Vec::new(),
    };
    let Ok(source) = serde_json::to_string(source) else {
        return Vec::new();
    };
    vec![ChatFile {
        name: name.to_string(),
        size: size.map(u64::from).unwrap_or(0),
        mime: mime.unwrap_or_default(),
        source,
    }]
}

pub struct MatrixIntake {
    client: Client,
    journal: Journal,
    store: Store,
    rooms: Served,
    own: OwnedUserId,
    health: Arc<Health>,
    sync_timeout: Duration,
    /// Events that could not be decrypted yet: room, raw event, first seen.
    undecrypted: HashMap<OwnedEventId, (OwnedRoomId, TimelineEvent, tokio::time::Instant)>,
}

impl MatrixIntake {
    pub fn new(
        client: Client,
        journal: Journal,
        rooms: Served,
        own: OwnedUserId,
        health: Arc<Health>,
        sync_timeout: Duration,
    ) -> Self {
        health.register(PLATFORM.as_str());
        MatrixIntake {
            client,
            store: journal.store().clone(),
            journal,
            rooms,
            own,
            health,
            sync_timeout,
            undecrypted: HashMap::new(),
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        let filter = {
            let mut timeline = RoomEventFilter::default();
            timeline.limit = Some(UInt::from(TIMELINE_LIMIT));
            let mut room = RoomFilter::default();
            room.timeline = timeline;
            let mut def = FilterDefinition::default();
            def.room = room;
            Filter::FilterDefinition(def)
        };
        loop {
            let token: Option<String> = self.store.cursor(TOKEN_KEY).ok().flatten();
            let mut settings =
                SyncSettings::default()
                    .filter(filter.clone())
                    .timeout(if token.is_some() {
                        self.sync_timeout
                    } else {
                        Duration::ZERO
                    });
            if let Some(t) = &token {
                settings = settings.token(t.clone());
            }
            let synced = tokio::select! {
                r = self.client.sync_once(settings) => r,
                _ = cancel.cancelled() => return,
            };
            let call_outcome =
                upstream::outcome(&synced.as_ref().map_err(|e| ErrorClass::of(&sdk_failure(e))));
            self.journal
                .metrics()
                .api_call(PLATFORM.as_str(), "sync", call_outcome);
            let outcome = match synced {
                Ok(resp) => self.handle(resp, token.is_none()).await,
                Err(e) => Err(sdk_failure(&e)),
            };
            match outcome {
                Ok(()) => {
                    failures = 0;
                    self.health.ok(PLATFORM.as_str());
                }
                Err(f) => {
                    failures += 1;
                    let auth = f.kind == FailureKind::Auth;
                    let delay = if auth {
                        Duration::from_secs(60)
                    } else {
                        f.retry_hint().unwrap_or_else(|| {
                            Duration::from_millis((250u64 << failures.min(7)).min(30_000))
                        })
                    };
                    warn!(error = %f, retry_in_ms = delay.as_millis() as u64, "Matrix sync failed");
                    self.health.error(PLATFORM.as_str(), &f.reason, auth);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        resp: SyncResponse,
        first: bool,
    ) -> Result<(), livefeed_core::model::Failure> {
        for room_id in resp.rooms.invited.keys() {
            if self.rooms.contains(room_id.as_str()) {
                match self.client.join_room_by_id(room_id).await {
                    Ok(_) => info!(room = %room_id, "joined a mapped Matrix room on invitation"),
                    Err(e) => warn!(room = %room_id, error = %e, "cannot join a mapped room"),
                }
            }
        }
        let mut batch = Batch {
            cursors: vec![(
                TOKEN_KEY.to_string(),
                serde_json::to_vec(&resp.next_batch).expect("a string serializes"),
            )],
            ..Batch::default()
        };
        if first {
            // The first sync only marks where the bridge starts: no history is replayed.
            info!("first Matrix sync: replies from now on will be bridged");
        } else {
            let mut seen_now = BTreeSet::new();
            // Events whose keys may have arrived with this sync.
            for (room_id, event) in self.retry_undecrypted().await {
                self.collect(&room_id, event, &mut batch, &mut seen_now)
                    .await;
            }
            for (room_id, update) in &resp.rooms.joined {
                if !self.rooms.contains(room_id.as_str()) {
                    continue;
                }
                if update.timeline.limited
                    && let Some(prev) = &update.timeline.prev_batch
                {
                    // What the cut-short timeline left out: caught up, and counted so.
                    let before = batch.events.len();
                    for event in self.fill_gap(room_id, prev).await {
                        self.collect(room_id, event, &mut batch, &mut seen_now)
                            .await;
                    }
                    let found = (batch.events.len() - before) as u64;
                    if found > 0 {
                        self.journal.metrics().caught_up(PLATFORM.as_str(), found);
                    }
                }
                for event in update.timeline.events.iter().cloned() {
                    self.collect(room_id, event, &mut batch, &mut seen_now)
                        .await;
                }
            }
        }
        self.journal
            .accept(batch)
            .await
            .map_err(|e| livefeed_core::model::Failure::transient(e.to_string()))
    }

    /// Turn one timeline event into a journal entry, if it is one the bridge acts on.
    async fn collect(
        &mut self,
        room_id: &OwnedRoomId,
        event: TimelineEvent,
        batch: &mut Batch,
        seen_now: &mut BTreeSet<String>,
    ) {
        let Some(event_id) = event.event_id() else {
            return;
        };
        let key = format!("matrix/{event_id}");
        if !seen_now.insert(key.clone()) || self.store.seen_event(&key).unwrap_or(false) {
            return;
        }
        if let TimelineEventKind::UnableToDecrypt { .. } = &event.kind {
            debug!(event = %event_id, "cannot decrypt yet; will retry");
            self.undecrypted
                .entry(event_id)
                .or_insert_with(|| (room_id.clone(), event, tokio::time::Instant::now()));
            return;
        }
        let Ok(parsed) = event.raw().deserialize() else {
            debug!(event = %event_id, "unparseable event ignored");
            return;
        };
        let room = ChatRoom::new(PLATFORM, room_id.as_str());
        let chat_event = match classify(&parsed, self.own.as_str()) {
            Incoming::Ignored(why) => {
                debug!(event = %event_id, why, "Matrix event ignored");
                return;
            }
            Incoming::Reply {
                thread,
                body,
                files,
            } => ChatEvent::ReplyPosted {
                room,
                thread: ThreadId(thread),
                reply: ReplyId(event_id.to_string()),
                author: self.person(room_id, &parsed).await,
                body,
                files,
            },
            Incoming::TopLevel { .. } if !self.rooms.takes_posts(room_id.as_str()) => {
                debug!(event = %event_id, why = "a message outside any thread", "Matrix event ignored");
                return;
            }
            Incoming::TopLevel { body } => ChatEvent::MessagePosted {
                room,
                message: ReplyId(event_id.to_string()),
                author: self.person(room_id, &parsed).await,
                body,
            },
            Incoming::Edited {
                replaces,
                body,
                files,
            } => {
                let replaces = ReplyId(replaces);
                let Some(thread) = self.thread_of(room_id, &replaces).await else {
                    if self.rooms.takes_posts(room_id.as_str()) {
                        // Perhaps a message that became a post: the engine knows.
                        let author = self.person(room_id, &parsed).await;
                        batch.events.push((
                            Inbound::Chat(ChatEvent::MessageEdited {
                                room,
                                message: replaces,
                                author,
                                body,
                            }),
                            event.timestamp.map(|t| i64::from(t.get())),
                        ));
                        batch.dedupe.push(key);
                        return;
                    }
                    debug!(event = %event_id, "edit of a message outside any thread; ignored");
                    return;
                };
                ChatEvent::ReplyEdited {
                    room,
                    thread,
                    reply: replaces,
                    author: self.person(room_id, &parsed).await,
                    body,
                    files,
                }
            }
            Incoming::Deleted { redacts } => ChatEvent::ReplyDeleted {
                room,
                thread: None,
                reply: ReplyId(redacts),
            },
        };
        let source_ms = event.timestamp.map(|t| i64::from(t.get()));
        batch.events.push((Inbound::Chat(chat_event), source_ms));
        batch.dedupe.push(key);
    }

    /// The thread of an edited reply: from the bridge's own records, else from the original.
    async fn thread_of(&self, room_id: &OwnedRoomId, reply: &ReplyId) -> Option<ThreadId> {
        let room = ChatRoom::new(PLATFORM, room_id.as_str());
        if let Ok(Some(c)) = self.store.comment_for_reply(&room, reply) {
            return Some(c.thread);
        }
        let event_id = OwnedEventId::try_from(reply.as_str()).ok()?;
        let original = self
            .client
            .get_room(room_id)?
            .event(&event_id, None)
            .await
            .ok()?;
        match classify(&original.raw().deserialize().ok()?, self.own.as_str()) {
            Incoming::Reply { thread, .. } => Some(ThreadId(thread)),
            _ => None,
        }
    }

    async fn person(&self, room_id: &OwnedRoomId, event: &AnySyncTimelineEvent) -> Person {
        let sender = event.sender();
        let name = match self.client.get_room(room_id) {
            Some(room) => display_name(&room, sender).await,
            None => None,
        };
        Person {
            id: sender.to_string(),
            name: name.unwrap_or_else(|| sender.localpart().to_string()),
            avatar_url: None,
        }
    }

    /// Page back from `prev_batch` until events already seen (or a bound), oldest first.
    async fn fill_gap(&self, room_id: &OwnedRoomId, prev_batch: &str) -> Vec<TimelineEvent> {
        let Some(room) = self.client.get_room(room_id) else {
            return Vec::new();
        };
        let mut from = Some(prev_batch.to_string());
        let mut older = Vec::new();
        for _ in 0..GAP_PAGES {
            let Some(token) = from.take() else { break };
            let mut options = MessagesOptions::backward();
            options.from = Some(token);
            let page = match room.messages(options).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(room = %room_id, error = %e, "cannot page back over a sync gap");
                    break;
                }
            };
            let mut reached_known = false;
            for event in page.chunk {
                let known = event.event_id().is_some_and(|id| {
                    self.store
                        .seen_event(&format!("matrix/{id}"))
                        .unwrap_or(false)
                });
                if known {
                    reached_known = true;
                    break;
                }
                older.push(event);
            }
            if reached_known {
                break;
            }
            from = page.end;
        }
        older.reverse();
        info!(room = %room_id, events = older.len(), "filled a gap in the Matrix timeline");
        older
    }

    /// Try again to decrypt events whose keys were missing; give up after a while.
    async fn retry_undecrypted(&mut self) -> Vec<(OwnedRoomId, TimelineEvent)> {
        let mut ready = Vec::new();
        let pending: Vec<OwnedEventId> = self.undecrypted.keys().cloned().collect();
        for id in pending {
            let Some((room_id, event, since)) = self.undecrypted.get(&id).cloned() else {
                continue;
            };
            let Some(room) = self.client.get_room(&room_id) else {
                continue;
            };
            if let Ok(decrypted) = room
                .decrypt_event(event.raw().cast_ref_unchecked(), None)
                .await
                && !matches!(decrypted.kind, TimelineEventKind::UnableToDecrypt { .. })
            {
                self.undecrypted.remove(&id);
                ready.push((room_id, decrypted));
            } else if since.elapsed() > UTD_PATIENCE {
                warn!(event = %id, "gave up decrypting a Matrix event: its room key never arrived");
                self.undecrypted.remove(&id);
            }
        }
        ready
    }
}

async fn display_name(room: &Room, user: &matrix_sdk::ruma::UserId) -> Option<String> {
    let member = room.get_member(user).await.ok()??;
    member.display_name().map(str::to_string)
}
