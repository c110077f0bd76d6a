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

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use livefeed_core::health::Health;
use livefeed_core::journal::{Batch, Journal};
use livefeed_core::layout::content_hash;
use livefeed_core::model::{Audience, FeedEvent, FeedPost, Inbound, PostId};
use livefeed_core::store::{Store, StoreError, now_ms};

use super::client::{ApiError, BitrixClient, as_list, as_u64, value_text};
use super::config::{BitrixConfig, PollConfig};
use super::people::People;
use super::{PLATFORM, bbcode};
use crate::upstream::{ErrorClass, Repeat};

const STATE_KEY: &str = "bitrix24/poll";
const SEEN_PREFIX: &str = "bitrix24/seen/";
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
}

/// Posts found in one poll: id → (the post, the audiences it was found under).
type Found = BTreeMap<u64, (RawPost, BTreeSet<Audience>)>;
/// A post to journal: as read, its audiences, and what the intake saw of it before.
type Change = (RawPost, BTreeSet<Audience>, Option<SeenPost>);

fn seen_key(id: u64) -> String {
    format!("{SEEN_PREFIX}{id:020}")
}

/// A post as `log.blogpost.get` returns it, reduced to what the bridge uses.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPost {
    pub id: u64,
    pub author_id: u64,
    pub title: String,
    pub micro: bool,
    pub text: String,
    pub important: bool,
    pub num_comments: u32,
    pub published_at: i64,
}

impl RawPost {
    /// Parse one list item; `None` for items without a usable id or author.
    pub fn parse(v: &Value) -> Option<RawPost> {
        let id = v.get("ID").and_then(as_u64)?;
        let author_id = v.get("AUTHOR_ID").and_then(as_u64)?;
        let important = v
            .get("UF_BLOG_POST_IMPRTNT")
            .and_then(|f| f.get("VALUE"))
            .is_some_and(truthy);
        Some(RawPost {
            id,
            author_id,
            title: v.get("TITLE").map(value_text).unwrap_or_default(),
            micro: v.get("MICRO").map(value_text).as_deref() == Some("Y"),
            text: v.get("DETAIL_TEXT").map(value_text).unwrap_or_default(),
            important,
            num_comments: v
                .get("NUM_COMMENTS")
                .and_then(as_u64)
                .unwrap_or(0)
                .min(u32::MAX as u64) as u32,
            published_at: v
                .get("DATE_PUBLISH")
                .map(value_text)
                .and_then(|d| parse_date(&d))
                .unwrap_or(0),
        })
    }

    fn hash(&self) -> u64 {
        content_hash(&(&self.title, self.micro, &self.text, self.important))
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !matches!(s.trim(), "" | "0" | "N" | "n" | "false"),
        _ => false,
    }
}

pub fn audience_code(a: Audience) -> String {
    match a {
        Audience::All => "UA".into(),
        Audience::Group(id) => format!("SG{id}"),
        Audience::Department(id) => format!("DR{id}"),
        Audience::User(id) => format!("U{id}"),
    }
}

