//! What the engine needs from the platforms: the feed side's effects and the chat side's
//! effects. Adapters implement these in their platform's terms; the engine sees only neutral
//! types, so Slack and Matrix share one code path and a new chat platform is one new module.

use std::future::Future;
use std::pin::Pin;

use super::model::{CommentId, Failure, Person, Platform, PostId};
use super::richtext::Doc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A root message mirroring a feed post, laid out (see `core::layout`) but not yet rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPost {
    pub post: PostId,
    pub author: Person,
    pub doc: Doc,
}

/// How a chat platform wants root messages laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayoutOptions {
    /// The platform cannot show a per-message author name/avatar, so the body names the author.
    pub author_in_body: bool,
    /// Longest body text (in characters) worth sending; longer bodies are cut with a link.
    pub max_body_chars: usize,
}

pub trait ChatAdapter: Send + Sync {
    fn platform(&self) -> Platform;
    fn layout(&self) -> LayoutOptions;
    /// Post a root message; returns its message id.
    fn post<'a>(
        &'a self,
        room: &'a str,
        msg: &'a ChatPost,
    ) -> BoxFuture<'a, Result<String, Failure>>;
    /// Find a root message for `post` that the bridge may have sent since `since_ms` before
    /// it stopped (reconciliation of an open intent).
    fn find_post<'a>(
        &'a self,
        room: &'a str,
        post: PostId,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>>;
    fn edit<'a>(
        &'a self,
        room: &'a str,
        message: &'a str,
        msg: &'a ChatPost,
    ) -> BoxFuture<'a, Result<(), Failure>>;
    /// Delete a message; a message that is already gone counts as deleted.
    fn delete<'a>(&'a self, room: &'a str, message: &'a str) -> BoxFuture<'a, Result<(), Failure>>;
}

pub trait FeedAdapter: Send + Sync {
    /// Add a comment (already attributed) to a post; a duplicate of the bridge's own latest
    /// comment counts as added and returns that comment's id.
    fn add_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
    ) -> BoxFuture<'a, Result<CommentId, Failure>>;
    /// Find the bridge's own comment with this content on `post`, written since `since_ms`.
    fn find_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>>;
    /// Delete a comment; one that is already gone counts as deleted.
    fn delete_comment<'a>(&'a self, comment: CommentId) -> BoxFuture<'a, Result<(), Failure>>;
}
