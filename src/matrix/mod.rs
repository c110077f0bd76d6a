//! The Matrix side: a bot account through matrix-sdk (no homeserver admin needed), `/sync`
//! intake, HTML conversion, and root-message effects. Matrix types stay in here.

pub mod adapter;
pub mod html;
pub mod intake;
pub mod session;
