//! Which post goes to which rooms, and where replies may come back from (ARCHITECTURE.md,
//! "Routing and privacy").
//!
//! Privacy-safe by construction: a post reaches a room only if one of the room's mappings names
//! an audience the post was addressed to. A room appears once in the result however many
//! mappings match, so it receives a post once.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use super::model::{Audience, FeedPost, Platform, Room};

#[derive(Debug, Clone, PartialEq, Eq)]
/// One mapping of `bridge.yaml`: audiences to rooms.
pub struct Route {
    /// The mapping's name.
    pub name: String,
    /// Posts addressed to any of these are mirrored.
    pub audiences: Vec<Audience>,
    /// Where they are mirrored.
    pub rooms: Vec<Room>,
    /// Whether thread replies in these rooms become feed comments.
    pub replies: bool,
    /// Whether thread replies in these rooms are copied into the post's other rooms, and
    /// replies there into these.
    pub mirror_replies: bool,
    /// Top-level messages in these rooms become feed posts for the route's one audience.
    pub posts_from_chat: bool,
    /// Only posts published at or after this (unix seconds) take this route: a mapping added
    /// while the bridge runs starts from then, it does not pull older posts into its rooms
    /// when they are edited. 0: every post.
    pub since: i64,
}

#[derive(Debug, Clone, Default)]
/// Every route; answers "which rooms for this post" and "may this room reply".
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router over `routes`, in configuration order.
    pub fn new(routes: Vec<Route>) -> Self {
        Router { routes }
    }

    /// The routes, in configuration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The rooms a post is mirrored to, each once, in mapping order.
    pub fn rooms_for(&self, post: &FeedPost) -> Vec<Room> {
        let mut seen = BTreeSet::new();
        self.routes
            .iter()
            .filter(|r| r.audiences.iter().any(|a| post.audiences.contains(a)))
            .filter(|r| post.published_at >= r.since)
            .flat_map(|r| r.rooms.iter())
            .filter(|room| seen.insert((*room).clone()))
            .cloned()
            .collect()
    }

    /// Replies in `room` become feed comments if any mapping naming the room allows it.
    pub fn replies_enabled(&self, room: &Room) -> bool {
        self.routes
            .iter()
            .any(|r| r.replies && r.rooms.contains(room))
    }

    /// Replies in `room` are copied to the post's other rooms, and theirs into it, if any
    /// mapping naming the room allows it.
    pub fn mirrors_replies(&self, room: &Room) -> bool {
        self.routes
            .iter()
            .any(|r| r.mirror_replies && r.rooms.contains(room))
    }

    /// The audience a top-level message in `room` is published to, when a mapping of the
    /// room publishes chat messages to the feed (the config allows one audience there).
    pub fn chat_post_audience(&self, room: &Room) -> Option<Audience> {
        self.routes
            .iter()
            .find(|r| r.posts_from_chat && r.rooms.contains(room))
            .and_then(|r| r.audiences.first().copied())
    }

    /// Whether any mapping names `room`.
    pub fn serves(&self, room: &Room) -> bool {
        self.routes.iter().any(|r| r.rooms.contains(room))
    }

    /// Every audience some mapping asks for: what the feed intake must watch.
    pub fn audiences(&self) -> BTreeSet<Audience> {
        self.routes
            .iter()
            .flat_map(|r| r.audiences.iter().copied())
            .collect()
    }

    /// Every room some mapping names.
    pub fn rooms(&self) -> BTreeSet<Room> {
        self.routes
            .iter()
            .flat_map(|r| r.rooms.iter().cloned())
            .collect()
    }
}

/// The router in force, shared by the engine and the intakes. A configuration reload swaps it
/// whole; readers take the current one per decision and never see half a change.
#[derive(Debug, Clone, Default)]
pub struct Routing(Arc<RwLock<Arc<Router>>>);

impl Routing {
    /// Start with `router`.
    pub fn new(router: Router) -> Self {
        Routing(Arc::new(RwLock::new(Arc::new(router))))
    }

    /// The router now.
    pub fn current(&self) -> Arc<Router> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put `router` in force.
    pub fn replace(&self, router: Router) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(router);
    }
}

/// The rooms of one platform that the mappings in force name: what a chat side's intake
/// listens to. Follows configuration reloads.
#[derive(Debug, Clone)]
pub struct Served {
    routing: Routing,
    platform: Platform,
}

