//! Feed events (docs/platforms/bitrix24.md §5): `ONLIVEFEEDPOSTADD`, `…UPDATE` and `…DELETE`
//! name a post, nothing more. Both event modes write the posts they name durably as
//! "touched" (`bitrix24/touched/<post>`) before they acknowledge anything: the push handler
//! before it answers 200, the offline reader before `event.offline.clear`. The
//! [`EventWorker`] then reads each touched post the way the poll intake does and journals
//! what changed; comparing with what the intake saw before makes every event count once,
//! however often the portal repeats it.
//!
//! - [`OfflineIntake`]: `event.offline.get` with `clear: 0` reserves rows under a
//!   `process_id`; the rows become touched posts together with that `process_id`; then
//!   `event.offline.clear`. After a crash the saved `process_id` is fetched again first.
//! - [`push`](super::push): the HTTP handler for online events.
//! - [`bind`]: the subscriptions each mode needs, made at start.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use livefeed_core::health::Health;
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::store::{StoreError, now_ms};

use super::PLATFORM;
use super::client::{ApiError, BitrixClient, as_list, as_u64, value_text};
use super::config::{IntakeMode, OfflineConfig};
use super::intake::{PollError, PollIntake};
use crate::reload::Live;
use crate::upstream::{ErrorClass, Repeat};

const TOUCHED_PREFIX: &str = "bitrix24/touched/";
const OFFLINE_KEY: &str = "bitrix24/offline";
/// The three Live Feed events (§5.1).
pub const FEED_EVENTS: [&str; 3] = [
    "ONLIVEFEEDPOSTADD",
    "ONLIVEFEEDPOSTUPDATE",
    "ONLIVEFEEDPOSTDELETE",
];

/// A post some event named, not yet read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Touch {
    event: String,
    at_ms: i64,
    /// Tells two touches of one post apart, so clearing one never clears a newer one.
    nonce: u64,
}

fn touched_key(post: u64) -> String {
    format!("{TOUCHED_PREFIX}{post:020}")
}

/// The post a feed event names: `data.FIELDS.POST_ID`, a number or a numeric string.
pub fn post_of(event: &str, data: &Value) -> Option<u64> {
    if !FEED_EVENTS.contains(&event.to_ascii_uppercase().as_str()) {
        return None;
    }
    data.get("FIELDS")
        .and_then(|f| f.get("POST_ID"))
        .and_then(as_u64)
        .filter(|id| *id > 0)
}

/// The durable list of touched posts, and the bell that wakes the worker.
#[derive(Clone)]
pub struct Touched {
    journal: Journal,
    wake: Arc<Notify>,
    nonce: Arc<AtomicU64>,
}

impl Touched {
    /// An empty bell over `journal`'s store.
    pub fn new(journal: Journal) -> Self {
        Touched {
            journal,
            wake: Arc::new(Notify::new()),
            nonce: Arc::new(AtomicU64::new(now_ms() as u64)),
        }
    }

    /// Write `posts` (post, event) and `cursors` in one flushed transaction, then wake the
    /// worker. Returns once it is durable.
    async fn record(
        &self,
        posts: &[(u64, String)],
        cursors: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch {
            cursors,
            ..Batch::default()
        };
        for (post, event) in posts {
            let touch = Touch {
                event: event.clone(),
                at_ms: now_ms(),
                nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
            };
            batch.cursors.push((
                touched_key(*post),
                serde_json::to_vec(&touch).expect("serializable"),
            ));
        }
        self.journal.accept(batch).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// One post named by a pushed event.
    pub async fn touch(&self, post: u64, event: &str) -> Result<(), StoreError> {
        self.record(&[(post, event.to_ascii_uppercase())], Vec::new())
            .await
    }
}

/// Reads touched posts and journals what changed.
pub struct EventWorker {
    intake: Arc<PollIntake>,
    touched: Touched,
    health: Arc<Health>,
}

impl EventWorker {
    /// A worker for `touched`, reading through `intake`.
    pub fn new(intake: Arc<PollIntake>, touched: Touched, health: Arc<Health>) -> Self {
        EventWorker {
            intake,
            touched,
            health,
        }
    }

