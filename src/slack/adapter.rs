//! The Slack side of the engine: root messages for feed posts (docs/platforms/slack.md
//! §2.2–2.4, §2.8). Each root message carries the post id in its `metadata`, which is how
//! reconciliation recognises a message the bridge sent just before it stopped.

use std::time::Duration;

use serde_json::{Value, json};
use tracing::debug;

use livefeed_core::adapters::{
    BoxFuture, ChatAdapter, Directory, LayoutOptions, MirroredReply, RootMessage, mentions_mut,
};
use livefeed_core::layout::file_link;
use livefeed_core::model::{
    Attachment, ChatFile, Failure, Fetched, FileContent, MessageId, Person, Platform, PostId,
};
use livefeed_core::richtext::{Doc, MentionKind};
use livefeed_core::store::{Store, now_ms};

use super::api::{Body, SlackApi};
use super::intake::thread_key;
use super::people::People;
use super::{DISPLAY_NAME, PLATFORM, mrkdwn};
use crate::upstream::{Repeat, download};

/// The `event_type` of the metadata every root message carries (with the post id).
pub const METADATA_EVENT: &str = "b24_feed_post";
/// The `event_type` of the metadata a link standing in for a too-large file carries.
pub const FILE_METADATA_EVENT: &str = "b24_feed_file";
/// Slack shows up to 4,000 characters of `text` well; leave room for the layout.
/// Metadata of a reply copied from another room: its `key` finds it after a crash.
pub const REPLY_METADATA_EVENT: &str = "b24_reply_copy";

const MAX_BODY_CHARS: usize = 3_500;
/// How far before an intent's start reconciliation looks (clock skew between us and Slack).
const RECONCILE_SLACK: Duration = Duration::from_secs(120);

/// Root messages in Slack channels, sent as the bot with the author's name and picture.
pub struct SlackChat {
    api: SlackApi,
    /// The bot's `bot_id`: reconciliation only adopts the bot's own messages.
    bot_id: String,
    /// Names for replies' authors and mentions.
    people: People,
    /// Where a new thread's activity is recorded, for catch-up.
    store: Store,
}

impl SlackChat {
    /// Root messages through `api`, as the bot `bot_id`.
    pub fn new(api: SlackApi, bot_id: String, people: People, store: Store) -> Self {
        SlackChat {
            api,
            bot_id,
            people,
            store,
        }
    }

    fn message_body(&self, channel: &str, msg: &RootMessage) -> Value {
        let mut body = json!({
            "channel": channel,
            "text": mrkdwn::render(&msg.doc),
            "username": msg.author.name,
            "unfurl_links": false,
            "unfurl_media": false,
            "metadata": {
                "event_type": METADATA_EVENT,
                "event_payload": { "b24_post_id": msg.post.0.to_string() },
            },
        });
        if let Some(icon) = &msg.author.avatar_url {
            body["icon_url"] = json!(icon);
        }
        body
    }

