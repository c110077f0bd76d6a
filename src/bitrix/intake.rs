//! Poll intake: learns about feed changes by reading `log.blogpost.get`
//! (docs/platforms/bitrix24.md §4.6, §6). An incoming webhook cannot subscribe to events, so
//! polling is the mode that works everywhere without a public URL.
//!
//! Each cycle reads the first page of the feed once per watched audience (`LOG_RIGHTS`; one
//! `batch` request when there are several), ordered by last activity, and follows further pages
//! only while they still hold something new. A post counts as addressed to an audience when
//! that audience's query returns it. What changed becomes an event: a new post, a new content
//! hash (title, text, importance) or audience, a new `NUM_COMMENTS`. Posts that vanish are
//! found by re-reading tracked posts younger than `reconcile_window` every
//! `reconcile_interval`. The events and the intake's own bookkeeping are accepted into the
//! journal in one transaction, so a crash between reading and accepting only repeats a read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use livefeed_core::health::Health;
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::layout::content_hash;
use livefeed_core::model::{Audience, FeedEvent, FeedFile, FeedPost, Inbound, PostId};
use livefeed_core::richtext::{Doc, Inline};
use livefeed_core::route::Routing;
use livefeed_core::store::{Store, StoreError, now_ms};

use super::client::{ApiError, BitrixClient, MAX_BATCH, as_list, as_u64, value_text};
use super::config::{BitrixConfig, PollConfig};
use super::people::People;
use super::{PLATFORM, bbcode};
use crate::reload::Live;
use crate::upstream::{ErrorClass, Repeat};

const STATE_KEY: &str = "bitrix24/poll";
/// How a poll cycle hands its changes to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Flushed before returning: for a read an event asked for, which is acknowledged after.
    Durably,
    /// Flushed by the next flush (the poll's own cycles): a crash before it only means the
    /// same changes are read again ([`Journal::accept_repeatable`]).
    Repeatably,
}

/// How soon a failed first poll is tried again, whatever the poll interval.
const FIRST_POLL_RETRY: Duration = Duration::from_secs(5);
const SEEN_PREFIX: &str = "bitrix24/seen/";
/// Deletions held for an operator: post → its dead letter.
const HELD_PREFIX: &str = "bitrix24/held/";
/// `log.blogpost.get` pages are fixed at 50.
const PAGE: usize = 50;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PollState {
    /// Highest post id visible on the first start; older untracked posts are history.
    baseline_max_id: Option<u64>,
    last_reconcile_ms: i64,
}

/// What the intake last saw of a post it tracks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SeenPost {
    hash: u64,
    num_comments: u32,
    audiences: BTreeSet<Audience>,
    published_at: i64,
    deleted: bool,
    /// Important when last seen (and not past `important_until`).
    #[serde(default)]
    important: bool,
    /// `UF_IMPRTANT_DATE_END`, unix seconds.
    #[serde(default)]
    important_until: Option<i64>,
    /// Readers last counted while important.
    #[serde(default)]
    readers: Option<u32>,
}

impl SeenPost {
    /// What the intake sees of `raw` now, keeping the reader count while it stays important.
    fn of(raw: &RawPost, audiences: BTreeSet<Audience>, before: Option<&SeenPost>) -> Self {
        SeenPost {
            hash: raw.hash(),
            num_comments: raw.num_comments,
            audiences,
            published_at: raw.published_at,
            deleted: false,
            important: raw.important,
            important_until: raw.important_until,
            readers: before.filter(|_| raw.important).and_then(|b| b.readers),
        }
    }
}

/// Posts found in one poll: id → (the post, the audiences it was found under).
/// Posts read, with the audiences they were found under and whether any of those reads found
/// them new or changed (so that unchanged posts are not looked up twice per cycle).
type Found = BTreeMap<u64, (RawPost, BTreeSet<Audience>, bool)>;
/// A post to journal: as read, its audiences, and what the intake saw of it before.
type Change = (RawPost, BTreeSet<Audience>, Option<SeenPost>);

fn seen_key(id: u64) -> String {
    format!("{SEEN_PREFIX}{id:020}")
}

fn held_key(id: u64) -> String {
    format!("{HELD_PREFIX}{id}")
}

/// A post as `log.blogpost.get` returns it, reduced to what the bridge uses.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPost {
    /// `ID`.
    pub id: u64,
    /// `AUTHOR_ID`.
    pub author_id: u64,
    /// `TITLE` (derived from the text when `micro`).
    pub title: String,
    /// `MICRO`: a post without a title of its own.
    pub micro: bool,
    /// `DETAIL_TEXT`, BBCode.
    pub text: String,
    /// `UF_BLOG_POST_IMPRTNT`, unless `important_until` has passed.
    pub important: bool,
    /// `UF_IMPRTANT_DATE_END`: when the mark ends, unix seconds.
    pub important_until: Option<i64>,
    /// `NUM_COMMENTS`.
    pub num_comments: u32,
    /// `DATE_PUBLISH`, unix seconds.
    pub published_at: i64,
    /// `HAS_SOCNET_ALL`: addressed to everyone (`None` when the portal did not say).
    pub for_everyone: Option<bool>,
    /// `FILES` (or `UF_BLOG_POST_FILE.VALUE`): the attached objects, in order.
    pub files: Vec<u64>,
}

impl RawPost {
    /// Parse one list item; `None` for items without a usable id or author.
    pub fn parse(v: &Value) -> Option<RawPost> {
        let id = v.get("ID").and_then(as_u64)?;
        let author_id = v.get("AUTHOR_ID").and_then(as_u64)?;
        let marked = v
            .get("UF_BLOG_POST_IMPRTNT")
            .and_then(|f| f.get("VALUE"))
            .is_some_and(truthy);
        let published = v.get("DATE_PUBLISH").map(value_text).unwrap_or_default();
        // The end date comes in the portal's local format without an offset; the
        // publication date, in ISO 8601, carries the portal's offset.
        let important_until = v
            .get("UF_IMPRTANT_DATE_END")
            .and_then(|f| f.get("VALUE"))
            .map(value_text)
            .filter(|t| !t.trim().is_empty())
            .and_then(|t| parse_date(&t))
            .map(|local| local - utc_offset(&published).unwrap_or(0));
        let important = marked && important_until.is_none_or(|end| end > now_ms() / 1000);
        Some(RawPost {
            id,
            author_id,
            title: v.get("TITLE").map(value_text).unwrap_or_default(),
            micro: v.get("MICRO").map(value_text).as_deref() == Some("Y"),
            text: v.get("DETAIL_TEXT").map(value_text).unwrap_or_default(),
            important,
            important_until,
            num_comments: v
                .get("NUM_COMMENTS")
                .and_then(as_u64)
                .unwrap_or(0)
                .min(u32::MAX as u64) as u32,
            published_at: parse_date(&published).unwrap_or(0),
            for_everyone: v.get("HAS_SOCNET_ALL").filter(|f| !f.is_null()).map(truthy),
            files: attached_files(v),
        })
    }

