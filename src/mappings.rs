//! `bridge.yaml`'s mappings → the core's [`Router`], with each edge's start time.
//!
//! An edge is one (audience, room) pair of a mapping. The store remembers when each edge first
//! appeared (`routes/<audience>/<platform>:<room>`): the edges of the very first start take
//! every post (the first poll decides what is history), an edge that appears later, by a
//! reload or at a restart, takes only posts published from then on. So adding a mapping never
//! pulls older posts into its rooms, not even when one of them is edited later.

use std::collections::{BTreeMap, BTreeSet};

use livefeed_core::model::{Platform, Room};
use livefeed_core::route::{Route, Router};
use livefeed_core::store::{Store, StoreError, now_ms};

use crate::config::Config;

const PREFIX: &str = "routes/";
/// Written once the first start's edges are recorded.
const INITIALIZED: &str = "routes/.initialized";

/// Rooms as the platforms resolved them (Matrix aliases → room ids), by platform.
pub type Resolved = BTreeMap<Platform, BTreeMap<String, String>>;

fn edge_key(audience: &str, room: &Room) -> String {
    format!("{PREFIX}{audience}/{}:{}", room.platform, room.id)
}

/// The router for `config`, rooms replaced by their resolved ids, each edge starting when the
/// store says (new edges are recorded as starting now).
pub fn router_from(
    config: &Config,
    resolved: &Resolved,
    store: &Store,
) -> Result<Router, StoreError> {
    let resolve = |room: &Room| {
        let id = resolved
            .get(&room.platform)
            .and_then(|rooms| rooms.get(&room.id))
            .unwrap_or(&room.id);
        Room::new(room.platform.clone(), id.clone())
    };
    let first_start = store.cursor::<bool>(INITIALIZED)?.is_none();
    let now = now_ms() / 1000;
    let mut routes = Vec::new();
    for m in &config.mappings {
        for audience in &m.audiences {
            for room in m.rooms.iter().map(resolve) {
                let key = edge_key(&audience.to_string(), &room);
                let since = match store.cursor::<i64>(&key)? {
                    Some(since) => since,
                    None => {
                        let since = if first_start { 0 } else { now };
                        store.put_cursor(&key, &since)?;
                        since
                    }
                };
                routes.push(Route {
                    name: m.name.clone(),
                    audiences: vec![*audience],
                    rooms: vec![room],
                    replies: m.replies,
                    mirror_replies: m.mirror_replies,
                    posts_from_chat: m.posts_from_chat,
                    since,
                });
            }
        }
    }
    if first_start {
        store.put_cursor(INITIALIZED, &true)?;
    }
    Ok(Router::new(routes))
}

/// Forget the start times of edges no mapping has any more: removing a mapping and adding it
/// back later starts it afresh.
pub fn forget_removed(router: &Router, store: &Store) -> Result<usize, StoreError> {
    let live: BTreeSet<String> = router
        .routes()
        .iter()
        .flat_map(|r| {
            r.audiences.iter().flat_map(move |a| {
                r.rooms
                    .iter()
                    .map(move |room| edge_key(&a.to_string(), room))
            })
        })
        .collect();
    let mut removed = 0;
    for (key, _) in store.cursors_with_prefix::<serde_json::Value>(PREFIX)? {
        if key != INITIALIZED && !live.contains(&key) {
            store.remove_cursor(&key)?;
            removed += 1;
        }
    }
    Ok(removed)
}
