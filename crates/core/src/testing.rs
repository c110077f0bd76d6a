//! In-memory adapters and fixtures for tests and benchmarks (cargo feature `testing`).
//!
//! [`MemoryChat`] and [`MemoryFeed`] keep what the engine did in memory, bump a version on
//! every change so tests can await a condition instead of sleeping, and take a [`Script`] of
//! failures or hangs to inject into their next calls. [`fixtures`] builds the neutral values
//! tests need, each written once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::adapters::{BoxFuture, ChatAdapter, FeedAdapter, LayoutOptions, RootMessage};
use crate::model::{
    Attachment, ChatFile, CommentId, Failure, FeedFile, Fetched, FileContent, MessageId, Platform,
    PostId,
};
use crate::richtext::{Block, Doc, Inline};

/// The chat platform of [`MemoryChat`].
pub const CHAT: Platform = Platform::new("chat");
/// The feed platform of [`MemoryFeed`].
pub const FEED: Platform = Platform::new("feed");

/// How long [`MemoryChat::wait`] and [`MemoryFeed::wait`] wait before they fail the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// What to do on an adapter's next call.
#[derive(Clone, Debug)]
pub enum Script {
    /// Fail with this.
    Fail(Failure),
    /// Perform the effect, then never answer (the process "crashes" mid-call).
    HangAfterEffect,
    /// Count the call as gated, wait for the notification, then perform the effect.
    Gate(Arc<Notify>),
}

/// A value behind a mutex whose every change bumps a version, so tests can await conditions.
struct Watched<T> {
    state: Mutex<T>,
    changed: watch::Sender<u64>,
    script: Mutex<Vec<Script>>,
}

impl<T: std::fmt::Debug> Watched<T> {
    fn new(state: T) -> Self {
        Watched {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            script: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn change<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
        r
    }

    fn next_script(&self) -> Option<Script> {
        let mut s = self.script.lock().unwrap_or_else(|p| p.into_inner());
        (!s.is_empty()).then(|| s.remove(0))
    }

    /// Wait until `pred` holds, re-checked on every change; panics after [`WAIT`].
    async fn wait(&self, pred: impl Fn(&T) -> bool) {
        let mut rx = self.changed.subscribe();
        let reached = tokio::time::timeout(WAIT, async {
            loop {
                if pred(&self.lock()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "condition not reached; state: {:?}",
            self.lock()
        );
    }
}

/// A message in [`ChatState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// The post it mirrors.
    pub post: PostId,
    /// Its plain text.
    pub text: String,
    /// Deleted since.
    pub deleted: bool,
    /// Pinned in its room.
    pub pinned: bool,
}

/// What [`MemoryChat`] holds.
#[derive(Default, Clone, Debug)]
pub struct ChatState {
    /// Replies copied from other rooms: (room, message id) → (root, text).
    pub copies: BTreeMap<(String, String), (String, String)>,
    /// (room, message id) → message.
    pub messages: BTreeMap<(String, String), ChatMessage>,
    /// Root messages sent.
    pub sent: usize,
    /// Edits made.
    pub edits: usize,
    /// The `edit` number each edit was sent with, in order.
    pub edit_numbers: Vec<u64>,
    /// Deletions asked for.
    pub deletes: usize,
    /// Calls that reached a [`Script::Gate`].
    pub gated: usize,
    /// Pins and unpins asked for.
    pub pin_changes: usize,
    /// Files in threads: (room, item id) → (root message id, file name or link text).
    pub attachments: BTreeMap<(String, String), (String, String)>,
    /// Attachments sent, including ones deleted since.
    pub attachments_sent: usize,
}

/// A chat platform in memory.
pub struct MemoryChat {
    inner: Watched<ChatState>,
    /// Record message texts (benchmarks turn this off to measure the engine alone).
    keep_text: bool,
}

impl MemoryChat {
    /// An empty chat platform.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryChat {
            inner: Watched::new(ChatState::default()),
            keep_text: true,
        })
    }

    /// An empty chat platform that does not render texts (for benchmarks).
    pub fn without_texts() -> Arc<Self> {
        Arc::new(MemoryChat {
            inner: Watched::new(ChatState::default()),
            keep_text: false,
        })
    }

    /// Add steps for the next calls of `send_root` and `edit_root`.
    pub fn script(&self, steps: impl IntoIterator<Item = Script>) {
        self.inner
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(steps);
    }

    /// A copy of the state.
    pub fn state(&self) -> ChatState {
        self.inner.lock().clone()
    }

    /// The live (not deleted) messages of `room`: post and text, in message id order.
    pub fn live(&self, room: &str) -> Vec<(PostId, String)> {
        self.inner
            .lock()
            .messages
            .iter()
            .filter(|((r, _), m)| r == room && !m.deleted)
            .map(|(_, m)| (m.post, m.text.clone()))
            .collect()
    }

    /// Wait until `pred` holds for the state.
    pub async fn wait(&self, pred: impl Fn(&ChatState) -> bool) {
        self.inner.wait(pred).await;
    }

    fn text(&self, msg: &RootMessage) -> String {
        if self.keep_text {
            msg.doc.plain_text()
        } else {
            String::new()
        }
    }
}

