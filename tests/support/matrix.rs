//! The Matrix half of the end-to-end world: a real Synapse (started by `scripts/synapse.sh`,
//! found through `MATRIX_HOMESERVER`/`MATRIX_ADMIN_TOKEN`), per-test users registered with the
//! admin API, and people as real matrix-sdk clients (encryption on) that record every
//! decrypted timeline event so tests can await exact conditions.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoomRequest;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{
    AddMentions, OriginalSyncRoomMessageEvent, ReplyMetadata, ReplyWithinThread,
    RoomMessageEventContent, SyncRoomMessageEvent,
};
use matrix_sdk::ruma::events::{
    AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, InitialStateEvent,
    SyncStateEvent,
};
use matrix_sdk::ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::json;
use tokio::sync::watch;

use super::WAIT;

/// The test homeserver, if the environment names one.
#[derive(Clone)]
pub struct Homeserver {
    pub url: String,
    admin_token: String,
    http: reqwest::Client,
}

static USERS: AtomicU32 = AtomicU32::new(0);

impl Homeserver {
    /// `None` (and a visible notice) when no homeserver is configured.
    pub fn from_env_or_skip(test: &str) -> Option<Homeserver> {
        match (
            std::env::var("MATRIX_HOMESERVER"),
            std::env::var("MATRIX_ADMIN_TOKEN"),
        ) {
            (Ok(url), Ok(admin_token)) => Some(Homeserver {
                url,
                admin_token,
                http: reqwest::Client::new(),
            }),
            _ => {
                // Written to the terminal directly: libtest would swallow println! of a pass.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: no Matrix homeserver (run ./scripts/test-all.sh, or export the lines of `scripts/synapse.sh start`)"
                );
                None
            }
        }
    }

    /// Register a fresh user; returns its id and password.
    pub async fn user(&self, prefix: &str, display_name: &str) -> (OwnedUserId, String) {
        let n = USERS.fetch_add(1, Ordering::SeqCst);
        let localpart = format!("{prefix}{}x{n}x{}", std::process::id(), fastrand::u32(..));
        let user = format!("@{localpart}:localhost");
        let password = format!("pw-{}", fastrand::u64(..));
        let resp = self
            .http
            .put(format!("{}/_synapse/admin/v2/users/{user}", self.url))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "password": password, "admin": false, "displayname": display_name }))
            .send()
            .await
            .expect("admin API reachable");
        assert!(
            resp.status().is_success(),
            "cannot register {user}: {}",
            resp.status()
        );
        (UserId::parse(&user).unwrap(), password)
    }

    /// Switch Synapse's message rate limit on for one user (integers only).
    pub async fn limit_messages(&self, user: &UserId, per_second: u32, burst: u32) {
        let resp = self
            .http
            .post(format!(
                "{}/_synapse/admin/v1/users/{user}/override_ratelimit",
                self.url
            ))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "messages_per_second": per_second, "burst_count": burst }))
            .send()
            .await
            .expect("admin API reachable");
        assert!(
            resp.status().is_success(),
            "override_ratelimit: {}",
            resp.status()
        );
    }
}

type Seen = Vec<(OwnedRoomId, AnySyncTimelineEvent)>;

