//! The sled store: everything the bridge must not forget (ARCHITECTURE.md, "The store").
//!
//! One sled database, one tree per kind of fact. Keys are typed by tree and namespaced by
//! platform *and* room wherever a foreign id appears; values are JSON (small, readable with a
//! debugger, versioned by `meta/schema_version`).
//!
//! | tree          | key                                   | value                 |
//! |---------------|---------------------------------------|-----------------------|
//! | `posts`       | post id (u64 BE)                      | [`PostRecord`]        |
//! | `posts`       | post id (u64 BE) ++ room key          | [`Mirror`]            |
//! | `files`       | post id (u64 BE) ++ room key ++ file id | [`FileMirror`]      |
//! | `chat_index`  | room key ++ message id                | [`IndexEntry`]        |
//! | `comments`    | `r` ++ room key ++ reply id           | [`CommentRecord`]     |
//! | `comments`    | `c` ++ comment id (u64 BE)            | room key ++ reply id  |
//! | `comments`    | `t` ++ room key ++ reply id           | deleted-at ms (a reply deleted before it was bridged) |
//! | `cursors`     | intake name (utf-8)                   | intake-specific JSON  |
//! | `journal`     | sequence (u64 BE)                     | [`JournalEntry`]      |
//! | `intents`     | action key (utf-8)                    | [`Intent`]            |
//! | `dead_letters`| id (u64 BE)                           | [`DeadLetter`]        |
//! | `dedupe`      | source event id (utf-8)               | accepted-at ms        |
//! | `users`       | `platform:id`                         | [`CachedPerson`]      |
//! | `meta`        | `schema_version`                      | u32 as JSON           |
//!
//! Durability: writes go to sled's page cache; [`Store::sync`] makes them durable. Concurrent
//! callers share one flush (group commit), so many lanes syncing at once cost one fsync.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::model::{
    CommentId, FeedPost, Inbound, MessageId, Person, Platform, PostId, ReplyId, Room, ThreadId,
};
use super::richtext::Doc;

/// The layout version this build writes; older stores are migrated on open, newer refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption it detected itself).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The store directory or its lock file could not be created or opened.
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    /// Another process holds the store: sled allows one process per store.
    #[error(
        "the store at {path} is in use by another livefeed-bridge process (one process per store)"
    )]
    Locked {
        /// The store directory.
        path: String,
    },
    /// A value could not be decoded.
    #[error("store: corrupt value in {tree}: {detail}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What could not be decoded.
        detail: String,
    },
    /// The store was written by a newer bridge.
    #[error(
        "store: written by a newer livefeed-bridge (schema {found}, this build knows {known}); upgrade the bridge"
    )]
    NewerSchema {
        /// The store's schema version.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
}

impl<E: Into<StoreError>> From<TransactionError<E>> for StoreError {
    fn from(e: TransactionError<E>) -> Self {
        match e {
            TransactionError::Abort(e) => e.into(),
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The latest snapshot of a post and what the bridge did with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostRecord {
    /// The latest snapshot.
    pub post: FeedPost,
    /// The post is gone from the feed.
    pub deleted: bool,
    /// Comments the bridge wrote on this post that still exist.
    pub bridge_comments: u32,
    /// The journal sequence of the entry `post` came from. A replayed older entry (one
    /// still in the journal after a restart while a newer one was done) must not put its
    /// older snapshot back: files would be taken out of threads and put in again.
    #[serde(default)]
    pub seq: u64,
}

/// One chat message mirroring a post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// The root message.
    pub message_id: MessageId,
    /// Hash of what was last sent, to skip edits that change nothing.
    pub content_hash: u64,
    /// Edits applied so far (see [`crate::adapters::ChatAdapter::edit_root`]).
    #[serde(default)]
    pub edits: u64,
    /// The message was deleted.
    pub deleted: bool,
    /// Someone else deleted it in the room: the post no longer has a message there, and later
    /// edits and the deletion of the post leave the room alone (`deleted` is set too).
    #[serde(default)]
    pub detached: bool,
    /// The message is pinned in the room (an important post's).
    #[serde(default)]
    pub pinned: bool,
    /// The message is a person's, not the bot's: the post was written in this room
    /// (`posts_from_chat`). The bridge never edits, pins or deletes it.
    #[serde(default)]
    pub foreign: bool,
    /// The replies written in the post's other rooms before this message existed were
    /// copied into its thread (later ones come as live copies).
    #[serde(default)]
    pub conversation: bool,
}

impl Mirror {
    /// A root message the bridge has just sent (or found it had sent): nothing done to it yet.
    pub fn new(message_id: MessageId, content_hash: u64) -> Mirror {
        Mirror {
            message_id,
            content_hash,
            edits: 0,
            deleted: false,
            detached: false,
            pinned: false,
            foreign: false,
            conversation: false,
        }
    }
}

/// A reply in one of a post's threads as the store keeps it, for rooms that get the post later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadReply {
    /// The thread (the root message in the reply's room).
    pub thread: ThreadId,
    /// Who wrote it.
    pub author: Person,
    /// What it says now.
    pub body: Doc,
}

/// A chat reply as the bridge copied it into another room's thread of the same post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyMirror {
    /// The post whose threads these are.
    pub post: PostId,
    /// The copy.
    pub message: MessageId,
    /// Hash of what was last sent, to skip edits that change nothing.
    pub content_hash: u64,
    /// Edits applied so far.
    pub edits: u64,
}

/// A post's file as the bridge put it into one room's thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMirror {
    /// What the chat adapter sent (a Slack file id, a Matrix event id), to remove it later.
    pub item: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// What a chat message mirrors (the `chat_index` tree).
