//! The Matrix side of the engine: root messages for feed posts as `m.text` with an HTML
//! `formatted_body`, edits as `m.replace`, deletions as redactions.
//!
//! Every send carries a transaction id derived from what it is (the post for a root message,
//! the edit's sequence number and content for an edit, the target for a redaction). The
//! homeserver answers a repeated transaction id with the event it already created, so
//! reconciliation after a crash is simply sending again: [`ChatAdapter::find_root`] has nothing
//! to look up.

use std::sync::{Arc, RwLock};

use matrix_sdk::Client;
use matrix_sdk::attachment::AttachmentConfig;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::room::reply::{EnforceThread, Reply};
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::relation::Thread;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::message::Relation;
use matrix_sdk::ruma::events::room::message::{
    AddMentions, ReplacementMetadata, ReplyWithinThread, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::room::pinned_events::RoomPinnedEventsEventContent;
use matrix_sdk::ruma::{EventId, OwnedTransactionId, OwnedUserId, RoomId};

use livefeed_core::adapters::{BoxFuture, ChatAdapter, LayoutOptions, MirroredReply, RootMessage};
use livefeed_core::layout::{attributed_comment, content_hash, file_link};
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{
    Attachment, ChatFile, Failure, Fetched, FileContent, MessageId, Platform, PostId,
};

use super::config::MatrixConfig;
use super::session::{http_failure, sdk_failure};
use super::{DISPLAY_NAME, PLATFORM, html};
use crate::upstream::ratelimit::{Blocks, RateLimit, TokenBucket};
use crate::upstream::{self, ErrorClass};
use livefeed_core::store::Store;

/// Matrix events may be up to 64 KiB; leave room for the HTML and the envelope.
const MAX_BODY_CHARS: usize = 16_000;

/// Root messages in Matrix rooms, sent as the bot with the author's name in the body.
pub struct MatrixChat {
    client: Client,
    metrics: Arc<Metrics>,
    /// `M_LIMIT_EXCEEDED` holds (the homeserver limits the bot, not a room), kept across
    /// restarts.
    blocks: Blocks,
    /// `matrix.send_rate`, when set: every send waits for a token first.
    pacing: Pacing,
    /// Sends are tried once by the SDK: a refusal comes back to us, to be counted, to hold
    /// every send for as long as the homeserver asks, and to be retried by the engine under the
    /// same transaction id. (The SDK's own retries would hide `M_LIMIT_EXCEEDED`.)
    send_config: RequestConfig,
}

/// The bot's send pacing, replaceable by a reload (set, changed or switched off).
pub type Pacing = Arc<RwLock<Option<Arc<TokenBucket>>>>;

/// Pace with `rate` from now on (`None`: unpaced).
pub fn set_pacing(pacing: &Pacing, rate: Option<RateLimit>) {
    let mut slot = pacing.write().unwrap_or_else(|p| p.into_inner());
    match (slot.as_ref(), rate) {
        (Some(bucket), Some(rate)) => bucket.set_rate(rate),
        (None, Some(rate)) => *slot = Some(Arc::new(TokenBucket::new(rate))),
        (_, None) => *slot = None,
    }
}

/// The one key of [`MatrixChat::blocks`]: Synapse rate-limits a user's sends as a whole.
const SENDS: &str = "send";

impl MatrixChat {
    /// Root messages through the signed-in `client`, paced and timed as `cfg` says; rate-limit
    /// holds kept in `store`.
    pub fn new(client: Client, metrics: Arc<Metrics>, store: Store, cfg: &MatrixConfig) -> Self {
        let pacing = Pacing::default();
        set_pacing(&pacing, cfg.send_rate);
        MatrixChat {
            client,
            metrics,
            blocks: Blocks::persistent(store, PLATFORM.as_str()),
            pacing,
            send_config: RequestConfig::new()
                .retry_limit(1)
                .timeout(cfg.request_timeout),
        }
    }

    /// The pacing a reload retunes.
    pub fn pacing(&self) -> Pacing {
        self.pacing.clone()
    }

    /// Wait out a hold the homeserver asked for (also one from before a restart), then for
    /// the pacing's token.
    async fn unblocked(&self) {
        if self.blocks.wait(SENDS).await {
            self.metrics.rate_limit_wait(PLATFORM.as_str());
        }
        let bucket = self
            .pacing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(bucket) = bucket
            && bucket.acquire().await
        {
            self.metrics.rate_limit_wait(PLATFORM.as_str());
        }
    }

    /// Count a homeserver call in `api_calls` (the SDK makes them; we name them by endpoint),
    /// and hold later sends when the homeserver said to wait.
    async fn counted<T>(&self, method: &str, result: Result<T, Failure>) -> Result<T, Failure> {
        let outcome = upstream::outcome(&result.as_ref().map_err(ErrorClass::of));
        self.metrics.api_call(PLATFORM.as_str(), method, outcome);
        if let Err(f) = &result
            && let Some(after) = f.retry_hint()
        {
            self.blocks.block(SENDS, after).await;
        }
        result
    }

    /// The joined room; joins it first if the bot is invited (or the room is public).
    async fn room(&self, room: &str) -> Result<matrix_sdk::Room, Failure> {
        let id = RoomId::parse(room).map_err(|e| Failure::permanent(format!("{room}: {e}")))?;
        match self.client.get_room(&id) {
            Some(r) if r.state() == matrix_sdk::RoomState::Joined => Ok(r),
            _ => {
                let joined = self.client.join_room_by_id(&id).await.map_err(|e| {
                    let f = sdk_failure(&e);
                    if f.is_transient() {
                        f
                    } else {
                        Failure::permanent(format!(
                            "the bot is not in Matrix room {room} and cannot join it: {e}"
                        ))
                    }
                });
                self.counted("join", joined).await
            }
        }
    }

    /// The joined room and the event a redaction or pin is about, once sends may go on.
    async fn target(
        &self,
        room: &str,
        message: &MessageId,
    ) -> Result<(matrix_sdk::Room, matrix_sdk::ruma::OwnedEventId), Failure> {
        let room = self.room(room).await?;
        let target = EventId::parse(message.as_str())
            .map_err(|e| Failure::permanent(format!("{message}: {e}")))?;
        self.unblocked().await;
        Ok((room, target))
    }

    /// The root message's content; the people it mentions by a link go into `m.mentions`, so
    /// their clients notify them (pills alone do not, since Matrix 1.7).
    fn content(msg: &RootMessage) -> RoomMessageEventContent {
        let users = html::mentioned_users(&msg.doc)
            .into_iter()
            .filter_map(|u| OwnedUserId::try_from(u).ok());
        RoomMessageEventContent::text_html(
            html::render_plain(&msg.doc),
            html::render_html(&msg.doc),
        )
        .add_mentions(Mentions::with_user_ids(users))
    }
}

/// Transaction ids: deterministic, so a retried or reconciled send cannot create a second event.
pub fn root_txn(post: PostId) -> OwnedTransactionId {
    format!("lfb-root-{post}").into()
}

/// Unique per edit of an event (`edit` counts the earlier ones), the same for a retry of it:
/// content alone would make an edit back to an earlier text (v1 → v2 → v3 → v2) repeat an old
/// transaction id, which the homeserver answers with the old event, sending nothing.
fn edit_txn(event: &MessageId, edit: u64, msg: &RootMessage) -> OwnedTransactionId {
    format!("lfb-edit-{edit}-{:016x}", content_hash(&(event, &msg.doc))).into()
}

/// One per file of a post in a thread: a retried or reconciled send repeats it.
fn file_txn(root: &MessageId, key: &str) -> OwnedTransactionId {
    format!("lfb-file-{:016x}", content_hash(&(root, key))).into()
}

impl MatrixChat {
    /// A post's file as `m.file`/`m.image`/… in the thread of `root`; the SDK encrypts the
    /// media (and the event) in an encrypted room.
    async fn send_file(
        &self,
        room: &str,
        root: &MessageId,
        key: &str,
        file: &FileContent,
    ) -> Result<String, Failure> {
        let (room, root_id) = self.target(room, root).await?;
        let mime: mime::Mime = file.mime.parse().unwrap_or(mime::APPLICATION_OCTET_STREAM);
        let config = AttachmentConfig::new()
            .txn_id(file_txn(root, key))
            .reply(Some(Reply {
                event_id: root_id,
                enforce_thread: EnforceThread::Threaded(ReplyWithinThread::No),
                add_mentions: AddMentions::No,
            }));
        let sent = room
            .send_attachment(file.name.clone(), &mime, file.bytes.clone(), config)
            .await
            .map_err(|e| sdk_failure(&e));
        let sent = self.counted("send_attachment", sent).await?;
        Ok(sent.event_id.to_string())
    }

    /// A link to the post in the thread of `root`, for a file too large to upload.
    async fn send_link(
        &self,
        room: &str,
        root: &MessageId,
        key: &str,
        doc: &livefeed_core::richtext::Doc,
    ) -> Result<String, Failure> {
        let (room, root_id) = self.target(room, root).await?;
        let mut content =
            RoomMessageEventContent::notice_html(html::render_plain(doc), html::render_html(doc));
        content.relates_to = Some(Relation::Thread(Thread::plain(root_id.clone(), root_id)));
        let sent = room
            .send(content)
            .with_transaction_id(file_txn(root, key))
            .with_request_config(self.send_config)
            .await
            .map_err(|e| sdk_failure(&e));
        let sent = self.counted("send", sent).await?;
        Ok(sent.response.event_id.to_string())
    }
}

/// One per reply copied into a room: a retried or reconciled send repeats it.
fn reply_txn(key: &str) -> OwnedTransactionId {
    format!("lfb-reply-{:016x}", content_hash(&key)).into()
}

/// The content of a copied reply: the author's name leads (the bot sends it), the room they
/// wrote in beside it; linked people mentioned in it are in `m.mentions`.
fn reply_content(reply: &MirroredReply) -> RoomMessageEventContent {
    let doc = attributed_comment(&reply.author, &reply.from, &reply.body);
    let users = html::mentioned_users(&doc)
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u).ok());
    RoomMessageEventContent::text_html(html::render_plain(&doc), html::render_html(&doc))
        .add_mentions(Mentions::with_user_ids(users))
}

