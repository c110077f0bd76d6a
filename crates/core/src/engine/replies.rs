//! Replies: a chat reply becomes a comment on its thread's post; an edit replaces the comment
//! (the feed cannot edit comments through its API); a deletion deletes it.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::{Begin, Inner, store_failure};
use crate::layout::{attributed_comment, content_hash, file_note};
use crate::model::{
    ChatEvent, ChatFile, Failure, Fetched, FileContent, Person, PostId, ReplyId, Room, ThreadId,
};
use crate::richtext::Doc;
use crate::store::{CommentRecord, comment_intent_key};

impl Inner {
    pub(super) async fn apply_reply(&self, event: &ChatEvent) -> Result<(), Failure> {
        match event {
            ChatEvent::ReplyPosted {
                room,
                thread,
                reply,
                author,
                body,
                files,
            } => {
                let (author, body) = self.resolved(room, author, body).await?;
                self.add_comment(room, thread, reply, &author, &body, files)
                    .await
            }
            ChatEvent::ReplyEdited {
                room,
                thread,
                reply,
                author,
                body,
                files,
            } => {
                let (author, body) = self.resolved(room, author, body).await?;
                let chat = self.chat(&room.platform)?;
                let doc = attributed_comment(&author, chat.display_name(), &body);
                if let Some(existing) = self
                    .store
                    .comment_for_reply(room, reply)
                    .map_err(store_failure)?
                {
                    if existing.content_hash == comment_hash(&doc, files) {
                        return Ok(());
                    }
                    // Feed comments cannot be edited through the API: replace the comment.
                    self.remove_comment(room, reply, &existing).await?;
                }
                self.add_comment(room, thread, reply, &author, &body, files)
                    .await
            }
            ChatEvent::MessagePosted {
                room,
                message,
                author,
                body,
            } => self.post_from_chat(room, message, author, body).await,
            ChatEvent::MessageEdited {
                room,
                message,
                author,
                body,
            } => self.edit_post_from_chat(room, message, author, body).await,
            ChatEvent::ReplyDeleted { room, reply, .. }
                if let Some(post) = self.chat_post_of(room, reply)? =>
            {
                self.delete_post_from_chat(room, post).await
            }
            ChatEvent::ReplyDeleted { room, reply, .. } => {
                let existing = self
                    .store
                    .comment_for_reply(room, reply)
                    .map_err(store_failure)?;
                match &existing {
                    Some(existing) => self.remove_comment(room, reply, existing).await?,
                    None => {
                        debug!(%room, %reply, "deleted reply was never a comment; remembered")
                    }
                }
                // Either way the reply stays out if it shows up again: late (redelivered out
                // of order) or stale (a catch-up that read the thread before the deletion).
                self.store
                    .put_reply_tombstone(room, reply)
                    .map_err(store_failure)?;
                Ok(())
            }
        }
    }

    /// The reply's author and body with the names the intake left for later filled in.
    pub(super) async fn resolved(
        &self,
        room: &Room,
        author: &Person,
        body: &Doc,
    ) -> Result<(Person, Doc), Failure> {
        let (mut author, mut body) = (author.clone(), body.clone());
        self.chat(&room.platform)?
            .resolve_people(&mut author, &mut body)
            .await?;
        Ok((author, body))
    }

    /// Write a reply as a comment on its thread's post, once, guarded by an intent.
    pub(super) async fn add_comment(
        &self,
        room: &Room,
        thread: &ThreadId,
        reply: &ReplyId,
        author: &Person,
        body: &Doc,
        files: &[ChatFile],
    ) -> Result<(), Failure> {
        let Some(post) = self.comment_target(room, thread, reply).await? else {
            return Ok(());
        };
        let chat = self.chat(&room.platform)?;
        let (contents, mut with_notes) = self.fetch_files(room, body, files).await?;
        self.link_mentions(&mut with_notes, &room.platform, &self.feed_platform)
            .await;
        // A linked person's reply is their own comment, without the attribution line; a reply
        // with no text keeps it, so the comment is never empty.
        let as_author = match with_notes.plain_text().trim().is_empty() {
            true => None,
            false => self.feed_author(room, author).await,
        };
        let doc = match as_author {
            Some(_) => with_notes,
            None => attributed_comment(author, chat.display_name(), &with_notes),
        };
        let as_author = as_author.as_deref();
        let key = comment_intent_key(room, reply);
        let comment = match self.begin(&key).await? {
            Begin::Send => {
                self.feed
                    .add_comment(post, &doc, &contents, as_author)
                    .await?
            }
            Begin::Reconcile { since_ms } => {
                match self
                    .feed
                    .find_comment(post, &doc, &contents, as_author, since_ms)
                    .await?
                {
                    Some(found) => {
                        info!(%post, %room, "found the comment written before");
                        found
                    }
                    None => {
                        self.feed
                            .add_comment(post, &doc, &contents, as_author)
                            .await?
                    }
                }
            }
        };
        crate::crashpoint::hit("engine.commented");
        let record = CommentRecord {
            post,
            comment,
            thread: thread.clone(),
            content_hash: comment_hash(
                &attributed_comment(author, chat.display_name(), body),
                files,
            ),
        };
        self.store
            .record_comment(room, reply, &record, &key)
            .map_err(store_failure)?;
        self.set_intent_state(&key, None);
        self.journal.publish_depth();
        self.journal.wake();
        self.metrics
            .effect(self.feed_platform.as_str(), "comment_add", "ok");
        info!(%post, %room, comment = %comment, as_author = as_author.is_some(), "reply added as a feed comment");
        Ok(())
    }