    fn hash(&self) -> u64 {
        // Posts without files hash as before files were read, so an upgrade re-sends nothing.
        if self.files.is_empty() {
            content_hash(&(&self.title, self.micro, &self.text, self.important))
        } else {
            content_hash(&(
                &self.title,
                self.micro,
                &self.text,
                self.important,
                &self.files,
            ))
        }
    }
}

/// The attached-object ids of a post: `FILES`, or `UF_BLOG_POST_FILE.VALUE` where `FILES` is
/// absent (docs/platforms/bitrix24.md §4.6). Either may be a list of numbers or of numeric
/// strings, or `false`/`null` when empty.
fn attached_files(v: &Value) -> Vec<u64> {
    let list = v
        .get("FILES")
        .filter(|f| f.is_array() || f.is_object())
        .or_else(|| v.get("UF_BLOG_POST_FILE").and_then(|f| f.get("VALUE")));
    let mut out: Vec<u64> = Vec::new();
    for id in list.map(as_list).unwrap_or_default() {
        if let Some(id) = as_u64(id)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !matches!(s.trim(), "" | "0" | "N" | "n" | "false"),
        _ => false,
    }
}

/// The `LOG_RIGHTS` codes that find posts for an audience (docs/platforms/bitrix24.md §12):
/// the REST docs say `UA` for everyone, the blog module stores `G2` and `AU`, so all three are
/// asked and [`addressed_to`] keeps only what is really for everyone.
pub fn audience_codes(a: Audience) -> Vec<String> {
    match a {
        Audience::All => vec!["UA".into(), "G2".into(), "AU".into()],
        Audience::Group(id) => vec![format!("SG{id}")],
        Audience::Department(id) => vec![format!("DR{id}")],
        Audience::User(id) => vec![format!("U{id}")],
    }
}

/// Whether a post found under `audience`'s codes is really addressed to it. The blog module
/// adds the author's own `U<author>` to every post's rights, so `user:N` finds everything N
/// wrote: that alone does not address it to N. A post for everyone says so in
/// `HAS_SOCNET_ALL`.
pub fn addressed_to(post: &RawPost, audience: Audience) -> bool {
    match audience {
        Audience::All => post.for_everyone != Some(false),
        Audience::User(id) => post.author_id != id,
        Audience::Group(_) | Audience::Department(_) => true,
    }
}