impl ChatAdapter for MemoryChat {
    fn platform(&self) -> Platform {
        CHAT
    }

    fn display_name(&self) -> &str {
        "Chat"
    }

    fn layout(&self) -> LayoutOptions {
        LayoutOptions::default()
    }

    fn send_reply<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        reply: &'a crate::adapters::MirroredReply,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        Box::pin(async move {
            let text = format!(
                "{} ({}): {}",
                reply.author.name,
                reply.from,
                reply.body.plain_text()
            );
            let id = self.inner.change(|s| {
                let id = format!("c{}", s.copies.len() + 1);
                s.copies
                    .insert((room.to_string(), id.clone()), (root.0.clone(), text));
                id
            });
            Ok(MessageId(id))
        })
    }

    fn edit_reply<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        _edit: u64,
        reply: &'a crate::adapters::MirroredReply,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let text = format!(
                "{} ({}): {}",
                reply.author.name,
                reply.from,
                reply.body.plain_text()
            );
            self.inner.change(|s| {
                if let Some(c) = s.copies.get_mut(&(room.to_string(), message.0.clone())) {
                    c.1 = text;
                }
            });
            Ok(())
        })
    }

    fn send_root<'a>(
        &'a self,
        room: &'a str,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        Box::pin(async move {
            let script = self.inner.next_script();
            if let Some(Script::Fail(f)) = script {
                return Err(f);
            }
            if let Some(Script::Gate(gate)) = &script {
                self.inner.change(|s| s.gated += 1);
                gate.notified().await;
            }
            let text = self.text(msg);
            let id = self.inner.change(|s| {
                s.sent += 1;
                let id = format!("m{}", s.sent);
                let message = ChatMessage {
                    post: msg.post,
                    text,
                    deleted: false,
                    pinned: false,
                };
                s.messages.insert((room.to_string(), id.clone()), message);
                id
            });
            if let Some(Script::HangAfterEffect) = script {
                std::future::pending::<()>().await;
            }
            Ok(MessageId(id))
        })
    }

    fn find_root<'a>(
        &'a self,
        room: &'a str,
        post: PostId,
        _since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<MessageId>, Failure>> {
        Box::pin(async move {
            Ok(self
                .inner
                .lock()
                .messages
                .iter()
                .find(|((r, _), m)| r == room && m.post == post)
                .map(|((_, id), _)| MessageId(id.clone())))
        })
    }

    fn edit_root<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        edit: u64,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if let Some(Script::Fail(f)) = self.inner.next_script() {
                return Err(f);
            }
            let text = self.text(msg);
            self.inner.change(|s| {
                s.edits += 1;
                s.edit_numbers.push(edit);
                let key = (room.to_string(), message.0.clone());
                if let Some(m) = s.messages.get_mut(&key) {
                    m.text = text;
                }
            });
            Ok(())
        })
    }

    fn delete_message<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.inner.change(|s| {
                s.deletes += 1;
                let key = (room.to_string(), message.0.clone());
                if let Some(m) = s.messages.get_mut(&key) {
                    m.deleted = true;
                }
            });
            Ok(())
        })
    }

    fn send_attachment<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        key: &'a str,
        attachment: &'a Attachment,
    ) -> BoxFuture<'a, Result<String, Failure>> {
        Box::pin(async move {
            let label = match attachment {
                Attachment::File(f) => f.name.clone(),
                Attachment::Link { name, .. } => format!("link:{name}"),
            };
            Ok(self.inner.change(|s| {
                s.attachments_sent += 1;
                let item = format!("{root}/{key}/{}", s.attachments_sent);
                s.attachments
                    .insert((room.to_string(), item.clone()), (root.0.clone(), label));
                item
            }))
        })
    }

    fn delete_attachment<'a>(
        &'a self,
        room: &'a str,
        item: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.inner.change(|s| {
                s.attachments.remove(&(room.to_string(), item.to_string()));
            });
            Ok(())
        })
    }

    fn fetch_file<'a>(
        &'a self,
        file: &'a ChatFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>> {
        Box::pin(async move { Ok(memory_file(&file.name, &file.source, file.size, max_bytes)) })
    }

    fn set_pinned<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        pinned: bool,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.inner.change(|s| {
                s.pin_changes += 1;
                let key = (room.to_string(), message.0.clone());
                if let Some(m) = s.messages.get_mut(&key) {
                    m.pinned = pinned;
                }
            });
            Ok(())
        })
    }
}

/// What [`MemoryFeed`] holds.
#[derive(Default, Clone, Debug)]
pub struct FeedState {
    /// Live comments: id → (post, plain text).
    pub comments: BTreeMap<u64, (PostId, String)>,
    /// The last comment id handed out.
    pub next_id: u64,
    /// Comments added.
    pub adds: usize,
    /// The names of the files attached to each comment.
    pub comment_files: BTreeMap<u64, Vec<String>>,
}

/// A feed in memory (comments only: posts come in through the journal).
pub struct MemoryFeed {
    inner: Watched<FeedState>,
}

