//! The neutral model the core works in: feed posts and comments, chat rooms, messages and
//! replies, the events adapters report and the errors their effects can end in. Nothing here
//! knows a platform's wire format, and no platform is named: adapters bring their names.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::richtext::Doc;

/// A feed post's id, as the feed numbers its posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PostId(pub u64);

/// A feed comment's id, the one the feed's add and delete calls use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommentId(pub u64);

/// Opaque string ids of chat messages. The core stores and compares them, never parses them;
/// each is only unique inside its [`Room`].
macro_rules! chat_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as the platform wrote it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                $name(id.to_string())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }
    };
}

chat_id!(
    /// A chat message the bridge wrote: a root message mirroring a post (Slack `ts`, Matrix
    /// event id).
    MessageId
);
chat_id!(
    /// A chat thread, named by its root message.
    ThreadId
);
chat_id!(
    /// A person's message in a thread, which the bridge turns into a feed comment.
    ReplyId
);

impl ThreadId {
    /// The thread whose root is `message`.
    pub fn rooted_at(message: &MessageId) -> Self {
        ThreadId(message.0.clone())
    }
}

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

/// Who a feed post is addressed to (ARCHITECTURE.md, "Routing and privacy").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Audience {
    /// Every employee.
    All,
    /// The members of one workgroup.
    Group(u64),
    /// The members of one department.
    Department(u64),
    /// One person.
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
    /// The name people know them by.
    pub name: String,
    /// A picture, where the platform has one at a public URL.
    pub avatar_url: Option<String>,
}

/// What the bridge knows of a feed post at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPost {
    /// The post's id.
    pub id: PostId,
    /// Who wrote it.
    pub author: Person,
    /// `None` for micro posts, whose title is only derived from the text.
    pub title: Option<String>,
    /// The text.
    pub body: Doc,
    /// Marked important ("read and confirm") and not past the end date the author set.
    pub important: bool,
    /// How many people have read an important post, where the intake keeps count.
    #[serde(default)]
    pub readers: Option<u32>,
    /// The audiences the post was seen addressed to.
    pub audiences: BTreeSet<Audience>,
    /// Link to the post in the feed.
    pub url: String,
    /// Unix seconds.
    pub published_at: i64,
    /// All comments on the post, including the ones the bridge wrote.
    pub num_comments: u32,
    /// The files attached to the post, in the feed's order.
    #[serde(default)]
    pub files: Vec<FeedFile>,
}

/// A file attached to a feed post (or an image its text shows), as the bridge mirrors it into
/// each room's thread. The content is fetched when a room needs it, never kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FeedFile {
    /// The feed's id for the file: stable while the file stays attached, unique in the post.
    pub id: String,
    /// The file's name.
    pub name: String,
    /// Its size in bytes, where the feed said (0: unknown until fetched).
    pub size: u64,
}

/// A file a person attached to a chat reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatFile {
    /// The file's name.
    pub name: String,
    /// Its size in bytes, where the platform said (0: unknown until fetched).
    pub size: u64,
    /// Its media type, where the platform said.
    pub mime: String,
    /// Where the chat adapter fetches it from; opaque to the core (not a secret: fetching
    /// needs the adapter's credentials).
    pub source: String,
}

/// A file's content, fetched to be attached elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The file's name.
    pub name: String,
    /// Its media type (`application/octet-stream` when nobody said).
    pub mime: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// What fetching a file up to a size limit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The file, within the limit.
    Content(FileContent),
    /// Larger than the limit (`size` bytes, or more when the download was cut).
    TooLarge {
        /// The size, as far as known.
        size: u64,
    },
}

/// What the bridge puts into a post's chat thread for one of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// The file itself.
    File(FileContent),
    /// A link to the post, for a file larger than the limit.
    Link {
        /// The file's name.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The post in the feed.
        url: String,
        /// The feed's name for people ("open in Bitrix24").
        feed: String,
    },
}

/// A change the feed intake noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedEvent {
    /// A post the bridge had not seen.
    PostCreated(FeedPost),
    /// Title, text, importance or audiences changed.
    PostEdited(FeedPost),
    /// The number of comments changed.
    CommentsChanged(FeedPost),
    /// An important post's readers were counted anew, or its importance ran out.
    ImportanceChanged {
        /// The post.
        post: PostId,
        /// Still important.
        important: bool,
        /// The readers counted, if counted.
        readers: Option<u32>,
    },
    /// The post is gone.
    PostDeleted(PostId),
}

impl FeedEvent {
    /// The post the event is about.
    pub fn post_id(&self) -> PostId {
        match self {
            FeedEvent::PostCreated(p)
            | FeedEvent::PostEdited(p)
            | FeedEvent::CommentsChanged(p) => p.id,
            FeedEvent::ImportanceChanged { post, .. } => *post,
            FeedEvent::PostDeleted(id) => *id,
        }
    }

    /// The event's kind as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::PostCreated(_) => "post_created",
            FeedEvent::PostEdited(_) => "post_edited",
            FeedEvent::CommentsChanged(_) => "comments_changed",
            FeedEvent::ImportanceChanged { .. } => "importance_changed",
            FeedEvent::PostDeleted(_) => "post_deleted",
        }
    }
}

/// A platform's name as the bridge uses it in store keys, metric labels and logs: `slack`,
/// `matrix`, and the feed's own. Adapters define theirs; the core never names one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform(Cow<'static, str>);

