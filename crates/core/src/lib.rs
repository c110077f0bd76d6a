//! The platform-free core: the neutral model, routing, the sled store, the journal and the
//! engine that turns accepted events into effects. Nothing in here knows Slack, Matrix or
//! Bitrix24 wire formats.

pub mod adapters;
pub mod crashpoint;
pub mod engine;
pub mod health;
pub mod journal;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod people;
pub mod richtext;
pub mod route;
pub mod store;