impl Served {
    /// `platform`'s rooms in `routing`.
    pub fn new(routing: Routing, platform: Platform) -> Self {
        Served { routing, platform }
    }

    /// Whether top-level messages in room `id` become feed posts (`posts_from_chat`).
    pub fn takes_posts(&self, id: &str) -> bool {
        let room = Room::new(self.platform.clone(), id);
        self.routing.current().chat_post_audience(&room).is_some()
    }

    /// Whether a mapping in force names the room `id` of this platform.
    pub fn contains(&self, id: &str) -> bool {
        self.routing
            .current()
            .serves(&Room::new(self.platform.clone(), id))
    }
}

impl From<Router> for Routing {
    fn from(router: Router) -> Self {
        Routing::new(router)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;
    use crate::testing::{CHAT, fixtures};

    fn post(audiences: &[Audience]) -> FeedPost {
        fixtures::post_for(1, audiences, "x")
    }

    fn router() -> Router {
        let slack = |c: &str| Room::new(CHAT, c);
        Router::new(vec![
            Route {
                name: "news".into(),
                audiences: vec![Audience::All],
                rooms: vec![slack("CNEWS0001")],
                replies: true,
                mirror_replies: true,
                posts_from_chat: false,
                since: 0,
            },
            Route {
                name: "dev".into(),
                audiences: vec![Audience::Group(5), Audience::Department(2)],
                rooms: vec![slack("CDEV00001")],
                replies: false,
                mirror_replies: true,
                posts_from_chat: false,
                since: 0,
            },
            Route {
                name: "dev-also-news".into(),
                audiences: vec![Audience::Group(5)],
                rooms: vec![slack("CNEWS0001"), slack("CDEV00001")],
                replies: false,
                mirror_replies: true,
                posts_from_chat: false,
                since: 0,
            },
        ])
    }

    #[test]
    fn group_posts_never_reach_company_channels_unless_mapped() {
        let r = router();
        let only_all: Vec<String> = r
            .rooms_for(&post(&[Audience::All]))
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(only_all, vec!["CNEWS0001"]);
        let dept: Vec<String> = r
            .rooms_for(&post(&[Audience::Department(2)]))
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(dept, vec!["CDEV00001"]);
        assert!(r.rooms_for(&post(&[Audience::Group(9)])).is_empty());
    }

    #[test]
    fn a_room_gets_a_post_once() {
        let r = router();
        let rooms: Vec<String> = r
            .rooms_for(&post(&[Audience::All, Audience::Group(5)]))
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(rooms, vec!["CNEWS0001", "CDEV00001"]);
    }

    #[test]
    fn replies_follow_any_mapping_of_the_room() {
        let r = router();
        assert!(r.replies_enabled(&Room::new(CHAT, "CNEWS0001")));
        assert!(!r.replies_enabled(&Room::new(CHAT, "CDEV00001")));
        assert!(!r.replies_enabled(&Room::new(Platform::new("other"), "CNEWS0001")));
        assert_eq!(r.audiences().len(), 3);
    }

    #[test]
    fn a_route_added_later_takes_only_posts_from_then_on() {
        let mut later = router();
        later.routes.push(Route {
            name: "late".into(),
            audiences: vec![Audience::All],
            rooms: vec![Room::new(CHAT, "CLATE0001")],
            replies: true,
            mirror_replies: true,
            posts_from_chat: false,
            since: 1_000,
        });
        let mut old = post(&[Audience::All]);
        old.published_at = 999;
        let mut new = old.clone();
        new.published_at = 1_000;
        let ids = |p: &FeedPost| -> Vec<String> {
            later.rooms_for(p).into_iter().map(|r| r.id).collect()
        };
        assert_eq!(ids(&old), vec!["CNEWS0001"]);
        assert_eq!(ids(&new), vec!["CNEWS0001", "CLATE0001"]);
        assert!(later.serves(&Room::new(CHAT, "CLATE0001")));
    }

    #[test]
    fn a_replaced_router_is_seen_by_every_holder() {
        let routing = Routing::new(router());
        let held = routing.clone();
        assert_eq!(held.current().rooms().len(), 2);
        routing.replace(Router::default());
        assert!(held.current().rooms().is_empty());
    }
}
