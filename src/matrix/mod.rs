//! The Matrix side: a bot account through matrix-sdk (no homeserver admin needed), `/sync`
//! intake, HTML conversion, root-message effects, and how the bridge connects and probes.
//! Matrix types stay in here.
//!
//! - [`session`]: the SDK client, signed in from a token or a saved password login.
//! - [`intake`]: `/sync` → chat events, with gap filling and decryption retries.
//! - [`html`]: Matrix HTML and plain bodies ⇄ the core's document.
//! - [`adapter`]: root messages for feed posts ([`adapter::MatrixChat`]).
//! - [`config`]: the `matrix:` section of `bridge.yaml`.
//! - [`connect`] and [`probe`](probe::probe): what the assembly and `check` call.

pub mod adapter;
pub mod config;
pub mod html;
pub mod intake;
pub mod probe;
pub mod session;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use livefeed_core::model::Platform;
use tracing::info;

use crate::assembly::{ChatSide, Shared};
use crate::config::Config;
use crate::reload::{Resolve, Retune};
use adapter::MatrixChat;
use config::MatrixConfig;
use intake::MatrixIntake;
use livefeed_core::route::Served;
pub use session::SessionError as ConnectError;

/// Matrix's name in keys, labels and `/readyz`.
pub const PLATFORM: Platform = Platform::new("matrix");
/// Matrix's name for people.
pub const DISPLAY_NAME: &str = "Matrix";

/// Sign the bot in (its device and keys live in `<store.path>/matrix`), resolve the mapped
/// `rooms` (ids or aliases) and build the root-message adapter and the `/sync` intake.
pub async fn connect(
    cfg: &MatrixConfig,
    rooms: &[String],
    shared: &Shared,
) -> Result<ChatSide, ConnectError> {
    let client = session::connect(cfg, &shared.store_dir.join("matrix"), &shared.store).await?;
    let mut resolved = BTreeMap::new();
    let mut room_ids = BTreeSet::new();
    for room in rooms {
        let id = session::resolve_room(&client, room).await?;
        resolved.insert(room.clone(), id.to_string());
        room_ids.insert(id);
    }
    let own = session::own_user(&client).ok_or(ConnectError::SignIn {
        what: "sign-in",
        reason: "no user after sign-in".into(),
    })?;
    info!(user = %own, rooms = room_ids.len(), "Matrix bot signed in");
    let intake = MatrixIntake::new(
        client.clone(),
        shared.journal.clone(),
        Served::new(shared.routing.clone(), PLATFORM),
        own,
        shared.health.clone(),
        cfg.sync_timeout,
    );
    let resolver = client.clone();
    let resolve: Resolve = Arc::new(move |room: String| {
        let client = resolver.clone();
        Box::pin(async move {
            session::resolve_room(&client, &room)
                .await
                .map(|id| id.to_string())
                .map_err(|e| e.to_string())
        })
    });
    let adapter = MatrixChat::new(client, shared.metrics.clone(), shared.store.clone(), cfg);
    let pacing = adapter.pacing();
    let retune: Retune = Box::new(move |config: &Config| {
        if let Some(new) = &config.matrix {
            adapter::set_pacing(&pacing, new.send_rate);
        }
    });
    Ok(ChatSide {
        adapter: Arc::new(adapter),
        rooms: resolved,
        tasks: vec![Box::pin(intake.run(shared.cancel.clone()))],
        routes: None,
        resolve: Some(resolve),
        retune: Some(retune),
    })
}
