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

use crate::config::{MatrixAuth, MatrixConfig};
use crate::secret::{Secret, scrub};
use livefeed_core::model::Failure;
use livefeed_core::store::Store;

pub const SIDE: &str = "matrix";
const SESSION_KEY: &str = "matrix/session";

/// A session obtained by a password login, kept so the bridge logs in only once.
#[derive(Serialize, Deserialize)]
struct SavedSession {
    user_id: String,
    device_id: String,
    access_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Matrix: {0}")]
    Failed(String),
}

/// How many times the SDK itself retries a request (rate limits, 5xx) before the failure goes
/// back to the engine, which retries with its own backoff without blocking other rooms.
const SDK_RETRIES: usize = 3;

/// Build the client and sign in.
pub async fn connect(
    cfg: &MatrixConfig,
    store_dir: &Path,
    store: &Store,
) -> Result<Client, SessionError> {
    let secrets: Vec<Secret> = match &cfg.auth {
        MatrixAuth::Token { access_token, .. } => vec![access_token.clone()],
        MatrixAuth::Password { password, .. } => vec![password.clone()],
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        let refs: Vec<&Secret> = secrets.iter().collect();
        SessionError::Failed(scrub(&format!("{what}: {e}"), &refs))
    };
    std::fs::create_dir_all(store_dir)
        .map_err(|e| fail("cannot create the Matrix store directory", &e))?;
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
        .map_err(|e| fail("cannot build the client", &e))?;
    let user_id = UserId::parse(&cfg.user_id).map_err(|e| fail("bad user id", &e))?;
    match &cfg.auth {
        MatrixAuth::Token {
            access_token,
            device_id,
        } => {
            restore(&client, &user_id, device_id, access_token.expose())
                .await
                .map_err(|e| fail("cannot restore the session from the access token", &e))?;
        }
        MatrixAuth::Password {
            password,
            device_id,
        } => match store.cursor::<SavedSession>(SESSION_KEY).ok().flatten() {
            Some(saved) if saved.user_id == cfg.user_id => {
                restore(&client, &user_id, &saved.device_id, &saved.access_token)
                    .await
                    .map_err(|e| fail("cannot restore the saved session", &e))?;
            }
            _ => {
                let mut login = client
                    .matrix_auth()
                    .login_username(&user_id, password.expose())
                    .initial_device_display_name("livefeed-bridge");
                if let Some(d) = device_id {
                    login = login.device_id(d);
                }
                let resp = login
                    .send()
                    .await
                    .map_err(|e| fail("password login failed", &e))?;
                let saved = SavedSession {
                    user_id: resp.user_id.to_string(),
                    device_id: resp.device_id.to_string(),
                    access_token: resp.access_token.clone(),
                };
                store
                    .put_cursor(SESSION_KEY, &saved)
                    .map_err(|e| fail("cannot keep the session", &e))?;
                store
                    .sync()
                    .await
                    .map_err(|e| fail("cannot keep the session", &e))?;
                info!(device = %resp.device_id, "logged in to Matrix with the password; session kept in the store");
            }
        },
    }
    let who = client
        .whoami()
        .await
        .map_err(|e| fail("whoami failed", &e))?;
    if who.user_id != user_id {
        return Err(SessionError::Failed(format!(
            "the access token belongs to {}, not to matrix.user_id {}",
            who.user_id, user_id
        )));
    }
    Ok(client)
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
pub async fn resolve_room(client: &Client, room: &str) -> Result<OwnedRoomId, String> {
    if room.starts_with('#') {
        let alias = RoomAliasId::parse(room).map_err(|e| format!("{room}: {e}"))?;
        let resp = client
            .resolve_room_alias(&alias)
            .await
            .map_err(|e| format!("cannot resolve {room}: {e}"))?;
        Ok(resp.room_id)
    } else {
        RoomId::parse(room).map_err(|e| format!("{room}: {e}"))
    }
}

pub fn own_user(client: &Client) -> Option<OwnedUserId> {
    client.user_id().map(ToOwned::to_owned)
}

/// Classify an SDK error for the engine (DESIGN.md §3.4).
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

pub fn sdk_failure(e: &matrix_sdk::Error) -> Failure {
    failure(e.client_api_error_kind(), e.to_string())
}

pub fn http_failure(e: &matrix_sdk::HttpError) -> Failure {
    failure(e.client_api_error_kind(), e.to_string())
}
