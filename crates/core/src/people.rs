//! A cache of people (authors, chat users) in memory and in the store's `users` tree, with a
//! time-to-live. Adapters fill it from their platform's directory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::model::{Person, Platform};
use super::store::{CachedPerson, Store, now_ms};

#[derive(Clone)]
/// People of one platform, cached in memory and in the store for `ttl_ms`.
pub struct PersonCache {
    store: Store,
    /// The platform the people belong to: their store keys start with its name.
    namespace: Platform,
    ttl_ms: i64,
    memory: Arc<Mutex<HashMap<String, CachedPerson>>>,
}

impl PersonCache {
    /// A cache whose store keys start with `namespace` (the platform's name).
    pub fn new(store: Store, namespace: Platform, ttl_ms: i64) -> Self {
        PersonCache {
            store,
            namespace,
            ttl_ms,
            memory: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A fresh cached entry, if any.
    pub fn get(&self, id: &str) -> Option<Person> {
        let fresh = |c: &CachedPerson| now_ms() - c.fetched_ms < self.ttl_ms;
        if let Some(c) = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            && fresh(c)
        {
            return Some(c.person.clone());
        }
        let c = self
            .store
            .cached_person(&self.key(id))
            .ok()
            .flatten()
            .filter(fresh)?;
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), c.clone());
        Some(c.person)
    }

    /// Remember a person as of now.
    pub fn put(&self, person: Person) {
        let cached = CachedPerson {
            fetched_ms: now_ms(),
            person,
        };
        if let Err(e) = self.store.put_person(&self.key(&cached.person.id), &cached) {
            warn!(error = %e, "cannot cache a person");
        }
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cached.person.id.clone(), cached);
    }

    fn key(&self, id: &str) -> String {
        format!("{}:{id}", self.namespace)
    }
}
