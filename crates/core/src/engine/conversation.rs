//! One conversation across rooms: a reply in one room's thread of a post is copied into the
//! post's thread in every other room that carries it (Slack ⇄ Matrix, two Slack channels, two
//! Matrix rooms), as its author where the platform allows it, and its edits and deletion
//! follow. The copies are the bot's own messages, which every intake ignores, so a copy never
//! comes back and never becomes a second comment.

use std::time::Duration;

use tracing::{debug, info};

use super::{Begin, Inner, store_failure};
use crate::adapters::MirroredReply;
use crate::layout::{content_hash, file_note};
use crate::model::{ChatEvent, ChatFile, Failure, FailureKind, PostId, ReplyId, Room, ThreadId};
use crate::richtext::Doc;
use crate::store::{ReplyMirror, reply_mirror_intent_key};

impl Inner {
    /// The rooms a reply in `room`'s `thread` is copied into: every other room that carries
    /// (or is about to carry) the post, when both rooms' mappings copy replies.
    pub(super) fn reply_targets(
        &self,
        room: &Room,
        post: PostId,
    ) -> Result<Vec<Room>, crate::store::StoreError> {
        let router = self.router.current();
        if !router.mirrors_replies(room) {
            return Ok(Vec::new());
        }
        let mut rooms: Vec<Room> = self.live_mirror_rooms(post)?;
        if let Some(record) = self.store.post(post)?
            && !record.deleted
        {
            rooms.extend(router.rooms_for(&record.post));
        }
        rooms.sort();
        rooms.dedup();
        rooms.retain(|r| r != room && router.mirrors_replies(r));
        Ok(rooms)
    }

    /// Bring `target`'s copy of the reply `event` is about up to date: send it, edit it, or
    /// delete it.
    pub(super) async fn mirror_reply(
        &self,
        event: &ChatEvent,
        target: &Room,
    ) -> Result<(), Failure> {
        match event {
            ChatEvent::ReplyPosted {
                room,
                thread,
                reply,
                author,
                body,
                files,
            }
            | ChatEvent::ReplyEdited {
                room,
                thread,
                reply,
                author,
                body,
                files,
            } => {
                let existing = self
                    .store
                    .reply_mirror(room, reply, target)
                    .map_err(store_failure)?;
                if existing.is_some() && matches!(event, ChatEvent::ReplyPosted { .. }) {
                    return Ok(());
                }
                if self
                    .store
                    .reply_tombstoned(room, reply)
                    .map_err(store_failure)?
                {
                    return Ok(());
                }
                let Some(post) = self.thread_post(room, thread)? else {
                    return Ok(());
                };
                let Some(root) = self.store.mirror(post, target).map_err(store_failure)? else {
                    debug!(%post, %target, "the post has no message in this room; reply not copied");
                    return Ok(());
                };
                if root.deleted {
                    return Ok(());
                }
                let copy = self
                    .copy_of(room, reply, target, author, body, files)
                    .await?;
                let hash = content_hash(&(&copy.author, &copy.body));
                match existing {
                    Some(m) if m.content_hash == hash => Ok(()),
                    Some(m) => self.edit_copy(room, reply, target, m, &copy, hash).await,
                    None => {
                        self.send_copy(room, reply, target, post, &root.message_id, &copy, hash)
                            .await
                    }
                }
            }
            // A post from chat reaches other rooms as a post, not as a copy.
            ChatEvent::MessagePosted { .. } | ChatEvent::MessageEdited { .. } => Ok(()),
            ChatEvent::ReplyDeleted { room, reply, .. } => {
                let Some(m) = self
                    .store
                    .reply_mirror(room, reply, target)
                    .map_err(store_failure)?
                else {
                    return Ok(());
                };
                let chat = self.chat(&target.platform)?;
                match chat.delete_message(&target.id, &m.message).await {
                    Ok(()) => {}
                    Err(f) if f.kind == FailureKind::Gone => {}
                    Err(f) => return Err(f),
                }
                self.store
                    .remove_reply_mirror(room, reply, target)
                    .map_err(store_failure)?;
                self.metrics
                    .effect(target.platform.as_str(), "reply_copy_delete", "ok");
                info!(post = %m.post, from = %room, %target, "copied reply deleted");
                Ok(())
            }
        }
    }

