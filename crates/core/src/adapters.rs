//! What the engine needs from the platforms: the feed side's effects and the chat side's
//! effects. Adapters implement these in their platform's terms; the engine sees only neutral
//! types, so Slack and Matrix share one code path and a new chat platform is one new module.

use std::future::Future;
use std::pin::Pin;

use super::model::{
    Attachment, Audience, ChatFile, CommentId, Failure, FeedFile, Fetched, FileContent, MessageId,
    Person, Platform, PostId,
};
use super::richtext::{Block, Doc, Inline, Mention};

/// A boxed future that can cross threads: what the adapter traits' methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The root message mirroring a feed post, laid out (see [`crate::layout`]) but not yet
/// rendered in the platform's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMessage {
    /// The post it mirrors (platforms that can carry metadata keep it, for reconciliation).
    pub post: PostId,
    /// The post's author, for platforms that can show a per-message name and picture.
    pub author: Person,
    /// The laid-out content.
    pub doc: Doc,
}

/// A person's reply in one room's thread of a post, as the bridge copies it into another
/// room's thread of the same post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredReply {
    /// Unique per reply and target room, the same on every try: platforms that deduplicate
    /// sends build their idempotency key from it, others tag the copy with it to find it.
    pub key: String,
    /// Who wrote the reply.
    pub author: Person,
    /// Where they wrote it (`Slack`, `Matrix`).
    pub from: String,
    /// What they wrote, mentions given their ids on the target platform.
    pub body: Doc,
}

/// How a chat platform wants root messages laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayoutOptions {
    /// The platform cannot show a per-message author name/avatar, so the body names the author.
    pub author_in_body: bool,
    /// Longest body text (in characters) worth sending; longer bodies are cut with a link.
    pub max_body_chars: usize,
}

/// A chat platform's side of the engine: root messages in rooms. Room ids are the platform's
/// own (a Slack channel id, a Matrix room id).
pub trait ChatAdapter: Send + Sync {
    /// The platform's name in keys and labels (`slack`).
    fn platform(&self) -> Platform;
    /// The platform's name for people (`Slack`), e.g. in comment attributions.
    fn display_name(&self) -> &str;
    /// How root messages should be laid out for this platform.
    fn layout(&self) -> LayoutOptions;
    /// Send a root message; returns its id. Not idempotent: the engine guards it with an
    /// intent and reconciles with [`ChatAdapter::find_root`] after a crash.
    fn send_root<'a>(
        &'a self,
        room: &'a str,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<MessageId, Failure>>;
    /// Find a root message for `post` that the bridge may have sent since `since_ms` before
    /// it stopped (reconciliation of an open intent). A platform whose sends are idempotent may
    /// answer `None` and let the engine send again.
    fn find_root<'a>(
        &'a self,
        room: &'a str,
        post: PostId,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<MessageId>, Failure>>;
    /// Replace a root message's content. `edit` counts the edits this message had before this
    /// one: a platform that deduplicates sends by an id makes it part of the id, so every edit
    /// is new (v2 after v3 is not v2 again) while a retried edit is the same.
    fn edit_root<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        edit: u64,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<(), Failure>>;
    /// Delete a message; a message that is already gone counts as deleted.
    fn delete_message<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
    ) -> BoxFuture<'a, Result<(), Failure>>;
    /// Pin or unpin a root message. Idempotent: pinning a pinned message or unpinning one
    /// that is not pinned succeeds. A room where the bridge may not pin is a permanent
    /// failure.
    fn set_pinned<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        pinned: bool,
    ) -> BoxFuture<'a, Result<(), Failure>>;
    /// Put a post's file (or the link standing in for one too large) into the thread of the
    /// root message `root`; returns an id of what was sent, for
    /// [`ChatAdapter::delete_attachment`]. Not idempotent: the engine guards it with an intent
    /// and reconciles with [`ChatAdapter::find_attachment`]. `key` names the file within the
    /// thread and is the same on every try (a platform that deduplicates sends builds its
    /// transaction id from it).
    fn send_attachment<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        key: &'a str,
        attachment: &'a Attachment,
    ) -> BoxFuture<'a, Result<String, Failure>> {
        let _ = (room, root, key, attachment);
        Box::pin(async { Err(Failure::permanent("this platform does not take files")) })
    }
    /// Find an attachment named `name` that the bridge may have sent into `root`'s thread since
    /// `since_ms` before it stopped, other than the ones in `taken` (recorded for other
    /// files). `None` lets the engine send again.
    fn find_attachment<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        name: &'a str,
        since_ms: i64,
        taken: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        let _ = (room, root, name, since_ms, taken);
        Box::pin(async { Ok(None) })
    }
    /// Remove an attachment the bridge sent; one that is already gone counts as removed.
    fn delete_attachment<'a>(
        &'a self,
        room: &'a str,
        item: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (room, item);
        Box::pin(async { Ok(()) })
    }
    /// Fetch a file a person attached to a reply, up to `max_bytes`.
    fn fetch_file<'a>(
        &'a self,
        file: &'a ChatFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>> {
        let _ = (file, max_bytes);
        Box::pin(async { Err(Failure::permanent("this platform does not give files")) })
    }
    /// Fill in the names of a reply's author and of the people it mentions. Intakes journal
    /// an event before they ask a directory (a slow or rate-limited directory must not delay
    /// the acknowledgement), so they may leave ids where names belong; the engine asks here
    /// before it writes the comment. Platforms whose intake knows names keep the default.
    fn resolve_people<'a>(
        &'a self,
        author: &'a mut Person,
        body: &'a mut Doc,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (author, body);
        Box::pin(async { Ok(()) })
    }
    /// Copy a reply from another room into the thread of `root`, as its author where the
    /// platform allows it. Not idempotent: the engine guards it with an intent and reconciles
    /// with [`ChatAdapter::find_reply`].
    fn send_reply<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        reply: &'a MirroredReply,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        let _ = (room, root, reply);
        Box::pin(async { Err(Failure::permanent("this platform cannot copy replies")) })
    }
    /// Find a copy sent by [`ChatAdapter::send_reply`] with this `key` since `since_ms`
    /// (`None` also where sending again is itself idempotent).
    fn find_reply<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        key: &'a str,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<MessageId>, Failure>> {
        let _ = (room, root, key, since_ms);
        Box::pin(async { Ok(None) })
    }
    /// Replace a copy's content after its reply was edited (`edit` counts earlier edits).
    fn edit_reply<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        edit: u64,
        reply: &'a MirroredReply,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (room, message, edit, reply);
        Box::pin(async { Err(Failure::permanent("this platform cannot copy replies")) })
    }
    /// Where the platform's people can be looked up by e-mail, for identity links; `None`
    /// where it cannot (Matrix: a bot cannot read users' addresses).
    fn directory(&self) -> Option<&dyn Directory> {
        None
    }
}

