//! Slack events → chat events (docs/platforms/slack.md §3.3–3.4). Shared by Socket Mode and the
//! Events API: both hand over the same `event_callback` payload.
//!
//! What counts: replies in threads (`thread_ts` ≠ `ts`, including "also send to channel"),
//! their edits (`message_changed` whose text really changed) and deletions
//! (`message_deleted`). What never counts: the bot's own messages and echoes of its own
//! updates and deletions (by `user`/`bot_id`/`app_id`, also inside `message` and
//! `previous_message`), other bots, top-level messages, channels no mapping names.
//! Events are deduplicated by `event_id`, because Slack redelivers.

use serde_json::Value;
use tracing::debug;

use livefeed_core::journal::{Batch, Journal};
use livefeed_core::model::{ChatEvent, ChatFile, Inbound, Person, ReplyId, Room, ThreadId};
use livefeed_core::richtext::Doc;
use livefeed_core::route::Served;
use livefeed_core::store::{StoreError, now_ms};

use super::PLATFORM;
use super::api::AuthTest;
use super::people::People;

/// The bot's own ids, from `auth.test`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The bot user.
    pub user_id: String,
    /// The bot.
    pub bot_id: String,
    /// The app, when Slack said.
    pub app_id: Option<String>,
}

impl From<&AuthTest> for Identity {
    fn from(auth: &AuthTest) -> Self {
        Identity {
            user_id: auth.user_id.clone(),
            bot_id: auth.bot_id.clone(),
            app_id: auth.app_id.clone(),
        }
    }
}

/// A Slack message event reduced to what the bridge acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A person replied in a thread.
    Reply {
        /// The channel.
        channel: String,
        /// The thread's root `ts`.
        thread: String,
        /// The reply's `ts`.
        ts: String,
        /// Who wrote it.
        user: String,
        /// Its mrkdwn text.
        text: String,
        /// The files it carries.
        files: Vec<ChatFile>,
    },
    /// A person edited their reply.
    Edited {
        /// The channel.
        channel: String,
        /// The thread's root `ts`.
        thread: String,
        /// The reply's `ts`.
        ts: String,
        /// Who wrote it.
        user: String,
        /// The new mrkdwn text.
        text: String,
        /// The files it carries.
        files: Vec<ChatFile>,
    },
    /// A message was deleted.
    Deleted {
        /// The channel.
        channel: String,
        /// The thread's root `ts`, when Slack said.
        thread: Option<String>,
        /// The deleted message's `ts`.
        ts: String,
    },
    /// A person wrote (or edited) a top-level message: a feed post where the channel's
    /// mapping publishes chat messages, nothing elsewhere.
    TopLevel {
        /// The channel.
        channel: String,
        /// The message's `ts`.
        ts: String,
        /// Who wrote it.
        user: String,
        /// Its mrkdwn text.
        text: String,
        /// An edit, not a new message.
        edited: bool,
    },
    /// Nothing for the bridge, and why.
    Ignored(&'static str),
}

