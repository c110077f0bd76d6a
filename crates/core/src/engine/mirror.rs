//! Mirror sync: make one room's root message match a post's latest record: create it, edit it
//! when its content changed, delete it when the post is gone.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::{Begin, Inner, IntentState, UNKNOWN_CONTENT, store_failure};
use crate::adapters::{ChatAdapter, RootMessage};
use crate::layout::{content_hash, root_message};
use crate::model::{
    Attachment, Failure, FailureKind, FeedFile, FeedPost, Fetched, MessageId, PostId, Room,
};
use crate::store::{FileMirror, Mirror, file_intent_key, post_intent_key};

impl Inner {
    /// Make `room`'s message for `post` match the post's latest record.
    pub(super) async fn sync_mirror(&self, post: PostId, room: &Room) -> Result<(), Failure> {
        let Some(record) = self.store.post(post).map_err(store_failure)? else {
            return Ok(());
        };
        let chat = self.chat(&room.platform)?;
        let mirror = self.store.mirror(post, room).map_err(store_failure)?;
        if let Some(mut m) = mirror.clone().filter(|m| m.foreign) {
            // The post was written in this room: its root is the person's own message, which
            // the bridge leaves as it is (edits and deletions come from there).
            if record.deleted && !m.deleted {
                m.deleted = true;
                self.store
                    .put_mirror(post, room, &m)
                    .map_err(store_failure)?;
            }
            return Ok(());
        }
        if record.deleted {
            return self.delete_mirror(post, room, chat.as_ref(), mirror).await;
        }
        let comments = record
            .post
            .num_comments
            .saturating_sub(record.bridge_comments);
        let mut doc = root_message(
            &record.post,
            comments,
            chat.layout(),
            self.feed.display_name(),
        );
        self.link_mentions(&mut doc, &self.feed_platform, &room.platform)
            .await;
        let msg = RootMessage {
            post,
            author: record.post.author.clone(),
            doc,
        };
        let hash = content_hash(&(&msg.author, &msg.doc));
        match mirror {
            // A message of this room may be becoming this very post: its record decides.
            None if self
                .store
                .has_chat_post_intent_in(room)
                .map_err(store_failure)? =>
            {
                return Err(Failure::retry_after(
                    "a message of this room is becoming a post",
                    std::time::Duration::from_millis(200),
                ));
            }
            None => self.create_mirror(room, chat.as_ref(), &msg, hash).await?,
            Some(m) if m.deleted => return Ok(()),
            Some(m) if m.content_hash == hash => {}
            Some(m) => {
                self.edit_mirror(post, room, chat.as_ref(), m, &msg, hash)
                    .await?
            }
        }
        // Once per room (not on every sync): later replies arrive as live copies.
        if let Some(mut m) = self.store.mirror(post, room).map_err(store_failure)?
            && !m.conversation
            && !m.deleted
        {
            self.copy_conversation(post, room).await?;
            m.conversation = true;
            self.store
                .put_mirror(post, room, &m)
                .map_err(store_failure)?;
        }
        self.sync_files(&record.post, room, chat.as_ref()).await?;
        let pin = self.cfg.pin_important && record.post.important;
        self.sync_pin(post, room, chat.as_ref(), pin).await
    }

