//! The workspace model: users, channels, messages, threads, the `ts` clock, and the JSON
//! rendering of messages exactly as Slack returns them. Mutations queue the events they cause
//! in `Workspace::events`; the caller decides who gets to see them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::text::{self, Ids, Mention};
use super::{FileView, MessageView, NewUser, WorkspaceConfig};

pub(crate) struct User {
    pub id: String,
    pub name: String,
    pub real_name: String,
    pub display_name: String,
    pub email: String,
    pub image_72: Option<String>,
    pub is_bot: bool,
    /// Other bots (integrations) have their own bot and app ids.
    pub bot_id: Option<String>,
    pub app_id: Option<String>,
    pub updated: u64,
}

pub(crate) struct Channel {
    pub id: String,
    pub name: String,
    pub private: bool,
    pub archived: bool,
    pub bot_member: bool,
    pub created: u64,
    pub creator: String,
    pub msgs: BTreeMap<String, Msg>,
}

impl Channel {
    pub(crate) fn channel_type(&self) -> &'static str {
        if self.private { "group" } else { "channel" }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Author {
    Human(String),
    /// The app's own bot user.
    App,
}

#[derive(Clone, Debug)]
pub(crate) struct Custom {
    pub username: Option<String>,
    pub icon_url: Option<String>,
    pub icon_emoji: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Life {
    Live,
    /// A deleted thread parent kept as a placeholder while replies remain.
    Tombstone,
    Deleted,
}

#[derive(Clone, Debug)]
pub(crate) struct Msg {
    pub ts: String,
    /// Root ts for replies.
    pub parent: Option<String>,
    pub author: Author,
    pub broadcast: bool,
    pub text: String,
    pub blocks: Option<Value>,
    pub attachments: Option<Value>,
    pub metadata: Option<Value>,
    pub custom: Option<Custom>,
    pub edited: Option<Value>,
    pub client_msg_id: Option<String>,
    pub reactions: Vec<(String, Vec<String>)>,
    pub pinned: bool,
    pub life: Life,
    /// Live replies (roots only), ascending.
    pub replies: Vec<String>,
    /// Files shared in this message (`F…` ids).
    pub files: Vec<String>,
}

/// A file in the workspace (docs/platforms/slack.md §2.12): uploaded through the external
/// upload (or by a person in a client), served at `url_private` to the bot token.
pub(crate) struct SlackFile {
    pub id: String,
    pub name: String,
    pub title: String,
    pub mimetype: String,
    /// The length `files.getUploadURLExternal` was told.
    pub length: u64,
    /// The bytes, once uploaded.
    pub content: Option<Vec<u8>>,
    /// Who uploaded it.
    pub user: String,
    pub created: u64,
    /// The secret part of its `upload_url`.
    pub upload_key: String,
    /// Shared into a channel by `files.completeUploadExternal` (or a client).
    pub completed: bool,
    pub deleted: bool,
}

/// Which subscription an event needs before the app may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvKind {
    Message,
    Member,
    Reaction,
    Channel,
}

pub(crate) struct Ev {
    pub channel: String,
    pub kind: EvKind,
    pub event: Value,
}

/// Input for a new message.
pub(crate) struct NewMsg {
    pub author: Author,
    pub text: String,
    pub blocks: Option<Value>,
    pub attachments: Option<Value>,
    pub metadata: Option<Value>,
    pub custom: Option<Custom>,
    pub client_msg_id: Option<String>,
    pub root: Option<String>,
    pub broadcast: bool,
    pub files: Vec<String>,
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Render {
    pub metadata: bool,
    pub root: bool,
}

pub(crate) struct Workspace {
    pub cfg: WorkspaceConfig,
    pub ids: Ids,
    clock_offset_micros: i64,
    last_ts_micros: u64,
    next_user: u32,
    next_channel: u32,
    next_bot: u32,
    pub created: u64,
    pub scopes: Vec<String>,
    pub bot_revoked: bool,
    pub account_inactive: bool,
    pub users: BTreeMap<String, User>,
    pub channels: BTreeMap<String, Channel>,
    pub events: Vec<Ev>,
    pub files: BTreeMap<String, SlackFile>,
    next_file: u32,
    /// `http://127.0.0.1:PORT` of the Web API listener: where file URLs point.
    pub base_url: String,
}

fn system_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn fmt_ts(micros: u64) -> String {
    format!("{:010}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Parses `"1700000000.000100"` or `"1700000000"` into microseconds.
pub(crate) fn parse_ts(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || secs.len() > 12 {
        return None;
    }
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let micros: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Message `ts` values are always `10.6` digits, so string order is time order.
pub(crate) fn is_msg_ts(s: &str) -> bool {
    s.len() == 17 && parse_ts(s).is_some() && s.as_bytes()[10] == b'.'
}

impl Workspace {
    pub(crate) fn new(cfg: WorkspaceConfig) -> Self {
        let created = system_micros() / 1_000_000;
        let mut ws = Workspace {
            ids: Ids::new(cfg.seed),
            scopes: cfg.bot_scopes.clone(),
            cfg,
            clock_offset_micros: 0,
            last_ts_micros: 0,
            next_user: 0,
            next_channel: 0,
            next_bot: 0,
            created,
            bot_revoked: false,
            account_inactive: false,
            users: BTreeMap::new(),
            channels: BTreeMap::new(),
            events: Vec::new(),
            files: BTreeMap::new(),
            next_file: 0,
            base_url: String::new(),
        };
        let bot = User {
            id: ws.cfg.bot_user_id.clone(),
            name: ws.cfg.bot_user_name.clone(),
            real_name: ws.cfg.app_name.clone(),
            display_name: String::new(),
            email: String::new(),
            image_72: None,
            is_bot: true,
            bot_id: Some(ws.cfg.bot_id.clone()),
            app_id: Some(ws.cfg.app_id.clone()),
            updated: created,
        };
        ws.users.insert(bot.id.clone(), bot);
        ws
    }

    // ---- clock -------------------------------------------------------------------------

    pub(crate) fn advance_clock(&mut self, micros: i64) {
        self.clock_offset_micros = self.clock_offset_micros.saturating_add(micros);
    }

    fn now_micros(&self) -> u64 {
        system_micros().saturating_add_signed(self.clock_offset_micros)
    }

    pub(crate) fn now_secs(&self) -> u64 {
        self.now_micros() / 1_000_000
    }

    /// Strictly increasing across the workspace (hence per channel too).
    pub(crate) fn next_ts(&mut self) -> String {
        let t = self.now_micros().max(self.last_ts_micros + 1);
        self.last_ts_micros = t;
        fmt_ts(t)
    }

    // ---- setup -------------------------------------------------------------------------

    pub(crate) fn add_user(&mut self, u: NewUser) -> String {
        self.next_user += 1;
        let id = format!("U0{:07X}", self.next_user);
        let (bot_id, app_id) = if u.is_bot {
            self.next_bot += 1;
            (
                Some(format!("B0{:07X}", self.next_bot)),
                Some(format!("A0{:07X}", self.next_bot)),
            )
        } else {
            (None, None)
        };
        let user = User {
            id: id.clone(),
            name: u.name,
            real_name: u.real_name,
            display_name: u.display_name,
            email: u.email,
            image_72: u.image_72,
            is_bot: u.is_bot,
            bot_id,
            app_id,
            updated: self.now_secs(),
        };
        self.users.insert(id.clone(), user);
        id
    }

    pub(crate) fn add_channel(&mut self, name: &str, private: bool, bot_member: bool) -> String {
        self.next_channel += 1;
        let id = format!("C0{:07X}", self.next_channel);
        let creator = self
            .users
            .values()
            .find(|u| !u.is_bot)
            .map(|u| u.id.clone())
            .unwrap_or_default();
        let ch = Channel {
            id: id.clone(),
            name: name.trim_start_matches('#').to_owned(),
            private,
            archived: false,
            bot_member,
            created: self.now_secs(),
            creator,
            msgs: BTreeMap::new(),
        };
        self.channels.insert(id.clone(), ch);
        id
    }

    pub(crate) fn set_bot_member(&mut self, channel: &str, member: bool) -> Result<(), String> {
        let now = self.next_ts();
        let ch = self
            .channels
            .get_mut(channel)
            .ok_or_else(|| format!("unknown channel {channel}"))?;
        let joined = member && !ch.bot_member;
        ch.bot_member = member;
        if joined {
            let ev = self.member_joined(channel, &now, None);
            self.events.push(ev);
        }
        Ok(())
    }

    pub(crate) fn member_joined(&self, channel: &str, ts: &str, inviter: Option<&str>) -> Ev {
        let private = self.channels.get(channel).is_some_and(|c| c.private);
        let mut event = json!({
            "type": "member_joined_channel",
            "user": self.cfg.bot_user_id,
            "channel": channel,
            "channel_type": if private { "G" } else { "C" },
            "team": self.cfg.team_id,
            "event_ts": ts,
        });
        if let Some(i) = inviter {
            event["inviter"] = json!(i);
        }
        Ev {
            channel: channel.to_owned(),
            kind: EvKind::Member,
            event,
        }
    }

    pub(crate) fn archive_channel(&mut self, channel: &str) -> Result<(), String> {
        let ts = self.next_ts();
        let creator = {
            let ch = self
                .channels
                .get_mut(channel)
                .ok_or_else(|| format!("unknown channel {channel}"))?;
            ch.archived = true;
            ch.creator.clone()
        };
        self.events.push(Ev {
            channel: channel.to_owned(),
            kind: EvKind::Channel,
            event: json!({"type": "channel_archive", "channel": channel, "user": creator, "event_ts": ts}),
        });
        Ok(())
    }

    /// Finds a channel by id or `#name`/`name`.
    pub(crate) fn find_channel(&self, key: &str) -> Option<&Channel> {
        if let Some(c) = self.channels.get(key) {
            return Some(c);
        }
        let name = key.trim_start_matches('#');
        self.channels.values().find(|c| c.name == name)
    }

    pub(crate) fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }

    // ---- rendering ---------------------------------------------------------------------

    pub(crate) fn bot_profile(&self) -> Value {
        let icon = |n: u32| format!("https://a.slack-edge.com/80588/img/plugins/app/bot_{n}.png");
        json!({
            "id": self.cfg.bot_id, "app_id": self.cfg.app_id, "name": self.cfg.app_name,
            "deleted": false, "updated": self.created, "team_id": self.cfg.team_id,
            "icons": {"image_36": icon(36), "image_48": icon(48), "image_72": icon(72)},
        })
    }

    fn foreign_bot_profile(&self, u: &User) -> Value {
        json!({
            "id": u.bot_id, "app_id": u.app_id, "name": u.real_name, "deleted": false,
            "updated": u.updated, "team_id": self.cfg.team_id,
            "icons": {"image_36": avatar(u, 36), "image_48": avatar(u, 48), "image_72": avatar(u, 72)},
        })
    }

    pub(crate) fn author_id(&self, a: &Author) -> String {
        match a {
            Author::Human(u) => u.clone(),
            Author::App => self.cfg.bot_user_id.clone(),
        }
    }

    pub(crate) fn render(&self, ch: &Channel, m: &Msg, o: Render) -> Value {
        let mut v = Map::new();
        v.insert("type".into(), json!("message"));
        if m.life == Life::Tombstone {
            v.insert("subtype".into(), json!("tombstone"));
            v.insert("text".into(), json!("This message was deleted."));
            v.insert("user".into(), json!("USLACKBOT"));
            v.insert("hidden".into(), json!(true));
            v.insert("ts".into(), json!(m.ts));
            self.thread_fields(ch, m, &mut v);
            return Value::Object(v);
        }
        if m.broadcast {
            v.insert("subtype".into(), json!("thread_broadcast"));
        }
        match &m.author {
            Author::App => {
                let custom = m.custom.as_ref();
                if let Some(c) = custom {
                    if !m.broadcast {
                        v.insert("subtype".into(), json!("bot_message"));
                    }
                    if let Some(n) = &c.username {
                        v.insert("username".into(), json!(n));
                    }
                    let icons = match (&c.icon_emoji, &c.icon_url) {
                        (Some(e), _) => Some(json!({"emoji": e})),
                        (None, Some(u)) => {
                            Some(json!({"image_36": u, "image_48": u, "image_72": u}))
                        }
                        _ => None,
                    };
                    if let Some(i) = icons {
                        v.insert("icons".into(), i);
                    }
                }
                if custom.is_none() || self.cfg.quirks.customized_includes_user {
                    v.insert("user".into(), json!(self.cfg.bot_user_id));
                }
                v.insert("bot_id".into(), json!(self.cfg.bot_id));
                v.insert("app_id".into(), json!(self.cfg.app_id));
            }
            Author::Human(u) => {
                v.insert("user".into(), json!(u));
                if let Some(user) = self.users.get(u).filter(|u| u.is_bot) {
                    v.insert("bot_id".into(), json!(user.bot_id));
                    v.insert("app_id".into(), json!(user.app_id));
                }
            }
        }
        v.insert("text".into(), json!(m.text));
        v.insert("ts".into(), json!(m.ts));
        v.insert("team".into(), json!(self.cfg.team_id));
        match &m.author {
            Author::App => {
                v.insert("bot_profile".into(), self.bot_profile());
            }
            Author::Human(u) => {
                if let Some(user) = self.users.get(u).filter(|u| u.is_bot) {
                    v.insert("bot_profile".into(), self.foreign_bot_profile(user));
                }
            }
        }
        if let Some(id) = &m.client_msg_id {
            v.insert("client_msg_id".into(), json!(id));
        }
        if let Some(b) = &m.blocks {
            v.insert("blocks".into(), b.clone());
        }
        if let Some(a) = &m.attachments {
            v.insert("attachments".into(), a.clone());
        }
        if let Some(e) = &m.edited {
            v.insert("edited".into(), e.clone());
        }
        if !m.files.is_empty() {
            let files: Vec<Value> = m
                .files
                .iter()
                .filter_map(|id| self.files.get(id))
                .map(|f| self.file_json(f))
                .collect();
            v.insert("files".into(), json!(files));
            v.insert("upload".into(), json!(true));
            if let Author::Human(_) = m.author {
                // A person's message with files (docs/platforms/slack.md §3.3).
                if !m.broadcast {
                    v.insert("subtype".into(), json!("file_share"));
                }
                v.insert("display_as_bot".into(), json!(false));
            }
        }
        self.thread_fields(ch, m, &mut v);
        if !m.reactions.is_empty() {
            let r: Vec<Value> = m
                .reactions
                .iter()
                .map(|(n, us)| json!({"name": n, "users": us, "count": us.len()}))
                .collect();
            v.insert("reactions".into(), json!(r));
        }
        if m.pinned {
            v.insert("pinned_to".into(), json!([ch.id]));
        }
        if o.metadata
            && let Some(md) = &m.metadata
        {
            v.insert("metadata".into(), md.clone());
        }
        if o.root
            && m.broadcast
            && let Some(root) = m.parent.as_ref().and_then(|p| ch.msgs.get(p))
        {
            let r = self.render(
                ch,
                root,
                Render {
                    metadata: o.metadata,
                    root: false,
                },
            );
            v.insert("root".into(), r);
        }
        Value::Object(v)
    }

    fn thread_fields(&self, ch: &Channel, m: &Msg, v: &mut Map<String, Value>) {
        if let Some(p) = &m.parent {
            v.insert("thread_ts".into(), json!(p));
            if let Some(root) = ch.msgs.get(p) {
                let pu = match root.life {
                    Life::Tombstone => "USLACKBOT".to_owned(),
                    _ => self.author_id(&root.author),
                };
                v.insert("parent_user_id".into(), json!(pu));
            }
        } else if !m.replies.is_empty() {
            let mut users: Vec<String> = Vec::new();
            for r in m.replies.iter().filter_map(|ts| ch.msgs.get(ts)) {
                let id = self.author_id(&r.author);
                if !users.contains(&id) {
                    users.push(id);
                }
            }
            v.insert("thread_ts".into(), json!(m.ts));
            v.insert("reply_count".into(), json!(m.replies.len()));
            v.insert("reply_users_count".into(), json!(users.len()));
            v.insert("latest_reply".into(), json!(m.replies.last()));
            users.truncate(5);
            v.insert("reply_users".into(), json!(users));
            v.insert("is_locked".into(), json!(false));
            v.insert("subscribed".into(), json!(false));
        }
    }

    /// A file object as Slack renders it in messages and `files.info`.
    pub(crate) fn file_json(&self, f: &SlackFile) -> Value {
        let team = &self.cfg.team_id;
        let base = &self.base_url;
        let name: String = form_urlencoded::byte_serialize(f.name.as_bytes()).collect();
        let filetype = f
            .name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_else(|| "binary".into());
        json!({
            "id": f.id, "created": f.created, "timestamp": f.created,
            "name": f.name, "title": f.title, "mimetype": f.mimetype, "filetype": filetype,
            "pretty_type": filetype.to_uppercase(), "user": f.user, "user_team": team,
            "editable": false, "size": f.content.as_ref().map_or(f.length, |c| c.len() as u64),
            "mode": "hosted", "is_external": false, "external_type": "", "is_public": true,
            "public_url_shared": false, "display_as_bot": false, "username": "",
            "url_private": format!("{base}/files-pri/{team}-{}/{name}", f.id),
            "url_private_download": format!("{base}/files-pri/{team}-{}/download/{name}", f.id),
            "permalink": format!("https://{}.slack.com/files/{}/{}/{name}", self.cfg.team_domain, f.user, f.id),
        })
    }

    /// A new file id (`F…`), deterministic like the fake's other ids.
    pub(crate) fn new_file_id(&mut self) -> String {
        self.next_file += 1;
        format!("F0FILE{:04}", self.next_file)
    }

    /// A person shares a file in a message (a reply when `thread` names one).
    pub(crate) fn human_post_file(
        &mut self,
        user: &str,
        channel: &str,
        typed: &str,
        thread: Option<&str>,
        name: &str,
        bytes: &[u8],
    ) -> Result<String, String> {
        self.check_human(user, channel)?;
        let root = match thread {
            None => None,
            Some(t) => {
                let m = self.channels[channel]
                    .msgs
                    .get(t)
                    .filter(|m| m.life != Life::Deleted)
                    .ok_or_else(|| format!("no message {t} in {channel}"))?;
                Some(m.parent.clone().unwrap_or_else(|| m.ts.clone()))
            }
        };
        let id = self.new_file_id();
        let created = system_micros() / 1_000_000;
        self.files.insert(
            id.clone(),
            SlackFile {
                id: id.clone(),
                name: name.to_owned(),
                title: name.to_owned(),
                mimetype: crate::mime_of(name).to_owned(),
                length: bytes.len() as u64,
                content: Some(bytes.to_vec()),
                user: user.to_owned(),
                created,
                upload_key: String::new(),
                completed: true,
                deleted: false,
            },
        );
        let (text, blocks) = if typed.trim().is_empty() {
            (String::new(), None)
        } else {
            let (text, block) = self.human_text(typed);
            (text, Some(json!([block])))
        };
        let client_msg_id = Some(self.ids.uuid());
        let ts = self
            .insert(
                channel,
                NewMsg {
                    author: Author::Human(user.to_owned()),
                    text,
                    blocks,
                    attachments: None,
                    metadata: None,
                    custom: None,
                    client_msg_id,
                    root,
                    broadcast: false,
                    files: vec![id.clone()],
                },
            )
            .map_err(str::to_owned)?;
        // The separate `file_shared` event (contract §3.1), for apps subscribed to it.
        let event_ts = self.next_ts();
        self.events.push(Ev {
            channel: channel.to_owned(),
            kind: EvKind::Message,
            event: json!({"type": "file_shared", "channel_id": channel, "file_id": id,
                "user_id": user, "file": {"id": id}, "event_ts": event_ts}),
        });
        Ok(ts)
    }

    /// Deletes a file; a message left with neither files nor text is deleted with it.
    pub(crate) fn delete_file(&mut self, id: &str) -> Result<(), &'static str> {
        let f = self
            .files
            .get_mut(id)
            .filter(|f| !f.deleted)
            .ok_or("file_not_found")?;
        f.deleted = true;
        let mut emptied = Vec::new();
        for ch in self.channels.values_mut() {
            for m in ch.msgs.values_mut() {
                if m.files.iter().any(|f| f == id) {
                    m.files.retain(|f| f != id);
                    if m.files.is_empty() && m.text.is_empty() && m.life == Life::Live {
                        emptied.push((ch.id.clone(), m.ts.clone()));
                    }
                }
            }
        }
        for (channel, ts) in emptied {
            self.delete(&channel, &ts)?;
        }
        Ok(())
    }

    pub(crate) fn view(&self, ch: &Channel, m: &Msg) -> MessageView {
        let raw = self.render(
            ch,
            m,
            Render {
                metadata: true,
                root: true,
            },
        );
        let s = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        MessageView {
            ts: m.ts.clone(),
            thread_ts: s("thread_ts"),
            user: s("user"),
            bot_id: s("bot_id"),
            app_id: s("app_id"),
            subtype: s("subtype"),
            username: s("username"),
            icon_url: raw
                .get("icons")
                .and_then(|i| i.get("image_48"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            text: s("text").unwrap_or_default(),
            metadata: m.metadata.clone(),
            reply_count: m.replies.len(),
            edited: m.edited.is_some(),
            blocks: m.blocks.clone(),
            files: m
                .files
                .iter()
                .filter_map(|id| self.files.get(id))
                .map(|f| FileView {
                    id: f.id.clone(),
                    name: f.name.clone(),
                    title: f.title.clone(),
                    size: f.content.as_ref().map_or(f.length, |c| c.len() as u64),
                })
                .collect(),
            raw,
        }
    }

    /// Messages `conversations.history` lists (top level and broadcasts), oldest first.
    pub(crate) fn history_msgs<'a>(&self, ch: &'a Channel) -> Vec<&'a Msg> {
        ch.msgs
            .values()
            .filter(|m| m.life != Life::Deleted && (m.parent.is_none() || m.broadcast))
            .collect()
    }

    /// Root first, then live replies ascending.
    pub(crate) fn thread_msgs<'a>(&self, ch: &'a Channel, root: &'a Msg) -> Vec<&'a Msg> {
        let mut out = vec![root];
        out.extend(root.replies.iter().filter_map(|ts| ch.msgs.get(ts)));
        out
    }

    pub(crate) fn message_event(&self, ch: &Channel, m: &Msg) -> Ev {
        let mut e = self.render(
            ch,
            m,
            Render {
                metadata: self.cfg.quirks.metadata_in_events,
                root: true,
            },
        );
        e["channel"] = json!(ch.id);
        e["event_ts"] = json!(m.ts);
        e["channel_type"] = json!(ch.channel_type());
        Ev {
            channel: ch.id.clone(),
            kind: EvKind::Message,
            event: e,
        }
    }

    fn event_render(&self, ch: &Channel, m: &Msg) -> Value {
        self.render(
            ch,
            m,
            Render {
                metadata: self.cfg.quirks.metadata_in_events,
                root: true,
            },
        )
    }

    // ---- mutations ---------------------------------------------------------------------

    /// Stores a new message (thread bookkeeping included) and queues its event.
    pub(crate) fn insert(&mut self, channel: &str, n: NewMsg) -> Result<String, &'static str> {
        let ts = self.next_ts();
        let ch = self.channels.get_mut(channel).ok_or("channel_not_found")?;
        if let Some(root) = &n.root {
            let r = ch.msgs.get_mut(root).ok_or("thread_not_found")?;
            r.replies.push(ts.clone());
        }
        let m = Msg {
            ts: ts.clone(),
            parent: n.root.clone(),
            author: n.author,
            broadcast: n.broadcast && n.root.is_some(),
            text: n.text,
            blocks: n.blocks,
            attachments: n.attachments,
            metadata: n.metadata,
            custom: n.custom,
            edited: None,
            client_msg_id: n.client_msg_id,
            reactions: Vec::new(),
            pinned: false,
            life: Life::Live,
            replies: Vec::new(),
            files: n.files,
        };
        ch.msgs.insert(ts.clone(), m);
        let ch = &self.channels[channel];
        let ev = self.message_event(ch, &ch.msgs[&ts]);
        self.events.push(ev);
        if let Some(root) = n.root
            && self.cfg.quirks.parent_changed_on_reply
        {
            self.parent_changed(channel, &root);
        }
        Ok(ts)
    }

    /// Slack's "hidden" re-emission of a parent whose reply info changed.
    fn parent_changed(&mut self, channel: &str, root: &str) {
        let ts = self.next_ts();
        let ch = &self.channels[channel];
        let Some(r) = ch.msgs.get(root) else {
            return;
        };
        let cur = self.event_render(ch, r);
        let ev = json!({
            "type": "message", "subtype": "message_changed", "hidden": true,
            "channel": channel, "ts": ts, "event_ts": ts, "channel_type": ch.channel_type(),
            "message": cur, "previous_message": cur,
        });
        self.events.push(Ev {
            channel: channel.to_owned(),
            kind: EvKind::Message,
            event: ev,
        });
    }

    /// Applies an edit and queues `message_changed`. `edited_by` is the id Slack puts in
    /// `edited.user`.
    pub(crate) fn edit(
        &mut self,
        channel: &str,
        ts: &str,
        edited_by: &str,
        apply: impl FnOnce(&mut Msg),
    ) -> Result<(), &'static str> {
        let change_ts = self.next_ts();
        let before = {
            let ch = self.channels.get(channel).ok_or("channel_not_found")?;
            let m = ch.msgs.get(ts).ok_or("message_not_found")?;
            self.event_render(ch, m)
        };
        {
            let ch = self.channels.get_mut(channel).ok_or("channel_not_found")?;
            let m = ch.msgs.get_mut(ts).ok_or("message_not_found")?;
            apply(m);
            // Slack's `edited.ts` has whole-second precision.
            let secs = change_ts.split('.').next().unwrap_or_default();
            m.edited = Some(json!({"user": edited_by, "ts": format!("{secs}.000000")}));
        }
        let ch = &self.channels[channel];
        let after = self.event_render(ch, &ch.msgs[ts]);
        let ev = json!({
            "type": "message", "subtype": "message_changed", "hidden": true,
            "channel": channel, "ts": change_ts, "event_ts": change_ts,
            "channel_type": ch.channel_type(), "message": after, "previous_message": before,
        });
        self.events.push(Ev {
            channel: channel.to_owned(),
            kind: EvKind::Message,
            event: ev,
        });
        Ok(())
    }