pub struct IndexEntry {
    /// The post.
    pub post: PostId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// A feed comment the bridge wrote for a chat reply.
pub struct CommentRecord {
    /// The post it is on.
    pub post: PostId,
    /// The comment.
    pub comment: CommentId,
    /// The thread the reply was in.
    pub thread: ThreadId,
    /// Hash of the comment's content, to skip edits that change nothing.
    pub content_hash: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// An accepted event not yet fully applied.
pub struct JournalEntry {
    /// When the bridge accepted it (unix ms).
    pub accepted_ms: i64,
    /// When the change happened at its source, if known (for lag metrics).
    pub source_ms: Option<i64>,
    /// The event.
    pub event: Inbound,
}

/// An effect that was started; if it is still here after a restart, the effect may or may not
/// have happened and must be reconciled before it is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// When the effect was started (unix ms): reconciliation looks from here.
    pub started_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// An action that failed permanently, kept for an operator.
pub struct DeadLetter {
    /// Its id (for `dead-letters retry`).
    pub id: u64,
    /// When it failed (unix ms).
    pub at_ms: i64,
    /// What the bridge tried, in words ("post 217 → slack:C01").
    pub action: String,
    /// The failure's reason.
    pub error: String,
    /// The event to re-journal on retry.
    pub event: Inbound,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// A person as a platform's directory knew them at `fetched_ms`.
pub struct CachedPerson {
    /// The person.
    pub person: Person,
    /// When they were looked up (unix ms).
    pub fetched_ms: i64,
}

/// Durable state. Cheap to clone.
#[derive(Clone)]
/// The bridge's durable state: one sled database (module doc). Cheap to clone.
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    posts: sled::Tree,
    files: sled::Tree,
    chat_index: sled::Tree,
    comments: sled::Tree,
    cursors: sled::Tree,
    journal: sled::Tree,
    intents: sled::Tree,
    dead_letters: sled::Tree,
    dedupe: sled::Tree,
    users: sled::Tree,
    meta: sled::Tree,
    /// Group commit: tickets handed out to `sync` callers, and the highest ticket known flushed.
    sync_requested: AtomicU64,
    sync_done: AtomicU64,
    flush_lock: tokio::sync::Mutex<()>,
    /// Held around every write that appends to the journal, so sequence numbers commit in
    /// the order they are allocated and a reader that has seen `n` never misses a later `< n`.
    journal_lock: std::sync::Mutex<()>,
    /// Entries in `journal`, kept here because sled's `len()` walks the whole tree.
    journal_len: AtomicU64,
    /// The last process that had the store open did not close it (a crash, a kill).
    after_crash: bool,
    /// The exclusive lock on [`LOCK_FILE`], held while the store is open. The last field, so
    /// it is released after sled's handles.
    _lock: std::fs::File,
}

/// The file in the store directory whose lock says "a bridge process has this store open".
/// sled locks its own files too, but reports a conflict only as an I/O error with a message;
/// our lock tells "another process" apart from everything else.
pub const LOCK_FILE: &str = "livefeed-bridge.lock";

/// Present in `meta` while a process has the store open: found at open, the last one crashed.
const OPEN_KEY: &str = "open_since";

/// How long [`Store::open`] keeps trying when sled's own lock is still held by this process:
/// a store just closed may still be finishing a flush on sled's threads.
const SLED_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The time now, in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store values serialize")
}

fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

/// `platform \0 room \0` — the namespace of a room's foreign ids.
/// The key prefix of a room's foreign ids.
pub fn room_key(room: &Room) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.id.len() + 8);
    k.extend_from_slice(room.platform.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(room.id.as_bytes());
    k.push(0);
    k
}

fn message_key(room: &Room, message: &str) -> Vec<u8> {
    let mut k = room_key(room);
    k.extend_from_slice(message.as_bytes());
    k
}

fn reply_key(room: &Room, reply: &ReplyId) -> Vec<u8> {
    let mut k = vec![b'r'];
    k.extend(message_key(room, reply.as_str()));
    k
}

fn tombstone_key(room: &Room, reply: &ReplyId) -> Vec<u8> {
    let mut k = vec![b't'];
    k.extend(message_key(room, reply.as_str()));
    k
}

/// `l` + the post + the reply's key: a reply in one of the post's threads, kept so a room that
/// gets the post later gets the conversation so far.
fn thread_log_key(post: PostId, room: &Room, reply: &ReplyId) -> Vec<u8> {
    let mut k = vec![b'l'];
    k.extend_from_slice(&post.0.to_be_bytes());
    k.extend(message_key(room, reply.as_str()));
    k
}

/// `m` + the source reply's key + `\0` + the target room: a copy of a reply in another room.
fn reply_mirror_prefix(room: &Room, reply: &ReplyId) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend(message_key(room, reply.as_str()));
    k.push(0);
    k
}

fn reply_mirror_key(room: &Room, reply: &ReplyId, target: &Room) -> Vec<u8> {
    let mut k = reply_mirror_prefix(room, reply);
    k.extend(room_key(target));
    k
}

fn comment_key(comment: CommentId) -> Vec<u8> {
    let mut k = vec![b'c'];
    k.extend_from_slice(&comment.0.to_be_bytes());
    k
}

fn mirror_key(post: PostId, room: &Room) -> Vec<u8> {
    let mut k = post.0.to_be_bytes().to_vec();
    k.extend(room_key(room));
    k
}

fn room_from_key(key: &[u8]) -> Option<Room> {
    let mut parts = key.split(|b| *b == 0);
    let platform = std::str::from_utf8(parts.next()?).ok()?;
    let id = std::str::from_utf8(parts.next()?).ok()?;
    Some(Room::new(platform_named(platform)?, id))
}

/// The platform a key names.
fn platform_named(name: &str) -> Option<Platform> {
    serde_json::from_value(serde_json::Value::from(name)).ok()
}

/// Intent keys: one per non-idempotent effect.
/// The intent guarding the creation of `post`'s root message in `room`.
pub fn post_intent_key(post: PostId, room: &Room) -> String {
    format!("post/{}/{}/{}", room.platform, room.id, post.0)
}