impl Platform {
    /// A platform name (lower-case ASCII by convention, e.g. `"slack"`).
    pub const fn new(name: &'static str) -> Self {
        Platform(Cow::Borrowed(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Journals written before platforms were names hold `"Slack"` and `"Matrix"`.
        let name = String::deserialize(d)?.to_ascii_lowercase();
        Ok(Platform(Cow::Owned(name)))
    }
}

/// A chat room on one platform. Foreign ids are only unique inside their platform, so the two
/// always travel together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Room {
    /// The platform the room is on.
    pub platform: Platform,
    /// The room's id on that platform (Slack channel id, Matrix room id).
    pub id: String,
}

impl Room {
    /// The room `id` on `platform`.
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

/// A change a chat intake noticed in a room the bridge serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatEvent {
    /// A person replied in a thread.
    ReplyPosted {
        /// Where.
        room: Room,
        /// The thread the reply belongs to.
        thread: ThreadId,
        /// The reply.
        reply: ReplyId,
        /// Who wrote it.
        author: Person,
        /// What they wrote.
        body: Doc,
        /// The files they attached.
        #[serde(default)]
        files: Vec<ChatFile>,
    },
    /// A person edited their reply.
    ReplyEdited {
        /// Where.
        room: Room,
        /// The thread the reply belongs to.
        thread: ThreadId,
        /// The reply.
        reply: ReplyId,
        /// Who wrote it.
        author: Person,
        /// The new text.
        body: Doc,
        /// The files the reply carries.
        #[serde(default)]
        files: Vec<ChatFile>,
    },
    /// A person wrote a top-level message in a room whose mapping publishes to the feed
    /// (`posts_from_chat`): it becomes a feed post, and the message its root in that room.
    MessagePosted {
        /// Where.
        room: Room,
        /// The message.
        message: ReplyId,
        /// Who wrote it.
        author: Person,
        /// What they wrote.
        body: Doc,
    },
    /// They edited such a message.
    MessageEdited {
        /// Where.
        room: Room,
        /// The message.
        message: ReplyId,
        /// Who wrote it.
        author: Person,
        /// The new text.
        body: Doc,
    },
    /// A reply was deleted (or a top-level message: a root, or a post from chat).
    ReplyDeleted {
        /// Where.
        room: Room,
        /// The thread, when the platform says (it keeps a delete in its reply's lane).
        thread: Option<ThreadId>,
        /// The reply.
        reply: ReplyId,
    },
}

impl ChatEvent {
    /// The reply the event is about.
    pub fn reply(&self) -> &ReplyId {
        match self {
            ChatEvent::ReplyPosted { reply, .. }
            | ChatEvent::ReplyEdited { reply, .. }
            | ChatEvent::ReplyDeleted { reply, .. } => reply,
            ChatEvent::MessagePosted { message, .. } | ChatEvent::MessageEdited { message, .. } => {
                message
            }
        }
    }

    /// The room the event happened in.
    pub fn room(&self) -> &Room {
        match self {
            ChatEvent::ReplyPosted { room, .. }
            | ChatEvent::ReplyEdited { room, .. }
            | ChatEvent::ReplyDeleted { room, .. }
            | ChatEvent::MessagePosted { room, .. }
            | ChatEvent::MessageEdited { room, .. } => room,
        }
    }

    /// The event's kind as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ChatEvent::ReplyPosted { .. } => "reply_posted",
            ChatEvent::ReplyEdited { .. } => "reply_edited",
            ChatEvent::ReplyDeleted { .. } => "reply_deleted",
            ChatEvent::MessagePosted { .. } => "message_posted",
            ChatEvent::MessageEdited { .. } => "message_edited",
        }
    }
}

/// Everything the journal can hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inbound {
    /// A change in the feed.
    Feed(FeedEvent),
    /// A change in a chat room.
    Chat(ChatEvent),
    /// Re-render a post's existing mirrors (its bridge-written comment count changed).
    Refresh(PostId),
    /// Bring one room's mirror of a post up to date (a dead letter being retried).
    SyncRoom {
        /// The post.
        post: PostId,
        /// The room whose mirror to bring up to date.
        room: Room,
    },
}

impl Inbound {
    /// Where the event came from: its chat platform, or `feed` for everything about posts.
    pub fn source<'a>(&'a self, feed: &'a Platform) -> &'a Platform {
        match self {
            Inbound::Chat(e) => &e.room().platform,
            Inbound::Feed(_) | Inbound::Refresh(_) | Inbound::SyncRoom { .. } => feed,
        }
    }

    /// The event's kind as a metric label.
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
    /// Try again later (network, 5xx, rate limits).
    Transient {
        /// When the platform said to try again, if it did.
        retry_after: Option<Duration>,
    },
    /// The credentials were refused: nothing on this side works until an operator acts.
    Auth,
    /// This one action can never succeed (channel gone, post deleted, not allowed).
    Permanent,
    /// The message the action was about no longer exists (a person deleted it).
    Gone,
}

/// A failed platform call, with a reason that is safe to log (adapters scrub secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    /// What the engine should do about it.
    pub kind: FailureKind,
    /// Why, in words safe to log and store.
    pub reason: String,
}

impl Failure {
    /// Worth another try later.
    pub fn transient(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Transient { retry_after: None },
            reason: reason.into(),
        }
    }

    /// Worth another try, not before `after`.
    pub fn retry_after(reason: impl Into<String>, after: Duration) -> Self {
        Failure {
            kind: FailureKind::Transient {
                retry_after: Some(after),
            },
            reason: reason.into(),
        }
    }

    /// This action can never succeed.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Permanent,
            reason: reason.into(),
        }
    }

    /// The message acted on is gone.
    pub fn gone(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Gone,
            reason: reason.into(),
        }
    }

    /// The side's credentials were refused.
    pub fn auth(reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Auth,
            reason: reason.into(),
        }
    }

    /// Whether another try may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FailureKind::Transient { .. })
    }

    /// When the platform said to try again, if it did.
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
