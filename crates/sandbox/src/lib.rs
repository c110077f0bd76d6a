//! Faithful fakes of a Bitrix24 portal and a Slack workspace.
//!
//! livefeed-bridge's end-to-end, crash and fault suites run the real bridge against these
//! fakes, and the `livefeed-sandbox` binary starts them for a demo without any account. They
//! follow the wire facts in `docs/platforms/bitrix24.md` and `docs/platforms/slack.md`:
//! string-typed numbers, 50-per-page pagination, error statuses, rate-limit answers, echoes of
//! the bot's own messages. Each fake's module doc lists what it models and which uncertain
//! behaviours can be switched.
//!
//! # Layout
//!
//! - [`bitrix`]: the fake portal: REST under `/rest/{user}/{secret}/`, `batch`, the leaky
//!   bucket, Live Feed visibility, fault injection, and a `/_sandbox/` control API.
//! - [`slack`]: the fake workspace: Web API, Socket Mode, signed Events API delivery, rate
//!   limits, and its own `/_sandbox/` control API.
//! - [`demo`]: both fakes seeded with people and channels, plus a bridge config that points at
//!   them (what `livefeed-sandbox` runs).
//!
//! The bridge uses this crate only as a dev-dependency: nothing here ships in its binary.

pub mod bitrix;
pub mod demo;
pub mod slack;
