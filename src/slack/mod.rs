//! The Slack side: Web API client, Socket Mode and Events API intake, mrkdwn, and the
//! root-message effects. Slack's field names stay in here.

pub mod adapter;
pub mod api;
pub mod events;
pub mod intake;
pub mod mrkdwn;
pub mod socket;