    /// Deletes a message (or turns a parent with replies into a tombstone) and queues the
    /// events Slack sends for it.
    pub(crate) fn delete(&mut self, channel: &str, ts: &str) -> Result<(), &'static str> {
        let del_ts = self.next_ts();
        let tombstones = self.cfg.quirks.tombstone_parent_on_delete;
        let (before, parent, becomes_tombstone, ctype) = {
            let ch = self.channels.get(channel).ok_or("channel_not_found")?;
            let m = ch
                .msgs
                .get(ts)
                .filter(|m| m.life == Life::Live)
                .ok_or("message_not_found")?;
            (
                self.event_render(ch, m),
                m.parent.clone(),
                tombstones && !m.replies.is_empty(),
                ch.channel_type(),
            )
        };
        let ch = self.channels.get_mut(channel).ok_or("channel_not_found")?;
        if becomes_tombstone {
            if let Some(m) = ch.msgs.get_mut(ts) {
                m.life = Life::Tombstone;
            }
            let ch = &self.channels[channel];
            let after = self.event_render(ch, &ch.msgs[ts]);
            let ev = json!({
                "type": "message", "subtype": "message_changed", "hidden": true,
                "channel": channel, "ts": del_ts, "event_ts": del_ts, "channel_type": ctype,
                "message": after, "previous_message": before,
            });
            self.events.push(Ev {
                channel: channel.to_owned(),
                kind: EvKind::Message,
                event: ev,
            });
            return Ok(());
        }
        if let Some(m) = ch.msgs.get_mut(ts) {
            m.life = Life::Deleted;
            m.replies.clear();
        }
        let mut drop_root = None;
        if let Some(p) = &parent
            && let Some(root) = ch.msgs.get_mut(p)
        {
            root.replies.retain(|r| r != ts);
            // The placeholder goes away with its last reply.
            if root.life == Life::Tombstone && root.replies.is_empty() {
                drop_root = Some(p.clone());
            }
        }
        self.events
            .push(deleted_event(channel, ctype, &del_ts, ts, before));
        if let Some(root_ts) = drop_root {
            let del2 = self.next_ts();
            let ch = &self.channels[channel];
            let prev = self.event_render(ch, &ch.msgs[&root_ts]);
            if let Some(r) = self
                .channels
                .get_mut(channel)
                .and_then(|c| c.msgs.get_mut(&root_ts))
            {
                r.life = Life::Deleted;
            }
            self.events
                .push(deleted_event(channel, ctype, &del2, &root_ts, prev));
        } else if let Some(p) = parent
            && self.cfg.quirks.parent_changed_on_reply
        {
            self.parent_changed(channel, &p);
        }
        Ok(())
    }

