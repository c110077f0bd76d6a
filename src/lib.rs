//! livefeed-bridge: mirrors the Bitrix24 Live Feed into Slack and Matrix rooms and carries
//! thread replies back as feed comments. ARCHITECTURE.md is the map; README.md tells how to
//! run and operate it.
//!
//! # Layout
//!
//! The platform-free core (model, rich text, routing, store, journal, engine) is the
//! `livefeed-core` crate. This crate is everything that touches a platform or the outside:
//!
//! - [`assembly`]: starts the parts a config names and stops them; start reading here after
//!   `main.rs`.
//! - [`bitrix`], [`slack`], [`matrix`]: one folder per platform: its API client, intake,
//!   text format, the adapter the engine calls, its `bridge.yaml` section, and its `connect`
//!   and `probe`.
//! - [`upstream`]: what every platform client shares: error classes, the repeat policy,
//!   backoff, rate limits, the metric outcome label.
//! - [`config`]: `bridge.yaml`: parsing, `${VAR}` expansion, validation with positions.
//! - [`mappings`]: the mappings → the core's router, each (audience, room) edge with its
//!   start time.
//! - [`reload`]: the configuration changing while the bridge runs (SIGHUP, file changes).
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, the admin API, and the sides' routes.
//! - [`check`]: the `check` command's report; platforms fill it with their probes.
//! - [`dead_letters`]: the `dead-letters` command.
//! - [`secret`]: strings that never print.

pub mod assembly;
pub mod bitrix;
pub mod check;
pub mod config;
pub mod dead_letters;
pub mod http;
pub mod mappings;
pub mod matrix;
pub mod reload;
pub mod secret;
pub mod slack;
pub mod upstream;