/// The intent guarding the sending of `post`'s file `file` into `room`'s thread.
pub fn file_intent_key(post: PostId, room: &Room, file: &str) -> String {
    format!("file/{}/{}/{}/{file}", room.platform, room.id, post.0)
}

/// The intent guarding the copy of `reply` (in `room`) into `target`'s thread.
pub fn reply_mirror_intent_key(room: &Room, reply: &ReplyId, target: &Room) -> String {
    format!(
        "reply/{}/{}/{}/{}/{}",
        room.platform, room.id, reply, target.platform, target.id
    )
}

/// The intent guarding the comment for `reply`.
pub fn comment_intent_key(room: &Room, reply: &ReplyId) -> String {
    format!("comment/{}/{}/{}", room.platform, room.id, reply)
}

/// The intent guarding the feed post written for `message`, a top-level message in `room`.
pub fn chat_post_intent_key(room: &Room, message: &ReplyId) -> String {
    format!("{}{message}", chat_post_intent_prefix(room))
}

fn chat_post_intent_prefix(room: &Room) -> String {
    format!("chatpost/{}/{}/", room.platform, room.id)
}

/// The room and post of a [`post_intent_key`].
fn parse_post_intent_key(key: &str) -> Option<(Room, PostId)> {
    let (platform, rest) = key.strip_prefix("post/")?.split_once('/')?;
    let (room, post) = rest.rsplit_once('/')?;
    Some((
        Room::new(platform_named(platform)?, room),
        PostId(post.parse().ok()?),
    ))
}

fn post_intent_prefix(room: &Room) -> String {
    format!("post/{}/{}/", room.platform, room.id)
}

/// How the store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The most memory sled's page cache may take, in bytes. sled's own default is 1 GiB,
    /// which a bridge with a year of posts would grow into for no benefit: its working set is
    /// the recent posts.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 32 * 1024 * 1024,
        }
    }
}

impl Store {
    /// Open (or create) the store in `path` with the default options. Fails at once with
    /// [`StoreError::Locked`] when another process has it open.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Open (or create) the store in `path`. Fails at once with [`StoreError::Locked`] when
    /// another process has it open.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(path)?;
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        // We hold the process lock, so a conflict on sled's lock can only be a handle of this
        // process that is still closing: wait for it.
        let deadline = std::time::Instant::now() + SLED_LOCK_PATIENCE;
        let db = loop {
            match sled::Config::new()
                .path(path)
                // We flush explicitly (group commit); sled's timer flush is only a backstop.
                .flush_every_ms(Some(1_000))
                .cache_capacity(options.cache_bytes)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let tree = |name: &str| db.open_tree(name);
        let inner = Inner {
            posts: tree("posts")?,
            files: tree("files")?,
            chat_index: tree("chat_index")?,
            comments: tree("comments")?,
            cursors: tree("cursors")?,
            journal: tree("journal")?,
            intents: tree("intents")?,
            dead_letters: tree("dead_letters")?,
            dedupe: tree("dedupe")?,
            users: tree("users")?,
            meta: tree("meta")?,
            db,
            sync_requested: AtomicU64::new(0),
            sync_done: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            journal_lock: std::sync::Mutex::new(()),
            journal_len: AtomicU64::new(0),
            after_crash: false,
            _lock: lock,
        };
        inner
            .journal_len
            .store(inner.journal.len() as u64, Ordering::SeqCst);
        let mut inner = inner;
        inner.after_crash = inner.meta.contains_key(OPEN_KEY)?;
        inner.meta.insert(OPEN_KEY, enc(&now_ms()))?;
        let store = Store {
            inner: Arc::new(inner),
        };
        store.migrate()?;
        store.settle_recorded_intents()?;
        Ok(store)
    }

    /// Close the intents of root messages whose mirror is recorded: a crash in the middle of
    /// [`Store::record_mirror`] can leave one open, and an open intent would keep the room
    /// waiting for a root message that was in fact sent and recorded.
    fn settle_recorded_intents(&self) -> Result<()> {
        let i = &self.inner;
        for item in i.intents.scan_prefix(b"post/") {
            let (key, _) = item?;
            let Some((room, post)) = std::str::from_utf8(&key)
                .ok()
                .and_then(parse_post_intent_key)
            else {
                continue;
            };
            if i.posts.contains_key(mirror_key(post, &room))? {
                i.intents.remove(&key)?;
            }
        }
        Ok(())
    }

    /// Like [`Store::open`], but waits up to `patience` for another holder to let go (a bridge
    /// that was just stopped in this process may still be dropping its last handles).
    pub async fn open_waiting(path: &Path, patience: std::time::Duration) -> Result<Store> {
        Store::open_waiting_with(path, StoreOptions::default(), patience).await
    }