    pub(crate) fn add_reaction(
        &mut self,
        channel: &str,
        ts: &str,
        user: &str,
        name: &str,
    ) -> Result<(), &'static str> {
        let event_ts = self.next_ts();
        let item_user = {
            let ch = self.channels.get_mut(channel).ok_or("channel_not_found")?;
            let m = ch
                .msgs
                .get_mut(ts)
                .filter(|m| m.life == Life::Live)
                .ok_or("message_not_found")?;
            match m.reactions.iter_mut().find(|(n, _)| n == name) {
                Some((_, users)) if users.iter().any(|u| u == user) => {
                    return Err("already_reacted");
                }
                Some((_, users)) => users.push(user.to_owned()),
                None => m.reactions.push((name.to_owned(), vec![user.to_owned()])),
            }
            m.author.clone()
        };
        let item_user = self.author_id(&item_user);
        self.events.push(Ev {
            channel: channel.to_owned(),
            kind: EvKind::Reaction,
            event: json!({
                "type": "reaction_added", "user": user, "reaction": name, "item_user": item_user,
                "item": {"type": "message", "channel": channel, "ts": ts}, "event_ts": event_ts,
            }),
        });
        Ok(())
    }

    // ---- the "human client" -------------------------------------------------------------

    fn human_text(&mut self, typed: &str) -> (String, Value) {
        let block_id = self.ids.block_id();
        let lookup = |w: &str| -> Option<Mention> {
            if let Some(n) = w.strip_prefix('@') {
                return self
                    .users
                    .values()
                    .find(|u| u.id == n || u.name == n)
                    .map(|u| Mention::User(u.id.clone()));
            }
            let n = w.strip_prefix('#')?;
            self.channels
                .values()
                .find(|c| c.name == n)
                .map(|c| Mention::Channel {
                    id: c.id.clone(),
                    name: c.name.clone(),
                })
        };
        text::human_format(typed, &block_id, lookup)
    }

    fn check_human(&self, user: &str, channel: &str) -> Result<(), String> {
        let u = self
            .users
            .get(user)
            .ok_or_else(|| format!("unknown user {user}"))?;
        if u.id == self.cfg.bot_user_id {
            return Err("the app's bot user posts through the Web API, not as a human".into());
        }
        let ch = self
            .channels
            .get(channel)
            .ok_or_else(|| format!("unknown channel {channel}"))?;
        if ch.archived {
            return Err(format!("channel {channel} is archived"));
        }
        Ok(())
    }

    pub(crate) fn human_post(
        &mut self,
        user: &str,
        channel: &str,
        typed: &str,
        thread: Option<(&str, bool)>,
    ) -> Result<String, String> {
        self.check_human(user, channel)?;
        if typed.trim().is_empty() {
            return Err("empty message".into());
        }
        let root = match thread {
            None => None,
            Some((t, _)) => {
                let ch = &self.channels[channel];
                let m = ch
                    .msgs
                    .get(t)
                    .filter(|m| m.life != Life::Deleted)
                    .ok_or_else(|| format!("no message {t} in {channel}"))?;
                // Slack clients always thread under the root.
                Some(m.parent.clone().unwrap_or_else(|| m.ts.clone()))
            }
        };
        let (text, block) = self.human_text(typed);
        let is_bot = self.users.get(user).is_some_and(|u| u.is_bot);
        let client_msg_id = (!is_bot).then(|| self.ids.uuid());
        self.insert(
            channel,
            NewMsg {
                author: Author::Human(user.to_owned()),
                text,
                blocks: Some(json!([block])),
                attachments: None,
                metadata: None,
                custom: None,
                client_msg_id,
                root,
                broadcast: thread.is_some_and(|(_, b)| b),
                files: Vec::new(),
            },
        )
        .map_err(str::to_owned)
    }

    pub(crate) fn human_edit(
        &mut self,
        user: &str,
        channel: &str,
        ts: &str,
        typed: &str,
    ) -> Result<(), String> {
        self.check_human(user, channel)?;
        let owner = self.channels[channel]
            .msgs
            .get(ts)
            .filter(|m| m.life == Life::Live)
            .map(|m| m.author.clone())
            .ok_or_else(|| format!("no message {ts} in {channel}"))?;
        if owner != Author::Human(user.to_owned()) {
            return Err(format!("{user} does not own {ts}"));
        }
        let (text, block) = self.human_text(typed);
        self.edit(channel, ts, user, |m| {
            m.text = text;
            m.blocks = Some(json!([block]));
        })
        .map_err(str::to_owned)
    }

    pub(crate) fn human_delete(
        &mut self,
        user: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), String> {
        if !self.users.contains_key(user) {
            return Err(format!("unknown user {user}"));
        }
        let ch = self
            .channels
            .get(channel)
            .ok_or_else(|| format!("unknown channel {channel}"))?;
        let m = ch
            .msgs
            .get(ts)
            .filter(|m| m.life == Life::Live)
            .ok_or_else(|| format!("no message {ts} in {channel}"))?;
        if m.author != Author::Human(user.to_owned()) {
            return Err(format!("{user} does not own {ts}"));
        }
        self.delete(channel, ts).map_err(str::to_owned)
    }
}

