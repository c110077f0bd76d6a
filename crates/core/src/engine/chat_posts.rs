//! Posts from chat: in a room whose mapping has `posts_from_chat`, a person's top-level message
//! becomes a feed post for the mapping's one audience, written as the person where they are
//! linked and the feed allows it, attributed otherwise. The message is the post's root in that
//! room: the bridge never sends a root of its own there, and never edits, pins or deletes the
//! person's message. Replies in its thread become comments as in any thread; edits of the
//! message update the post and its deletion deletes it; other rooms get the post as usual.

use tracing::{debug, info};

use super::{Begin, Inner, store_failure};
use crate::layout::{attributed_comment, content_hash};
use crate::model::{Failure, MessageId, Person, PostId, ReplyId, Room, ThreadId};
use crate::richtext::Doc;
use crate::store::{Mirror, chat_post_intent_key};

impl Inner {
    /// Publish `message` as a feed post, once, guarded by an intent.
    pub(super) async fn post_from_chat(
        &self,
        room: &Room,
        message: &ReplyId,
        author: &Person,
        body: &Doc,
    ) -> Result<(), Failure> {
        let root = MessageId(message.as_str().to_string());
        if self
            .store
            .post_for_thread(room, &ThreadId::rooted_at(&root))
            .map_err(store_failure)?
            .is_some()
            || self
                .store
                .reply_tombstoned(room, message)
                .map_err(store_failure)?
        {
            return Ok(());
        }
        let Some(audience) = self.router.current().chat_post_audience(room) else {
            debug!(%room, "the room no longer publishes to the feed; message ignored");
            return Ok(());
        };
        let (doc, as_author) = self.chat_post_doc(room, author, body).await?;
        let as_author = as_author.as_deref();
        let key = chat_post_intent_key(room, message);
        let post = match self.begin(&key).await? {
            Begin::Send => self.feed.add_post(audience, &doc, as_author).await?,
            Begin::Reconcile { since_ms } => {
                match self
                    .feed
                    .find_post(audience, &doc, as_author, since_ms)
                    .await?
                {
                    Some(found) => {
                        info!(%found, %room, "found the post written before");
                        found
                    }
                    None => self.feed.add_post(audience, &doc, as_author).await?,
                }
            }
        };
        crate::crashpoint::hit("engine.posted");
        let mirror = Mirror {
            foreign: true,
            ..Mirror::new(root, content_hash(&doc))
        };
        self.store
            .record_mirror(post, room, &mirror, &key)
            .map_err(store_failure)?;
        self.set_intent_state(&key, None);
        self.metrics
            .effect(self.feed_platform.as_str(), "post_from_chat", "ok");
        info!(%post, %room, as_author = as_author.is_some(), "message published as a feed post");
        Ok(())
    }

    /// The person edited the message a post came from: the post's text follows.
    pub(super) async fn edit_post_from_chat(
        &self,
        room: &Room,
        message: &ReplyId,
        author: &Person,
        body: &Doc,
    ) -> Result<(), Failure> {
        let Some(post) = self.chat_post_of(room, message)? else {
            return Ok(());
        };
        let Some(mut m) = self
            .store
            .mirror(post, room)
            .map_err(store_failure)?
            .filter(|m| m.foreign && !m.deleted)
        else {
            return Ok(());
        };
        let (doc, _) = self.chat_post_doc(room, author, body).await?;
        let hash = content_hash(&doc);
        if m.content_hash == hash {
            return Ok(());
        }
        self.feed.update_post(post, &doc).await?;
        m.content_hash = hash;
        m.edits += 1;
        self.store
            .put_mirror(post, room, &m)
            .map_err(store_failure)?;
        self.metrics
            .effect(self.feed_platform.as_str(), "post_from_chat_edit", "ok");
        info!(%post, %room, "post updated from its message");
        Ok(())
    }

    /// The post `message` in `room` became, if it is one of those.
    pub(super) fn chat_post_of(
        &self,
        room: &Room,
        message: &ReplyId,
    ) -> Result<Option<PostId>, Failure> {
        let root = ThreadId::rooted_at(&MessageId(message.as_str().to_string()));
        let Some(post) = self
            .store
            .post_for_thread(room, &root)
            .map_err(store_failure)?
        else {
            return Ok(None);
        };
        let foreign = self
            .store
            .mirror(post, room)
            .map_err(store_failure)?
            .is_some_and(|m| m.foreign);
        Ok(foreign.then_some(post))
    }

    /// The person deleted the message a post came from: the post goes (and with it its roots
    /// in other rooms, once the feed shows it gone).
    pub(super) async fn delete_post_from_chat(
        &self,
        room: &Room,
        post: PostId,
    ) -> Result<(), Failure> {
        self.feed.delete_post(post).await?;
        self.metrics
            .effect(self.feed_platform.as_str(), "post_from_chat_delete", "ok");
        info!(%post, %room, "post deleted with its message");
        Ok(())
    }

    /// The post's text: the person's own where they are linked and the feed lets the bridge
    /// write as them (then also returned), else attributed like a comment.
    async fn chat_post_doc(
        &self,
        room: &Room,
        author: &Person,
        body: &Doc,
    ) -> Result<(Doc, Option<String>), Failure> {
        let (author, mut body) = self.resolved(room, author, body).await?;
        self.link_mentions(&mut body, &room.platform, &self.feed_platform)
            .await;
        let as_author = match body.plain_text().trim().is_empty() {
            true => None,
            false => self.feed_author(room, &author).await,
        };
        let chat = self.chat(&room.platform)?;
        let doc = match as_author {
            Some(_) => body,
            None => attributed_comment(&author, chat.display_name(), &body),
        };
        Ok((doc, as_author))
    }
}