    /// The first of the bot's own messages since `since_ms` (less the clock slack) that
    /// `pick` recognises, paging through `method` (`conversations.history`, or
    /// `conversations.replies` with `ts` in `extra`) with metadata.
    async fn find_own<T>(
        &self,
        method: &str,
        channel: &str,
        extra: &[(&str, &str)],
        since_ms: i64,
        mut pick: impl FnMut(&Value) -> Option<T>,
    ) -> Result<Option<T>, Failure> {
        let oldest = (since_ms - RECONCILE_SLACK.as_millis() as i64).max(0) as f64 / 1000.0;
        let mut cursor: Option<String> = None;
        loop {
            let mut form = vec![
                ("channel".to_string(), channel.to_string()),
                ("oldest".into(), format!("{oldest:.6}")),
                ("include_all_metadata".into(), "true".into()),
                ("limit".into(), "200".into()),
            ];
            form.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            if let Some(c) = &cursor {
                form.push(("cursor".into(), c.clone()));
            }
            let page = self
                .api
                .call(method, Some(channel), Body::Form(form), Repeat::Safe)
                .await
                .map_err(|e| e.to_failure())?;
            let own = page
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|m| m.get("bot_id").and_then(Value::as_str) == Some(self.bot_id.as_str()));
            for m in own {
                if let Some(found) = pick(m) {
                    return Ok(Some(found));
                }
            }
            cursor = page
                .get("response_metadata")
                .and_then(|r| r.get("next_cursor"))
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            if cursor.is_none() {
                return Ok(None);
            }
        }
    }

    /// `chat.postMessage` (sent once: a lost answer is not repeated, the engine reconciles);
    /// the new message's `ts`.
    async fn post_message(&self, channel: &str, body: Value) -> Result<String, Failure> {
        let resp = self
            .api
            .call(
                "chat.postMessage",
                Some(channel),
                Body::Json(body),
                Repeat::OnlyIfRejected,
            )
            .await
            .map_err(|e| e.to_failure())?;
        resp.get("ts")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Failure::transient("chat.postMessage returned no ts"))
    }

    /// Replace the text of one of the bot's messages; its metadata and author customisation
    /// stay as posted. A message someone deleted is gone.
    async fn update_text(&self, room: &str, message: &MessageId, doc: &Doc) -> Result<(), Failure> {
        let body = json!({ "channel": room, "ts": message.as_str(), "text": mrkdwn::render(doc) });
        match self
            .api
            .call("chat.update", Some(room), Body::Json(body), Repeat::Safe)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is("message_not_found") => Err(Failure::gone(e.to_string())),
            Err(e) => Err(e.to_failure()),
        }
    }

    /// The bot's root message for `post` (its metadata names the post).
    async fn find(
        &self,
        channel: &str,
        post: PostId,
        since_ms: i64,
    ) -> Result<Option<MessageId>, Failure> {
        let found = self
            .find_own("conversations.history", channel, &[], since_ms, |m| {
                let payload = metadata_payload(m, METADATA_EVENT)?;
                let id = payload.get("b24_post_id")?;
                let id = id
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| id.as_u64().map(|n| n.to_string()))?;
                (id == post.0.to_string())
                    .then(|| m.get("ts").and_then(Value::as_str).map(MessageId::from))
                    .flatten()
            })
            .await?;
        if found.is_none() {
            debug!(%post, channel, "no earlier root message found");
        }
        Ok(found)
    }
}

/// The `event_payload` of a message's metadata of type `event_type`.
fn metadata_payload<'v>(m: &'v Value, event_type: &str) -> Option<&'v Value> {
    let meta = m.get("metadata")?;
    (meta.get("event_type").and_then(Value::as_str) == Some(event_type))
        .then(|| meta.get("event_payload"))
        .flatten()
}

/// What the bridge put into a thread, as [`ChatAdapter::send_attachment`] returns it: an
/// uploaded file, or a message with a link.
fn file_item(id: &str) -> String {
    format!("file:{id}")
}

fn message_item(ts: &str) -> String {
    format!("msg:{ts}")
}

impl SlackChat {
    /// The three-step external upload, shared into the thread of `root`
    /// (docs/platforms/slack.md §2.12). Returns the file's id.
    async fn upload(
        &self,
        channel: &str,
        root: &MessageId,
        file: &FileContent,
    ) -> Result<String, Failure> {
        let form = vec![
            ("filename".to_string(), file.name.clone()),
            ("length".to_string(), file.bytes.len().to_string()),
        ];
        // Creates nothing anyone sees: safe to repeat. Limited per workspace, not per
        // channel: a 429 holds it for every channel.
        let grant = self
            .api
            .call(
                "files.getUploadURLExternal",
                None,
                Body::Form(form),
                Repeat::Safe,
            )
            .await
            .map_err(|e| upload_failure(&e))?;
        let (Some(url), Some(id)) = (
            grant.get("upload_url").and_then(Value::as_str),
            grant.get("file_id").and_then(Value::as_str),
        ) else {
            return Err(Failure::transient(
                "files.getUploadURLExternal: no upload_url or file_id",
            ));
        };
        self.api
            .upload_bytes(url, file.bytes.clone())
            .await
            .map_err(|e| e.to_failure())?;
        let files = json!([{ "id": id, "title": file.name }]).to_string();
        let form = vec![
            ("files".to_string(), files),
            ("channel_id".to_string(), channel.to_string()),
            ("thread_ts".to_string(), root.as_str().to_string()),
        ];
        self.api
            .call(
                "files.completeUploadExternal",
                Some(channel),
                Body::Form(form),
                Repeat::OnlyIfRejected,
            )
            .await
            .map_err(|e| upload_failure(&e))?;
        Ok(id.to_string())
    }

    /// A message in the thread of `root` linking to the post, for a file too large to upload.
    async fn post_link(
        &self,
        channel: &str,
        root: &MessageId,
        name: &str,
        size: u64,
        url: &str,
        feed: &str,
    ) -> Result<String, Failure> {
        let body = json!({
            "channel": channel,
            "thread_ts": root.as_str(),
            "text": mrkdwn::render(&file_link(name, size, url, feed)),
            "unfurl_links": false,
            "unfurl_media": false,
            "metadata": {
                "event_type": FILE_METADATA_EVENT,
                "event_payload": { "name": name },
            },
        });
        self.post_message(channel, body)
            .await
            .map(|ts| message_item(&ts))
    }

