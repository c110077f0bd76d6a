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
//!   bucket, Live Feed visibility, fault injection, a local OAuth app (token endpoint, REST
//!   with access tokens, `event.*`, the offline queue, online pushes), and a `/_sandbox/`
//!   control API.
//! - [`slack`]: the fake workspace: Web API, Socket Mode, signed Events API delivery, rate
//!   limits, and its own `/_sandbox/` control API.
//! - [`demo`]: both fakes seeded with people and channels, plus a bridge config that points at
//!   them (what `livefeed-sandbox` runs).
//! - [`bench`]: the performance harness `livefeed-bench` runs: the bridge binary against the
//!   fakes, figures against the platforms' ceilings.
//!
//! The bridge uses this crate only as a dev-dependency: nothing here ships in its binary.

pub mod bench;
pub mod bitrix;
pub mod demo;
pub mod slack;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The address to put in URLs for a listener: one bound to every interface (a container's
/// `0.0.0.0`) is reached on loopback by anything sharing its network namespace.
pub(crate) fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The media type both fakes give a file by its name (the kinds the tests use): Slack's
/// detection and the portal web server's `Content-Type`.
pub(crate) fn mime_of(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}
