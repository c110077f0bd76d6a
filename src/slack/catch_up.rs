//! Catch-up: what happened in mirrored threads while the bridge could not hear it.
//!
//! Slack retries an event for about six minutes, then drops it (docs/platforms/slack.md §3.5,
//! §11). A reply written during a longer outage would be lost, so on start and after every
//! reconnect the bridge reads `conversations.replies` of the threads active within
//! `slack.catch_up_window`, most recently active first, and journals what it has not seen: a
//! reply without a comment, an edited reply, a comment whose reply is gone. The engine applies
//! them idempotently, so repeating a catch-up (after a crash, or a reply the live intake also
//! delivered) changes nothing that is already right.
//!
//! Bounded: at most [`MAX_THREADS`] threads and [`MAX_PAGES`] pages each, paced by
//! `slack.catch_up_rate` (default under Slack's tier-3 limit, 50+ calls a minute). Thread activity is kept in the store by the adapter (a root sent) and the
//! intake (a reply seen); entries older than the window are forgotten here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use livefeed_core::journal::{Batch, Journal};
use livefeed_core::model::{ChatEvent, Inbound, ReplyId, Room, ThreadId};
use livefeed_core::route::Served;
use livefeed_core::store::{StoreError, now_ms};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::PLATFORM;
use super::api::{Body, SlackApi, SlackError};
use super::intake::{Identity, THREAD_PREFIX, thread_key};
use super::people::People;
use crate::upstream::ratelimit::{RateLimit, TokenBucket};
use crate::upstream::{ErrorClass, Repeat};

/// Most threads one catch-up reads (the most recently active).
pub const MAX_THREADS: usize = 1000;
/// Most pages of 200 replies read per thread; a longer thread is not checked for deletions.
pub const MAX_PAGES: usize = 10;