    /// Copy the replies written in the post's other rooms into `target`'s thread, where they
    /// are not yet: a room that gets the post late (its audiences grew) gets the conversation
    /// so far. Each copy is the same guarded effect as a live one.
    pub(super) async fn copy_conversation(
        &self,
        post: PostId,
        target: &Room,
    ) -> Result<(), Failure> {
        let router = self.router.current();
        if !router.mirrors_replies(target) {
            return Ok(());
        }
        for (room, reply, entry) in self.store.thread_log(post).map_err(store_failure)? {
            if room == *target || !router.mirrors_replies(&room) {
                continue;
            }
            let event = ChatEvent::ReplyPosted {
                room,
                thread: entry.thread,
                reply,
                author: entry.author,
                body: entry.body,
                files: Vec::new(),
            };
            self.mirror_reply(&event, target).await?;
        }
        Ok(())
    }

    /// The post whose thread this is; a root still being sent is waited for.
    fn thread_post(&self, room: &Room, thread: &ThreadId) -> Result<Option<PostId>, Failure> {
        match self
            .store
            .post_for_thread(room, thread)
            .map_err(store_failure)?
        {
            Some(post) => Ok(Some(post)),
            None if self.store.has_post_intent_in(room).map_err(store_failure)? => Err(
                Failure::retry_after("thread root not recorded yet", Duration::from_millis(200)),
            ),
            None => Ok(None),
        }
    }

    /// The reply as `target` shows it: names filled in, mentions linked for the target's
    /// platform, and its files named (the files themselves stay where they were shared).
    async fn copy_of(
        &self,
        room: &Room,
        reply: &ReplyId,
        target: &Room,
        author: &crate::model::Person,
        body: &Doc,
        files: &[ChatFile],
    ) -> Result<MirroredReply, Failure> {
        let source = self.chat(&room.platform)?;
        let (mut author, mut body) = (author.clone(), body.clone());
        source.resolve_people(&mut author, &mut body).await?;
        self.link_mentions(&mut body, &room.platform, &target.platform)
            .await;
        for file in files {
            body.blocks
                .push(file_note(&file.name, None, source.display_name()));
        }
        Ok(MirroredReply {
            key: reply_mirror_intent_key(room, reply, target),
            author,
            from: source.display_name().to_string(),
            body,
        })
    }

    /// Send a copy, once, guarded by an intent.
    #[allow(clippy::too_many_arguments)]
    async fn send_copy(
        &self,
        room: &Room,
        reply: &ReplyId,
        target: &Room,
        post: PostId,
        root: &crate::model::MessageId,
        copy: &MirroredReply,
        hash: u64,
    ) -> Result<(), Failure> {
        let chat = self.chat(&target.platform)?;
        let key = &copy.key;
        let message = match self.begin(key).await? {
            Begin::Send => chat.send_reply(&target.id, root, copy).await?,
            Begin::Reconcile { since_ms } => {
                match chat.find_reply(&target.id, root, key, since_ms).await? {
                    Some(found) => {
                        info!(%post, %target, "found the copied reply sent before");
                        found
                    }
                    None => chat.send_reply(&target.id, root, copy).await?,
                }
            }
        };
        crate::crashpoint::hit("engine.reply_copied");
        let record = ReplyMirror {
            post,
            message,
            content_hash: hash,
            edits: 0,
        };
        self.store
            .record_reply_mirror(room, reply, target, &record, key)
            .map_err(store_failure)?;
        self.set_intent_state(key, None);
        self.metrics
            .effect(target.platform.as_str(), "reply_copy", "ok");
        info!(%post, from = %room, %target, "reply copied into the room's thread");
        Ok(())
    }

    async fn edit_copy(
        &self,
        room: &Room,
        reply: &ReplyId,
        target: &Room,
        mut m: ReplyMirror,
        copy: &MirroredReply,
        hash: u64,
    ) -> Result<(), Failure> {
        let chat = self.chat(&target.platform)?;
        match chat.edit_reply(&target.id, &m.message, m.edits, copy).await {
            Ok(()) => {}
            // Someone removed the copy: nothing left to edit.
            Err(f) if f.kind == FailureKind::Gone => {}
            Err(f) => return Err(f),
        }
        m.content_hash = hash;
        m.edits += 1;
        self.store
            .put_reply_mirror(room, reply, target, &m)
            .map_err(store_failure)?;
        self.metrics
            .effect(target.platform.as_str(), "reply_copy_edit", "ok");
        info!(post = %m.post, from = %room, %target, "copied reply updated");
        Ok(())
    }
}
