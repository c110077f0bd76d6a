//! The neutral model the core works in: feed posts and comments, chat rooms, messages and
//! replies, the events adapters report and the errors their effects can end in. Nothing here
//! knows a platform's wire format.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::richtext::Doc;

/// A feed post's id (Bitrix24 blog post id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PostId(pub u64);

/// A feed comment's id (Bitrix24 blog comment id, the one add/delete use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommentId(pub u64);

impl fmt::Display for PostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for CommentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who a feed post is addressed to (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Audience {
    All,
    Group(u64),
    Department(u64),
    User(u64),
}

impl Audience {
    /// Parse the config spelling: `all`, `group:N`, `department:N`, `user:N`.
    pub fn parse(text: &str) -> Option<Audience> {
        let text = text.trim();
        if text == "all" {
            return Some(Audience::All);
        }
        let (kind, id) = text.split_once(':')?;
        let id: u64 = id.trim().parse().ok().filter(|id| *id > 0)?;
        match kind.trim() {
            "group" => Some(Audience::Group(id)),
            "department" => Some(Audience::Department(id)),
            "user" => Some(Audience::User(id)),
            _ => None,
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Audience::All => f.write_str("all"),
            Audience::Group(id) => write!(f, "group:{id}"),
            Audience::Department(id) => write!(f, "department:{id}"),
            Audience::User(id) => write!(f, "user:{id}"),
        }
    }
}

/// A person as shown next to mirrored content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The id on the platform the person belongs to.
    pub id: String,
    pub name: String,
    pub avatar_url: Option<String>,
}

/// What the bridge knows of a feed post at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPost {
    pub id: PostId,
    pub author: Person,
    /// `None` for micro posts, whose title is only derived from the text.
    pub title: Option<String>,
    pub body: Doc,
    pub important: bool,
    /// The audiences the post was seen addressed to.
    pub audiences: BTreeSet<Audience>,
    /// Link to the post in the feed.
    pub url: String,
    /// Unix seconds.
    pub published_at: i64,
    /// All comments on the post, including the ones the bridge wrote.
    pub num_comments: u32,
}

/// A change the feed intake noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEvent {
    PostCreated(FeedPost),
    /// Title, text, importance or audiences changed.
    PostEdited(FeedPost),
    CommentsChanged(FeedPost),
    PostDeleted(PostId),
}

impl FeedEvent {
    pub fn post_id(&self) -> PostId {
        match self {
            FeedEvent::PostCreated(p)
            | FeedEvent::PostEdited(p)
            | FeedEvent::CommentsChanged(p) => p.id,
            FeedEvent::PostDeleted(id) => *id,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::PostCreated(_) => "post_created",
            FeedEvent::PostEdited(_) => "post_edited",
            FeedEvent::CommentsChanged(_) => "comments_changed",
            FeedEvent::PostDeleted(_) => "post_deleted",
        }
    }
}

/// A chat platform. Only a name: every platform detail lives in its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Platform {
    Slack,
    Matrix,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Slack => "slack",
            Platform::Matrix => "matrix",
        }
    }

    /// How the platform is named to people, e.g. in comment attributions.
    pub fn display_name(self) -> &'static str {
        match self {
            Platform::Slack => "Slack",
            Platform::Matrix => "Matrix",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chat room on one platform. Foreign ids are only unique inside their platform, so the two
/// always travel together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Room {
    pub platform: Platform,
    pub id: String,
}

impl Room {
    pub fn new(platform: Platform, id: impl Into<String>) -> Self {
        Room {
            platform,
            id: id.into(),
        }
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.platform, self.id)
    }
}

/// A change a chat intake noticed in a room the bridge serves. Message ids are the platform's
/// (Slack `ts`, Matrix event id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatEvent {
    ReplyPosted {
        room: Room,
        /// The thread root the reply belongs to.
        thread: String,
        reply: String,
        author: Person,
        body: Doc,
    },
    ReplyEdited {
        room: Room,
        thread: String,
        reply: String,
        author: Person,
        body: Doc,
    },
    ReplyDeleted {
        room: Room,
        /// The thread, when the platform says (it keeps a delete in its reply's lane).
        thread: Option<String>,
        reply: String,
    },
}

impl ChatEvent {
    pub fn room(&self) -> &Room {
        match self {
            ChatEvent::ReplyPosted { room, .. }
            | ChatEvent::ReplyEdited { room, .. }
            | ChatEvent::ReplyDeleted { room, .. } => room,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ChatEvent::ReplyPosted { .. } => "reply_posted",
            ChatEvent::ReplyEdited { .. } => "reply_edited",
            ChatEvent::ReplyDeleted { .. } => "reply_deleted",
        }
    }
}

/// Everything the journal can hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inbound {
    Feed(FeedEvent),
    Chat(ChatEvent),
    /// Re-render a post's existing mirrors (its bridge-written comment count changed).
    Refresh(PostId),
    /// Bring one room's mirror of a post up to date (a dead letter being retried).
    SyncRoom {
        post: PostId,
        room: Room,
    },
}

impl Inbound {
    pub fn source(&self) -> &'static str {
        match self {
            Inbound::Feed(_) | Inbound::Refresh(_) | Inbound::SyncRoom { .. } => "bitrix24",
            Inbound::Chat(e) => e.room().platform.as_str(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Inbound::Feed(e) => e.kind(),
            Inbound::Chat(e) => e.kind(),
            Inbound::Refresh(_) => "refresh",
            Inbound::SyncRoom { .. } => "sync_room",
        }
    }
}

/// How an effect on a platform failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again later (network, 5xx, rate limits); `retry_after` when the platform said when.
    Transient { retry_after: Option<Duration> },
    /// The credentials were refused: nothing on this side works until an operator acts.
    Auth,
    /// This one action can never succeed (channel gone, post deleted, not allowed).
    Permanent,
}

/// A failed platform call, with a reason that is safe to log (adapters scrub secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    pub fn transient(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Transient { retry_after: None },
            reason: reason.into(),
        }
    }

    pub fn retry_after(reason: impl Into<String>, after: Duration) -> Self {
        Failure {
            kind: FailureKind::Transient {
                retry_after: Some(after),
            },
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Permanent,
            reason: reason.into(),
        }
    }

    pub fn auth(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Auth,
            reason: reason.into(),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FailureKind::Transient { .. })
    }

    pub fn retry_hint(&self) -> Option<Duration> {
        match self.kind {
            FailureKind::Transient { retry_after } => retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_spellings() {
        assert_eq!(Audience::parse("all"), Some(Audience::All));
        assert_eq!(Audience::parse("group:12"), Some(Audience::Group(12)));
        assert_eq!(
            Audience::parse("department:3"),
            Some(Audience::Department(3))
        );
        assert_eq!(Audience::parse("user:7"), Some(Audience::User(7)));
        for bad in ["", "everyone", "group:", "group:x", "group:0", "team:5"] {
            assert_eq!(Audience::parse(bad), None, "{bad}");
        }
        assert_eq!(Audience::Group(12).to_string(), "group:12");
    }
}