    /// Make the files in the post's thread in `room` match the post's: send the ones not
    /// there yet (each guarded by an intent, like a root message), remove the ones the post
    /// no longer has.
    async fn sync_files(
        &self,
        post: &FeedPost,
        room: &Room,
        chat: &dyn ChatAdapter,
    ) -> Result<(), Failure> {
        let mut sent: BTreeMap<String, FileMirror> = self
            .store
            .file_mirrors(post.id, room)
            .map_err(store_failure)?
            .into_iter()
            .collect();
        if sent.is_empty() && post.files.is_empty() {
            return Ok(());
        }
        let Some(m) = self.store.mirror(post.id, room).map_err(store_failure)? else {
            return Ok(());
        };
        if m.deleted {
            return Ok(());
        }
        let gone: Vec<String> = sent
            .keys()
            .filter(|id| !post.files.iter().any(|f| &f.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(f) = sent.remove(&id) {
                if !f.item.is_empty() {
                    chat.delete_attachment(&room.id, &f.item).await?;
                }
                self.store
                    .remove_file_mirror(post.id, room, &id)
                    .map_err(store_failure)?;
                self.metrics
                    .effect(room.platform.as_str(), "file_delete", "ok");
                info!(post = %post.id, %room, file = %id, "file removed from the thread");
            }
        }
        for file in &post.files {
            if sent.contains_key(&file.id) {
                continue;
            }
            let key = file_intent_key(post.id, room, &file.id);
            let taken: Vec<String> = sent.values().map(|f| f.item.clone()).collect();
            let (item, effect) = match self
                .send_file(post, file, room, chat, &m.message_id, &key, &taken)
                .await
            {
                Ok(sent) => sent,
                // A file this room will never take (uploads disabled, a type it refuses) must
                // not hold up the post: it is logged, counted and left out.
                Err(f) if f.kind == FailureKind::Permanent => {
                    warn!(post = %post.id, %room, file = %file.id, error = %f.reason, "file not put into the thread");
                    (String::new(), "file_refused")
                }
                Err(f) => return Err(f),
            };
            crate::crashpoint::hit("engine.file_sent");
            let record = FileMirror { item };
            self.store
                .record_file_mirror(post.id, room, &file.id, &record, &key)
                .map_err(store_failure)?;
            self.set_intent_state(&key, None);
            self.metrics.effect(room.platform.as_str(), effect, "ok");
            info!(post = %post.id, %room, file = %file.id, "file put into the thread");
            sent.insert(file.id.clone(), record);
        }
        Ok(())
    }

    /// Send one file into the thread of `root`, once, guarded by the intent `key`; returns
    /// what was sent and its metric label.
    #[allow(clippy::too_many_arguments)]
    async fn send_file(
        &self,
        post: &FeedPost,
        file: &FeedFile,
        room: &Room,
        chat: &dyn ChatAdapter,
        root: &MessageId,
        key: &str,
        taken: &[String],
    ) -> Result<(String, &'static str), Failure> {
        let attachment = self.attachment(post, file).await?;
        let effect = match attachment {
            Attachment::File(_) => "file",
            Attachment::Link { .. } => "file_link",
        };
        let item = match self.begin(key).await? {
            Begin::Send => {
                chat.send_attachment(&room.id, root, &file.id, &attachment)
                    .await?
            }
            Begin::Reconcile { since_ms } => {
                match chat
                    .find_attachment(&room.id, root, &file.name, since_ms, taken)
                    .await?
                {
                    Some(found) => {
                        info!(post = %post.id, %room, file = %file.id, "found the file sent before");
                        found
                    }
                    None => {
                        chat.send_attachment(&room.id, root, &file.id, &attachment)
                            .await?
                    }
                }
            }
        };
        Ok((item, effect))
    }

    /// The file's content, or a link to the post when it is larger than the limit.
    async fn attachment(&self, post: &FeedPost, file: &FeedFile) -> Result<Attachment, Failure> {
        let too_large = |size: u64| Attachment::Link {
            name: file.name.clone(),
            size,
            url: post.url.clone(),
            feed: self.feed.display_name().to_string(),
        };
        if file.size > self.cfg.max_file_bytes {
            return Ok(too_large(file.size));
        }
        Ok(
            match self
                .feed
                .fetch_file(post.id, file, self.cfg.max_file_bytes)
                .await?
            {
                Fetched::Content(c) => Attachment::File(c),
                Fetched::TooLarge { size } => too_large(size),
            },
        )
    }

    /// Remove the files the bridge put into a thread whose root is being deleted.
    async fn delete_files(
        &self,
        post: PostId,
        room: &Room,
        chat: &dyn ChatAdapter,
    ) -> Result<(), Failure> {
        for (id, f) in self.store.file_mirrors(post, room).map_err(store_failure)? {
            if !f.item.is_empty() {
                chat.delete_attachment(&room.id, &f.item).await?;
            }
            self.store
                .remove_file_mirror(post, room, &id)
                .map_err(store_failure)?;
        }
        Ok(())
    }

    /// Pin the room's message while the post is important, unpin it after. Pins are
    /// idempotent on every platform, so no intent guards them; a room where the bridge may
    /// not pin is told once in the log and left alone (`check` reports it).
    async fn sync_pin(
        &self,
        post: PostId,
        room: &Room,
        chat: &dyn ChatAdapter,
        pin: bool,
    ) -> Result<(), Failure> {
        let Some(mut m) = self.store.mirror(post, room).map_err(store_failure)? else {
            return Ok(());
        };
        if m.deleted || m.pinned == pin {
            return Ok(());
        }
        let outcome = match chat.set_pinned(&room.id, &m.message_id, pin).await {
            Ok(()) => "ok",
            Err(f) if matches!(f.kind, FailureKind::Permanent | FailureKind::Gone) => {
                warn!(%post, %room, pin, error = %f.reason, "cannot change the pin; left as it is");
                "failed"
            }
            Err(f) => return Err(f),
        };
        m.pinned = pin;
        self.store
            .put_mirror(post, room, &m)
            .map_err(store_failure)?;
        let effect = if pin { "pin" } else { "unpin" };
        self.metrics.effect(room.platform.as_str(), effect, outcome);
        if outcome == "ok" {
            info!(%post, %room, "{effect}ned the root message");
        }
        Ok(())
    }

    /// Send the root message, guarded by an intent: a send that may have happened before a
    /// stop is looked for first.
    async fn create_mirror(
        &self,
        room: &Room,
        chat: &dyn ChatAdapter,
        msg: &RootMessage,
        hash: u64,
    ) -> Result<(), Failure> {
        let post = msg.post;
        let key = post_intent_key(post, room);
        let (message_id, reconciled) = match self.begin(&key).await? {
            Begin::Send => (chat.send_root(&room.id, msg).await?, false),
            Begin::Reconcile { since_ms } => {
                let id = match chat.find_root(&room.id, post, since_ms).await? {
                    Some(found) => {
                        info!(%post, %room, "found the root message sent before");
                        found
                    }
                    // A platform that deduplicates sends may return the earlier one.
                    None => chat.send_root(&room.id, msg).await?,
                };
                (id, true)
            }
        };
        crate::crashpoint::hit("engine.sent");
        // A message sent before a stop shows the post as it was then, which an edit since may
        // have changed: recorded as unknown content, it is edited below (and by the retry, if
        // that edit fails).
        // A message found by reconciliation may have been pinned before the stop: pinning
        // again is harmless, so it counts as unpinned.
        let mirror = Mirror::new(message_id, if reconciled { UNKNOWN_CONTENT } else { hash });
        self.store
            .record_mirror(post, room, &mirror, &key)
            .map_err(store_failure)?;
        self.set_intent_state(&key, None);
        crate::crashpoint::hit("engine.recorded");
        self.metrics.effect(room.platform.as_str(), "post", "ok");
        info!(%post, %room, message = %mirror.message_id, "post mirrored");
        if reconciled {
            self.edit_mirror(post, room, chat, mirror, msg, hash)
                .await?;
        }
        Ok(())
    }

    /// The post is gone: delete its message in `room`, recorded or not.
    async fn delete_mirror(
        &self,
        post: PostId,
        room: &Room,
        chat: &dyn ChatAdapter,
        mirror: Option<Mirror>,
    ) -> Result<(), Failure> {
        match mirror {
            Some(mut m) if !m.deleted => {
                self.delete_files(post, room, chat).await?;
                chat.delete_message(&room.id, &m.message_id).await?;
                m.deleted = true;
                self.store
                    .put_mirror(post, room, &m)
                    .map_err(store_failure)?;
                self.metrics.effect(room.platform.as_str(), "delete", "ok");
                info!(%post, %room, "mirror deleted");
                Ok(())
            }
            Some(_) => Ok(()),
            None => self.delete_unrecorded(post, room, chat).await,
        }
    }

    /// Bring a recorded message up to the post's latest content.
    pub(super) async fn edit_mirror(
        &self,
        post: PostId,
        room: &Room,
        chat: &dyn ChatAdapter,
        mut m: Mirror,
        msg: &RootMessage,
        hash: u64,
    ) -> Result<(), Failure> {
        match chat.edit_root(&room.id, &m.message_id, m.edits, msg).await {
            Ok(()) => {}
            Err(f) if f.kind == FailureKind::Gone => {
                return self.detach(post, room, &m.message_id).await;
            }
            Err(f) => return Err(f),
        }
        m.content_hash = hash;
        m.edits += 1;
        self.store
            .put_mirror(post, room, &m)
            .map_err(store_failure)?;
        self.metrics.effect(room.platform.as_str(), "edit", "ok");
        info!(%post, %room, "mirror updated");
        Ok(())
    }

    /// Someone deleted the post's root message in `room`: the post stays without a message
    /// there. Re-creating it would undo a person's (or a moderator's) decision, and editing a
    /// message that is gone can never succeed, so the mirror is marked detached: later edits
    /// and the post's deletion leave the room alone.
    pub(super) async fn detach(
        &self,
        post: PostId,
        room: &Room,
        message: &MessageId,
    ) -> Result<(), Failure> {
        let Some(mut m) = self.store.mirror(post, room).map_err(store_failure)? else {
            return Ok(());
        };
        if m.message_id != *message || m.detached {
            return Ok(());
        }
        let already_deleted = m.deleted;
        m.deleted = true;
        m.detached = true;
        self.store
            .put_mirror(post, room, &m)
            .map_err(store_failure)?;
        if !already_deleted {
            self.metrics.effect(room.platform.as_str(), "detach", "ok");
            info!(%post, %room, "root message deleted in the room; the post is detached there");
        }
        Ok(())
    }

    /// A deleted post without a recorded message may still have one: a create whose intent
    /// is open was sent, or may have been, before a crash. Find it and delete it.
    pub(super) async fn delete_unrecorded(
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
            && let Some(found) = chat.find_root(&room.id, post, intent.started_ms).await?
        {
            chat.delete_message(&room.id, &found).await?;
            self.metrics.effect(room.platform.as_str(), "delete", "ok");
            info!(%post, %room, "deleted a root message sent before a stop");
        }
        self.store.remove_intent(&key).map_err(store_failure)?;
        self.set_intent_state(&key, None);
        Ok(())
    }
}