/// A person in Matrix: a real client with its own device and crypto store.
pub struct Person {
    pub client: Client,
    pub user: OwnedUserId,
    seen: Arc<Mutex<Seen>>,
    changed: watch::Sender<u64>,
    sync: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Person {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

impl Person {
    pub async fn new(hs: &Homeserver, display_name: &str) -> Person {
        let (user, password) = hs.user("person", display_name).await;
        let dir = tempfile::tempdir().unwrap();
        let client = Client::builder()
            .homeserver_url(&hs.url)
            .sqlite_store(dir.path(), None)
            .build()
            .await
            .unwrap();
        client
            .matrix_auth()
            .login_username(&user, &password)
            .initial_device_display_name("test person")
            .send()
            .await
            .unwrap();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let changed = watch::channel(0).0;
        {
            let seen = seen.clone();
            let changed = changed.clone();
            client.add_event_handler(move |ev: AnySyncTimelineEvent, room: Room| {
                let seen = seen.clone();
                let changed = changed.clone();
                async move {
                    seen.lock().unwrap().push((room.room_id().to_owned(), ev));
                    changed.send_modify(|v| *v += 1);
                }
            });
        }
        let first = client.sync_once(SyncSettings::default()).await.unwrap();
        let syncing = client.clone();
        let sync = tokio::spawn(async move {
            let settings = SyncSettings::default()
                .token(first.next_batch)
                .timeout(Duration::from_secs(5));
            let _ = syncing.sync(settings).await;
        });
        Person {
            client,
            user,
            seen,
            changed,
            sync,
            _dir: dir,
        }
    }

    /// Create a room and invite `invite`; encrypted if asked.
    pub async fn create_room(
        &self,
        name: &str,
        invite: &[&UserId],
        encrypted: bool,
    ) -> OwnedRoomId {
        let mut req = CreateRoomRequest::new();
        req.name = Some(name.into());
        req.invite = invite.iter().map(|u| (*u).to_owned()).collect();
        if encrypted {
            req.initial_state = vec![
                InitialStateEvent::with_empty_state_key(
                    RoomEncryptionEventContent::with_recommended_defaults(),
                )
                .to_raw_any(),
            ];
        }
        self.client
            .create_room(req)
            .await
            .unwrap()
            .room_id()
            .to_owned()
    }

    fn room(&self, room: &OwnedRoomId) -> Room {
        self.client
            .get_room(room)
            .expect("the person is in the room")
    }

    /// A threaded reply to `root` (as Element sends it, with an HTML body).
    pub async fn thread_reply(
        &self,
        room: &OwnedRoomId,
        root: &EventId,
        body: &str,
        html: &str,
    ) -> OwnedEventId {
        let root_sender = self.sender_of(room, root);
        let content = RoomMessageEventContent::text_html(body, html).make_for_thread(
            ReplyMetadata::new(root, &root_sender, None),
            ReplyWithinThread::No,
            AddMentions::No,
        );
        self.room(room)
            .send(content)
            .await
            .unwrap()
            .response
            .event_id
    }

    /// A file sent into the thread of `root`, as Element sends one (encrypted in an
    /// encrypted room).
    pub async fn thread_file(
        &self,
        room: &OwnedRoomId,
        root: &EventId,
        name: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> OwnedEventId {
        use matrix_sdk::attachment::AttachmentConfig;
        use matrix_sdk::room::reply::{EnforceThread, Reply};
        let config = AttachmentConfig::new().reply(Some(Reply {
            event_id: root.to_owned(),
            enforce_thread: EnforceThread::Threaded(ReplyWithinThread::No),
            add_mentions: AddMentions::No,
        }));
        let mime: mime::Mime = mime.parse().unwrap();
        self.room(room)
            .send_attachment(name, &mime, bytes, config)
            .await
            .unwrap()
            .event_id
    }

    /// The files `sender` sent into the thread of `root`: (name, content), sorted by name.
    /// Encrypted attachments are decrypted with the keys their events carry.
    pub async fn thread_files(
        &self,
        room: &OwnedRoomId,
        root: &EventId,
        sender: &UserId,
    ) -> Vec<(String, Vec<u8>)> {
        use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
        use matrix_sdk::ruma::events::room::message::{MessageType, Relation};
        let mut out = Vec::new();
        for m in self.messages(room, sender) {
            let in_thread =
                matches!(&m.content.relates_to, Some(Relation::Thread(t)) if t.event_id == root);
            if !in_thread {
                continue;
            }
            let (name, source) = match &m.content.msgtype {
                MessageType::File(f) => (f.filename().to_string(), f.source.clone()),
                MessageType::Image(f) => (f.filename().to_string(), f.source.clone()),
                _ => continue,
            };
            let request = MediaRequestParameters {
                source,
                format: MediaFormat::File,
            };
            let bytes = self
                .client
                .media()
                .get_media_content(&request, false)
                .await
                .unwrap();
            out.push((name, bytes));
        }
        out.sort();
        out
    }

    /// A plain reply (`m.in_reply_to`) outside any thread.
    pub async fn plain_reply(&self, room: &OwnedRoomId, to: &EventId, body: &str) -> OwnedEventId {
        use matrix_sdk::ruma::events::relation::{InReplyTo, Reply};
        use matrix_sdk::ruma::events::room::message::Relation;
        let mut content = RoomMessageEventContent::text_plain(body);
        content.relates_to = Some(Relation::Reply(Reply::new(InReplyTo::new(to.to_owned()))));
        self.room(room)
            .send(content)
            .await
            .unwrap()
            .response
            .event_id
    }

    pub async fn edit(&self, room: &OwnedRoomId, event: &EventId, body: &str) -> OwnedEventId {
        use matrix_sdk::ruma::events::room::message::ReplacementMetadata;
        let content = RoomMessageEventContent::text_plain(body)
            .make_replacement(ReplacementMetadata::new(event.to_owned(), None));
        self.room(room)
            .send(content)
            .await
            .unwrap()
            .response
            .event_id
    }

    /// Remove `user` from `room` (the room stays invite-only, so they cannot rejoin).
    pub async fn kick(&self, room: &OwnedRoomId, user: &UserId) {
        self.room(room)
            .kick_user(user, Some("testing dead letters"))
            .await
            .unwrap();
    }

    pub async fn redact(&self, room: &OwnedRoomId, event: &EventId) {
        self.room(room).redact(event, None, None).await.unwrap();
    }

    pub async fn top_level(&self, room: &OwnedRoomId, body: &str) -> OwnedEventId {
        self.room(room)
            .send(RoomMessageEventContent::text_plain(body))
            .await
            .unwrap()
            .response
            .event_id
    }

    fn sender_of(&self, room: &OwnedRoomId, event: &EventId) -> OwnedUserId {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|(r, e)| r == room && e.event_id() == event)
            .map(|(_, e)| e.sender().to_owned())
            .expect("the person has seen the event it replies to")
    }

    /// Root messages `sender` posted in `room` (not edits, not replies), oldest first.
    pub fn roots(&self, room: &OwnedRoomId, sender: &UserId) -> Vec<OriginalSyncRoomMessageEvent> {
        self.messages(room, sender)
            .into_iter()
            .filter(|m| m.content.relates_to.is_none())
            .collect()
    }

    /// Every original `m.room.message` from `sender` in `room`.
    pub fn messages(
        &self,
        room: &OwnedRoomId,
        sender: &UserId,
    ) -> Vec<OriginalSyncRoomMessageEvent> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == room)
            .filter_map(|(_, e)| match e {
                AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncRoomMessageEvent::Original(m),
                )) if m.sender == sender => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Events in `room` that redact `event`.
    pub fn redactions_of(&self, room: &OwnedRoomId, event: &EventId) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == room)
            .filter(|(_, e)| match e {
                AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomRedaction(r)) => {
                    r.as_original().is_some_and(|o| {
                        o.content.redacts.as_deref().or(o.redacts.as_deref()) == Some(event)
                    })
                }
                _ => false,
            })
            .count()
    }

    pub fn joined(&self, room: &OwnedRoomId, user: &UserId) -> bool {
        self.seen.lock().unwrap().iter().any(|(r, e)| {
            r == room
                && matches!(e, AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(m))
                    if m.state_key() == user && *m.membership() == MembershipState::Join)
        })
    }

    /// The latest membership of `user` in `room` that the person has seen.
    pub fn membership(&self, room: &OwnedRoomId, user: &UserId) -> Option<MembershipState> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|(r, e)| match e {
                AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(m))
                    if r == room && m.state_key() == user =>
                {
                    Some(m.membership().clone())
                }
                _ => None,
            })
    }

    /// The room's pinned events, as the latest `m.room.pinned_events` the person saw says
    /// (`None` before any).
    pub fn pinned(&self, room: &OwnedRoomId) -> Option<Vec<OwnedEventId>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|(r, e)| match e {
                AnySyncTimelineEvent::State(AnySyncStateEvent::RoomPinnedEvents(
                    SyncStateEvent::Original(ev),
                )) if r == room => Some(ev.content.pinned.clone()),
                _ => None,
            })
    }

    /// Give `user` power level `level` in `room` (the person must be allowed to).
    pub async fn set_power(&self, room: &OwnedRoomId, user: &UserId, level: i64) {
        self.room(room)
            .update_power_levels(vec![(user, level.try_into().unwrap())])
            .await
            .unwrap();
    }

    /// Wait until `pred` holds over what the person has seen; re-checked on every new event.
    pub async fn wait(&self, what: &str, pred: impl Fn(&Person) -> bool) {
        let mut rx = self.changed.subscribe();
        let ok = tokio::time::timeout(WAIT, async {
            loop {
                if pred(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(ok.is_ok(), "timed out waiting for: {what}");
    }
}