/// A platform's people by e-mail address, for identity links (`crate::links`). Both answers
/// are `Ok(None)` when the platform does not say (no such person, no permission to see
/// addresses); errors are for calls that failed and may work later.
pub trait Directory: Send + Sync {
    /// The person's e-mail address.
    fn email_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<String>, Failure>>;
    /// The one active person with exactly this address (compared without case).
    fn user_by_email<'a>(
        &'a self,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>>;
}

/// Every mention in `doc`, for [`ChatAdapter::resolve_people`] to name.
pub fn mentions_mut(doc: &mut Doc) -> Vec<&mut Mention> {
    fn inlines<'a>(list: &'a mut [Inline], out: &mut Vec<&'a mut Mention>) {
        for inline in list {
            match inline {
                Inline::Mention(m) => out.push(m),
                Inline::Bold(c)
                | Inline::Italic(c)
                | Inline::Underline(c)
                | Inline::Strike(c)
                | Inline::Link { text: c, .. } => inlines(c, out),
                _ => {}
            }
        }
    }
    fn blocks<'a>(list: &'a mut [Block], out: &mut Vec<&'a mut Mention>) {
        for block in list {
            match block {
                Block::Paragraph(i) => inlines(i, out),
                Block::Quote(b) => blocks(b, out),
                Block::List { items, .. } => items.iter_mut().for_each(|b| blocks(b, out)),
                Block::Code(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    blocks(&mut doc.blocks, &mut out);
    out
}

/// The feed's side of the engine: the comments the bridge writes for chat replies.
pub trait FeedAdapter: Send + Sync {
    /// The feed's name in keys and labels (`bitrix24`).
    fn platform(&self) -> Platform;
    /// The feed's name for people (`Bitrix24`), e.g. "Open in Bitrix24".
    fn display_name(&self) -> &str;
    /// Add a comment to a post, with `files` attached: as the bridge's own user (the text is
    /// already attributed), or, with `author`, as that feed user (see
    /// [`FeedAdapter::writes_as_others`]). A duplicate of the writer's latest comment counts as
    /// added and returns that comment's id.
    fn add_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        files: &'a [FileContent],
        author: Option<&'a str>,
    ) -> BoxFuture<'a, Result<CommentId, Failure>>;
    /// Whether the bridge may write comments as other feed users (a Bitrix24 admin webhook).
    /// Asked before each comment written as someone; a feed that cannot keeps the default.
    fn writes_as_others(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
    /// Fetch one of a post's files, up to `max_bytes`.
    fn fetch_file<'a>(
        &'a self,
        post: PostId,
        file: &'a FeedFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>>;
    /// Find the comment with this content (text and `files`) the bridge wrote on `post` since
    /// `since_ms`, as its own user or as `author`.
    fn find_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        files: &'a [FileContent],
        author: Option<&'a str>,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>>;
    /// Delete a comment; one that is already gone counts as deleted.
    fn delete_comment<'a>(&'a self, comment: CommentId) -> BoxFuture<'a, Result<(), Failure>>;
    /// The feed's people by e-mail address, where it can say.
    fn directory(&self) -> Option<&dyn Directory> {
        None
    }
    /// Publish a post for `audience` written in chat (already attributed, or as `author`).
    /// Not idempotent: the engine guards it with an intent and reconciles with
    /// [`FeedAdapter::find_post`].
    fn add_post<'a>(
        &'a self,
        audience: Audience,
        doc: &'a Doc,
        author: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PostId, Failure>> {
        let _ = (audience, doc, author);
        Box::pin(async { Err(Failure::permanent("this feed takes no posts from chat")) })
    }
    /// The post with this content the bridge published for `audience` since `since_ms` and has
    /// not recorded yet.
    fn find_post<'a>(
        &'a self,
        audience: Audience,
        doc: &'a Doc,
        author: Option<&'a str>,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<PostId>, Failure>> {
        let _ = (audience, doc, author, since_ms);
        Box::pin(async { Ok(None) })
    }
    /// Replace a post's text (its message in chat was edited).
    fn update_post<'a>(&'a self, post: PostId, doc: &'a Doc) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (post, doc);
        Box::pin(async { Err(Failure::permanent("this feed takes no posts from chat")) })
    }
    /// Delete a post (its message in chat was deleted); one already gone counts as deleted.
    fn delete_post<'a>(&'a self, post: PostId) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = post;
        Box::pin(async { Err(Failure::permanent("this feed takes no posts from chat")) })
    }
}