pub struct PollIntake {
    client: BitrixClient,
    journal: Journal,
    store: Store,
    people: People,
    audiences: Vec<Audience>,
    poll: PollConfig,
    backfill: u32,
    portal_url: String,
    health: Arc<Health>,
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
        audiences: Vec<Audience>,
        cfg: &BitrixConfig,
        health: Arc<Health>,
    ) -> Self {
        health.register(PLATFORM.as_str());
        PollIntake {
            store: journal.store().clone(),
            client,
            journal,
            people,
            audiences,
            poll: cfg.poll,
            backfill: cfg.backfill,
            portal_url: cfg.portal_url.clone(),
            health,
        }
    }

    /// Poll until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let outcome = async {
                self.poll_once().await?;
                let state: PollState = self.store.cursor(STATE_KEY)?.unwrap_or_default();
                let due = now_ms() - state.last_reconcile_ms
                    >= self.poll.reconcile_interval.as_millis() as i64;
                if due {
                    self.reconcile_once().await?;
                }
                Ok::<_, PollError>(())
            };
            let outcome = tokio::select! {
                o = outcome => o,
                _ = cancel.cancelled() => return,
            };
            match outcome {
                Ok(()) => self.health.ok(PLATFORM.as_str()),
                Err(e) => {
                    let auth = matches!(&e, PollError::Api(a) if a.class == ErrorClass::Auth);
                    warn!(error = %e, "Bitrix24 poll failed; will try again");
                    self.health.error(PLATFORM.as_str(), &e.to_string(), auth);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll.interval) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One poll cycle: read what is new, accept it.
    pub async fn poll_once(&self) -> Result<(), PollError> {
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
        self.journal.accept(batch).await?;
        Ok(())
    }

    /// Read the first pages of every audience, further while the last post of a full page is
    /// new (or, on the first run, until `backfill` posts are found). Returns each post with
    /// the audiences it was found under.
    async fn read_feed(&self, state: &PollState) -> Result<Found, PollError> {
        let first_run = state.baseline_max_id.is_none();
        let mut found = Found::new();
        let mut pending: Vec<(Audience, u64)> = self.audiences.iter().map(|a| (*a, 0)).collect();
        let mut pages = 0;
        while !pending.is_empty() && pages < self.poll.max_pages {
            pages += 1;
            let mut next_pending = Vec::new();
            for (audience, posts, next) in self.read_pages(&pending).await? {
                let full = posts.len() >= PAGE;
                let mut last_is_new = false;
                for post in posts {
                    last_is_new = self.is_new_or_changed(&post, audience, state.baseline_max_id)?;
                    found
                        .entry(post.id)
                        .or_insert_with(|| (post, BTreeSet::new()))
                        .1
                        .insert(audience);
                }
                let want_more = if first_run {
                    found.len() < self.backfill as usize
                } else {
                    full && last_is_new
                };
                if let (true, Some(next)) = (want_more, next) {
                    next_pending.push((audience, next));
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
            let (raw, auds) = found.remove(&id).expect("id from the map");
            changed.push((raw, auds, None));
        }
        info!(
            baseline = state.baseline_max_id,
            backfill = changed.len(),
            "first Bitrix24 poll: posts from now on will be mirrored"
        );
        (changed, state)
    }

    /// The posts found that are new since the baseline, or changed since last seen.
    fn changed(&self, state: &PollState, found: Found) -> Result<Vec<Change>, PollError> {
        let baseline = state.baseline_max_id.unwrap_or(0);
        let mut changed = Vec::new();
        for (id, (raw, auds)) in found {
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
            let post = self.to_feed_post(&raw, audiences.clone()).await;
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
            let seen = SeenPost {
                hash: raw.hash(),
                num_comments: raw.num_comments,
                audiences,
                published_at: raw.published_at,
                deleted: false,
            };
            batch.cursors.push((
                seen_key(raw.id),
                serde_json::to_vec(&seen).expect("serializable"),
            ));
        }
        batch
    }

    /// Re-read tracked posts younger than the window: find deletions and edits that did not
    /// bubble up to the first page.
    pub async fn reconcile_once(&self) -> Result<(), PollError> {
        let cutoff = (now_ms() - self.poll.reconcile_window.as_millis() as i64) / 1000;
        let tracked: Vec<(u64, SeenPost)> = self
            .store
            .cursors_with_prefix::<SeenPost>(SEEN_PREFIX)?
            .into_iter()
            .filter(|(_, s)| !s.deleted && s.published_at >= cutoff)
            .filter_map(|(k, s)| k[SEEN_PREFIX.len()..].parse().ok().map(|id| (id, s)))
            .collect();
        let mut batch = Batch::default();
        for chunk in tracked.chunks(50) {
            let updates = self.reread(chunk).await?;
            let authors: Vec<u64> = updates
                .iter()
                .filter_map(|(_, _, raw)| raw.as_ref().map(|r| r.author_id))
                .collect();
            self.people.prefetch(&authors).await;
            for (id, seen, raw) in updates {
                self.journal_update(id, seen, raw, &mut batch).await;
            }
        }
        let mut state: PollState = self.store.cursor(STATE_KEY)?.unwrap_or_default();
        state.last_reconcile_ms = now_ms();
        batch.cursors.push((
            STATE_KEY.into(),
            serde_json::to_vec(&state).expect("serializable"),
        ));
        self.journal.accept(batch).await?;
        Ok(())
    }

    /// Re-read up to 50 tracked posts in one `batch`: the ones that changed, and the ones that
    /// came back empty (`None`).
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
        let mut updates = Vec::new();
        for (id, seen) in chunk {
            let key = format!("p{id}");
            if let Some(err) = resp.errors.get(&key) {
                debug!(post = id, error = %err, "re-read failed; next round");
                continue;
            }
            let Some(result) = resp.results.get(&key) else {
                continue;
            };
            match as_list(result).into_iter().find_map(RawPost::parse) {
                None => updates.push((*id, seen.clone(), None)),
                Some(raw) if raw.hash() != seen.hash || raw.num_comments != seen.num_comments => {
                    updates.push((*id, seen.clone(), Some(raw)));
                }
                Some(_) => {}
            }
        }
        Ok(updates)
    }

    /// The event and bookkeeping for one re-read post: deleted when it came back empty.
    async fn journal_update(
        &self,
        id: u64,
        seen: SeenPost,
        raw: Option<RawPost>,
        batch: &mut Batch,
    ) {
        let mut next = seen.clone();
        match raw {
            None => {
                info!(post = id, "post vanished from the feed");
                next.deleted = true;
                batch.events.push((
                    Inbound::Feed(FeedEvent::PostDeleted(PostId(id))),
                    Some(now_ms()),
                ));
            }
            Some(raw) => {
                let post = self.to_feed_post(&raw, seen.audiences.clone()).await;
                let event = if raw.hash() != seen.hash {
                    FeedEvent::PostEdited(post)
                } else {
                    FeedEvent::CommentsChanged(post)
                };
                next.hash = raw.hash();
                next.num_comments = raw.num_comments;
                batch.events.push((Inbound::Feed(event), None));
            }
        }
        batch.cursors.push((
            seen_key(id),
            serde_json::to_vec(&next).expect("serializable"),
        ));
    }

    /// Read one page per `(audience, start)`: a plain call for one, a `batch` for several.
    async fn read_pages(
        &self,
        pending: &[(Audience, u64)],
    ) -> Result<Vec<(Audience, Vec<RawPost>, Option<u64>)>, ApiError> {
        let params =
            |a: Audience, start: u64| json!({ "LOG_RIGHTS": [audience_code(a)], "start": start });
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
            return Ok(vec![(*audience, parse(&resp.result), resp.next)]);
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
            for (i, (audience, _)) in chunk.iter().enumerate() {
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
                out.push((*audience, posts, resp.nexts.get(&key).copied()));
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

    async fn to_feed_post(&self, raw: &RawPost, audiences: BTreeSet<Audience>) -> FeedPost {
        FeedPost {
            id: PostId(raw.id),
            author: self.people.get(raw.author_id).await,
            title: (!raw.micro).then(|| raw.title.clone()),
            body: bbcode::parse(&raw.text),
            important: raw.important,
            audiences,
            url: format!(
                "{}/company/personal/user/{}/blog/{}/",
                self.portal_url, raw.author_id, raw.id
            ),
            published_at: raw.published_at,
            num_comments: raw.num_comments,
        }
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
        assert_eq!(audience_code(Audience::All), "UA");
        assert_eq!(audience_code(Audience::Group(5)), "SG5");
        assert_eq!(audience_code(Audience::Department(2)), "DR2");
        assert_eq!(audience_code(Audience::User(7)), "U7");
    }
}
