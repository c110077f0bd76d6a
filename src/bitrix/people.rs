//! Bitrix24 users as authors: names and photos from `user.get`, cached for a day, so a busy
//! feed costs one lookup per new author, not one per post.

use serde_json::json;
use tracing::warn;

use super::PLATFORM;
use super::client::{BitrixClient, as_list, as_u64, value_text};
use crate::upstream::Repeat;
use livefeed_core::adapters::{BoxFuture, Directory};
use livefeed_core::model::{Failure, Person};
use livefeed_core::people::PersonCache;
use livefeed_core::store::Store;

const TTL_MS: i64 = 24 * 3600 * 1000;

#[derive(Clone)]
pub struct People {
    client: BitrixClient,
    cache: PersonCache,
}

impl People {
    pub fn new(client: BitrixClient, store: Store) -> Self {
        People {
            client,
            cache: PersonCache::new(store, PLATFORM, TTL_MS),
        }
    }

    /// Look up every id not freshly cached, 50 per request.
    pub async fn prefetch(&self, ids: &[u64]) {
        let mut missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.cache.get(&id.to_string()).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(50) {
            let params = json!({ "FILTER": { "ID": chunk } });
            match self.client.call("user.get", params, Repeat::Safe).await {
                Ok(resp) => {
                    for user in as_list(&resp.result) {
                        if let Some(person) = person(user) {
                            self.cache.put(person);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read author names; showing ids for now"),
            }
        }
    }

    /// The author as known; a placeholder name if the lookup failed.
    pub async fn get(&self, id: u64) -> Person {
        if let Some(p) = self.cache.get(&id.to_string()) {
            return p;
        }
        self.prefetch(&[id]).await;
        self.cache.get(&id.to_string()).unwrap_or_else(|| Person {
            id: id.to_string(),
            name: format!("Bitrix24 user {id}"),
            avatar_url: None,
        })
    }
}

/// People by e-mail, for identity links: `user.get`'s `EMAIL`, which only the `user` scope
/// shows (`user_brief` and `user_basic` leave it out: then nobody is linked by e-mail).
impl Directory for People {
    fn email_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(async move {
            let Ok(id) = user.parse::<u64>() else {
                return Ok(None);
            };
            let users = self.users(json!({ "FILTER": { "ID": id } })).await?;
            Ok(users
                .iter()
                .find(|u| u.get("ID").and_then(as_u64) == Some(id))
                .and_then(email))
        })
    }

    fn user_by_email<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(async move {
            let filter = json!({ "FILTER": { "EMAIL": address, "ACTIVE": true } });
            // The portal's filter may match loosely: only an exact address counts, and only
            // when exactly one person has it.
            let matching: Vec<u64> = self
                .users(filter)
                .await?
                .iter()
                .filter(|u| email(u).is_some_and(|e| e.eq_ignore_ascii_case(address)))
                .filter_map(|u| u.get("ID").and_then(as_u64))
                .collect();
            Ok(match matching.as_slice() {
                [only] => Some(only.to_string()),
                _ => None,
            })
        })
    }
}

impl People {
    /// `user.get` items; none when the credentials may not list users.
    async fn users(&self, params: serde_json::Value) -> Result<Vec<serde_json::Value>, Failure> {
        match self.client.call("user.get", params, Repeat::Safe).await {
            Ok(resp) => Ok(as_list(&resp.result).into_iter().cloned().collect()),
            Err(e) if e.code == "insufficient_scope" => Ok(Vec::new()),
            Err(e) => Err(e.to_failure()),
        }
    }
}

fn email(user: &serde_json::Value) -> Option<String> {
    user.get("EMAIL")
        .map(value_text)
        .map(|e| e.trim().to_string())
        .filter(|e| e.contains('@'))
}

/// A `user.get` item as a person.
fn person(user: &serde_json::Value) -> Option<Person> {
    let id = user.get("ID").and_then(as_u64)?;
    let name = [user.get("NAME"), user.get("LAST_NAME")]
        .into_iter()
        .flatten()
        .map(value_text)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(Person {
        id: id.to_string(),
        name: if name.is_empty() {
            format!("Bitrix24 user {id}")
        } else {
            name
        },
        avatar_url: user
            .get("PERSONAL_PHOTO")
            .map(value_text)
            .filter(|p| p.starts_with("http")),
    })
}
