//! The `matrix:` section of `bridge.yaml` (homeserver, bot, session credentials, encryption)
//! and the Matrix target of a mapping (`matrix: { room: "!id" }` or an alias).

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::config::validate::{Optional, RawRate, Str, Validator, check_scheme};
use crate::secret::Secret;
use crate::upstream::ratelimit::RateLimit;

#[derive(Debug, Clone, PartialEq)]
/// The `matrix:` section, validated.
pub struct MatrixConfig {
    /// `https://matrix.example.org` (plain http only for loopback or a compose service name).
    pub homeserver: String,
    /// `@feedbot:example.org`
    pub user_id: String,
    /// How the bot signs in.
    pub auth: MatrixAuth,
    /// Take part in encrypted rooms (device keys and a crypto store in the store directory).
    pub encryption: bool,
    /// Longest wait for one answer.
    pub request_timeout: Duration,
    /// Long-poll timeout of `/sync`.
    pub sync_timeout: Duration,
    /// Pacing of the bot's sends (`matrix.send_rate`): off unless set, since a bridge bot is
    /// usually exempted from the homeserver's limit. Set it just as the homeserver limits the
    /// bot (Synapse's `rc_message`: 0.2/s, burst 10 by default) to wait instead of being
    /// told to.
    pub send_rate: Option<RateLimit>,
}

#[derive(Debug, Clone, PartialEq)]
/// How the bot signs in.
pub enum MatrixAuth {
    /// An existing session: the token and the device it belongs to.
    Token {
        /// The token.
        access_token: Secret,
        /// The device it belongs to.
        device_id: String,
    },
    /// Log in once with the password; the session is then kept in the store.
    Password {
        /// The bot's password.
        password: Secret,
        /// The device id to create, if chosen.
        device_id: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatrix {
    pub(crate) homeserver: Str,
    pub(crate) user_id: Str,
    #[serde(default)]
    pub(crate) access_token: Option<Str>,
    #[serde(default)]
    pub(crate) password: Option<Str>,
    #[serde(default)]
    pub(crate) device_id: Option<Str>,
    #[serde(default)]
    pub(crate) encryption: Option<bool>,
    #[serde(default)]
    pub(crate) request_timeout: Option<Str>,
    #[serde(default)]
    pub(crate) sync_timeout: Option<Str>,
    #[serde(default)]
    pub(crate) send_rate: Option<RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatrixTarget {
    pub(crate) room: Str,
}

/// Validate the section.
pub(crate) fn validate(v: &Validator, raw: &RawMatrix) -> Result<MatrixConfig, ConfigError> {
    let hs_text = v.expand("matrix.homeserver", &raw.homeserver)?;
    let hs = Url::parse(hs_text.trim()).map_err(|_| {
        v.err(
            &raw.homeserver,
            format!("matrix.homeserver: `{hs_text}` is not a valid URL"),
            Some("write the homeserver's client URL, e.g. https://matrix.example.org".into()),
        )
    })?;
    check_scheme(&hs).map_err(|m| {
        v.err(
            &raw.homeserver,
            format!("matrix.homeserver: {m}"),
            Some("use https:// (plain http only for loopback hosts or a container name such as `synapse`)".into()),
        )
    })?;
    let user_id = v.expand("matrix.user_id", &raw.user_id)?.trim().to_string();
    let valid_user = user_id
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| !local.is_empty() && !server.is_empty());
    if !valid_user {
        return Err(v.err(
            &raw.user_id,
            format!("`{user_id}` is not a Matrix user id"),
            Some("write the bot's full id in quotes: \"@feedbot:example.org\"".into()),
        ));
    }
    Ok(MatrixConfig {
        homeserver: hs.as_str().trim_end_matches('/').to_string(),
        user_id,
        auth: auth(v, raw)?,
        encryption: raw.encryption.unwrap_or(true),
        request_timeout: v.duration(
            "matrix.request_timeout",
            raw.request_timeout.as_ref(),
            Duration::from_secs(30),
        )?,
        sync_timeout: v.duration(
            "matrix.sync_timeout",
            raw.sync_timeout.as_ref(),
            Duration::from_secs(30),
        )?,
        // Absent: unpaced. `per_second: 0` says the same.
        send_rate: raw.send_rate.as_ref().and_then(|r| {
            v.rate(
                "matrix.send_rate",
                Some(r),
                RateLimit {
                    per_second: 0.2,
                    burst: 10,
                },
            )
        }),
    })
}

/// An access token with its device, else a password (with an optional device id).
fn auth(v: &Validator, raw: &RawMatrix) -> Result<MatrixAuth, ConfigError> {
    let token = v.expand_optional("matrix.access_token", raw.access_token.as_ref())?;
    let password = v.expand_optional("matrix.password", raw.password.as_ref())?;
    let device_id = match raw.device_id.as_ref() {
        Some(d) => {
            Some(v.expand("matrix.device_id", d)?.trim().to_string()).filter(|d| !d.is_empty())
        }
        None => None,
    };
    match (token, password) {
        (Optional::Set(access_token), _) => {
            let Some(device_id) = device_id else {
                return Err(v.err(
                    raw.access_token.as_ref().expect("set implies present"),
                    "matrix.access_token needs matrix.device_id (the device the token belongs to)",
                    Some("add device_id: the device id shown when the token was created (GET /_matrix/client/v3/account/whoami tells it)".into()),
                ));
            };
            Ok(MatrixAuth::Token {
                access_token: Secret::new(access_token),
                device_id,
            })
        }
        (Optional::Unset { .. }, Optional::Set(password)) => Ok(MatrixAuth::Password {
            password: Secret::new(password),
            device_id,
        }),
        (Optional::Unset { unset_var: a }, Optional::Unset { unset_var: p }) => {
            let named: Vec<String> = [a, p].into_iter().flatten().collect();
            let detail = if named.is_empty() {
                String::new()
            } else {
                format!(" (unset: {})", named.join(", "))
            };
            Err(v.err(
                &raw.user_id,
                format!("matrix: neither access_token nor password is set{detail}"),
                Some("set access_token: ${MATRIX_ACCESS_TOKEN} with device_id, or password: ${MATRIX_PASSWORD}".into()),
            ))
        }
    }
}

/// Validate a mapping's Matrix target: a room id or alias.
pub(crate) fn room(v: &Validator, raw: &RawMatrixTarget) -> Result<String, ConfigError> {
    let room = v.expand("matrix.room", &raw.room)?.trim().to_string();
    if !is_matrix_room(&room) {
        return Err(v.err(
            &raw.room,
            format!("`{room}` is not a Matrix room id or alias"),
            Some("write the room id (!abc…, Room settings → Advanced) or an alias (#room:server), in quotes".into()),
        ));
    }
    Ok(room)
}

/// `!opaque` (room versions 12+ have no server part) or `#alias:server`.
fn is_matrix_room(id: &str) -> bool {
    let well_formed = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    match id.split_at_checked(1) {
        Some(("!", rest)) => well_formed(rest),
        Some(("#", rest)) => rest
            .split_once(':')
            .is_some_and(|(a, server)| well_formed(a) && well_formed(server)),
        _ => false,
    }
}