fn redact_txn(event: &MessageId) -> OwnedTransactionId {
    format!("lfb-redact-{:016x}", content_hash(&event)).into()
}

impl ChatAdapter for MatrixChat {
    fn platform(&self) -> Platform {
        PLATFORM
    }

    fn display_name(&self) -> &str {
        DISPLAY_NAME
    }

    fn layout(&self) -> LayoutOptions {
        // Messages are sent as the bot: the author's name goes into the body.
        LayoutOptions {
            author_in_body: true,
            max_body_chars: MAX_BODY_CHARS,
        }
    }

    fn send_root<'a>(
        &'a self,
        room: &'a str,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        Box::pin(async move {
            let room = self.room(room).await?;
            self.unblocked().await;
            let sent = room
                .send(Self::content(msg))
                .with_transaction_id(root_txn(msg.post))
                .with_request_config(self.send_config)
                .await
                .map_err(|e| sdk_failure(&e));
            let sent = self.counted("send", sent).await?;
            Ok(MessageId(sent.response.event_id.to_string()))
        })
    }

    fn find_root<'a>(
        &'a self,
        _room: &'a str,
        _post: PostId,
        _since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<MessageId>, Failure>> {
        // Sending again with the same transaction id returns the existing event.
        Box::pin(async { Ok(None) })
    }

    fn edit_root<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        edit: u64,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let room = self.room(room).await?;
            let target = EventId::parse(message.as_str())
                .map_err(|e| Failure::permanent(format!("{message}: {e}")))?;
            let content =
                Self::content(msg).make_replacement(ReplacementMetadata::new(target, None));
            self.unblocked().await;
            let sent = room
                .send(content)
                .with_transaction_id(edit_txn(message, edit, msg))
                .with_request_config(self.send_config)
                .await
                .map_err(|e| sdk_failure(&e));
            self.counted("send", sent).await.map(drop)
        })
    }

    fn send_reply<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        reply: &'a MirroredReply,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        // No `find_reply`: sending again with the same transaction id returns the first event.
        Box::pin(async move {
            let (room, root_id) = self.target(room, root).await?;
            let mut content = reply_content(reply);
            content.relates_to = Some(Relation::Thread(Thread::plain(root_id.clone(), root_id)));
            let sent = room
                .send(content)
                .with_transaction_id(reply_txn(&reply.key))
                .with_request_config(self.send_config)
                .await
                .map_err(|e| sdk_failure(&e));
            let sent = self.counted("send", sent).await?;
            Ok(MessageId(sent.response.event_id.to_string()))
        })
    }

    fn edit_reply<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        edit: u64,
        reply: &'a MirroredReply,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let (room, target) = self.target(room, message).await?;
            let content =
                reply_content(reply).make_replacement(ReplacementMetadata::new(target, None));
            let txn: OwnedTransactionId = format!(
                "lfb-reply-edit-{edit}-{:016x}",
                content_hash(&(message, &reply.body))
            )
            .into();
            let sent = room
                .send(content)
                .with_transaction_id(txn)
                .await
                .map_err(|e| sdk_failure(&e));
            self.counted("send", sent).await.map(drop)
        })
    }

    fn delete_message<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let (room, target) = self.target(room, message).await?;
            let redacted = match room
                .redact(
                    &target,
                    Some("the post was deleted"),
                    Some(redact_txn(message)),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        e.client_api_error_kind(),
                        Some(matrix_sdk::ruma::api::error::ErrorKind::NotFound)
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(http_failure(&e)),
            };
            self.counted("redact", redacted).await
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
            match attachment {
                Attachment::File(file) => self.send_file(room, root, key, file).await,
                Attachment::Link {
                    name,
                    size,
                    url,
                    feed,
                } => {
                    let doc = file_link(name, *size, url, feed);
                    self.send_link(room, root, key, &doc).await
                }
            }
        })
    }

    // `find_attachment` keeps the default: sending again with the same transaction id returns
    // the event sent before (the media may be uploaded twice; only one event refers to it).

    fn delete_attachment<'a>(
        &'a self,
        room: &'a str,
        item: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { self.delete_message(room, &MessageId::from(item)).await })
    }

    fn fetch_file<'a>(
        &'a self,
        file: &'a ChatFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>> {
        Box::pin(async move {
            if file.size > max_bytes {
                return Ok(Fetched::TooLarge { size: file.size });
            }
            let source: MediaSource = serde_json::from_str(&file.source)
                .map_err(|e| Failure::permanent(format!("Matrix file {}: {e}", file.name)))?;
            let request = MediaRequestParameters {
                source,
                format: MediaFormat::File,
            };
            // Decrypts an encrypted attachment with the key its event carried.
            let bytes = self.client.media().get_media_content(&request, false).await;
            let bytes = self
                .counted("media", bytes.map_err(|e| sdk_failure(&e)))
                .await?;
            if bytes.len() as u64 > max_bytes {
                return Ok(Fetched::TooLarge {
                    size: bytes.len() as u64,
                });
            }
            let mime = if file.mime.is_empty() {
                crate::upstream::download::guess_mime(&file.name).to_string()
            } else {
                file.mime.clone()
            };
            Ok(Fetched::Content(FileContent {
                name: file.name.clone(),
                mime,
                bytes,
            }))
        })
    }

    /// `m.room.pinned_events` holds the whole list: read it from the homeserver (the synced
    /// copy may not show a pin made a moment ago), change it, send it back. Pins of one
    /// room go through its lane one at a time, so two of ours never race.
    fn set_pinned<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        pinned: bool,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let (room, target) = self.target(room, message).await?;
            let loaded = room.load_pinned_events().await.map_err(|e| sdk_failure(&e));
            let mut list = self
                .counted("pinned_events", loaded)
                .await?
                .unwrap_or_default();
            let present = list.contains(&target);
            match (pinned, present) {
                (true, true) | (false, false) => return Ok(()),
                (true, false) => list.push(target),
                (false, true) => list.retain(|e| *e != target),
            }
            let sent = room
                .send_state_event(RoomPinnedEventsEventContent::new(list))
                .await
                .map(|_| ())
                .map_err(|e| {
                    let f = sdk_failure(&e);
                    if f.is_transient() {
                        f
                    } else {
                        Failure::permanent(format!("cannot change the room's pinned events: {e}"))
                    }
                });
            self.counted("pin", sent).await
        })
    }
}