    /// Work until cancelled: at start (touches left by a crash), whenever woken, and every
    /// half minute after a failure.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failing = false;
        loop {
            match self.drain().await {
                Ok(0) => {}
                Ok(n) => {
                    debug!(posts = n, "touched posts read");
                    if failing {
                        self.health.ok(PLATFORM.as_str());
                    }
                    failing = false;
                }
                Err(e) => {
                    let auth = matches!(&e, PollError::Api(a) if a.class == ErrorClass::Auth);
                    warn!(error = %e, "reading posts named by feed events failed; will try again");
                    self.health.error(PLATFORM.as_str(), &e.to_string(), auth);
                    failing = true;
                }
            }
            let pause = if failing {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(30)
            };
            tokio::select! {
                _ = self.touched.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    async fn drain(&self) -> Result<usize, PollError> {
        let store = self.touched.journal.store();
        let touched: Vec<(String, Touch)> = store.cursors_with_prefix(TOUCHED_PREFIX)?;
        if touched.is_empty() {
            return Ok(0);
        }
        let ids: BTreeSet<u64> = touched
            .iter()
            .filter_map(|(k, _)| k[TOUCHED_PREFIX.len()..].parse().ok())
            .collect();
        self.intake.refresh_posts(&ids).await?;
        for (key, touch) in &touched {
            store.remove_cursor_if(key, touch)?;
        }
        Ok(ids.len())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OfflineState {
    /// Rows reserved under this id are journaled as touched posts but not yet cleared.
    process_id: Option<String>,
}

/// Reads the portal's offline event queue.
pub struct OfflineIntake {
    client: BitrixClient,
    touched: Touched,
    cfg: Live<OfflineConfig>,
    health: Arc<Health>,
}

impl OfflineIntake {
    /// A reader of the queue through `client` (an app's OAuth grant).
    pub fn new(
        client: BitrixClient,
        touched: Touched,
        cfg: Live<OfflineConfig>,
        health: Arc<Health>,
    ) -> Self {
        OfflineIntake {
            client,
            touched,
            cfg,
            health,
        }
    }

    /// Read until cancelled: every `interval` while rows come, slowing to `idle_interval`
    /// while the queue stays empty.
    pub async fn run(self, cancel: CancellationToken) {
        let mut pause = self.cfg.get().interval;
        loop {
            let cfg = self.cfg.get();
            match self.once().await {
                Ok(rows) => {
                    self.health.ok(PLATFORM.as_str());
                    pause = if rows > 0 {
                        cfg.interval
                    } else {
                        (pause * 2).clamp(cfg.interval, cfg.idle_interval.max(cfg.interval))
                    };
                }
                Err(e) => {
                    let auth = matches!(&e, PollError::Api(a) if a.class == ErrorClass::Auth);
                    warn!(error = %e, "reading the Bitrix24 offline event queue failed; will try again");
                    self.health.error(PLATFORM.as_str(), &e.to_string(), auth);
                    pause = cfg.idle_interval.max(cfg.interval);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One `get` → journal → `clear` round; the number of rows it handled.
    pub async fn once(&self) -> Result<usize, PollError> {
        let store = self.touched.journal.store();
        let state: OfflineState = store.cursor(OFFLINE_KEY)?.unwrap_or_default();
        let mut params = json!({ "clear": 0, "limit": 50 });
        if let Some(pid) = &state.process_id {
            params["process_id"] = Value::String(pid.clone());
        }
        // A lost answer to a reserving `get` would leave rows reserved under an id the bridge
        // never saw: repeat only calls the portal certainly did not run. The reconcile poll
        // finds what such rows named.
        let resp = self
            .client
            .call("event.offline.get", params, Repeat::OnlyIfRejected)
            .await?;
        let pid = resp
            .result
            .get("process_id")
            .map(value_text)
            .filter(|p| !p.is_empty());
        let rows = resp.result.get("events").map(as_list).unwrap_or_default();
        let Some(pid) = pid.filter(|_| !rows.is_empty()) else {
            if state.process_id.is_some() {
                store.remove_cursor(OFFLINE_KEY)?;
            }
            return Ok(0);
        };
        let posts: Vec<(u64, String)> = rows
            .iter()
            .filter_map(|row| {
                let event = row.get("EVENT_NAME").map(value_text)?;
                let post = post_of(&event, row.get("EVENT_DATA").unwrap_or(&Value::Null))?;
                Some((post, event.to_ascii_uppercase()))
            })
            .collect();
        if posts.len() < rows.len() {
            debug!(
                ignored = rows.len() - posts.len(),
                "offline rows that name no feed post"
            );
        }
        let saved = OfflineState {
            process_id: Some(pid.clone()),
        };
        self.touched
            .record(
                &posts,
                vec![(
                    OFFLINE_KEY.into(),
                    serde_json::to_vec(&saved).expect("serializable"),
                )],
            )
            .await?;
        livefeed_core::crashpoint::hit("bitrix24.offline.journaled");
        self.client
            .call(
                "event.offline.clear",
                json!({ "process_id": pid }),
                Repeat::Safe,
            )
            .await?;
        livefeed_core::crashpoint::hit("bitrix24.offline.cleared");
        store.remove_cursor(OFFLINE_KEY)?;
        debug!(
            rows = rows.len(),
            posts = posts.len(),
            "offline events taken"
        );
        Ok(rows.len())
    }
}

/// Subscribe to the feed events `mode` needs, skipping what `event.get` shows bound already.
/// Push binds only with a `handler_url` (otherwise an administrator binds it, and `check`
/// says whether that happened).
pub async fn bind(
    client: &BitrixClient,
    mode: IntakeMode,
    handler_url: Option<&str>,
) -> Result<(), ApiError> {
    let (event_type, handler) = match (mode, handler_url) {
        (IntakeMode::Offline, _) => ("offline", None),
        (IntakeMode::Push, Some(url)) => ("online", Some(url)),
        (IntakeMode::Push, None) | (IntakeMode::Poll, _) => return Ok(()),
    };
    let bound = bindings(client).await?;
    for event in FEED_EVENTS {
        let have = bound.iter().any(|b| {
            b.event == event
                && b.offline == (event_type == "offline")
                && (handler.is_none() || b.handler.as_deref() == handler)
        });
        if have {
            continue;
        }
        let mut params = json!({ "event": event, "event_type": event_type });
        if let Some(url) = handler {
            params["handler"] = Value::String(url.to_string());
        }
        client.call("event.bind", params, Repeat::Safe).await?;
        info!(event, event_type, "Bitrix24 event bound");
    }
    Ok(())
}

/// One row of `event.get`.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Upper-case event name.
    pub event: String,
    /// An offline binding (no handler).
    pub offline: bool,
    /// The online handler URL.
    pub handler: Option<String>,
}

/// What `event.get` lists.
pub async fn bindings(client: &BitrixClient) -> Result<Vec<Binding>, ApiError> {
    let resp = client.call("event.get", json!({}), Repeat::Safe).await?;
    Ok(as_list(&resp.result)
        .into_iter()
        .map(|b| Binding {
            event: b
                .get("event")
                .map(value_text)
                .unwrap_or_default()
                .to_ascii_uppercase(),
            offline: b.get("offline").and_then(as_u64) == Some(1),
            handler: b.get("handler").map(value_text).filter(|h| !h.is_empty()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_post_as_number_or_string() {
        let data = json!({"FIELDS": {"POST_ID": "209"}});
        assert_eq!(post_of("ONLIVEFEEDPOSTADD", &data), Some(209));
        assert_eq!(
            post_of("OnLiveFeedPostUpdate", &json!({"FIELDS": {"POST_ID": 7}})),
            Some(7)
        );
        assert_eq!(post_of("ONCRMDEALADD", &data), None);
        assert_eq!(
            post_of("ONLIVEFEEDPOSTDELETE", &json!({"FIELDS": {}})),
            None
        );
        assert_eq!(post_of("ONLIVEFEEDPOSTDELETE", &json!(false)), None);
        assert_eq!(
            post_of("ONLIVEFEEDPOSTDELETE", &json!({"FIELDS": {"POST_ID": "0"}})),
            None
        );
    }
}
