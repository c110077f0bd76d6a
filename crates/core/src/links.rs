//! Identity links: the same person on the feed and in chat (a Bitrix24 user, a Slack user, a
//! Matrix user), so that a mention names the right person on the other side.
//!
//! Links come from two places only. The config lists them explicitly (the only way for Matrix:
//! a bot cannot read a Matrix user's address). And, where both platforms tell addresses, a
//! person's e-mail on one side that exactly one active person has on the other links the two
//! ([`Directory`]). Nothing else links people: no display names, no guesses. An e-mail
//! answer, a link or "nobody", is kept in the store for the refresh interval; the next time
//! the person is seen after that, the platforms are asked again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::adapters::Directory;
use crate::model::{Failure, Platform};
use crate::store::{Store, now_ms};

/// How people are linked (the config's `people` section).
#[derive(Debug, Clone)]
pub struct PeopleConfig {
    /// Link people whose e-mail addresses match exactly, where both platforms tell them.
    pub match_by_email: bool,
    /// Write a linked person's reply as their own feed comment, where the feed allows it.
    pub comments_as_author: bool,
    /// Explicit links.
    pub links: Vec<Link>,
    /// How long an e-mail answer is trusted before the platforms are asked again.
    pub refresh: Duration,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        PeopleConfig {
            match_by_email: true,
            comments_as_author: true,
            links: Vec::new(),
            refresh: Duration::from_secs(6 * 3600),
        }
    }
}

/// One person's ids, by platform (at least two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The person's id on each platform the link names.
    pub ids: BTreeMap<Platform, String>,
}

/// An e-mail lookup's answer as the store keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Checked {
    /// The person on the other platform; `None`: nobody has that address there.
    id: Option<String>,
    checked_ms: i64,
}

/// Identity links: the configured ones, and e-mail matches remembered in the store.
pub struct Links {
    store: Store,
    cfg: PeopleConfig,
}

impl Links {
    /// Links from `cfg`, with e-mail answers kept in `store`.
    pub fn new(store: Store, cfg: PeopleConfig) -> Self {
        Links { store, cfg }
    }

    /// The person's id on `to`, if a configured link names them on both platforms.
    pub fn configured(&self, from: &Platform, id: &str, to: &Platform) -> Option<String> {
        self.cfg
            .links
            .iter()
            .find(|l| l.ids.get(from).is_some_and(|x| x == id))
            .and_then(|l| l.ids.get(to).cloned())
    }

    /// The person `id` on `from`, as a person on `to`: a configured link first, then (when
    /// on) an e-mail match through the two platforms' directories. `None` when nobody is
    /// linked or a platform cannot say right now; the caller then names the person in plain
    /// text.
    pub async fn counterpart(
        &self,
        from: (&Platform, Option<&dyn Directory>),
        id: &str,
        to: (&Platform, Option<&dyn Directory>),
    ) -> Option<String> {
        let ((from, from_dir), (to, to_dir)) = (from, to);
        if from == to {
            return Some(id.to_string());
        }
        if let Some(found) = self.configured(from, id, to) {
            return Some(found);
        }
        let (true, Some(from_dir), Some(to_dir)) = (self.cfg.match_by_email, from_dir, to_dir)
        else {
            return None;
        };
        let key = format!("links/{from}/{id}/{to}");
        let refresh_ms = self.cfg.refresh.as_millis() as i64;
        if let Ok(Some(c)) = self.store.cursor::<Checked>(&key)
            && now_ms() - c.checked_ms < refresh_ms
        {
            return c.id;
        }
        let found: Result<Option<String>, Failure> = async {
            let Some(email) = from_dir.email_of(id).await? else {
                return Ok(None);
            };
            to_dir.user_by_email(&email).await
        }
        .await;
        match found {
            Ok(found) => {
                let checked = Checked {
                    id: found.clone(),
                    checked_ms: now_ms(),
                };
                if let Err(e) = self.store.put_cursor(&key, &checked) {
                    debug!(error = %e, "cannot remember an e-mail link");
                }
                debug!(%from, id, %to, linked = found.is_some(), "looked for a person by e-mail");
                found
            }
            Err(e) => {
                debug!(%from, id, %to, error = %e.reason, "e-mail lookup failed; not linked for now");
                None
            }
        }
    }

    /// How many links the config lists.
    pub fn configured_count(&self) -> usize {
        self.cfg.links.len()
    }
}