impl MemoryFeed {
    /// A feed without comments; ids start after 300.
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryFeed {
            inner: Watched::new(FeedState {
                next_id: 300,
                ..FeedState::default()
            }),
        })
    }

    /// Add steps for the next calls of `add_comment`.
    pub fn script(&self, steps: impl IntoIterator<Item = Script>) {
        self.inner
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(steps);
    }

    /// A copy of the state.
    pub fn state(&self) -> FeedState {
        self.inner.lock().clone()
    }

    /// Wait until `pred` holds for the state.
    pub async fn wait(&self, pred: impl Fn(&FeedState) -> bool) {
        self.inner.wait(pred).await;
    }
}

impl FeedAdapter for MemoryFeed {
    fn platform(&self) -> Platform {
        FEED
    }

    fn display_name(&self) -> &str {
        "Feed"
    }

    fn add_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        files: &'a [FileContent],
        _author: Option<&'a str>,
    ) -> BoxFuture<'a, Result<CommentId, Failure>> {
        Box::pin(async move {
            let script = self.inner.next_script();
            if let Some(Script::Fail(f)) = script {
                return Err(f);
            }
            let id = self.inner.change(|s| {
                s.next_id += 1;
                s.adds += 1;
                s.comments.insert(s.next_id, (post, doc.plain_text()));
                if !files.is_empty() {
                    let names = files.iter().map(|f| f.name.clone()).collect();
                    s.comment_files.insert(s.next_id, names);
                }
                s.next_id
            });
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
        _files: &'a [FileContent],
        _author: Option<&'a str>,
        _since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>> {
        Box::pin(async move {
            let text = doc.plain_text();
            Ok(self
                .inner
                .lock()
                .comments
                .iter()
                .rev()
                .find(|(_, (p, t))| *p == post && *t == text)
                .map(|(id, _)| CommentId(*id)))
        })
    }

    fn delete_comment<'a>(&'a self, comment: CommentId) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.inner.change(|s| s.comments.remove(&comment.0));
            Ok(())
        })
    }

    /// A file's content is its id repeated to the size the feed gave (10 bytes when none).
    fn fetch_file<'a>(
        &'a self,
        _post: PostId,
        file: &'a FeedFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>> {
        Box::pin(async move { Ok(memory_file(&file.name, &file.id, file.size, max_bytes)) })
    }
}

fn memory_file(name: &str, seed: &str, size: u64, max_bytes: u64) -> Fetched {
    let size = if size == 0 { 10 } else { size };
    if size > max_bytes {
        return Fetched::TooLarge { size };
    }
    let bytes = seed.bytes().cycle().take(size as usize).collect();
    Fetched::Content(FileContent {
        name: name.to_string(),
        mime: "application/octet-stream".into(),
        bytes,
    })
}

/// Nesting depth as [`crate::richtext::MAX_DEPTH`] counts it: each quote, list, style and link
/// is one level. Parsers must never return a deeper document.
pub fn depth(doc: &Doc) -> usize {
    blocks_depth(&doc.blocks)
}

fn blocks_depth(blocks: &[Block]) -> usize {
    blocks
        .iter()
        .map(|block| match block {
            Block::Paragraph(inlines) => inlines_depth(inlines),
            Block::Quote(inner) => 1 + blocks_depth(inner),
            Block::Code(_) => 0,
            Block::List { items, .. } => {
                1 + items
                    .iter()
                    .map(|item| blocks_depth(item))
                    .max()
                    .unwrap_or(0)
            }
        })
        .max()
        .unwrap_or(0)
}

fn inlines_depth(inlines: &[Inline]) -> usize {
    inlines
        .iter()
        .map(|inline| match inline {
            Inline::Bold(c) | Inline::Italic(c) | Inline::Underline(c) | Inline::Strike(c) => {
                1 + inlines_depth(c)
            }
            Inline::Link { text, .. } => 1 + inlines_depth(text),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Neutral values for tests, each written once.
pub mod fixtures {
    use crate::model::{Audience, FeedPost, Person, PostId};
    use crate::richtext::Doc;

    /// A person on some platform.
    pub fn person(id: &str, name: &str) -> Person {
        Person {
            id: id.into(),
            name: name.into(),
            avatar_url: None,
        }
    }

    /// Post `id` by Ivan Petrov (user 5), titled "Post {id}", with one line of text, for
    /// everyone. Tests change the fields they care about.
    pub fn post(id: u64) -> FeedPost {
        FeedPost {
            id: PostId(id),
            author: person("5", "Ivan Petrov"),
            title: Some(format!("Post {id}")),
            body: Doc::plain("A paragraph of feed text, as people write it."),
            important: false,
            readers: None,
            audiences: [Audience::All].into_iter().collect(),
            url: format!("https://feed.example/posts/{id}"),
            published_at: 0,
            num_comments: 0,
            files: Vec::new(),
        }
    }

    /// [`post`] addressed to `audiences`, with `text`.
    pub fn post_for(id: u64, audiences: &[Audience], text: &str) -> FeedPost {
        FeedPost {
            audiences: audiences.iter().copied().collect(),
            body: Doc::plain(text),
            ..post(id)
        }
    }
}
