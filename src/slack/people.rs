//! Slack users as people: display name (else real name, else handle) and picture, from
//! `users.info`, cached for an hour in memory and in the store. The intake only reads the
//! cache (it must acknowledge Slack without waiting); the adapter asks Slack when the engine
//! resolves a reply's names before writing its comment.

use livefeed_core::adapters::{BoxFuture, Directory};
use livefeed_core::model::{Failure, Person};
use livefeed_core::people::PersonCache;
use livefeed_core::store::Store;
use serde_json::Value;
use tracing::debug;

use livefeed_core::richtext::Doc;

use super::api::SlackApi;
use super::{PLATFORM, mrkdwn};

const TTL_MS: i64 = 3600 * 1000;

/// The workspace's people, cached.
#[derive(Clone)]
pub struct People {
    api: SlackApi,
    cache: PersonCache,
}

impl People {
    /// People looked up through `api`, cached in `store`.
    pub fn new(api: SlackApi, store: Store) -> Self {
        People {
            api,
            cache: PersonCache::new(store, PLATFORM, TTL_MS),
        }
    }

    /// The person if cached; never asks Slack.
    pub fn cached(&self, user: &str) -> Option<Person> {
        self.cache.get(user)
    }

    /// The person as far as the cache knows them (a stand-in with the id otherwise).
    pub fn known(&self, user: &str) -> Person {
        self.cached(user).unwrap_or_else(|| placeholder(user))
    }

    /// mrkdwn as a document, with the names of mentioned people the cache knows (the engine
    /// asks Slack for the others before it writes the comment).
    pub fn parse(&self, text: &str) -> Doc {
        mrkdwn::parse(text, &|id| self.cached(id).map(|p| p.name))
    }

    /// The person from the cache, else from `users.info`; `None` when Slack cannot say.
    pub async fn lookup(&self, user: &str) -> Option<Person> {
        if let Some(p) = self.cache.get(user) {
            return Some(p);
        }
        match self.api.users_info(user).await {
            Ok(v) => {
                let person = person(user, &v["user"]);
                self.cache.put(person.clone());
                Some(person)
            }
            Err(e) => {
                debug!(user, error = %e, "users.info failed; keeping the id");
                None
            }
        }
    }
}

/// Answers that mean "Slack will not say", not "try again": no such person, or no
/// `users:read.email` scope.
const NOT_TOLD: [&str; 4] = [
    "users_not_found",
    "user_not_found",
    "user_not_visible",
    "missing_scope",
];

/// People by e-mail, for identity links: `users.info`'s `profile.email` and
/// `users.lookupByEmail`, both needing `users:read.email`. Deleted users and bots are nobody.
impl Directory for People {
    fn email_of<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(async move {
            match self.api.users_info(user).await {
                Ok(v) => Ok(live_person(&v["user"]).then(|| email(&v["user"])).flatten()),
                Err(e) if NOT_TOLD.contains(&e.error.as_str()) => Ok(None),
                Err(e) => Err(e.to_failure()),
            }
        })
    }

    fn user_by_email<'a>(
        &'a self,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        Box::pin(async move {
            match self.api.users_lookup_by_email(address).await {
                Ok(v) => {
                    let u = &v["user"];
                    let exact = email(u).is_some_and(|e| e.eq_ignore_ascii_case(address));
                    Ok((exact && live_person(u))
                        .then(|| u["id"].as_str().map(str::to_string))
                        .flatten())
                }
                Err(e) if NOT_TOLD.contains(&e.error.as_str()) => Ok(None),
                Err(e) => Err(e.to_failure()),
            }
        })
    }
}

/// A person who can be linked: not deleted, not a bot.
fn live_person(u: &Value) -> bool {
    u["deleted"].as_bool() != Some(true) && u["is_bot"].as_bool() != Some(true)
}

fn email(u: &Value) -> Option<String> {
    u["profile"]["email"]
        .as_str()
        .map(str::trim)
        .filter(|e| e.contains('@'))
        .map(str::to_string)
}

/// A stand-in until the name is known: the id itself.
pub fn placeholder(user: &str) -> Person {
    Person {
        id: user.to_string(),
        name: user.to_string(),
        avatar_url: None,
    }
}

fn person(user: &str, u: &Value) -> Person {
    let profile = &u["profile"];
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = text(profile, "display_name")
        .or_else(|| text(profile, "real_name"))
        .or_else(|| text(u, "real_name"))
        .or_else(|| text(u, "name"))
        .unwrap_or_else(|| user.to_string());
    Person {
        id: user.to_string(),
        name,
        avatar_url: text(profile, "image_72"),
    }
}