    /// [`Store::open_waiting`] with options.
    pub async fn open_waiting_with(
        path: &Path,
        options: StoreOptions,
        patience: std::time::Duration,
    ) -> Result<Store> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match Store::open_with(path, options) {
                Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                other => return other,
            }
        }
    }

    /// Whether the last process that opened this store stopped without closing it: a crash,
    /// a kill, a power cut. Whatever it was told just before (a rate limit it had no time to
    /// write down) is unknown.
    pub fn after_crash(&self) -> bool {
        self.inner.after_crash
    }

    /// Mark the store closed on purpose (a clean stop), durably.
    pub fn close_cleanly(&self) -> Result<()> {
        self.inner.meta.remove(OPEN_KEY)?;
        self.inner.db.flush()?;
        Ok(())
    }

    fn migrate(&self) -> Result<()> {
        let meta = &self.inner.meta;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", enc(&SCHEMA_VERSION))?;
                meta.flush()?;
            }
            Some(v) => {
                let found: u32 = dec("meta", &v)?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        known: SCHEMA_VERSION,
                    });
                }
                // Version 1 is the first; later versions add their migrations here.
            }
        }
        Ok(())
    }

    /// Make every write that happened before this call durable. Concurrent callers share flushes.
    pub async fn sync(&self) -> Result<()> {
        let inner = &self.inner;
        let ticket = inner.sync_requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = inner.flush_lock.lock().await;
        if inner.sync_done.load(Ordering::SeqCst) >= ticket {
            return Ok(()); // a flush that started after our writes already finished
        }
        let upto = inner.sync_requested.load(Ordering::SeqCst);
        inner.db.flush_async().await?;
        inner.sync_done.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    /// Blocking flush, for shutdown paths outside the runtime.
    pub fn flush_blocking(&self) -> Result<()> {
        self.inner.db.flush()?;
        Ok(())
    }

    // -- posts and mirrors ----------------------------------------------------------------

    /// The record of a post, if the bridge has seen it.
    pub fn post(&self, id: PostId) -> Result<Option<PostRecord>> {
        self.inner
            .posts
            .get(id.0.to_be_bytes())?
            .map(|v| dec("posts", &v))
            .transpose()
    }

    /// Read-modify-write a post record atomically; `f` gets the current record (if any) and
    /// returns the new one (or `None` to leave it unchanged). `f` may run more than once.
    ///
    /// A compare-and-swap loop, not a sled transaction: every sled transaction writes and
    /// syncs the log twice (`pin_log`), which made it the engine's most expensive step.
    pub fn update_post(
        &self,
        id: PostId,
        f: impl Fn(Option<PostRecord>) -> Option<PostRecord>,
    ) -> Result<Option<PostRecord>> {
        let key = id.0.to_be_bytes();
        let posts = &self.inner.posts;
        loop {
            let raw = posts.get(key)?;
            let current = raw.as_ref().map(|v| dec("posts", v)).transpose()?;
            let Some(next) = f(current.clone()) else {
                return Ok(current);
            };
            if posts.compare_and_swap(key, raw, Some(enc(&next)))?.is_ok() {
                return Ok(Some(next));
            }
        }
    }

    /// The root message of `post` in `room`, if one was recorded.
    pub fn mirror(&self, post: PostId, room: &Room) -> Result<Option<Mirror>> {
        self.inner
            .posts
            .get(mirror_key(post, room))?
            .map(|v| dec("posts", &v))
            .transpose()
    }

    /// All mirrors of a post, with their rooms.
    pub fn mirrors(&self, post: PostId) -> Result<Vec<(Room, Mirror)>> {
        let prefix = post.0.to_be_bytes();
        let mut out = Vec::new();
        for item in self.inner.posts.scan_prefix(prefix) {
            let (k, v) = item?;
            if k.len() == 8 {
                continue; // the record itself
            }
            if let Some(room) = room_from_key(&k[8..]) {
                out.push((room, dec("posts", &v)?));
            }
        }
        Ok(out)
    }

    /// Record a new mirror and its index entry, then drop the intent that protected its
    /// creation.
    ///
    /// Three single-key writes in this order, not a transaction (see [`Store::update_post`]).
    /// sled recovers a prefix of its log, so a crash leaves one of: nothing, the index entry
    /// alone, both records with the intent still open, or all three. With the intent open the
    /// engine reconciles the send; a mirror with its intent still open is settled at the next
    /// open ([`Store::open_with`]).
    pub fn record_mirror(
        &self,
        post: PostId,
        room: &Room,
        mirror: &Mirror,
        intent: &str,
    ) -> Result<()> {
        let i = &self.inner;
        i.chat_index.insert(
            message_key(room, mirror.message_id.as_str()),
            enc(&IndexEntry { post }),
        )?;
        i.posts.insert(mirror_key(post, room), enc(mirror))?;
        i.intents.remove(intent.as_bytes())?;
        Ok(())
    }

    /// Update a recorded root message (after an edit or a deletion).
    pub fn put_mirror(&self, post: PostId, room: &Room, mirror: &Mirror) -> Result<()> {
        self.inner
            .posts
            .insert(mirror_key(post, room), enc(mirror))?;
        Ok(())
    }

    /// The files of `post` the bridge put into `room`'s thread: file id → what it sent.
    pub fn file_mirrors(&self, post: PostId, room: &Room) -> Result<Vec<(String, FileMirror)>> {
        let prefix = mirror_key(post, room);
        let mut out = Vec::new();
        for item in self.inner.files.scan_prefix(&prefix) {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((id, dec("files", &v)?));
        }
        Ok(out)
    }

    /// Record a file sent into `room`'s thread of `post` and close its intent, atomically.
    pub fn record_file_mirror(
        &self,
        post: PostId,
        room: &Room,
        file: &str,
        mirror: &FileMirror,
        intent: &str,
    ) -> Result<()> {
        let mut key = mirror_key(post, room);
        key.extend_from_slice(file.as_bytes());
        let i = &self.inner;
        (&i.files, &i.intents)
            .transaction(|(files, intents)| {
                files.insert(key.as_slice(), enc(mirror))?;
                intents.remove(intent.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(StoreError::from)
    }

    /// Forget a file removed from `room`'s thread of `post`.
    pub fn remove_file_mirror(&self, post: PostId, room: &Room, file: &str) -> Result<()> {
        let mut key = mirror_key(post, room);
        key.extend_from_slice(file.as_bytes());
        self.inner.files.remove(key)?;
        Ok(())
    }

    /// The post whose root message starts `thread`, if any.
    pub fn post_for_thread(&self, room: &Room, thread: &ThreadId) -> Result<Option<PostId>> {
        Ok(self
            .inner
            .chat_index
            .get(message_key(room, thread.as_str()))?
            .map(|v| dec::<IndexEntry>("chat_index", &v))
            .transpose()?
            .map(|e| e.post))
    }

    // -- comments ---------------------------------------------------------------------------

    /// The copies of `reply` (in `room`) in other rooms, by target room.
    pub fn reply_mirrors(&self, room: &Room, reply: &ReplyId) -> Result<Vec<(Room, ReplyMirror)>> {
        let prefix = reply_mirror_prefix(room, reply);
        let mut out = Vec::new();
        for item in self.inner.comments.scan_prefix(&prefix) {
            let (k, v) = item?;
            if let Some(target) = room_from_key(&k[prefix.len()..]) {
                out.push((target, dec("comments", &v)?));
            }
        }
        Ok(out)
    }

    /// The copy of `reply` in `target`, if any.
    pub fn reply_mirror(
        &self,
        room: &Room,
        reply: &ReplyId,
        target: &Room,
    ) -> Result<Option<ReplyMirror>> {
        self.inner
            .comments
            .get(reply_mirror_key(room, reply, target))?
            .map(|v| dec("comments", &v))
            .transpose()
    }

    /// Record a copy of `reply` sent into `target` and close its intent, atomically.
    pub fn record_reply_mirror(
        &self,
        room: &Room,
        reply: &ReplyId,
        target: &Room,
        mirror: &ReplyMirror,
        intent: &str,
    ) -> Result<()> {
        let key = reply_mirror_key(room, reply, target);
        let i = &self.inner;
        (&i.comments, &i.intents)
            .transaction(|(comments, intents)| {
                comments.insert(key.as_slice(), enc(mirror))?;
                intents.remove(intent.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(StoreError::from)
    }

    /// Update the record of a copy (after an edit).
    pub fn put_reply_mirror(
        &self,
        room: &Room,
        reply: &ReplyId,
        target: &Room,
        mirror: &ReplyMirror,
    ) -> Result<()> {
        self.inner
            .comments
            .insert(reply_mirror_key(room, reply, target), enc(mirror))?;
        Ok(())
    }

    /// Forget a copy that was deleted.
    pub fn remove_reply_mirror(&self, room: &Room, reply: &ReplyId, target: &Room) -> Result<()> {
        self.inner
            .comments
            .remove(reply_mirror_key(room, reply, target))?;
        Ok(())
    }

    /// Keep `reply` (in `room`'s thread of `post`) for rooms that get the post later.
    pub fn log_thread_reply(
        &self,
        post: PostId,
        room: &Room,
        reply: &ReplyId,
        entry: &ThreadReply,
    ) -> Result<()> {
        self.inner
            .comments
            .insert(thread_log_key(post, room, reply), enc(entry))?;
        Ok(())
    }

    /// Forget a deleted reply.
    pub fn unlog_thread_reply(&self, post: PostId, room: &Room, reply: &ReplyId) -> Result<()> {
        self.inner
            .comments
            .remove(thread_log_key(post, room, reply))?;
        Ok(())
    }

    /// The replies kept for `post`, oldest key first: (room, reply, entry).
    pub fn thread_log(&self, post: PostId) -> Result<Vec<(Room, ReplyId, ThreadReply)>> {
        let mut prefix = vec![b'l'];
        prefix.extend_from_slice(&post.0.to_be_bytes());
        let mut out = Vec::new();
        for item in self.inner.comments.scan_prefix(&prefix) {
            let (k, v) = item?;
            let rest = &k[prefix.len()..];
            let Some(room) = room_from_key(rest) else {
                continue;
            };
            let reply = &rest[room_key(&room).len()..];
            let reply = ReplyId(String::from_utf8_lossy(reply).into_owned());
            out.push((room, reply, dec("comments", &v)?));
        }
        Ok(out)
    }

    /// The comment written for `reply`, if any.
    pub fn comment_for_reply(&self, room: &Room, reply: &ReplyId) -> Result<Option<CommentRecord>> {
        self.inner
            .comments
            .get(reply_key(room, reply))?
            .map(|v| dec("comments", &v))
            .transpose()
    }

    /// Every comment written for a reply in `thread` of `room`.
    pub fn comments_in_thread(
        &self,
        room: &Room,
        thread: &ThreadId,
    ) -> Result<Vec<(ReplyId, CommentRecord)>> {
        let mut prefix = vec![b'r'];
        prefix.extend(room_key(room));
        let mut out = Vec::new();
        for item in self.inner.comments.scan_prefix(&prefix) {
            let (k, v) = item?;
            let record: CommentRecord = dec("comments", &v)?;
            if record.thread == *thread {
                let reply = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                out.push((ReplyId(reply), record));
            }
        }
        Ok(out)
    }

    /// The post a comment the bridge wrote is on, if the bridge wrote it.
    pub fn post_of_comment(&self, comment: CommentId) -> Result<Option<PostId>> {
        let Some(reply_key) = self.inner.comments.get(comment_key(comment))? else {
            return Ok(None);
        };
        let mut key = vec![b'r'];
        key.extend_from_slice(&reply_key);
        Ok(self
            .inner
            .comments
            .get(key)?
            .map(|v| dec::<CommentRecord>("comments", &v))
            .transpose()?
            .map(|r| r.post))
    }

    /// Record a comment the bridge wrote for a chat reply: both directions, the post's count of
    /// bridge comments, the intent's removal and a journal entry to refresh the post's mirrors
    /// — atomically.
    pub fn record_comment(
        &self,
        room: &Room,
        reply: &ReplyId,
        record: &CommentRecord,
        intent: &str,
    ) -> Result<u64> {
        let i = &self.inner;
        let _order = i.journal_order();
        let seq = (&i.comments, &i.posts, &i.intents, &i.journal)
            .transaction(|(comments, posts, intents, journal)| {
                comments.insert(reply_key(room, reply), enc(record))?;
                comments.insert(
                    comment_key(record.comment),
                    message_key(room, reply.as_str()),
                )?;
                intents.remove(intent.as_bytes())?;
                adjust_bridge_comments(posts, record.post, 1)?;
                let seq = journal.generate_id()?;
                journal.insert(&seq.to_be_bytes(), enc(&refresh_entry(record.post)))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(seq)
            })
            .map_err(StoreError::from)?;
        self.inner.journal_len.fetch_add(1, Ordering::SeqCst);
        Ok(seq)
    }

    /// Forget a comment the bridge deleted; journals a refresh of the post's mirrors.
    pub fn remove_comment(
        &self,
        room: &Room,
        reply: &ReplyId,
        record: &CommentRecord,
    ) -> Result<u64> {
        let i = &self.inner;
        let _order = i.journal_order();
        let seq = (&i.comments, &i.posts, &i.journal)
            .transaction(|(comments, posts, journal)| {
                comments.remove(reply_key(room, reply))?;
                comments.remove(comment_key(record.comment))?;
                adjust_bridge_comments(posts, record.post, -1)?;
                let seq = journal.generate_id()?;
                journal.insert(&seq.to_be_bytes(), enc(&refresh_entry(record.post)))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(seq)
            })
            .map_err(StoreError::from)?;
        self.inner.journal_len.fetch_add(1, Ordering::SeqCst);
        Ok(seq)
    }

    /// Remember that a reply was deleted before the bridge wrote its comment: events can
    /// arrive out of order (a redelivered post after its deletion), and a late post of a
    /// deleted reply must not become a comment.
    pub fn put_reply_tombstone(&self, room: &Room, reply: &ReplyId) -> Result<()> {
        self.inner
            .comments
            .insert(tombstone_key(room, reply), enc(&now_ms()))?;
        Ok(())
    }

    /// Whether `reply` was deleted before it was bridged.
    pub fn reply_tombstoned(&self, room: &Room, reply: &ReplyId) -> Result<bool> {
        Ok(self
            .inner
            .comments
            .contains_key(tombstone_key(room, reply))?)
    }

    // -- intents ----------------------------------------------------------------------------

    /// An open intent.
    pub fn intent(&self, key: &str) -> Result<Option<Intent>> {
        self.inner
            .intents
            .get(key.as_bytes())?
            .map(|v| dec("intents", &v))
            .transpose()
    }

    /// Open an intent (durable after the next [`Store::sync`]).
    pub fn put_intent(&self, key: &str, intent: &Intent) -> Result<()> {
        self.inner.intents.insert(key.as_bytes(), enc(intent))?;
        Ok(())
    }

    /// Close an intent.
    pub fn remove_intent(&self, key: &str) -> Result<()> {
        self.inner.intents.remove(key.as_bytes())?;
        Ok(())
    }

    /// Whether a root message for some post is being created in `room` right now (or was when
    /// the bridge stopped): a reply to an unknown thread there may belong to it.
    pub fn has_post_intent_in(&self, room: &Room) -> Result<bool> {
        Ok(self
            .inner
            .intents
            .scan_prefix(post_intent_prefix(room).as_bytes())
            .next()
            .transpose()?
            .is_some())
    }

    /// Whether a message of `room` may be on its way to becoming a feed post (an open intent).
    pub fn has_chat_post_intent_in(&self, room: &Room) -> Result<bool> {
        Ok(self
            .inner
            .intents
            .scan_prefix(chat_post_intent_prefix(room).as_bytes())
            .next()
            .transpose()?
            .is_some())
    }

    /// How many intents are open.
    pub fn intent_count(&self) -> usize {
        self.inner.intents.len()
    }

    // -- journal ----------------------------------------------------------------------------

    /// Append events and apply intake bookkeeping (cursor values, dedupe keys). Not yet
    /// durable: call [`Store::sync`] before acknowledging the source.
    ///
    /// Single-key writes in this order, not a transaction (see [`Store::update_post`]): the
    /// entries, then the dedupe keys, then the cursors. sled recovers a prefix of its log, so
    /// a crash never keeps a cursor or a dedupe key without the entries it stands for; it
    /// may keep some entries without them, and the source then repeats what the journal
    /// already holds, which applying (idempotent) absorbs.
    pub fn append(
        &self,
        entries: &[JournalEntry],
        cursors: &[(String, Vec<u8>)],
        dedupe: &[String],
    ) -> Result<Vec<u64>> {
        let i = &self.inner;
        let now = enc(&now_ms());
        // Sequences are handed out and written under one lock, so the journal only ever
        // grows at its end and a reader never skips an entry written late.
        let _order = i.journal_order();
        let mut seqs = Vec::with_capacity(entries.len());
        for entry in entries {
            let seq = i.db.generate_id()?;
            // Counted first: the engine may apply (and uncount) it as soon as it is written.
            i.journal_len.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = i.journal.insert(seq.to_be_bytes(), enc(entry)) {
                i.journal_len.fetch_sub(1, Ordering::SeqCst);
                return Err(e.into());
            }
            seqs.push(seq);
        }
        for k in dedupe {
            i.dedupe.insert(k.as_bytes(), now.as_slice())?;
        }
        for (k, v) in cursors {
            i.cursors.insert(k.as_bytes(), v.as_slice())?;
        }
        Ok(seqs)
    }

    /// Journal entries with a sequence greater than `after`, in order.
    pub fn journal_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, JournalEntry)>> {
        let start = after.map(|s| s + 1).unwrap_or(0);
        let mut out = Vec::new();
        for item in self.inner.journal.range(start.to_be_bytes()..).take(limit) {
            let (k, v) = item?;
            let seq =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "journal",
                    detail: "key is not a sequence".into(),
                })?);
            out.push((seq, dec("journal", &v)?));
        }
        Ok(out)
    }

    /// Remove an applied journal entry.
    pub fn complete(&self, seq: u64) -> Result<()> {
        if self.inner.journal.remove(seq.to_be_bytes())?.is_some() {
            self.inner.journal_len.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Entries in the journal.
    pub fn journal_depth(&self) -> usize {
        self.inner.journal_len.load(Ordering::SeqCst) as usize
    }

    // -- cursors, dedupe, users ---------------------------------------------------------------

    /// An intake's bookkeeping value.
    pub fn cursor<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.inner
            .cursors
            .get(key.as_bytes())?
            .map(|v| dec("cursors", &v))
            .transpose()
    }

    /// Every cursor whose key starts with `prefix`.
    pub fn cursors_with_prefix<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        self.scan_cursors(prefix).collect()
    }

    /// The cursors whose key starts with `prefix`, read one at a time. Some prefixes hold one
    /// cursor per post: whoever keeps only a few of them should not collect them all first.
    pub fn scan_cursors<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> impl Iterator<Item = Result<(String, T)>> + '_ {
        self.inner
            .cursors
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (k, v) = item?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    dec("cursors", &v)?,
                ))
            })
    }

    /// Write an intake's bookkeeping value.
    pub fn put_cursor<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.inner.cursors.insert(key.as_bytes(), enc(value))?;
        Ok(())
    }

    /// Forget an intake's bookkeeping value.
    pub fn remove_cursor(&self, key: &str) -> Result<()> {
        self.inner.cursors.remove(key.as_bytes())?;
        Ok(())
    }

    /// Forget a bookkeeping value only while it is still `value`: a write that came in
    /// meanwhile (a new event for the same post) stays. Returns whether it was removed.
    pub fn remove_cursor_if<T: Serialize>(&self, key: &str, value: &T) -> Result<bool> {
        let swapped =
            self.inner
                .cursors
                .compare_and_swap(key.as_bytes(), Some(enc(value)), None::<&[u8]>)?;
        Ok(swapped.is_ok())
    }

    /// Whether a source event id was accepted before (deduplication).
    pub fn seen_event(&self, key: &str) -> Result<bool> {
        Ok(self.inner.dedupe.contains_key(key.as_bytes())?)
    }

    /// Forget dedupe keys and reply tombstones older than `max_age_ms` (redeliveries come
    /// within minutes; a day is plenty).
    pub fn prune(&self, max_age_ms: i64) -> Result<usize> {
        let cutoff = now_ms() - max_age_ms;
        let mut removed = 0;
        for item in self.inner.dedupe.iter() {
            let (k, v) = item?;
            if dec::<i64>("dedupe", &v)? < cutoff {
                self.inner.dedupe.remove(k)?;
                removed += 1;
            }
        }
        for item in self.inner.comments.scan_prefix([b't']) {
            let (k, v) = item?;
            if dec::<i64>("comments", &v)? < cutoff {
                self.inner.comments.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A cached person.
    pub fn cached_person(&self, key: &str) -> Result<Option<CachedPerson>> {
        self.inner
            .users
            .get(key.as_bytes())?
            .map(|v| dec("users", &v))
            .transpose()
    }

    /// Cache a person.
    pub fn put_person(&self, key: &str, person: &CachedPerson) -> Result<()> {
        self.inner.users.insert(key.as_bytes(), enc(person))?;
        Ok(())
    }

    // -- dead letters -------------------------------------------------------------------------

    /// Keep a permanently failed action for an operator.
    pub fn add_dead_letter(
        &self,
        action: String,
        error: String,
        event: Inbound,
    ) -> Result<DeadLetter> {
        let id = self.inner.db.generate_id()?;
        let letter = DeadLetter {
            id,
            at_ms: now_ms(),
            action,
            error,
            event,
        };
        self.inner
            .dead_letters
            .insert(id.to_be_bytes(), enc(&letter))?;
        Ok(letter)
    }

    /// One dead letter, if it is still there.
    pub fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>> {
        self.inner
            .dead_letters
            .get(id.to_be_bytes())?
            .map(|v| dec("dead_letters", &v))
            .transpose()
    }

    /// Withdraw a dead letter (the reason for it went away); false if there was none.
    pub fn remove_dead_letter(&self, id: u64) -> Result<bool> {
        Ok(self.inner.dead_letters.remove(id.to_be_bytes())?.is_some())
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.inner
            .dead_letters
            .iter()
            .values()
            .map(|v| dec("dead_letters", &v?))
            .collect()
    }

    /// How many dead letters wait.
    pub fn dead_letter_count(&self) -> usize {
        self.inner.dead_letters.len()
    }

    /// Move a dead letter back into the journal; returns false if there is no such letter.
    pub fn retry_dead_letter(&self, id: u64) -> Result<bool> {
        let i = &self.inner;
        let _order = i.journal_order();
        let done = (&i.dead_letters, &i.journal)
            .transaction(|(dl, journal)| {
                let Some(v) = dl.remove(&id.to_be_bytes())? else {
                    return Ok(false);
                };
                let letter: DeadLetter =
                    dec("dead_letters", &v).map_err(ConflictableTransactionError::Abort)?;
                let seq = journal.generate_id()?;
                let entry = JournalEntry {
                    accepted_ms: now_ms(),
                    source_ms: None,
                    event: letter.event,
                };
                journal.insert(&seq.to_be_bytes(), enc(&entry))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            })
            .map_err(StoreError::from)?;
        if done {
            self.inner.journal_len.fetch_add(1, Ordering::SeqCst);
        }
        Ok(done)
    }
}

impl Inner {
    fn journal_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.journal_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn refresh_entry(post: PostId) -> JournalEntry {
    JournalEntry {
        accepted_ms: now_ms(),
        source_ms: None,
        event: Inbound::Refresh(post),
    }
}

fn adjust_bridge_comments(
    posts: &sled::transaction::TransactionalTree,
    post: PostId,
    delta: i64,
) -> std::result::Result<(), ConflictableTransactionError<StoreError>> {
    let key = post.0.to_be_bytes();
    if let Some(v) = posts.get(key)? {
        let mut rec: PostRecord = dec("posts", &v).map_err(ConflictableTransactionError::Abort)?;
        rec.bridge_comments = (rec.bridge_comments as i64 + delta).max(0) as u32;
        posts.insert(&key, enc(&rec))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FeedEvent;
    use crate::testing::{CHAT, fixtures::post};

    /// A crash between `record_mirror`'s writes leaves the mirror recorded with its intent
    /// open; the next open closes it, and leaves alone the intents of sends not recorded.
    #[test]
    fn an_intent_whose_mirror_is_recorded_is_closed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let room = Room::new(CHAT, "!room/with:slash");
        let recorded = post_intent_key(PostId(7), &room);
        let pending = post_intent_key(PostId(8), &room);
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_intent(&recorded, &Intent { started_ms: 1 })
                .unwrap();
            store
                .put_intent(&pending, &Intent { started_ms: 1 })
                .unwrap();
            // What a crash after the mirror's write and before the intent's removal leaves.
            store
                .put_mirror(PostId(7), &room, &Mirror::new(MessageId::from("1.0001"), 9))
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.intent(&recorded).unwrap(), None);
        assert_eq!(
            store.intent(&pending).unwrap(),
            Some(Intent { started_ms: 1 })
        );
        assert_eq!(
            parse_post_intent_key(&pending),
            Some((room.clone(), PostId(8)))
        );
    }

    #[tokio::test]
    async fn mirrors_index_and_intents() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let room = Room::new(CHAT, "C1");
        store
            .update_post(PostId(7), |_| {
                Some(PostRecord {
                    post: post(7),
                    deleted: false,
                    bridge_comments: 0,
                    seq: 0,
                })
            })
            .unwrap();
        let key = post_intent_key(PostId(7), &room);
        store.put_intent(&key, &Intent { started_ms: 1 }).unwrap();
        assert!(store.has_post_intent_in(&room).unwrap());
        store.sync().await.unwrap();
        let m = Mirror::new(MessageId::from("1.0001"), 9);
        store.record_mirror(PostId(7), &room, &m, &key).unwrap();
        assert!(!store.has_post_intent_in(&room).unwrap());
        assert_eq!(store.mirror(PostId(7), &room).unwrap(), Some(m.clone()));
        assert_eq!(store.mirrors(PostId(7)).unwrap(), vec![(room.clone(), m)]);
        assert_eq!(
            store
                .post_for_thread(&room, &ThreadId::from("1.0001"))
                .unwrap(),
            Some(PostId(7))
        );
        let other = Room::new(Platform::new("other"), "C1");
        assert_eq!(
            store
                .post_for_thread(&other, &ThreadId::from("1.0001"))
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn comments_adjust_counts_and_journal_refreshes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let room = Room::new(CHAT, "C1");
        store
            .update_post(PostId(7), |_| {
                Some(PostRecord {
                    post: post(7),
                    deleted: false,
                    bridge_comments: 0,
                    seq: 0,
                })
            })
            .unwrap();
        let rec = CommentRecord {
            post: PostId(7),
            comment: CommentId(300),
            thread: ThreadId::from("1.0001"),
            content_hash: 1,
        };
        store
            .record_comment(&room, &ReplyId::from("2.0002"), &rec, "k")
            .unwrap();
        assert_eq!(store.post(PostId(7)).unwrap().unwrap().bridge_comments, 1);
        assert_eq!(
            store
                .comment_for_reply(&room, &ReplyId::from("2.0002"))
                .unwrap(),
            Some(rec.clone())
        );
        let j = store.journal_after(None, 10).unwrap();
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].1.event, Inbound::Refresh(PostId(7)));
        store
            .remove_comment(&room, &ReplyId::from("2.0002"), &rec)
            .unwrap();
        assert_eq!(store.post(PostId(7)).unwrap().unwrap().bridge_comments, 0);
        assert_eq!(
            store
                .comment_for_reply(&room, &ReplyId::from("2.0002"))
                .unwrap(),
            None
        );
        assert_eq!(store.journal_depth(), 2);
    }

    #[tokio::test]
    async fn journal_survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let entries: Vec<JournalEntry> = (1..=3)
                .map(|i| JournalEntry {
                    accepted_ms: i,
                    source_ms: None,
                    event: Inbound::Feed(FeedEvent::PostDeleted(PostId(i as u64))),
                })
                .collect();
            store
                .append(&entries, &[("c".into(), b"1".to_vec())], &["ev1".into()])
                .unwrap();
            store.sync().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let j = store.journal_after(None, 10).unwrap();
        let ids: Vec<i64> = j.iter().map(|(_, e)| e.accepted_ms).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(store.seen_event("ev1").unwrap());
        assert_eq!(store.cursor::<u32>("c").unwrap(), Some(1));
        store.complete(j[0].0).unwrap();
        assert_eq!(store.journal_after(Some(j[0].0), 10).unwrap().len(), 2);
        assert_eq!(store.journal_after(None, 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_syncs_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.put_cursor(&format!("k{i}"), &i).unwrap();
                s.sync().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.cursor::<u64>("k49").unwrap(), Some(49));
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .inner
                .meta
                .insert("schema_version", enc(&99u32))
                .unwrap();
            store.flush_blocking().unwrap();
        }
        let err = Store::open(dir.path()).err().expect("newer schema refused");
        assert!(matches!(err, StoreError::NewerSchema { found: 99, .. }));
    }

    #[test]
    fn dead_letters_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let letter = store
            .add_dead_letter(
                "post 1 → slack:C1".into(),
                "channel_not_found".into(),
                Inbound::Refresh(PostId(1)),
            )
            .unwrap();
        assert_eq!(store.dead_letters().unwrap(), vec![letter.clone()]);
        assert!(store.retry_dead_letter(letter.id).unwrap());
        assert!(!store.retry_dead_letter(letter.id).unwrap());
        assert_eq!(store.dead_letter_count(), 0);
        assert_eq!(store.journal_depth(), 1);
    }
}