    /// The bot's file (or link) named `name` in the thread of `root`, since `since_ms`.
    async fn find_in_thread(
        &self,
        channel: &str,
        root: &MessageId,
        name: &str,
        since_ms: i64,
        taken: &[String],
    ) -> Result<Option<String>, Failure> {
        let extra = [("ts", root.as_str())];
        self.find_own("conversations.replies", channel, &extra, since_ms, |m| {
            let files = m
                .get("files")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for f in files {
                let named = f.get("name").and_then(Value::as_str) == Some(name)
                    || f.get("title").and_then(Value::as_str) == Some(name);
                if let Some(id) = f.get("id").and_then(Value::as_str)
                    && named
                    && !taken.contains(&file_item(id))
                {
                    return Some(file_item(id));
                }
            }
            let link_for = metadata_payload(m, FILE_METADATA_EVENT)
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str);
            match (link_for, m.get("ts").and_then(Value::as_str)) {
                (Some(found), Some(ts)) if found == name && !taken.contains(&message_item(ts)) => {
                    Some(message_item(ts))
                }
                _ => None,
            }
        })
        .await
    }
}

/// Uploads a workspace refuses for good (disabled, a type it blocks, no room left) are
/// permanent for that file, not a credentials problem of the whole side.
fn upload_failure(e: &super::api::SlackError) -> Failure {
    const REFUSED: [&str; 6] = [
        "file_uploads_disabled",
        "file_upload_size_restricted",
        "file_type_not_allowed",
        "file_uploads_except_images_disabled",
        "storage_limit_reached",
        "missing_scope",
    ];
    if REFUSED.iter().any(|c| e.is(c)) {
        Failure::permanent(e.to_string())
    } else {
        e.to_failure()
    }
}

impl ChatAdapter for SlackChat {
    fn platform(&self) -> Platform {
        PLATFORM
    }

    fn display_name(&self) -> &str {
        DISPLAY_NAME
    }

    fn layout(&self) -> LayoutOptions {
        LayoutOptions {
            author_in_body: false,
            max_body_chars: MAX_BODY_CHARS,
        }
    }

