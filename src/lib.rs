//! livefeed-bridge: mirrors the Bitrix24 Live Feed into chat rooms and carries thread replies
//! back as feed comments. See DESIGN.md for the architecture; `README.md` for operating it.

pub mod bitrix;
pub mod bridge;
pub mod check;
pub mod config;
pub mod http;
pub mod matrix;
pub mod ratelimit;
pub mod secret;
pub mod slack;
