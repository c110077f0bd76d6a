//! The local app's authorization server (contract §1.5), served on the portal's own
//! listener: `/oauth/token/` (refresh and authorization-code grants, strict rotation) and
//! `/oauth/authorize/` (the browser step, answered with a redirect). Tokens live on the
//! portal clock, so tests expire them by shifting the clock or with
//! `FakePortal::expire_access_tokens`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use super::config::FaultKind;
use super::md5;
use super::methods::ApiError;
use super::params;
use super::server::{ConnHandle, Shared, html_error};
use super::state::Portal;
use super::value::{Arr, JsonStyle, Value, map, to_php_json};

/// How long an authorization code may be exchanged (contract §1.5).
const CODE_TTL_SECS: i64 = 30;

/// The fault name that `Fault { method: Some("oauth.token"), .. }` targets.
pub(crate) const TOKEN_FAULT: &str = "oauth.token";

/// Who a token or code belongs to and until when (portal seconds).
#[derive(Clone, Copy, Debug)]
struct Grant {
    user: u64,
    expires: i64,
}

/// Issued tokens. A refresh token or code is removed when used; revoking clears all.
#[derive(Default)]
pub(crate) struct OAuthState {
    access: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
    codes: HashMap<String, Grant>,
    /// Successful `grant_type=refresh_token` exchanges.
    pub refreshes: u64,
    /// Every access and refresh token the endpoint handed out (tests search logs for them).
    pub issued: Vec<String>,
}

impl Portal {
    /// The user the app's own tokens act as.
    pub(crate) fn oauth_user(&self) -> u64 {
        self.cfg.oauth.user
    }

    /// `member_id`: a stable 32-hex id of the portal.
    pub(crate) fn member_id(&self) -> String {
        md5::hex(self.cfg.portal_host.as_bytes())
    }

    /// `host:port` of the listener: the portal's (and its OAuth server's) domain.
    pub(crate) fn domain(&self) -> String {
        self.base_url
            .strip_prefix("http://")
            .unwrap_or(&self.base_url)
            .to_owned()
    }

    /// `http://HOST/rest/`: `client_endpoint` and `server_endpoint`.
    pub(crate) fn rest_endpoint(&self) -> String {
        format!("{}/rest/", self.base_url)
    }

    pub(crate) fn oauth_scope(&self) -> String {
        self.cfg.oauth.scopes.join(",")
    }