fn deleted_event(channel: &str, ctype: &str, del_ts: &str, ts: &str, prev: Value) -> Ev {
    Ev {
        channel: channel.to_owned(),
        kind: EvKind::Message,
        event: json!({
            "type": "message", "subtype": "message_deleted", "hidden": true,
            "channel": channel, "ts": del_ts, "deleted_ts": ts, "event_ts": del_ts,
            "channel_type": ctype, "previous_message": prev,
        }),
    }
}

pub(crate) fn avatar(u: &User, size: u32) -> String {
    match &u.image_72 {
        Some(url) => url.clone(),
        None => format!("https://a.slack-edge.com/df10d/img/avatars/ava_0001-{size}.png"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_parsing_and_format() {
        assert_eq!(parse_ts("1700000000.000100"), Some(1_700_000_000_000_100));
        assert_eq!(parse_ts("1700000000"), Some(1_700_000_000_000_000));
        assert_eq!(parse_ts("1700000000.1"), Some(1_700_000_000_100_000));
        assert_eq!(parse_ts("abc"), None);
        assert_eq!(parse_ts("1.2.3"), None);
        assert_eq!(fmt_ts(1_700_000_000_000_100), "1700000000.000100");
        assert!(is_msg_ts("1700000000.000100"));
        assert!(!is_msg_ts("1700000000"));
    }

    #[test]
    fn ts_strictly_increasing() {
        let mut ws = Workspace::new(WorkspaceConfig::default());
        let mut prev = ws.next_ts();
        for _ in 0..1000 {
            let t = ws.next_ts();
            assert!(t > prev, "{t} <= {prev}");
            assert!(is_msg_ts(&t));
            prev = t;
        }
    }
}