pub struct PollIntake {
    client: BitrixClient,
    journal: Journal,
    store: Store,
    people: People,
    /// The mappings in force: which audiences to watch.
    routing: Routing,
    poll: Live<PollConfig>,
    backfill: u32,
    portal_url: String,
    health: Arc<Health>,
    /// Held by every read that compares with and updates the seen posts.
    reading: tokio::sync::Mutex<()>,
    /// True once the first poll's baseline is durable.
    baselined: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PollIntake {
    /// An intake that watches `audiences` as `cfg` says.
    pub fn new(
        client: BitrixClient,
        journal: Journal,
        people: People,
        routing: Routing,
        poll: Live<PollConfig>,
        cfg: &BitrixConfig,
        health: Arc<Health>,
    ) -> Self {
        health.register(PLATFORM.as_str());
        PollIntake {
            store: journal.store().clone(),
            client,
            journal,
            people,
            routing,
            poll,
            backfill: cfg.backfill,
            portal_url: cfg.portal_url.clone(),
            health,
            reading: tokio::sync::Mutex::new(()),
            baselined: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Wait until the first poll's baseline is durable (at once when an earlier run set it).
    /// Feed events must not be subscribed before: a post written between subscribing and the
    /// baseline would count as history, and its event would be dropped as old.
    pub async fn baselined(&self) -> Result<(), StoreError> {
        let state: Option<PollState> = self.store.cursor(STATE_KEY)?;
        if state.is_some_and(|s| s.baseline_max_id.is_some()) {
            self.baselined.send_replace(true);
        }
        let mut rx = self.baselined.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = rx.wait_for(|done| *done).await;
        Ok(())
    }

    /// Poll until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if let Err(e) = self.report_held() {
            warn!(error = %e, "cannot read held deletions");
        }
        loop {
            let outcome = async {
                self.poll_once(Accept::Repeatably).await?;
                // New posts flow once the poll works: ready now, not after a reconcile round
                // that re-reads a whole window of posts (minutes on a large portal).
                self.health.ok(PLATFORM.as_str());
                let state: PollState = self.store.cursor(STATE_KEY)?.unwrap_or_default();
                let due = now_ms() - state.last_reconcile_ms
                    >= self.poll.get().reconcile_interval.as_millis() as i64;
                if due {
                    self.reconcile_once().await?;
                }
                Ok::<_, PollError>(())
            };
            let outcome = tokio::select! {
                o = outcome => o,
                _ = cancel.cancelled() => return,
            };
            let mut pause = self.poll.get().interval;
            match outcome {
                Ok(()) => self.health.ok(PLATFORM.as_str()),
                Err(e) => {
                    let auth = matches!(&e, PollError::Api(a) if a.class == ErrorClass::Auth);
                    warn!(error = %e, "Bitrix24 poll failed; will try again");
                    self.health.error(PLATFORM.as_str(), &e.to_string(), auth);
                    // Feed events wait for the baseline: do not leave them waiting a whole
                    // safety-net interval.
                    if !*self.baselined.borrow() {
                        pause = pause.min(FIRST_POLL_RETRY);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One poll cycle: read what is new, accept it.
    pub async fn poll_once(&self, accept: Accept) -> Result<(), PollError> {
        // The safety-net poll and the event worker read the same posts: one at a time, or
        // both would announce a new post.
        let _reading = self.reading.lock().await;
        let state: PollState = self.store.cursor(STATE_KEY)?.unwrap_or_default();
        let first_run = state.baseline_max_id.is_none();
        let found = self.read_feed(&state).await?;
        let (changed, new_state) = if first_run {
            self.baseline(found)
        } else {
            (self.changed(&state, found)?, state)
        };
        let mut batch = self.journal_changes(changed).await;
        if first_run || !batch.events.is_empty() {
            batch.cursors.push((
                STATE_KEY.into(),
                serde_json::to_vec(&new_state).expect("serializable"),
            ));
        }
        if first_run || accept == Accept::Durably {
            // A baseline is never repeatable: read again later, it would take posts written
            // in between for history.
            self.journal.accept(batch).await?;
        } else {
            self.journal.accept_repeatable(batch).await?;
        }
        if first_run {
            info!("first Bitrix24 poll done: posts from now on will be mirrored");
            self.baselined.send_replace(true);
        }
        Ok(())
    }

    /// Read the first pages of every audience, further while the last post of a full page is
    /// new (or, on the first run, until `backfill` posts are found). Returns each post with
    /// the audiences it was found under.
    async fn read_feed(&self, state: &PollState) -> Result<Found, PollError> {
        let first_run = state.baseline_max_id.is_none();
        let mut found = Found::new();
        let mut pending: Vec<(Audience, u64)> = self
            .routing
            .current()
            .audiences()
            .into_iter()
            .map(|a| (a, 0))
            .collect();
        let max_pages = self.poll.get().max_pages as usize;
        let mut pages = 0;
        while !pending.is_empty() && pages < max_pages {
            // The first round reads one page per audience. An audience whose whole page was
            // new (a backlog after an outage) is read ahead in the next round: as many pages
            // as one `batch` holds, so a backlog costs two requests, not one per page.
            let ahead = if pages == 0 {
                1
            } else {
                (MAX_BATCH / pending.len()).clamp(1, max_pages - pages)
            };
            pages += ahead;
            let wanted: Vec<(Audience, u64)> = pending
                .iter()
                .flat_map(|(a, start)| {
                    (0..ahead as u64).map(move |k| (*a, start + k * PAGE as u64))
                })
                .collect();
            let read = self.read_pages(&wanted).await?;
            let mut next_pending = Vec::new();
            for (audience, start) in &pending {
                // This audience's pages in order, up to the first that failed.
                let mut expected = *start;
                let mut follow = None;
                for (_, page_start, posts, next) in read.iter().filter(|r| r.0 == *audience) {
                    if *page_start != expected {
                        break;
                    }
                    expected += PAGE as u64;
                    let full = posts.len() >= PAGE;
                    let mut last_is_new = false;
                    for post in posts {
                        last_is_new =
                            self.is_new_or_changed(post, *audience, state.baseline_max_id)?;
                        if !addressed_to(post, *audience) {
                            continue;
                        }
                        let entry = found
                            .entry(post.id)
                            .or_insert_with(|| (post.clone(), BTreeSet::new(), false));
                        entry.1.insert(*audience);
                        entry.2 |= last_is_new;
                    }
                    let want_more = if first_run {
                        found.len() < self.backfill as usize
                    } else {
                        full && last_is_new
                    };
                    follow = want_more.then_some(*next).flatten();
                    if follow.is_none() {
                        break;
                    }
                }
                if let Some(next) = follow {
                    next_pending.push((*audience, next));
                }
            }
            pending = next_pending;
        }
        Ok(found)
    }

    /// The first run: everything visible now is history, except the newest `backfill` posts.
    fn baseline(&self, mut found: Found) -> (Vec<Change>, PollState) {
        let state = PollState {
            baseline_max_id: Some(found.keys().max().copied().unwrap_or(0)),
            last_reconcile_ms: now_ms(),
        };
        let newest: Vec<u64> = found
            .keys()
            .rev()
            .take(self.backfill as usize)
            .copied()
            .collect();
        let mut changed = Vec::new();
        for id in newest.into_iter().rev() {
            let (raw, auds, _) = found.remove(&id).expect("id from the map");
            changed.push((raw, auds, None));
        }
        debug!(
            baseline = state.baseline_max_id,
            backfill = changed.len(),
            "first Bitrix24 poll: posts up to the baseline are history"
        );
        (changed, state)
    }

    /// The posts found that are new since the baseline, or changed since last seen.
    fn changed(&self, state: &PollState, found: Found) -> Result<Vec<Change>, PollError> {
        let baseline = state.baseline_max_id.unwrap_or(0);
        let mut changed = Vec::new();
        for (id, (raw, auds, flagged)) in found {
            // Unflagged: its record matched under every audience it was read under, which is
            // what the checks below would find again.
            if !flagged {
                continue;
            }
            let seen: Option<SeenPost> = self.store.cursor(&seen_key(id))?;
            match &seen {
                Some(s) if s.deleted => continue,
                Some(s) => {
                    let grown = !auds.is_subset(&s.audiences);
                    if s.hash == raw.hash() && s.num_comments == raw.num_comments && !grown {
                        continue;
                    }
                }
                None if id <= baseline => continue,
                None => {}
            }
            changed.push((raw, auds, seen));
        }
        Ok(changed)
    }

    /// The events and bookkeeping for `changed` posts, authors looked up in one go.
    async fn journal_changes(&self, changed: Vec<Change>) -> Batch {
        let authors: Vec<u64> = changed.iter().map(|(r, _, _)| r.author_id).collect();
        self.people.prefetch(&authors).await;
        let mut batch = Batch::default();
        for (raw, auds, seen) in changed {
            let audiences: BTreeSet<Audience> = match &seen {
                Some(s) => s.audiences.union(&auds).copied().collect(),
                None => auds,
            };
            let next = SeenPost::of(&raw, audiences.clone(), seen.as_ref());
            let post = self
                .to_feed_post(&raw, audiences.clone(), next.readers)
                .await;
            let event = match &seen {
                None => FeedEvent::PostCreated(post),
                Some(s) if s.hash != raw.hash() || audiences != s.audiences => {
                    FeedEvent::PostEdited(post)
                }
                Some(_) => FeedEvent::CommentsChanged(post),
            };
            debug!(post = raw.id, kind = event.kind(), "feed change");
            let source_ms =
                matches!(event, FeedEvent::PostCreated(_)).then_some(raw.published_at * 1000);
            batch.events.push((Inbound::Feed(event), source_ms));
            batch.cursors.push((
                seen_key(raw.id),
                serde_json::to_vec(&next).expect("serializable"),
            ));
        }
        batch
    }

    /// The seen posts that `keep` keeps, read one at a time: the store holds one per post
    /// ever seen, and a round needs only some of them.
    fn seen_posts(
        &self,
        keep: impl Fn(u64, &SeenPost) -> bool,
    ) -> Result<Vec<(u64, SeenPost)>, StoreError> {
        let mut kept = Vec::new();
        for item in self.store.scan_cursors::<SeenPost>(SEEN_PREFIX) {
            let (key, seen) = item?;
            if let Ok(id) = key[SEEN_PREFIX.len()..].parse()
                && keep(id, &seen)
            {
                kept.push((id, seen));
            }
        }
        Ok(kept)
    }

    /// Re-read tracked posts younger than the window: find deletions and edits that did not
    /// bubble up to the first page. A post that comes back empty is verified before its
    /// mirrors go (see [`PollIntake::settle_vanished`]).
    pub async fn reconcile_once(&self) -> Result<(), PollError> {
        let _reading = self.reading.lock().await;
        let cutoff = (now_ms() - self.poll.get().reconcile_window.as_millis() as i64) / 1000;
        let held = self.held()?;
        let tracked = self.seen_posts(|id, s| {
            !s.deleted && (s.published_at >= cutoff || held.contains_key(&id))
        })?;
        let mut batch = self.reread_tracked(tracked, &held).await?;
        let mut state: PollState = self.store.cursor(STATE_KEY)?.unwrap_or_default();
        state.last_reconcile_ms = now_ms();
        batch.cursors.push((
            STATE_KEY.into(),
            serde_json::to_vec(&state).expect("serializable"),
        ));
        self.journal.accept(batch).await?;
        self.report_held()?;
        Ok(())
    }

    /// Every `every` until cancelled: end the importance of posts whose end date passed
    /// and, when `count` is on, count the readers of the others.
    pub async fn run_importance(
        self: Arc<Self>,
        count: bool,
        every: Duration,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = self.importance_round(count).await {
                warn!(error = %e, "checking important posts failed; will try again");
            }
        }
    }

    /// One round over the tracked important posts: `log.blogpost.getusers.important` for 50
    /// posts per `batch`; a changed count, or an end date that passed, is journaled.
    pub async fn importance_round(&self, count: bool) -> Result<(), PollError> {
        let _reading = self.reading.lock().await;
        let now = now_ms() / 1000;
        let important = self.seen_posts(|_, s| !s.deleted && s.important)?;
        let mut batch = Batch::default();
        let record = |id: u64, next: &SeenPost, batch: &mut Batch| {
            let event = FeedEvent::ImportanceChanged {
                post: PostId(id),
                important: next.important,
                readers: next.readers,
            };
            batch.events.push((Inbound::Feed(event), None));
            batch.cursors.push((
                seen_key(id),
                serde_json::to_vec(next).expect("serializable"),
            ));
        };
        let mut counting = Vec::new();
        for (id, seen) in important {
            if seen.important_until.is_some_and(|end| end <= now) {
                debug!(post = id, "importance ended");
                let next = SeenPost {
                    important: false,
                    readers: None,
                    ..seen
                };
                record(id, &next, &mut batch);
            } else if count {
                counting.push((id, seen));
            }
        }
        for chunk in counting.chunks(50) {
            let cmds: Vec<(String, String, Value)> = chunk
                .iter()
                .map(|(id, _)| {
                    (
                        format!("r{id}"),
                        "log.blogpost.getusers.important".to_string(),
                        json!({ "POST_ID": id }),
                    )
                })
                .collect();
            let resp = self.client.batch(&cmds).await?;
            for (id, seen) in chunk {
                let Some(result) = resp.results.get(&format!("r{id}")) else {
                    continue;
                };
                let readers = as_list(result).len().min(u32::MAX as usize) as u32;
                if seen.readers != Some(readers) {
                    let next = SeenPost {
                        readers: Some(readers),
                        ..seen.clone()
                    };
                    record(*id, &next, &mut batch);
                }
            }
        }
        if !batch.events.is_empty() {
            self.journal.accept(batch).await?;
        }
        Ok(())
    }

    /// A feed event named these posts: read what changed. Posts the intake tracks are read
    /// by id (an edit, a deletion, new comments); any other post means the feed's first page
    /// is read as in a poll cycle, since only that tells which audiences a post is for.
    pub async fn refresh_posts(&self, ids: &BTreeSet<u64>) -> Result<(), PollError> {
        let mut tracked = Vec::new();
        let mut untracked = false;
        for id in ids {
            match self.store.cursor::<SeenPost>(&seen_key(*id))? {
                Some(seen) if seen.deleted => {}
                Some(seen) => tracked.push((*id, seen)),
                None => untracked = true,
            }
        }
        if untracked {
            // The event that asked for this read is cleared once it returns.
            self.poll_once(Accept::Durably).await?;
        }
        if !tracked.is_empty() {
            let _reading = self.reading.lock().await;
            let held = self.held()?;
            let batch = self.reread_tracked(tracked, &held).await?;
            self.journal.accept(batch).await?;
            self.report_held()?;
        }
        Ok(())
    }

    /// Re-read `tracked` posts: the events and bookkeeping for what changed, and the
    /// verdict on those that vanished.
    async fn reread_tracked(
        &self,
        tracked: Vec<(u64, SeenPost)>,
        held: &BTreeMap<u64, u64>,
    ) -> Result<Batch, PollError> {
        let mut batch = Batch::default();
        let mut vanished = Vec::new();
        // Everyone's feed is readable while the webhook works at all.
        let mut readable: BTreeSet<Audience> = [Audience::All].into();
        for chunk in tracked.chunks(50) {
            let mut changed = Vec::new();
            for (id, seen, raw) in self.reread(chunk).await? {
                match raw {
                    None => vanished.push((id, seen)),
                    Some(raw) => {
                        readable.extend(seen.audiences.iter().copied());
                        if let Some(letter) = held.get(&id) {
                            self.withdraw_hold(id, *letter)?;
                        }
                        if raw.hash() != seen.hash || raw.num_comments != seen.num_comments {
                            changed.push((id, seen, raw));
                        }
                    }
                }
            }
            let authors: Vec<u64> = changed.iter().map(|(_, _, r)| r.author_id).collect();
            self.people.prefetch(&authors).await;
            for (id, seen, raw) in changed {
                self.journal_update(id, seen, raw, &mut batch).await;
            }
        }
        self.settle_vanished(vanished, readable, held, &mut batch)
            .await?;
        Ok(batch)
    }

    /// Re-read up to 50 tracked posts in one `batch`: each post that answered, with what came
    /// back (`None`: the post is not visible any more).
    async fn reread(
        &self,
        chunk: &[(u64, SeenPost)],
    ) -> Result<Vec<(u64, SeenPost, Option<RawPost>)>, PollError> {
        let cmds: Vec<(String, String, Value)> = chunk
            .iter()
            .map(|(id, _)| {
                (
                    format!("p{id}"),
                    "log.blogpost.get".to_string(),
                    json!({ "POST_ID": id }),
                )
            })
            .collect();
        let resp = self.client.batch(&cmds).await?;
        let mut out = Vec::new();
        for (id, seen) in chunk {
            let key = format!("p{id}");
            if let Some(err) = resp.errors.get(&key) {
                debug!(post = id, error = %err, "re-read failed; next round");
                continue;
            }
            let Some(result) = resp.results.get(&key) else {
                continue;
            };
            let raw = as_list(result).into_iter().find_map(RawPost::parse);
            out.push((*id, seen.clone(), raw));
        }
        Ok(out)
    }

    /// The event and bookkeeping for a post that changed since last seen.
    async fn journal_update(&self, id: u64, seen: SeenPost, raw: RawPost, batch: &mut Batch) {
        let next = SeenPost::of(&raw, seen.audiences.clone(), Some(&seen));
        let post = self
            .to_feed_post(&raw, seen.audiences.clone(), next.readers)
            .await;
        let event = if raw.hash() != seen.hash {
            FeedEvent::PostEdited(post)
        } else {
            FeedEvent::CommentsChanged(post)
        };
        batch.events.push((Inbound::Feed(event), None));
        batch.cursors.push((
            seen_key(id),
            serde_json::to_vec(&next).expect("serializable"),
        ));
    }

    /// Posts that came back empty. The feed answers the same for a deleted post and for one
    /// the webhook user can no longer see (it left the group, the post went to moderation),
    /// so a post counts as deleted only when it is still missing on a second read and one of
    /// its audiences is still readable. The others, and every deletion of a round with more
    /// than `max_deletions_per_round`, are held: each becomes a dead letter an operator can
    /// release (`dead-letters retry`), and `/readyz` shows the side degraded until then.
    async fn settle_vanished(
        &self,
        vanished: Vec<(u64, SeenPost)>,
        mut readable: BTreeSet<Audience>,
        held: &BTreeMap<u64, u64>,
        batch: &mut Batch,
    ) -> Result<(), PollError> {
        if vanished.is_empty() {
            return Ok(());
        }
        let mut missing = Vec::new();
        for chunk in vanished.chunks(50) {
            for (id, seen, raw) in self.reread(chunk).await? {
                if raw.is_none() {
                    missing.push((id, seen));
                }
            }
        }
        let unknown: Vec<Audience> = missing
            .iter()
            .flat_map(|(_, s)| s.audiences.iter().copied())
            .filter(|a| !readable.contains(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Membership says it best; where the portal will not tell (scope missing), an
        // audience whose feed still shows a post is readable.
        let membership = self.membership(&unknown).await;
        let undecided: Vec<Audience> = unknown
            .iter()
            .copied()
            .filter(|a| membership.get(a).copied().flatten().is_none())
            .collect();
        readable.extend(
            membership
                .iter()
                .filter(|(_, m)| **m == Some(true))
                .map(|(a, _)| *a),
        );
        readable.extend(self.readable(&undecided).await?);
        let (mut gone, mut unverifiable) = (Vec::new(), Vec::new());
        for (id, seen) in missing {
            if let Some(letter) = held.get(&id) {
                self.settle_held(id, *letter, &seen, batch)?;
            } else if seen.audiences.iter().any(|a| readable.contains(a)) {
                gone.push((id, seen));
            } else {
                unverifiable.push((id, seen));
            }
        }
        let max = self.poll.get().max_deletions_per_round;
        if gone.len() > max {
            let reason = format!(
                "{} posts vanished from the feed in one reconcile round, more than bitrix24.poll.max_deletions_per_round ({max}); check the webhook user's access, then release the deletions",
                gone.len()
            );
            for (id, _) in &gone {
                self.hold(*id, &reason)?;
            }
        } else {
            for (id, seen) in gone {
                info!(post = id, "post deleted from the feed");
                let next = SeenPost {
                    deleted: true,
                    ..seen
                };
                batch.events.push((
                    Inbound::Feed(FeedEvent::PostDeleted(PostId(id))),
                    Some(now_ms()),
                ));
                batch.cursors.push((
                    seen_key(id),
                    serde_json::to_vec(&next).expect("serializable"),
                ));
            }
        }
        for (id, seen) in &unverifiable {
            let audiences: Vec<String> = seen.audiences.iter().map(|a| a.to_string()).collect();
            let reason = format!(
                "the post vanished and the webhook user can no longer read its audience ({}); it may be deleted, or the user may have lost access",
                audiences.join(", ")
            );
            self.hold(*id, &reason)?;
        }
        Ok(())
    }

    /// Whether the webhook user still belongs to each audience: its workgroups
    /// (`sonet_group.user.groups`), its departments and their parents (`user.current`,
    /// `department.get`), itself. `None` where the portal does not say (a scope missing).
    async fn membership(&self, audiences: &[Audience]) -> BTreeMap<Audience, Option<bool>> {
        let mut out = BTreeMap::new();
        let wants = |f: fn(&Audience) -> bool| audiences.iter().any(f);
        let groups = if wants(|a| matches!(a, Audience::Group(_))) {
            self.client
                .call("sonet_group.user.groups", json!({}), Repeat::Safe)
                .await
                .ok()
                .map(|r| {
                    as_list(&r.result)
                        .into_iter()
                        .filter_map(|g| g.get("GROUP_ID").and_then(as_u64))
                        .collect::<BTreeSet<u64>>()
                })
        } else {
            None
        };
        let departments = if wants(|a| matches!(a, Audience::Department(_))) {
            self.departments_of_self().await
        } else {
            None
        };
        let me = if wants(|a| matches!(a, Audience::User(_))) {
            self.client.acting_user().await
        } else {
            None
        };
        for a in audiences {
            let member = match a {
                Audience::All => Some(true),
                Audience::Group(g) => groups.as_ref().map(|set| set.contains(g)),
                Audience::Department(d) => departments.as_ref().map(|set| set.contains(d)),
                Audience::User(u) => me.map(|me| *u == me).filter(|is| *is),
            };
            out.insert(*a, member);
        }
        out
    }

    /// The webhook user's departments and every department above them.
    async fn departments_of_self(&self) -> Option<BTreeSet<u64>> {
        let me = self
            .client
            .call("user.current", json!({}), Repeat::Safe)
            .await
            .ok()?;
        let own: Vec<u64> = me
            .result
            .get("UF_DEPARTMENT")
            .map(as_list)
            .unwrap_or_default()
            .into_iter()
            .filter_map(as_u64)
            .collect();
        let mut parent: BTreeMap<u64, u64> = BTreeMap::new();
        let mut start = 0;
        for _ in 0..self.poll.get().max_pages {
            let page = self
                .client
                .call("department.get", json!({ "START": start }), Repeat::Safe)
                .await
                .ok()?;
            for d in as_list(&page.result) {
                if let (Some(id), Some(p)) = (
                    d.get("ID").and_then(as_u64),
                    d.get("PARENT").and_then(as_u64),
                ) {
                    parent.insert(id, p);
                }
            }
            match page.next {
                Some(next) => start = next,
                None => break,
            }
        }
        let mut all = BTreeSet::new();
        for mut d in own {
            // Parents, bounded: a broken tree must not loop.
            for _ in 0..64 {
                if !all.insert(d) {
                    break;
                }
                match parent.get(&d) {
                    Some(p) => d = *p,
                    None => break,
                }
            }
        }
        Some(all)
    }

    /// The audiences of `audiences` the webhook user can still read: their feed shows a post.
    async fn readable(&self, audiences: &[Audience]) -> Result<Vec<Audience>, PollError> {
        if audiences.is_empty() {
            return Ok(Vec::new());
        }
        let pending: Vec<(Audience, u64)> = audiences.iter().map(|a| (*a, 0)).collect();
        Ok(self
            .read_pages(&pending)
            .await?
            .into_iter()
            .filter(|(_, _, posts, _)| !posts.is_empty())
            .map(|(a, _, _, _)| a)
            .collect())
    }

    /// Hold a deletion for an operator: a dead letter that, retried, deletes the mirrors.
    fn hold(&self, id: u64, reason: &str) -> Result<(), StoreError> {
        let letter = self.store.add_dead_letter(
            format!("delete the mirrors of post {id} (vanished from the feed)"),
            reason.to_string(),
            Inbound::Feed(FeedEvent::PostDeleted(PostId(id))),
        )?;
        self.store.put_cursor(&held_key(id), &letter.id)?;
        warn!(
            post = id,
            dead_letter = letter.id,
            reason,
            "deletion held for an operator"
        );
        Ok(())
    }

    /// A held post that is visible again: the hold was a false alarm.
    fn withdraw_hold(&self, id: u64, letter: u64) -> Result<(), StoreError> {
        self.store.remove_dead_letter(letter)?;
        self.store.remove_cursor(&held_key(id))?;
        info!(
            post = id,
            "a held post is visible again; its held deletion is withdrawn"
        );
        Ok(())
    }

    /// A held post still missing: once the operator released it (the dead letter was
    /// retried), it is deleted for good and no longer held.
    fn settle_held(
        &self,
        id: u64,
        letter: u64,
        seen: &SeenPost,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        if self.store.dead_letter(letter)?.is_some() {
            return Ok(());
        }
        self.store.remove_cursor(&held_key(id))?;
        let next = SeenPost {
            deleted: true,
            ..seen.clone()
        };
        batch.cursors.push((
            seen_key(id),
            serde_json::to_vec(&next).expect("serializable"),
        ));
        Ok(())
    }

    /// Held deletions: post → dead letter.
    fn held(&self) -> Result<BTreeMap<u64, u64>, StoreError> {
        Ok(self
            .store
            .cursors_with_prefix::<u64>(HELD_PREFIX)?
            .into_iter()
            .filter_map(|(k, letter)| k[HELD_PREFIX.len()..].parse().ok().map(|id| (id, letter)))
            .collect())
    }

    /// Show held deletions in `/readyz` and `/metrics`.
    fn report_held(&self) -> Result<(), StoreError> {
        let held = self.held()?.len();
        let reason = (held > 0).then(|| {
            format!(
                "{held} feed deletion(s) held for an operator: posts vanished and could not be verified as deleted (livefeed-bridge dead-letters list)"
            )
        });
        self.health.degraded(PLATFORM.as_str(), reason);
        self.journal.metrics().held_deletions.set(held as i64);
        Ok(())
    }

    /// Read one page per `(audience, start)`: a plain call for one, a `batch` for several.
    async fn read_pages(
        &self,
        pending: &[(Audience, u64)],
    ) -> Result<Vec<(Audience, u64, Vec<RawPost>, Option<u64>)>, ApiError> {
        let params =
            |a: Audience, start: u64| json!({ "LOG_RIGHTS": audience_codes(a), "start": start });
        let parse = |v: &Value| {
            as_list(v)
                .into_iter()
                .filter_map(RawPost::parse)
                .collect::<Vec<_>>()
        };
        if let [(audience, start)] = pending {
            let resp = self
                .client
                .call("log.blogpost.get", params(*audience, *start), Repeat::Safe)
                .await?;
            return Ok(vec![(*audience, *start, parse(&resp.result), resp.next)]);
        }
        let mut out = Vec::new();
        for chunk in pending.chunks(50) {
            let cmds: Vec<(String, String, Value)> = chunk
                .iter()
                .enumerate()
                .map(|(i, (a, start))| {
                    (
                        format!("a{i}"),
                        "log.blogpost.get".to_string(),
                        params(*a, *start),
                    )
                })
                .collect();
            let resp = self.client.batch(&cmds).await?;
            for (i, (audience, start)) in chunk.iter().enumerate() {
                let key = format!("a{i}");
                if let Some(err) = resp.errors.get(&key) {
                    // One audience failing (e.g. a group the webhook user left) must not stop
                    // the others; an auth error stops the cycle.
                    if err.class == ErrorClass::Auth {
                        return Err(err.clone());
                    }
                    warn!(audience = %audience, error = %err, "feed read failed for one audience");
                    continue;
                }
                let posts = resp.results.get(&key).map(parse).unwrap_or_default();
                out.push((*audience, *start, posts, resp.nexts.get(&key).copied()));
            }
        }
        Ok(out)
    }

    fn is_new_or_changed(
        &self,
        post: &RawPost,
        audience: Audience,
        baseline: Option<u64>,
    ) -> Result<bool, StoreError> {
        let Some(baseline) = baseline else {
            return Ok(true);
        };
        Ok(match self.store.cursor::<SeenPost>(&seen_key(post.id))? {
            Some(s) => {
                s.hash != post.hash()
                    || s.num_comments != post.num_comments
                    || !s.audiences.contains(&audience)
            }
            None => post.id > baseline,
        })
    }

    async fn to_feed_post(
        &self,
        raw: &RawPost,
        audiences: BTreeSet<Audience>,
        readers: Option<u32>,
    ) -> FeedPost {
        let mut body = bbcode::parse(&raw.text);
        let files = self.describe_files(raw, &mut body).await;
        FeedPost {
            id: PostId(raw.id),
            author: self.people.get(raw.author_id).await,
            title: (!raw.micro).then(|| raw.title.clone()),
            body,
            important: raw.important,
            readers,
            audiences,
            url: format!(
                "{}/company/personal/user/{}/blog/{}/",
                self.portal_url, raw.author_id, raw.id
            ),
            published_at: raw.published_at,
            num_comments: raw.num_comments,
            files,
        }
    }

    /// The post's files with their names and sizes (one `batch` of `disk.attachedObject.get`,
    /// only for posts that have files), plus the images its text shows; inline file
    /// references in `body` get their names. A file the portal cannot describe right now
    /// keeps a placeholder name: fetching it later asks again.
    async fn describe_files(&self, raw: &RawPost, body: &mut Doc) -> Vec<FeedFile> {
        let mut files: Vec<FeedFile> = raw
            .files
            .iter()
            .map(|id| FeedFile {
                id: id.to_string(),
                name: format!("file-{id}"),
                size: 0,
            })
            .collect();
        let mut objects: BTreeMap<String, String> = BTreeMap::new();
        for chunk in raw.files.chunks(50) {
            let cmds: Vec<(String, String, Value)> = chunk
                .iter()
                .map(|id| {
                    (
                        id.to_string(),
                        "disk.attachedObject.get".to_string(),
                        json!({ "id": id }),
                    )
                })
                .collect();
            match self.client.batch(&cmds).await {
                Ok(resp) => {
                    for f in files.iter_mut() {
                        let Some(obj) = resp.results.get(&f.id) else {
                            continue;
                        };
                        if let Some(name) =
                            obj.get("NAME").map(value_text).filter(|n| !n.is_empty())
                        {
                            f.name = name;
                        }
                        f.size = obj.get("SIZE").and_then(as_u64).unwrap_or(0);
                        if let Some(object) = obj.get("OBJECT_ID").and_then(as_u64) {
                            objects.insert(format!("n{object}"), f.id.clone());
                        }
                    }
                    for (id, e) in &resp.errors {
                        debug!(post = raw.id, file = %id, error = %e, "attached file not described");
                    }
                }
                Err(e) => warn!(post = raw.id, error = %e, "could not describe the post's files"),
            }
        }
        let names: BTreeMap<String, String> = files
            .iter()
            .map(|f| (f.id.clone(), f.name.clone()))
            .collect();
        body.for_each_inline_mut(&mut |inline| match inline {
            Inline::File { id, name } => {
                let attached = objects.get(id.as_str()).unwrap_or(id);
                if let Some(n) = names.get(attached) {
                    *name = n.clone();
                }
            }
            Inline::Image { url, .. }
                if url.starts_with("http://") || url.starts_with("https://") =>
            {
                let id = format!("url:{url}");
                if !files.iter().any(|f| f.id == id) {
                    let name = image_name(url);
                    files.push(FeedFile { id, name, size: 0 });
                }
            }
            _ => {}
        });
        files
    }
}

/// A file name for an image known only by its address: the last path segment.
fn image_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or("");
    if last.is_empty() || !last.contains('.') {
        "image.png".to_string()
    } else {
        last.to_string()
    }
}

/// Bitrix24 dates: ISO 8601 with an offset (`2026-03-17T15:29:15+03:00`), or the old site
/// format `21.10.2015 17:00:50` (taken as UTC). Returns unix seconds.
/// Anything out of range is `None`: the arithmetic below must never overflow.
pub fn parse_date(text: &str) -> Option<i64> {
    let t = text.trim();
    let num = |s: &str| s.parse::<i64>().ok();
    if let Some((date, rest)) = t.split_once('T') {
        let mut d = date.split('-');
        let (y, m, dd) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
        let (time, offset) = match rest.find(['+', '-', 'Z']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let secs = time_of_day(time)?;
        let off = match offset {
            "" | "Z" => 0,
            o => {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let hm = o[1..].replace(':', "");
                if hm.is_empty() || hm.len() > 4 || !hm.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let (h, mm) = hm.split_at(hm.len().min(2));
                let (h, mm) = (num(h)?, num(mm).unwrap_or(0));
                if h > 14 || mm > 59 {
                    return None;
                }
                sign * (h * 3600 + mm * 60)
            }
        };
        return Some(days_from_civil(y, m, dd)? * 86_400 + secs - off);
    }
    let (date, time) = t.split_once(' ')?;
    let mut d = date.split('.');
    let (dd, m, y) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    Some(days_from_civil(y, m, dd)? * 86_400 + time_of_day(time)?)
}

/// The UTC offset an ISO 8601 time is written in, in seconds (`+03:00` → 10800).
fn utc_offset(iso: &str) -> Option<i64> {
    let t = iso.trim();
    let (_, rest) = t.split_once('T')?;
    let at = t.len() - rest.len() + rest.find(['+', '-', 'Z'])?;
    Some(parse_date(&t[..at])? - parse_date(t)?)
}

fn time_of_day(t: &str) -> Option<i64> {
    let mut p = t.split(':');
    let h: i64 = p.next()?.parse().ok()?;
    let m: i64 = p.next()?.parse().ok()?;
    let s: f64 = p.next().unwrap_or("0").parse().ok()?;
    if !(0..=24).contains(&h) || !(0..=59).contains(&m) || !(0.0..61.0).contains(&s) {
        return None;
    }
    Some(h * 3600 + m * 60 + s as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm); years 1 to
/// 9999 only.
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(parse_date("2026-03-17T15:29:15+03:00"), Some(1_773_750_555));
        assert_eq!(parse_date("2026-03-17T12:29:15Z"), Some(1_773_750_555));
        assert_eq!(parse_date("21.10.2015 17:00:50"), Some(1_445_446_850));
        assert_eq!(parse_date("garbage"), None);
    }

    /// Found by the `inbound_payloads` fuzz target: huge fields overflowed the arithmetic, and
    /// a multibyte offset was split inside a character.
    #[test]
    fn dates_out_of_range_are_refused_not_overflowed() {
        assert_eq!(parse_date("0.-88880.-888888888888.-8[88888888.-8[ 0"), None);
        assert_eq!(parse_date("31.12.9223372036854775807 00:00:00"), None);
        assert_eq!(parse_date("2026-03-17T99999999999999:00:00Z"), None);
        assert_eq!(parse_date("2026-03-17T12:00:00+1é"), None);
        assert_eq!(parse_date("2026-03-17T12:00:00+99:00"), None);
        assert_eq!(parse_date("2026-13-17T12:00:00Z"), None);
        assert_eq!(parse_date("2026-03-17T12:00:00+03"), Some(1_773_738_000));
        assert_eq!(parse_date("2026-03-17T12:00:00-0330"), Some(1_773_761_400));
    }

    #[test]
    fn a_posts_files_come_from_files_or_the_user_field() {
        let base = json!({ "ID": "7", "AUTHOR_ID": "1", "DETAIL_TEXT": "x" });
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            RawPost::parse(&v).unwrap().files
        };
        assert_eq!(with(json!({ "FILES": [505, "506", 505] })), vec![505, 506]);
        assert_eq!(
            with(json!({ "UF_BLOG_POST_FILE": { "VALUE": [507] } })),
            vec![507]
        );
        assert_eq!(
            with(json!({ "UF_BLOG_POST_FILE": { "VALUE": false } })),
            Vec::<u64>::new()
        );
        assert_eq!(with(json!({})), Vec::<u64>::new());
        // A post without files hashes as it did before files were read.
        let plain = RawPost::parse(&base).unwrap();
        assert_eq!(
            plain.hash(),
            content_hash(&(&plain.title, plain.micro, &plain.text, plain.important))
        );
        assert_eq!(image_name("https://a.example/img/plan.png?x=1"), "plan.png");
        assert_eq!(image_name("https://a.example/render"), "image.png");
    }

    #[test]
    fn raw_post_accepts_string_numbers_and_importance() {
        let v = json!({
            "ID": "217", "AUTHOR_ID": "1269", "TITLE": "Новый регламент", "MICRO": "N",
            "DETAIL_TEXT": "[B]x[/B]", "NUM_COMMENTS": "3", "DATE_PUBLISH": "2026-03-17T15:29:15+03:00",
            "UF_BLOG_POST_IMPRTNT": { "VALUE": "1" }
        });
        let p = RawPost::parse(&v).unwrap();
        assert_eq!((p.id, p.author_id, p.num_comments), (217, 1269, 3));
        assert!(p.important && !p.micro);
        let mut v2 = v.clone();
        v2["UF_BLOG_POST_IMPRTNT"] = json!({ "VALUE": null });
        v2["ID"] = json!(217);
        let p2 = RawPost::parse(&v2).unwrap();
        assert!(!p2.important);
        assert_ne!(p.hash(), p2.hash());
        assert!(RawPost::parse(&json!({"ID": "x"})).is_none());
    }

    /// Every field of a feed item with every wrong JSON type: never a panic; an item without a
    /// usable id or author is skipped, any other field falls back to its default.
    #[test]
    fn raw_post_survives_every_field_with_every_wrong_type() {
        let valid = json!({
            "ID": "217", "AUTHOR_ID": "1269", "TITLE": "T", "MICRO": "N", "DETAIL_TEXT": "x",
            "NUM_COMMENTS": "3", "DATE_PUBLISH": "2026-03-17T15:29:15+03:00",
            "UF_BLOG_POST_IMPRTNT": { "VALUE": "1" }
        });
        let wrong = [
            json!(null),
            json!(true),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!(""),
            json!("not a number"),
            json!("99999999999999999999999"),
            json!([]),
            json!(["217"]),
            json!({}),
            json!({ "VALUE": [] }),
        ];
        let fields: Vec<String> = valid.as_object().unwrap().keys().cloned().collect();
        for field in &fields {
            for value in &wrong {
                let mut item = valid.clone();
                item[field.as_str()] = value.clone();
                let parsed = RawPost::parse(&item);
                match field.as_str() {
                    "ID" | "AUTHOR_ID" => assert!(
                        parsed.is_none(),
                        "{field} = {value} should make the item unusable"
                    ),
                    _ => {
                        let p = parsed.unwrap_or_else(|| panic!("{field} = {value} lost the post"));
                        assert_eq!((p.id, p.author_id), (217, 1269));
                    }
                }
            }
            let mut item = valid.clone();
            item.as_object_mut().unwrap().remove(field);
            let _ = RawPost::parse(&item);
        }
        for item in [json!(null), json!("217"), json!([valid.clone()]), json!(17)] {
            assert!(RawPost::parse(&item).is_none(), "{item}");
        }
    }

    #[test]
    fn codes() {
        assert_eq!(audience_codes(Audience::All), ["UA", "G2", "AU"]);
        assert_eq!(audience_codes(Audience::Group(5)), ["SG5"]);
        assert_eq!(audience_codes(Audience::Department(2)), ["DR2"]);
        assert_eq!(audience_codes(Audience::User(7)), ["U7"]);
    }

    #[test]
    fn authors_are_not_their_own_audience_and_everyone_means_everyone() {
        let item = |author: &str, all: Option<&str>| {
            let mut v = json!({"ID": "10", "AUTHOR_ID": author, "TITLE": "t", "DETAIL_TEXT": "x"});
            if let Some(all) = all {
                v["HAS_SOCNET_ALL"] = json!(all);
            }
            RawPost::parse(&v).unwrap()
        };
        // Found under U5 because user 5 wrote it (the author's code is in every post's rights).
        assert!(!addressed_to(&item("5", Some("N")), Audience::User(5)));
        // Found under U5 and written by someone else: addressed to user 5.
        assert!(addressed_to(&item("7", Some("N")), Audience::User(5)));
        assert!(addressed_to(&item("7", Some("Y")), Audience::All));
        assert!(!addressed_to(&item("7", Some("N")), Audience::All));
        assert!(
            addressed_to(&item("7", None), Audience::All),
            "older portals do not say"
        );
        assert!(addressed_to(&item("5", Some("N")), Audience::Group(3)));
    }
}
