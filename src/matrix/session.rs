//! The bot's Matrix session: a matrix-sdk client with its state and crypto stores in the
//! bridge's store directory, restored from an access token (or logged in once with a password
//! and kept), with a bounded retry policy so one rate-limited request cannot stall a lane for
//! the SDK's default fifteen minutes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::ruma::api::error::{ErrorKind, RetryAfter};
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, SessionMeta, SessionTokens};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::config::{MatrixAuth, MatrixConfig};
use crate::secret::{Secret, scrub};
use livefeed_core::model::Failure;
use livefeed_core::store::Store;

const SESSION_KEY: &str = "matrix/session";

/// A session obtained by a password login, kept so the bridge logs in only once.
#[derive(Serialize, Deserialize)]
struct SavedSession {
    user_id: String,
    device_id: String,
    access_token: String,
}

/// Why the bot could not sign in. Every reason is scrubbed of the password and the token.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store directory for the SDK's state and keys cannot be created.
    #[error("cannot create the Matrix store directory: {0}")]
    StoreDir(std::io::Error),
    /// The SDK client could not be built (homeserver URL, SQLite store).
    #[error("cannot build the Matrix client: {0}")]
    Build(String),
    /// `matrix.user_id` is not a user id.
    #[error("matrix.user_id is not a user id: {0}")]
    UserId(String),
    /// The session could not be restored or logged in.
    #[error("{what}: {reason}")]
    SignIn {
        /// What was tried.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The token belongs to another user.
    #[error("the access token belongs to {found}, not to matrix.user_id {configured}")]
    WrongUser {
        /// Whom the token belongs to.
        found: String,
        /// `matrix.user_id`.
        configured: String,
    },
    /// A mapped room id or alias cannot be used.
    #[error("Matrix room {room}: {reason}")]
    Room {
        /// The room as configured.
        room: String,
        /// Why.
        reason: String,
    },
}

/// How many times the SDK itself retries a request (rate limits, 5xx) before the failure goes
/// back to the engine, which retries with its own backoff without blocking other rooms.
const SDK_RETRIES: usize = 3;

/// Build the client (its state and crypto stores in `store_dir`) and sign in.
pub async fn connect(
    cfg: &MatrixConfig,
    store_dir: &Path,
    store: &Store,
) -> Result<Client, SessionError> {
    let secrets: Vec<Secret> = match &cfg.auth {
        MatrixAuth::Token { access_token, .. } => vec![access_token.clone()],
        MatrixAuth::Password { password, .. } => vec![password.clone()],
    };
    let scrubbed = |e: &dyn std::fmt::Display| {
        let refs: Vec<&Secret> = secrets.iter().collect();
        scrub(&e.to_string(), &refs)
    };
    std::fs::create_dir_all(store_dir).map_err(SessionError::StoreDir)?;
    let client = Client::builder()
        .homeserver_url(&cfg.homeserver)
        .sqlite_store(store_dir, None)
        .request_config(
            RequestConfig::new()
                .retry_limit(SDK_RETRIES)
                .timeout(cfg.request_timeout),
        )
        .build()
        .await
        .map_err(|e| SessionError::Build(scrubbed(&e)))?;
    let user_id = UserId::parse(&cfg.user_id).map_err(|e| SessionError::UserId(e.to_string()))?;
    sign_in(&client, cfg, &user_id, store)
        .await
        .map_err(|(what, e)| SessionError::SignIn {
            what,
            reason: scrubbed(&e),
        })?;
    let who = client.whoami().await.map_err(|e| SessionError::SignIn {
        what: "whoami failed",
        reason: scrubbed(&e),
    })?;
    if who.user_id != user_id {
        return Err(SessionError::WrongUser {
            found: who.user_id.to_string(),
            configured: user_id.to_string(),
        });
    }
    Ok(client)
}

