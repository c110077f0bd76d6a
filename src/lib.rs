//! livefeed-bridge: mirrors the Bitrix24 Live Feed into chat rooms and carries thread replies
//! back as feed comments. See DESIGN.md for the architecture; `README.md` for operating it.

pub mod bitrix;
pub mod bridge;
pub mod check;
pub mod config;
pub mod core;
pub mod crashpoint;
pub mod health;
pub mod http;
pub mod matrix;
pub mod metrics;
pub mod ratelimit;
pub mod sandbox;
pub mod secret;
pub mod slack;