    /// Lower-case letters and digits, like `Main\Security\Random::getString`.
    pub(crate) fn random_string(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ALPHABET[self.secrets.usize(..ALPHABET.len())] as char)
            .collect()
    }

    /// 70 hex digits shaped like the real ones: issue time, portal, user, random tail.
    fn new_token(&mut self, user: u64) -> String {
        let issued = self.now_secs() as u32;
        let tail: String = (0..16)
            .map(|_| format!("{:02x}", self.secrets.u8(..)))
            .collect();
        let member = self.member_id();
        format!(
            "{issued:08x}{}{:08x}000007{tail}",
            &member[..16],
            user as u32
        )
    }

    /// A fresh access token for `user`; returns it with its `expires` (unix seconds).
    pub(crate) fn mint_access(&mut self, user: u64) -> (String, i64) {
        let token = self.new_token(user);
        let expires = self.now_secs() + self.cfg.oauth.access_ttl.as_secs() as i64;
        self.oauth
            .access
            .insert(token.clone(), Grant { user, expires });
        (token, expires)
    }

    /// A fresh grant: what the install callback hands over.
    pub(crate) fn mint_refresh(&mut self, user: u64) -> String {
        let token = self.new_token(user);
        let expires = self.now_secs() + self.cfg.oauth.refresh_ttl.as_secs() as i64;
        self.oauth
            .refresh
            .insert(token.clone(), Grant { user, expires });
        token
    }

    /// A single-use authorization code for `user`, valid 30 s.
    pub(crate) fn mint_code(&mut self, user: u64) -> String {
        let code = self.new_token(user);
        let expires = self.now_secs() + CODE_TTL_SECS;
        self.oauth
            .codes
            .insert(code.clone(), Grant { user, expires });
        code
    }

    pub(crate) fn expire_access_tokens(&mut self) {
        let now = self.now_secs();
        for grant in self.oauth.access.values_mut() {
            grant.expires = grant.expires.min(now);
        }
    }

    /// The admin revoked the app's access: no token issued so far works.
    pub(crate) fn revoke_grants(&mut self) {
        self.oauth.access.clear();
        self.oauth.refresh.clear();
        self.oauth.codes.clear();
    }

    /// REST authentication with an access token (`Bitrix\Rest\OAuth\Auth`): the user it
    /// acts as, or the 401 the portal answers.
    pub(crate) fn check_access(&self, token: &str) -> Result<u64, ApiError> {
        let Some(grant) = self.oauth.access.get(token) else {
            return Err(ApiError::new(
                401,
                "invalid_token",
                "Unable to get application by token",
            ));
        };
        if grant.expires <= self.now_secs() {
            return Err(ApiError::new(
                401,
                "expired_token",
                "The access token provided has expired",
            ));
        }
        if !self.users.get(&grant.user).is_some_and(|u| u.active) {
            return Err(ApiError::new(
                401,
                "authorization_error",
                "Unable to authorize user",
            ));
        }
        Ok(grant.user)
    }

    /// The token endpoint's success body, in the field order the real server uses.
    fn token_answer(&mut self, user: u64) -> Value {
        let (access, expires) = self.mint_access(user);
        let refresh = self.mint_refresh(user);
        self.oauth.issued.push(access.clone());
        self.oauth.issued.push(refresh.clone());
        map([
            ("access_token", Value::Str(access)),
            ("expires", Value::Int(expires)),
            (
                "expires_in",
                Value::Int(self.cfg.oauth.access_ttl.as_secs() as i64),
            ),
            ("scope", Value::Str(self.oauth_scope())),
            ("domain", Value::Str(self.domain())),
            ("server_endpoint", Value::Str(self.rest_endpoint())),
            ("status", Value::from("L")),
            ("client_endpoint", Value::Str(self.rest_endpoint())),
            ("member_id", Value::Str(self.member_id())),
            ("user_id", Value::from(user)),
            ("refresh_token", Value::Str(refresh)),
        ])
    }

    /// `GET /oauth/token/`: `(status, body)`.
    fn token_grant(&mut self, params: &Arr) -> (u16, Value) {
        let get = |k: &str| {
            params
                .get(k)
                .map(Value::to_php_string)
                .filter(|s| !s.is_empty())
        };
        let error = |code: &str| map([("error", Value::from(code))]);
        let described = |code: &str, description: &str| {
            map([
                ("error", Value::from(code)),
                ("error_description", Value::from(description)),
            ])
        };
        // The client is checked first: a wrong secret with any code is `invalid_client`.
        if get("client_id").as_deref() != Some(self.cfg.oauth.client_id.as_str()) {
            return (200, error("wrong_client"));
        }
        let secret_ok = get("client_secret").is_some_and(|s| {
            s.len() == self.cfg.oauth.client_secret.len()
                && s.bytes()
                    .zip(self.cfg.oauth.client_secret.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !secret_ok {
            return (400, error("invalid_client"));
        }
        let now = self.now_secs();
        let (store, key) = match get("grant_type").as_deref() {
            Some("refresh_token") => (&mut self.oauth.refresh, "refresh_token"),
            Some("authorization_code") => (&mut self.oauth.codes, "code"),
            Some(_) => {
                return (
                    400,
                    described("unsupported_grant_type", "Grant type is not supported"),
                );
            }
            None => {
                return (
                    400,
                    described(
                        "invalid_request",
                        "Invalid grant_type parameter or parameter missing",
                    ),
                );
            }
        };
        let Some(presented) = get(key) else {
            return (
                400,
                described("invalid_request", &format!("No \"{key}\" parameter found")),
            );
        };
        // Strict rotation: a refresh token (or code) works once.
        let Some(grant) = store.remove(&presented) else {
            return (400, error("invalid_grant"));
        };
        if grant.expires <= now {
            return (400, error("invalid_grant"));
        }
        if key == "refresh_token" {
            self.oauth.refreshes += 1;
        }
        (200, self.token_answer(grant.user))
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/oauth/token", any(token))
        .route("/oauth/token/", any(token))
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/authorize/", get(authorize))
}

fn json(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let text = to_php_json(
        body,
        JsonStyle {
            escape_unicode: true,
        },
    );
    let mut resp = (status, Body::from(text)).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

async fn token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match shared.write(|p| p.take_named_fault(TOKEN_FAULT)) {
        Some(FaultKind::ConnectionReset) => {
            conn.reset();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(FaultKind::ServerError(status)) => return html_error(status),
        Some(FaultKind::QueryLimitExceeded) => {
            let body = map([
                ("error", Value::from("QUERY_LIMIT_EXCEEDED")),
                ("error_description", Value::from("Too many requests")),
            ]);
            return json(503, &body);
        }
        Some(FaultKind::MethodError {
            status,
            code,
            description,
        }) => {
            let body = map([
                ("error", Value::Str(code)),
                ("error_description", Value::Str(description)),
            ]);
            return json(status, &body);
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::OperationTimeLimit) | None => {}
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let params = params::collect(uri.query(), content_type, &body);
    let (status, body) = shared.write(|p| p.token_grant(&params));
    json(status, &body)
}

/// The browser step: the installing admin is logged in and the app is installed, so
/// the portal redirects straight to `redirect_uri` with a fresh code.
async fn authorize(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let params = params::collect(uri.query(), None, &[]);
    let state = params
        .get("state")
        .map(Value::to_php_string)
        .unwrap_or_default();
    let client_id = params
        .get("client_id")
        .map(Value::to_php_string)
        .unwrap_or_default();
    let location = shared.write(|p| {
        if client_id != p.cfg.oauth.client_id {
            return None;
        }
        let code = p.mint_code(p.oauth_user());
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", &state)
            .append_pair("domain", &p.domain())
            .append_pair("member_id", &p.member_id())
            .append_pair("scope", &p.oauth_scope())
            .append_pair("server_domain", &p.domain())
            .finish();
        let uri = &p.cfg.oauth.redirect_uri;
        let sep = if uri.contains('?') { '&' } else { '?' };
        Some(format!("{uri}{sep}{query}"))
    });
    match location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        Some(location) => {
            let mut resp = StatusCode::FOUND.into_response();
            resp.headers_mut().insert(LOCATION, location);
            resp
        }
        None => {
            let mut resp = (
                StatusCode::BAD_REQUEST,
                "<html><body>Application not found</body></html>",
            )
                .into_response();
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
    }
}