    fn send_root<'a>(
        &'a self,
        room: &'a str,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        Box::pin(async move {
            let ts = self
                .post_message(room, self.message_body(room, msg))
                .await?;
            // A new thread: catch-up after an outage reads it. The record is written before the
            // engine records the message, so it is durable whenever the message's record is;
            // a crash before that reconciles the message through `find_root`, which writes it.
            let _ = self.store.put_cursor(&thread_key(room, &ts), &now_ms());
            Ok(MessageId(ts))
        })
    }

    fn find_root<'a>(
        &'a self,
        room: &'a str,
        post: PostId,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<MessageId>, Failure>> {
        Box::pin(async move {
            let found = self.find(room, post, since_ms).await?;
            if let Some(ts) = &found {
                // Sent before a crash that may have lost its activity record: catch-up must
                // still read this thread.
                let _ = self
                    .store
                    .put_cursor(&thread_key(room, ts.as_str()), &now_ms());
            }
            Ok(found)
        })
    }

    fn edit_root<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        _edit: u64,
        msg: &'a RootMessage,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        // Someone deleted the message (gone): the engine detaches the post from the channel.
        Box::pin(self.update_text(room, message, &msg.doc))
    }

    fn send_reply<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        reply: &'a MirroredReply,
    ) -> BoxFuture<'a, Result<MessageId, Failure>> {
        Box::pin(async move {
            // The author's name and picture on the message, the room they wrote in beside it.
            let mut body = json!({
                "channel": room,
                "thread_ts": root.as_str(),
                "text": mrkdwn::render(&reply.body),
                "username": format!("{} ({})", reply.author.name, reply.from),
                "unfurl_links": false,
                "unfurl_media": false,
                "metadata": {
                    "event_type": REPLY_METADATA_EVENT,
                    "event_payload": { "key": reply.key },
                },
            });
            if let Some(icon) = &reply.author.avatar_url {
                body["icon_url"] = json!(icon);
            }
            self.post_message(room, body).await.map(MessageId)
        })
    }

    fn find_reply<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        key: &'a str,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<MessageId>, Failure>> {
        Box::pin(async move {
            let extra = [("ts", root.as_str())];
            self.find_own("conversations.replies", room, &extra, since_ms, |m| {
                let payload = metadata_payload(m, REPLY_METADATA_EVENT)?;
                (payload.get("key").and_then(Value::as_str) == Some(key))
                    .then(|| m.get("ts").and_then(Value::as_str).map(MessageId::from))
                    .flatten()
            })
            .await
        })
    }

    fn edit_reply<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        _edit: u64,
        reply: &'a MirroredReply,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.update_text(room, message, &reply.body))
    }

    fn delete_message<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let body = json!({ "channel": room, "ts": message.as_str() });
            match self
                .api
                .call("chat.delete", Some(room), Body::Json(body), Repeat::Safe)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.is("message_not_found") => Ok(()),
                Err(e) => Err(e.to_failure()),
            }
        })
    }

    fn set_pinned<'a>(
        &'a self,
        room: &'a str,
        message: &'a MessageId,
        pinned: bool,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            // `timestamp`, not `ts` (docs/platforms/slack.md §2.11).
            let body = json!({ "channel": room, "timestamp": message.as_str() });
            let method = if pinned { "pins.add" } else { "pins.remove" };
            match self
                .api
                .call(method, Some(room), Body::Json(body), Repeat::Safe)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if pinned && e.is("already_pinned") => Ok(()),
                Err(e) if !pinned && (e.is("no_pin") || e.is("not_pinned")) => Ok(()),
                Err(e) if e.is("message_not_found") => Err(Failure::gone("message_not_found")),
                // Not a credentials problem: only pinning is refused (an app installed before
                // it asked for `pins:write`, a channel that restricts pins).
                Err(e)
                    if [
                        "missing_scope",
                        "not_pinnable",
                        "restricted_action",
                        "too_many_pins",
                    ]
                    .iter()
                    .any(|c| e.is(c)) =>
                {
                    Err(Failure::permanent(format!("{method}: {}", e.error)))
                }
                Err(e) => Err(e.to_failure()),
            }
        })
    }

    fn send_attachment<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        _key: &'a str,
        attachment: &'a Attachment,
    ) -> BoxFuture<'a, Result<String, Failure>> {
        Box::pin(async move {
            match attachment {
                Attachment::File(file) => {
                    self.upload(room, root, file).await.map(|id| file_item(&id))
                }
                Attachment::Link {
                    name,
                    size,
                    url,
                    feed,
                } => self.post_link(room, root, name, *size, url, feed).await,
            }
        })
    }

    fn find_attachment<'a>(
        &'a self,
        room: &'a str,
        root: &'a MessageId,
        name: &'a str,
        since_ms: i64,
        taken: &'a [String],
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(self.find_in_thread(room, root, name, since_ms, taken))
    }

    fn delete_attachment<'a>(
        &'a self,
        room: &'a str,
        item: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let (method, body, gone) = if let Some(id) = item.strip_prefix("file:") {
                let form = vec![("file".to_string(), id.to_string())];
                ("files.delete", Body::Form(form), "file_not_found")
            } else {
                let ts = item.strip_prefix("msg:").unwrap_or(item);
                let body = json!({ "channel": room, "ts": ts });
                ("chat.delete", Body::Json(body), "message_not_found")
            };
            match self.api.call(method, Some(room), body, Repeat::Safe).await {
                Ok(_) => Ok(()),
                Err(e) if e.is(gone) || e.is("file_deleted") => Ok(()),
                Err(e) => Err(e.to_failure()),
            }
        })
    }

    fn fetch_file<'a>(
        &'a self,
        file: &'a ChatFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>> {
        Box::pin(async move {
            let Some(request) = self.api.file_request(&file.source) else {
                return Err(Failure::permanent(format!(
                    "Slack file {}: its address is not Slack's; the bot token is not sent there",
                    file.name
                )));
            };
            let what = format!("Slack file {}", file.name);
            download::fetch(request, &file.name, max_bytes, &what).await
        })
    }

    fn directory(&self) -> Option<&dyn Directory> {
        Some(&self.people)
    }

    fn resolve_people<'a>(
        &'a self,
        author: &'a mut Person,
        body: &'a mut Doc,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if let Some(p) = self.people.lookup(&author.id).await {
                *author = p;
            }
            for mention in mentions_mut(body) {
                if mention.kind == MentionKind::User
                    && let Some(p) = self.people.lookup(&mention.id).await
                {
                    mention.name = p.name;
                }
            }
            Ok(())
        })
    }
}
