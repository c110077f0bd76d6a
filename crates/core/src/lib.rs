//! The platform-free core of livefeed-bridge: the neutral model, rich text, routing, the sled
//! store, the journal and the engine that turns accepted events into effects.
//!
//! Nothing in here knows a platform. The crate's manifest has no HTTP, websocket, YAML or
//! Matrix dependency, so the compiler keeps platform types out; platforms, and the feed's own
//! name, come in through the traits in [`adapters`].
//!
//! # Layout
//!
//! - [`model`]: posts, comments, rooms, chat events, the ids and [`model::Failure`].
//! - [`richtext`]: the one document type every format converts to and from.
//! - [`layout`]: what a root message and an attributed comment look like, as documents.
//! - [`route`]: which post goes to which rooms (privacy-safe), and where replies come back from.
//! - [`store`]: the sled database: posts and their mirrors, comments, cursors, journal,
//!   intents, dead letters.
//! - [`journal`]: the front door: an event is durable before its source is acknowledged.
//! - [`engine`]: applies journal entries in lanes, idempotently, with reconciliation.
//! - [`adapters`]: the traits platforms implement ([`adapters::ChatAdapter`],
//!   [`adapters::FeedAdapter`]).
//! - [`people`]: a cache of people with a time to live.
//! - [`health`], [`metrics`]: what `/readyz` and `/metrics` show.
//! - [`crashpoint`]: named places where the crash suite may abort the process.
//! - `testing` (feature `testing`): in-memory adapters and fixtures.
//!
//! Start reading at [`engine`]: its module doc states the rules every effect follows.

#![warn(missing_docs)]

pub mod adapters;
pub mod crashpoint;
pub mod engine;
pub mod health;
pub mod journal;
pub mod layout;
pub mod links;
pub mod metrics;
pub mod model;
pub mod people;
pub mod richtext;
pub mod route;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