    /// The feed user a chat person's comment is written as: their linked feed user, when
    /// `people.comments_as_author` is on and the feed lets the bridge write as others.
    pub(super) async fn feed_author(&self, room: &Room, author: &Person) -> Option<String> {
        if !self.cfg.people.comments_as_author {
            return None;
        }
        let from = (&room.platform, self.directory(&room.platform));
        let to = (&self.feed_platform, self.directory(&self.feed_platform));
        let linked = self.links.counterpart(from, &author.id, to).await?;
        self.feed.writes_as_others().await.then_some(linked)
    }

    /// The reply's files, fetched up to the size limit; a file over it is left out and named
    /// in a note added to the body.
    async fn fetch_files(
        &self,
        room: &Room,
        body: &Doc,
        files: &[ChatFile],
    ) -> Result<(Vec<FileContent>, Doc), Failure> {
        let chat = self.chat(&room.platform)?;
        let mut body = body.clone();
        let mut contents = Vec::new();
        for file in files {
            let fetched = if file.size > self.cfg.max_file_bytes {
                Ok(Fetched::TooLarge { size: file.size })
            } else {
                chat.fetch_file(file, self.cfg.max_file_bytes).await
            };
            match fetched {
                Ok(Fetched::Content(c)) => contents.push(c),
                Ok(Fetched::TooLarge { size }) => {
                    body.blocks
                        .push(file_note(&file.name, Some(size), chat.display_name()));
                }
                Err(f) if f.is_transient() => return Err(f),
                // A file the bridge may not fetch (a missing scope, a refused download) must
                // not hold back the reply's text: the comment names it instead.
                Err(f) => {
                    warn!(%room, file = %file.name, error = %f.reason, "file not attached to the comment");
                    self.metrics
                        .effect(self.feed_platform.as_str(), "file_refused", "ok");
                    body.blocks
                        .push(file_note(&file.name, None, chat.display_name()));
                }
            }
        }
        Ok((contents, body))
    }

    /// The live post a new reply should be a comment on; `None` when it should not become
    /// one (replies off, already written, deleted before it arrived, not a bridged thread, the
    /// post is gone).
    async fn comment_target(
        &self,
        room: &Room,
        thread: &ThreadId,
        reply: &ReplyId,
    ) -> Result<Option<PostId>, Failure> {
        if !self.router.current().replies_enabled(room) {
            debug!(%room, "replies are off for this room; reply ignored");
            return Ok(None);
        }
        let store = &self.store;
        if store
            .comment_for_reply(room, reply)
            .map_err(store_failure)?
            .is_some()
        {
            return Ok(None);
        }
        if store.reply_tombstoned(room, reply).map_err(store_failure)? {
            debug!(%room, %reply, "reply deleted before it arrived; not bridged");
            return Ok(None);
        }
        let Some(post) = store.post_for_thread(room, thread).map_err(store_failure)? else {
            if store.has_post_intent_in(room).map_err(store_failure)? {
                // The root may be one the bridge is sending right now; wait for its record.
                return Err(Failure::retry_after(
                    "thread root not recorded yet",
                    Duration::from_millis(200),
                ));
            }
            debug!(%room, %thread, "reply in a thread the bridge did not start; ignored");
            return Ok(None);
        };
        match store.post(post).map_err(store_failure)? {
            Some(rec) if !rec.deleted => Ok(Some(post)),
            // A post just written from this room: the feed has it, the bridge reads it soon.
            None if store
                .mirror(post, room)
                .map_err(store_failure)?
                .is_some_and(|m| m.foreign && !m.deleted) =>
            {
                Err(Failure::retry_after(
                    "the post from chat is not read back yet",
                    Duration::from_millis(500),
                ))
            }
            _ => {
                debug!(%post, "reply to a deleted post; ignored");
                Ok(None)
            }
        }
    }

    /// Delete a reply's comment and forget it.
    pub(super) async fn remove_comment(
        &self,
        room: &Room,
        reply: &ReplyId,
        existing: &CommentRecord,
    ) -> Result<(), Failure> {
        self.feed.delete_comment(existing.comment).await?;
        self.store
            .remove_comment(room, reply, existing)
            .map_err(store_failure)?;
        self.journal.publish_depth();
        self.journal.wake();
        self.metrics
            .effect(self.feed_platform.as_str(), "comment_delete", "ok");
        info!(post = %existing.post, comment = %existing.comment, "feed comment deleted");
        Ok(())
    }
}

/// What an edit is compared with: the comment as attributed, and the reply's files (a reply
/// without files hashes as before files were carried, so older records stay comparable).
fn comment_hash(doc: &Doc, files: &[ChatFile]) -> u64 {
    if files.is_empty() {
        content_hash(doc)
    } else {
        content_hash(&(doc, files))
    }
}