/// Why a catch-up stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// Slack refused the token.
    #[error(transparent)]
    Slack(#[from] SlackError),
    /// The journal could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads mirrored threads and journals what the bridge missed.
pub struct CatchUp {
    api: SlackApi,
    journal: Journal,
    own: Identity,
    channels: Served,
    people: People,
    window: Duration,
    /// `None`: unpaced.
    pacing: Option<Arc<TokenBucket>>,
}

impl CatchUp {
    /// Its pacing, for a reload to change.
    pub fn pacing(&self) -> Option<Arc<TokenBucket>> {
        self.pacing.clone()
    }

    /// Catch-up over the mapped `channels`, for threads active within `window`, reading at
    /// most at `rate`.
    pub fn new(
        api: SlackApi,
        journal: Journal,
        own: Identity,
        channels: Served,
        people: People,
        (window, rate): (Duration, Option<RateLimit>),
    ) -> Self {
        CatchUp {
            api,
            journal,
            own,
            channels,
            people,
            window,
            pacing: rate.map(|r| Arc::new(TokenBucket::new(r))),
        }
    }

    /// Run a catch-up whenever `triggers` says so (several waiting triggers make one run),
    /// until `cancel` fires.
    pub async fn run(self, mut triggers: mpsc::Receiver<()>, cancel: CancellationToken) {
        loop {
            let next = tokio::select! {
                t = triggers.recv() => t,
                _ = cancel.cancelled() => return,
            };
            if next.is_none() {
                return;
            }
            while triggers.try_recv().is_ok() {}
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                o = self.run_once() => o,
                _ = cancel.cancelled() => return,
            };
            match outcome {
                Ok(n) => info!(
                    events = n,
                    took_ms = started.elapsed().as_millis() as u64,
                    "Slack catch-up done"
                ),
                Err(e) => {
                    warn!(error = %e, "Slack catch-up stopped; the next reconnect tries again")
                }
            }
        }
    }

    /// One catch-up over every active thread; returns how many events it journaled.
    pub async fn run_once(&self) -> Result<usize, CatchUpError> {
        let mut total = 0;
        for (channel, thread) in self.active_threads()? {
            if let Some(pacing) = &self.pacing
                && pacing.acquire().await
            {
                self.journal.metrics().rate_limit_wait(PLATFORM.as_str());
            }
            let events = match self.thread(&channel, &thread).await {
                Ok(events) => events,
                Err(CatchUpError::Slack(e)) if e.class == ErrorClass::Auth => return Err(e.into()),
                Err(CatchUpError::Slack(e)) if e.is("thread_not_found") => {
                    // The root is gone; its deletion reached the engine another way.
                    self.journal
                        .store()
                        .remove_cursor(&thread_key(&channel, &thread))?;
                    continue;
                }
                Err(e) => {
                    debug!(channel, thread, error = %e, "thread not caught up; next time");
                    continue;
                }
            };
            if events.is_empty() {
                continue;
            }
            let n = events.len();
            self.journal
                .accept(Batch {
                    events,
                    ..Batch::default()
                })
                .await?;
            self.journal
                .metrics()
                .caught_up(PLATFORM.as_str(), n as u64);
            total += n;
        }
        Ok(total)
    }

    /// Mapped threads active within the window, most recent first, at most [`MAX_THREADS`];
    /// older activity records are forgotten.
    fn active_threads(&self) -> Result<Vec<(String, String)>, StoreError> {
        let store = self.journal.store();
        let cutoff = now_ms() - self.window.as_millis() as i64;
        // The newest MAX_THREADS, kept while reading: there is a record per active thread.
        let mut newest = BinaryHeap::new();
        for item in store.scan_cursors::<i64>(THREAD_PREFIX) {
            let (key, last) = item?;
            if last < cutoff {
                store.remove_cursor(&key)?;
                continue;
            }
            let Some((channel, thread)) = key[THREAD_PREFIX.len()..].split_once('/') else {
                continue;
            };
            if self.channels.contains(channel) {
                newest.push(Reverse((last, channel.to_string(), thread.to_string())));
                if newest.len() > MAX_THREADS {
                    newest.pop();
                }
            }
        }
        // Ascending by `Reverse`, so most recent first.
        Ok(newest
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((_, c, t))| (c, t))
            .collect())
    }

    /// What the bridge missed in one thread.
    async fn thread(
        &self,
        channel: &str,
        thread: &str,
    ) -> Result<Vec<(Inbound, Option<i64>)>, CatchUpError> {
        let store = self.journal.store();
        let room = Room::new(PLATFORM, channel);
        let thread_id = ThreadId(thread.to_string());
        let mut events = Vec::new();
        let mut present = HashSet::new();
        let mut cursor: Option<String> = None;
        let mut complete = false;
        for _ in 0..MAX_PAGES {
            let mut form = vec![
                ("channel".to_string(), channel.to_string()),
                ("ts".into(), thread.to_string()),
                ("limit".into(), "200".into()),
            ];
            if let Some(c) = &cursor {
                form.push(("cursor".into(), c.clone()));
            }
            let page = self
                .api
                .call(
                    "conversations.replies",
                    Some(channel),
                    Body::Form(form),
                    Repeat::Safe,
                )
                .await?;
            for m in page["messages"].as_array().into_iter().flatten() {
                let Some(ts) = m["ts"].as_str().filter(|ts| *ts != thread) else {
                    continue;
                };
                present.insert(ts.to_string());
                if let Some(event) = self.missed(&room, &thread_id, m)? {
                    events.push((Inbound::Chat(event), ts_ms(ts)));
                }
            }
            cursor = page["response_metadata"]["next_cursor"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            if cursor.is_none() {
                complete = true;
                break;
            }
        }
        // Only a thread read to its end tells which replies are gone.
        if complete {
            for (reply, _) in store.comments_in_thread(&room, &thread_id)? {
                if !present.contains(reply.as_str()) {
                    events.push((
                        Inbound::Chat(ChatEvent::ReplyDeleted {
                            room: room.clone(),
                            thread: Some(thread_id.clone()),
                            reply,
                        }),
                        None,
                    ));
                }
            }
        }
        Ok(events)
    }

    /// The event for one reply, if the bridge has not seen it as it is: a reply without a
    /// comment, or an edited one (the engine compares it with the comment it wrote).
    fn missed(
        &self,
        room: &Room,
        thread: &ThreadId,
        m: &Value,
    ) -> Result<Option<ChatEvent>, StoreError> {
        if self.own.is_own(m) || m.get("bot_id").is_some_and(|b| !b.is_null()) {
            return Ok(None);
        }
        let (Some(ts), Some(user)) = (m["ts"].as_str(), m["user"].as_str()) else {
            return Ok(None);
        };
        let store = self.journal.store();
        let reply = ReplyId(ts.to_string());
        if store.reply_tombstoned(room, &reply)? {
            return Ok(None);
        }
        let text = m["text"].as_str().unwrap_or_default();
        let (author, body) = (self.people.known(user), self.people.parse(text));
        let files = super::intake::files_of(m);
        Ok(match store.comment_for_reply(room, &reply)? {
            None => Some(ChatEvent::ReplyPosted {
                room: room.clone(),
                thread: thread.clone(),
                reply,
                author,
                body,
                files,
            }),
            Some(_) if m.get("edited").is_some() => Some(ChatEvent::ReplyEdited {
                room: room.clone(),
                thread: thread.clone(),
                reply,
                author,
                body,
                files,
            }),
            Some(_) => None,
        })
    }
}

/// A Slack `ts` (`"1700000000.000100"`) in unix ms.
fn ts_ms(ts: &str) -> Option<i64> {
    ts.parse::<f64>().ok().map(|t| (t * 1000.0) as i64)
}