/// The files a message carries (`file_share`, docs/platforms/slack.md §3.1): the ones the
/// bot can download. Files Slack hides (`mode` `hidden_by_limit`, `tombstone`) have no URL.
pub fn files_of(msg: &Value) -> Vec<ChatFile> {
    let list = msg.get("files").and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(|f| {
            let url = s(f, "url_private_download").or_else(|| s(f, "url_private"))?;
            Some(ChatFile {
                name: s(f, "name")
                    .or_else(|| s(f, "title"))
                    .unwrap_or("file")
                    .to_string(),
                size: f.get("size").and_then(Value::as_u64).unwrap_or(0),
                mime: s(f, "mimetype").unwrap_or_default().to_string(),
                source: url.to_string(),
            })
        })
        .collect()
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl Identity {
    /// Whether a message (or an echo of one) came from this bot.
    pub fn is_own(&self, msg: &Value) -> bool {
        let app = self.app_id.as_deref();
        s(msg, "user") == Some(self.user_id.as_str())
            || s(msg, "bot_id") == Some(self.bot_id.as_str())
            || (app.is_some() && s(msg, "app_id") == app)
            || (app.is_some() && msg.get("bot_profile").and_then(|b| s(b, "app_id")) == app)
    }
}

// Long: one match over the message subtypes Slack sends, so every rule about what counts (and
// why the rest is ignored) reads in one place.
/// Decide what an inner `event` means for the bridge. Pure: no lookups.
pub fn classify(event: &Value, own: &Identity) -> Incoming {
    if s(event, "type") != Some("message") {
        return Incoming::Ignored("not a message event");
    }
    let Some(channel) = s(event, "channel") else {
        return Incoming::Ignored("no channel");
    };
    let channel = channel.to_string();
    match s(event, "subtype") {
        None | Some("thread_broadcast") | Some("file_share") | Some("me_message") => {
            if own.is_own(event) {
                return Incoming::Ignored("the bridge's own message");
            }
            if s(event, "bot_id").is_some() {
                return Incoming::Ignored("another bot's message");
            }
            let (Some(ts), Some(user)) = (s(event, "ts"), s(event, "user")) else {
                return Incoming::Ignored("message without ts or user");
            };
            match s(event, "thread_ts") {
                Some(thread) if thread != ts => Incoming::Reply {
                    channel,
                    thread: thread.into(),
                    ts: ts.into(),
                    user: user.into(),
                    text: s(event, "text").unwrap_or_default().into(),
                    files: files_of(event),
                },
                _ => Incoming::TopLevel {
                    channel,
                    ts: ts.into(),
                    user: user.into(),
                    text: s(event, "text").unwrap_or_default().into(),
                    edited: false,
                },
            }
        }
        Some("message_changed") => {
            let Some(msg) = event.get("message") else {
                return Incoming::Ignored("change without message");
            };
            if s(msg, "subtype") == Some("tombstone") {
                // A thread root deleted while it had replies stays as a placeholder: for the
                // bridge it is a deletion of that root.
                return match s(msg, "ts") {
                    Some(ts) => Incoming::Deleted {
                        channel,
                        thread: None,
                        ts: ts.into(),
                    },
                    None => Incoming::Ignored("tombstone without ts"),
                };
            }
            if own.is_own(msg) {
                return Incoming::Ignored("echo of the bridge's own edit");
            }
            if s(msg, "subtype") == Some("tombstone") || s(msg, "bot_id").is_some() {
                return Incoming::Ignored("tombstone or bot message changed");
            }
            let (Some(ts), Some(user)) = (s(msg, "ts"), s(msg, "user")) else {
                return Incoming::Ignored("changed message without ts or user");
            };
            let text = s(msg, "text").unwrap_or_default();
            let Some(thread) = s(msg, "thread_ts").filter(|t| *t != ts) else {
                let before = event.get("previous_message").and_then(|p| s(p, "text"));
                if before == Some(text) {
                    return Incoming::Ignored("change of a top-level message without new text");
                }
                return Incoming::TopLevel {
                    channel,
                    ts: ts.into(),
                    user: user.into(),
                    text: text.into(),
                    edited: true,
                };
            };
            let files = files_of(msg);
            let previous = event.get("previous_message");
            let before = previous.and_then(|p| s(p, "text"));
            if before == Some(text) && previous.map(files_of) == Some(files.clone()) {
                // Unfurls, reply counts, language detection: not an edit.
                return Incoming::Ignored("change without new text");
            }
            Incoming::Edited {
                channel,
                thread: thread.into(),
                ts: ts.into(),
                user: user.into(),
                text: text.into(),
                files,
            }
        }
        Some("message_deleted") => {
            let Some(ts) = s(event, "deleted_ts") else {
                return Incoming::Ignored("deletion without deleted_ts");
            };
            let prev = event.get("previous_message");
            if let Some(p) = prev.filter(|p| own.is_own(p)) {
                // The bridge's root message: deleted by the bridge (an echo) or by a person;
                // Slack does not say which. The engine tells them apart by its records.
                let root = s(p, "thread_ts").is_none_or(|t| t == ts);
                if !root {
                    return Incoming::Ignored("echo of the bridge's own deletion");
                }
            }
            let thread = prev
                .and_then(|p| s(p, "thread_ts"))
                .filter(|t| *t != ts)
                .map(str::to_string);
            Incoming::Deleted {
                channel,
                thread,
                ts: ts.into(),
            }
        }
        Some(_) => Incoming::Ignored("message subtype the bridge does not handle"),
    }
}

/// Turns Slack's event payloads into journaled chat events (shared by Socket Mode and the
/// Events API).
#[derive(Clone)]
pub struct SlackIntake {
    journal: Journal,
    own: Identity,
    channels: Served,
    people: People,
}

impl SlackIntake {
    /// An intake for the mapped `channels`, ignoring the bot `own`.
    pub fn new(journal: Journal, own: Identity, channels: Served, people: People) -> Self {
        SlackIntake {
            journal,
            own,
            channels,
            people,
        }
    }

    /// Handle one `event_callback` payload. `Ok` means: acknowledge it (it is journaled, or
    /// there is nothing to do); `Err` means: do not acknowledge, let Slack redeliver.
    pub async fn handle(&self, payload: &Value) -> Result<(), StoreError> {
        if s(payload, "type") != Some("event_callback") {
            debug!(kind = ?s(payload, "type"), "Slack payload ignored");
            return Ok(());
        }
        let Some(event) = payload.get("event") else {
            return Ok(());
        };
        let dedupe_key = s(payload, "event_id").map(|id| format!("slack/{id}"));
        if let Some(key) = &dedupe_key
            && self.journal.store().seen_event(key)?
        {
            debug!(key, "Slack event already accepted; redelivery ignored");
            return Ok(());
        }
        let incoming = classify(event, &self.own);
        let served = |c: &str| self.channels.contains(c);
        let chat_event = match incoming {
            Incoming::Ignored(why) => {
                debug!(why, "Slack event ignored");
                return Ok(());
            }
            Incoming::Reply { channel, .. }
            | Incoming::Edited { channel, .. }
            | Incoming::Deleted { channel, .. }
            | Incoming::TopLevel { channel, .. }
                if !served(&channel) =>
            {
                debug!(channel, "event in a channel no mapping names; ignored");
                return Ok(());
            }
            Incoming::TopLevel { channel, .. } if !self.channels.takes_posts(&channel) => {
                debug!(why = "top-level message", "Slack event ignored");
                return Ok(());
            }
            Incoming::TopLevel {
                channel,
                ts,
                user,
                text,
                edited,
            } => {
                let (room, message) = (Room::new(PLATFORM, channel), ReplyId(ts));
                let (author, body) = (self.person(&user), self.parse_text(&text));
                if edited {
                    ChatEvent::MessageEdited {
                        room,
                        message,
                        author,
                        body,
                    }
                } else {
                    ChatEvent::MessagePosted {
                        room,
                        message,
                        author,
                        body,
                    }
                }
            }
            Incoming::Reply {
                channel,
                thread,
                ts,
                user,
                text,
                files,
            } => ChatEvent::ReplyPosted {
                room: Room::new(PLATFORM, channel),
                thread: ThreadId(thread),
                reply: ReplyId(ts),
                author: self.person(&user),
                body: self.parse_text(&text),
                files,
            },
            Incoming::Edited {
                channel,
                thread,
                ts,
                user,
                text,
                files,
            } => ChatEvent::ReplyEdited {
                room: Room::new(PLATFORM, channel),
                thread: ThreadId(thread),
                reply: ReplyId(ts),
                author: self.person(&user),
                body: self.parse_text(&text),
                files,
            },
            Incoming::Deleted {
                channel,
                thread,
                ts,
            } => ChatEvent::ReplyDeleted {
                room: Room::new(PLATFORM, channel),
                thread: thread.map(ThreadId),
                reply: ReplyId(ts),
            },
        };
        debug!(kind = chat_event.kind(), room = %chat_event.room(), "Slack event accepted");
        let source_ms = payload
            .get("event_time")
            .and_then(Value::as_i64)
            .map(|t| t * 1000);
        // The thread was active now: catch-up after an outage looks at it first.
        let cursors = thread_of(&chat_event)
            .map(|(channel, thread)| {
                let activity = serde_json::to_vec(&now_ms()).expect("a number serializes");
                (thread_key(channel, thread), activity)
            })
            .into_iter()
            .collect();
        self.journal
            .accept(Batch {
                events: vec![(Inbound::Chat(chat_event), source_ms)],
                cursors,
                dedupe: dedupe_key.into_iter().collect(),
            })
            .await
    }

    fn parse_text(&self, text: &str) -> Doc {
        self.people.parse(text)
    }

    fn person(&self, user: &str) -> Person {
        self.people.known(user)
    }
}

/// Where a thread's last activity is kept (unix ms), for catch-up.
pub const THREAD_PREFIX: &str = "slack/thread/";

/// The activity key of `thread` in `channel`.
pub fn thread_key(channel: &str, thread: &str) -> String {
    format!("{THREAD_PREFIX}{channel}/{thread}")
}

/// The channel and thread an event happened in, when it says.
fn thread_of(event: &ChatEvent) -> Option<(&str, &str)> {
    match event {
        ChatEvent::ReplyPosted { room, thread, .. }
        | ChatEvent::ReplyEdited { room, thread, .. } => Some((room.id.as_str(), thread.as_str())),
        ChatEvent::ReplyDeleted { room, thread, .. } => {
            thread.as_ref().map(|t| (room.id.as_str(), t.as_str()))
        }
        // A post from chat starts a thread: catch-up reads it after an outage.
        ChatEvent::MessagePosted { room, message, .. } => {
            Some((room.id.as_str(), message.as_str()))
        }
        ChatEvent::MessageEdited { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn own() -> Identity {
        Identity {
            user_id: "U0B24BOT1".into(),
            bot_id: "B0B24BOT1".into(),
            app_id: Some("A0B24APP1".into()),
        }
    }

    #[test]
    fn thread_reply_and_broadcast() {
        let ev = json!({"type": "message", "channel": "C1", "user": "U2", "text": "Looks good",
            "ts": "1700000100.000200", "thread_ts": "1700000000.000100", "parent_user_id": "U0B24BOT1"});
        assert_eq!(
            classify(&ev, &own()),
            Incoming::Reply {
                channel: "C1".into(),
                thread: "1700000000.000100".into(),
                ts: "1700000100.000200".into(),
                user: "U2".into(),
                text: "Looks good".into(),
                files: Vec::new(),
            }
        );
        let mut b = ev.clone();
        b["subtype"] = json!("thread_broadcast");
        assert!(matches!(classify(&b, &own()), Incoming::Reply { .. }));
        // A reply with a file (docs/platforms/slack.md §3.1); a file Slack hides has no URL.
        let mut f = ev.clone();
        f["subtype"] = json!("file_share");
        f["files"] = json!([
            {"id": "F1", "name": "chart.png", "title": "Chart", "mimetype": "image/png", "size": 812,
             "url_private": "https://files.slack.com/files-pri/T1-F1/chart.png",
             "url_private_download": "https://files.slack.com/files-pri/T1-F1/download/chart.png"},
            {"id": "F2", "mode": "hidden_by_limit"}
        ]);
        let Incoming::Reply { files, .. } = classify(&f, &own()) else {
            panic!("a file_share reply is a reply");
        };
        assert_eq!(
            files,
            vec![ChatFile {
                name: "chart.png".into(),
                size: 812,
                mime: "image/png".into(),
                source: "https://files.slack.com/files-pri/T1-F1/download/chart.png".into(),
            }]
        );
    }

    #[test]
    fn own_messages_and_their_echoes_are_ignored() {
        let own_post = json!({"type": "message", "channel": "C1", "user": "U0B24BOT1", "bot_id": "B0B24BOT1",
            "text": "x", "ts": "2.0", "thread_ts": "1.0"});
        assert_eq!(
            classify(&own_post, &own()),
            Incoming::Ignored("the bridge's own message")
        );
        let customised = json!({"type": "message", "subtype": "bot_message", "channel": "C1", "bot_id": "B0B24BOT1",
            "username": "Ivan Petrov", "text": "x", "ts": "2.0"});
        assert!(matches!(
            classify(&customised, &own()),
            Incoming::Ignored(_)
        ));
        let echo_edit = json!({"type": "message", "subtype": "message_changed", "channel": "C1",
            "message": {"bot_id": "B0B24BOT1", "text": "new", "ts": "1.0"},
            "previous_message": {"bot_id": "B0B24BOT1", "text": "old", "ts": "1.0"}});
        assert_eq!(
            classify(&echo_edit, &own()),
            Incoming::Ignored("echo of the bridge's own edit")
        );
        // The bridge's root deleted: an echo or a person's doing; the engine decides.
        let root_delete = json!({"type": "message", "subtype": "message_deleted", "channel": "C1",
            "deleted_ts": "1.0", "previous_message": {"app_id": "A0B24APP1", "text": "old", "ts": "1.0"}});
        assert_eq!(
            classify(&root_delete, &own()),
            Incoming::Deleted {
                channel: "C1".into(),
                thread: None,
                ts: "1.0".into()
            }
        );
        let echo_delete = json!({"type": "message", "subtype": "message_deleted", "channel": "C1",
            "deleted_ts": "2.0", "previous_message": {"app_id": "A0B24APP1", "text": "old", "ts": "2.0", "thread_ts": "1.0"}});
        assert_eq!(
            classify(&echo_delete, &own()),
            Incoming::Ignored("echo of the bridge's own deletion")
        );
        let tombstone = json!({"type": "message", "subtype": "message_changed", "channel": "C1",
            "message": {"subtype": "tombstone", "ts": "1.0", "thread_ts": "1.0", "text": "This message was deleted."},
            "previous_message": {"bot_id": "B0B24BOT1", "text": "old", "ts": "1.0"}});
        assert_eq!(
            classify(&tombstone, &own()),
            Incoming::Deleted {
                channel: "C1".into(),
                thread: None,
                ts: "1.0".into()
            }
        );
        let other_bot = json!({"type": "message", "channel": "C1", "bot_id": "B0OTHER", "user": "U9",
            "text": "x", "ts": "2.0", "thread_ts": "1.0"});
        assert_eq!(
            classify(&other_bot, &own()),
            Incoming::Ignored("another bot's message")
        );
    }

    #[test]
    fn edits_need_new_text_and_deletes_keep_their_thread() {
        let edit = json!({"type": "message", "subtype": "message_changed", "channel": "C1", "ts": "9.0",
            "message": {"user": "U2", "text": "Looks great", "ts": "2.0", "thread_ts": "1.0"},
            "previous_message": {"user": "U2", "text": "Looks good", "ts": "2.0", "thread_ts": "1.0"}});
        assert_eq!(
            classify(&edit, &own()),
            Incoming::Edited {
                channel: "C1".into(),
                thread: "1.0".into(),
                ts: "2.0".into(),
                user: "U2".into(),
                text: "Looks great".into(),
                files: Vec::new(),
            }
        );
        let mut noop = edit.clone();
        noop["previous_message"]["text"] = json!("Looks great");
        assert_eq!(
            classify(&noop, &own()),
            Incoming::Ignored("change without new text")
        );
        let del = json!({"type": "message", "subtype": "message_deleted", "channel": "C1", "ts": "9.1",
            "deleted_ts": "2.0", "previous_message": {"user": "U2", "text": "x", "ts": "2.0", "thread_ts": "1.0"}});
        assert_eq!(
            classify(&del, &own()),
            Incoming::Deleted {
                channel: "C1".into(),
                thread: Some("1.0".into()),
                ts: "2.0".into()
            }
        );
    }

    #[test]
    fn top_level_and_other_events_are_ignored() {
        // Top-level messages are posts only where a mapping says so (decided in `handle`).
        let top =
            json!({"type": "message", "channel": "C1", "user": "U2", "text": "hi", "ts": "1.0"});
        let as_top = |edited| Incoming::TopLevel {
            channel: "C1".into(),
            ts: "1.0".into(),
            user: "U2".into(),
            text: "hi".into(),
            edited,
        };
        assert_eq!(classify(&top, &own()), as_top(false));
        let parent = json!({"type": "message", "channel": "C1", "user": "U2", "text": "hi", "ts": "1.0", "thread_ts": "1.0"});
        assert_eq!(classify(&parent, &own()), as_top(false));
        let changed = json!({"type": "message", "subtype": "message_changed", "channel": "C1",
            "message": {"user": "U2", "text": "hi", "ts": "1.0"},
            "previous_message": {"user": "U2", "text": "hello", "ts": "1.0"}});
        assert_eq!(classify(&changed, &own()), as_top(true));
        assert!(matches!(
            classify(&json!({"type": "reaction_added"}), &own()),
            Incoming::Ignored(_)
        ));
        assert!(matches!(
            classify(
                &json!({"type": "message", "subtype": "channel_join", "channel": "C1"}),
                &own()
            ),
            Incoming::Ignored(_)
        ));
        assert!(matches!(
            classify(&json!("nonsense"), &own()),
            Incoming::Ignored(_)
        ));
    }
}