/// Restore the configured session, or the one a password login saved, or log in with the
/// password once and save the session. On failure: what was tried, and the error.
async fn sign_in(
    client: &Client,
    cfg: &MatrixConfig,
    user_id: &UserId,
    store: &Store,
) -> Result<(), (&'static str, Box<dyn std::fmt::Display + Send + Sync>)> {
    let (password, device_id) = match &cfg.auth {
        MatrixAuth::Token {
            access_token,
            device_id,
        } => {
            return restore(client, user_id, device_id, access_token.expose())
                .await
                .map_err(|e| ("cannot restore the session from the access token", boxed(e)));
        }
        MatrixAuth::Password {
            password,
            device_id,
        } => (password, device_id),
    };
    if let Some(saved) = store.cursor::<SavedSession>(SESSION_KEY).ok().flatten()
        && saved.user_id == cfg.user_id
    {
        return restore(client, user_id, &saved.device_id, &saved.access_token)
            .await
            .map_err(|e| ("cannot restore the saved session", boxed(e)));
    }
    let mut login = client
        .matrix_auth()
        .login_username(user_id, password.expose())
        .initial_device_display_name("livefeed-bridge");
    if let Some(d) = device_id {
        login = login.device_id(d);
    }
    let resp = login
        .send()
        .await
        .map_err(|e| ("password login failed", boxed(e)))?;
    let saved = SavedSession {
        user_id: resp.user_id.to_string(),
        device_id: resp.device_id.to_string(),
        access_token: resp.access_token.clone(),
    };
    store
        .put_cursor(SESSION_KEY, &saved)
        .map_err(|e| ("cannot keep the session", boxed(e)))?;
    store
        .sync()
        .await
        .map_err(|e| ("cannot keep the session", boxed(e)))?;
    info!(device = %resp.device_id, "logged in to Matrix with the password; session kept in the store");
    Ok(())
}

fn boxed(
    e: impl std::fmt::Display + Send + Sync + 'static,
) -> Box<dyn std::fmt::Display + Send + Sync> {
    Box::new(e)
}

async fn restore(
    client: &Client,
    user: &UserId,
    device: &str,
    token: &str,
) -> matrix_sdk::Result<()> {
    let session = MatrixSession {
        meta: SessionMeta {
            user_id: user.to_owned(),
            device_id: device.into(),
        },
        tokens: SessionTokens {
            access_token: token.to_string(),
            refresh_token: None,
        },
    };
    client
        .matrix_auth()
        .restore_session(session, RoomLoadSettings::default())
        .await
}

/// A configured room (id or alias) as a room id.
pub async fn resolve_room(client: &Client, room: &str) -> Result<OwnedRoomId, SessionError> {
    let fail = |reason: String| SessionError::Room {
        room: room.to_string(),
        reason,
    };
    if room.starts_with('#') {
        let alias = RoomAliasId::parse(room).map_err(|e| fail(e.to_string()))?;
        let resp = client
            .resolve_room_alias(&alias)
            .await
            .map_err(|e| fail(format!("the alias does not resolve: {e}")))?;
        Ok(resp.room_id)
    } else {
        RoomId::parse(room).map_err(|e| fail(e.to_string()))
    }
}

/// The signed-in bot.
pub fn own_user(client: &Client) -> Option<OwnedUserId> {
    client.user_id().map(ToOwned::to_owned)
}

/// Classify an SDK error for the engine (ARCHITECTURE.md, "Errors, retries and dead letters").
pub fn failure(kind: Option<&ErrorKind>, text: String) -> Failure {
    match kind {
        Some(ErrorKind::LimitExceeded(data)) => {
            let after = match data.retry_after {
                Some(RetryAfter::Delay(d)) => d,
                Some(RetryAfter::DateTime(t)) => t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            Failure::retry_after(text, after)
        }
        Some(ErrorKind::UnknownToken(_))
        | Some(ErrorKind::MissingToken)
        | Some(ErrorKind::UserDeactivated) => Failure::auth(text),
        // The server understood and refused: not in the room, no permission, gone.
        Some(_) => Failure::permanent(text),
        // Network trouble or a server error the SDK already retried.
        None => Failure::transient(text),
    }
}

/// An SDK error as a failure.
pub fn sdk_failure(e: &matrix_sdk::Error) -> Failure {
    failure(e.client_api_error_kind(), e.to_string())
}

/// An SDK HTTP error as a failure.
pub fn http_failure(e: &matrix_sdk::HttpError) -> Failure {
    failure(e.client_api_error_kind(), e.to_string())
}
