//! OAuth for a local app (docs/platforms/bitrix24.md §1.5): the access token REST calls carry,
//! refreshed before it expires, and the refresh token, which the portal rotates on every
//! refresh and which is kept durably in the store.
//!
//! The grant in the store descends from the `refresh_token` in `bridge.yaml` (or from
//! `livefeed-bridge bitrix24 authorize`). It records a hash of the configured token it came
//! from: when the operator configures a different one, that one is newer and wins; otherwise
//! the store's rotated token is the live one and the configured one is spent.
//!
//! A refresh is written to the store and flushed before its access token is used. The portal
//! invalidates the old refresh token as it answers, so a crash in the instant between its
//! answer and that flush loses the grant; the bridge then reports `invalid_grant` in `/readyz`
//! and `check`, and an operator authorizes again.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tracing::{debug, info};

use livefeed_core::store::{Store, StoreError, now_ms};

use super::client::{ApiError, as_u64, value_text};
use super::config::OAuthConfig;
use crate::secret::{Secret, scrub};
use crate::upstream::ErrorClass;

const KEY: &str = "bitrix24/oauth";
/// Refresh this long before the access token expires (it lives an hour), so no call meets
/// an expired token in the normal course; one refresh per token lifetime, never per call.
/// Short-lived tokens refresh at three quarters of their life.
const MARGIN_MS: i64 = 120_000;

/// The grant as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    refresh_token: String,
    access_token: String,
    expires_at_ms: i64,
    /// When to refresh: shortly before `expires_at_ms`.
    #[serde(default)]
    refresh_at_ms: i64,
    /// `https://PORTAL/rest/`.
    client_endpoint: String,
    user_id: u64,
    scope: String,
    /// Hash of the configured refresh token this grant descends from.
    seed: Option<String>,
}

/// What a REST call needs: the token and where to send it.
#[derive(Clone)]
pub struct Access {
    /// The access token (a secret).
    pub token: Secret,
    /// `https://PORTAL/rest/`.
    pub endpoint: String,
}

/// The app's tokens. Cheap to clone; clones share one grant and refresh one at a time.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    cfg: OAuthConfig,
    store: Store,
    grant: Mutex<Option<Grant>>,
}

fn seed_of(token: &Secret) -> String {
    let digest = Sha256::digest(token.expose().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl Tokens {
    /// The grant from the store, or from the config when the config's token is new.
    pub fn load(cfg: &OAuthConfig, store: Store, timeout: Duration) -> Result<Tokens, StoreError> {
        let stored: Option<Grant> = store.cursor(KEY)?;
        let configured = cfg.refresh_token.as_ref().map(|t| (t, seed_of(t)));
        let grant = match (stored, configured) {
            (Some(g), Some((_, seed))) if g.seed.as_deref() == Some(&seed) => Some(g),
            (Some(g), None) => Some(g),
            (_, Some((token, seed))) => Some(Grant {
                refresh_token: token.expose().to_string(),
                access_token: String::new(),
                expires_at_ms: 0,
                refresh_at_ms: 0,
                client_endpoint: format!("{}/rest/", cfg.portal),
                user_id: 0,
                scope: String::new(),
                seed: Some(seed),
            }),
            (None, None) => None,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("livefeed-bridge/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| StoreError::Io(std::io::Error::other(e.without_url())))?;
        Ok(Tokens {
            inner: Arc::new(Inner {
                http,
                cfg: cfg.clone(),
                store,
                grant: Mutex::new(grant),
            }),
        })
    }

    /// A valid access token, refreshed first when it expires within two minutes.
    pub async fn access(&self) -> Result<Access, ApiError> {
        let mut grant = self.inner.grant.lock().await;
        let Some(g) = grant.as_ref() else {
            return Err(no_grant());
        };
        if g.access_token.is_empty() || g.refresh_at_ms.min(g.expires_at_ms) <= now_ms() {
            let fresh = self.refresh(g).await?;
            *grant = Some(fresh);
        }
        let g = grant.as_ref().expect("set above");
        Ok(Access {
            token: Secret::new(g.access_token.clone()),
            endpoint: g.client_endpoint.clone(),
        })
    }

    /// Refresh now, whatever the token's age (`check` proves the grant still refreshes).
    pub async fn refresh_now(&self) -> Result<Access, ApiError> {
        {
            let mut grant = self.inner.grant.lock().await;
            if let Some(g) = grant.as_mut() {
                g.refresh_at_ms = 0;
            }
        }
        self.access().await
    }

    /// The portal said `expired_token` for `used`: the next [`Tokens::access`] refreshes.
    pub async fn expired(&self, used: &Secret) {
        let mut grant = self.inner.grant.lock().await;
        if let Some(g) = grant.as_mut()
            && g.access_token == used.expose()
        {
            g.expires_at_ms = 0;
            g.refresh_at_ms = 0;
        }
    }

    /// The user the app acts as (after the first token).
    pub async fn user_id(&self) -> Result<u64, ApiError> {
        self.access().await?;
        let grant = self.inner.grant.lock().await;
        Ok(grant.as_ref().map(|g| g.user_id).unwrap_or(0))
    }

    /// The secrets to scrub from error texts: the current tokens.
    pub async fn secrets(&self) -> Vec<Secret> {
        let grant = self.inner.grant.lock().await;
        let mut out = vec![self.inner.cfg.client_secret.clone()];
        if let Some(g) = grant.as_ref() {
            out.push(Secret::new(g.access_token.clone()));
            out.push(Secret::new(g.refresh_token.clone()));
        }
        out
    }

    async fn refresh(&self, old: &Grant) -> Result<Grant, ApiError> {
        let cfg = &self.inner.cfg;
        let params = [
            ("grant_type", "refresh_token"),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.expose()),
            ("refresh_token", old.refresh_token.as_str()),
        ];
        let answer = token_request(&self.inner.http, cfg, &params, &[&old.refresh_token]).await?;
        let mut grant = grant_from(&answer, cfg)?;
        grant.seed = old.seed.clone();
        // The old refresh token is spent from here on: the new one must be durable before
        // anything else happens.
        livefeed_core::crashpoint::hit("bitrix24.oauth.answered");
        self.inner
            .store
            .put_cursor(KEY, &grant)
            .map_err(store_failure)?;
        self.inner.store.sync().await.map_err(store_failure)?;
        livefeed_core::crashpoint::hit("bitrix24.oauth.stored");
        debug!(user = grant.user_id, "Bitrix24 access token refreshed");
        Ok(grant)
    }
}

/// `livefeed-bridge bitrix24 authorize`: trade an authorization code for a grant and keep it
/// in `store`, marked as descending from the configured refresh token (if any), so that
/// token is not mistaken for a newer one. Returns the user and scopes.
pub async fn authorize(
    cfg: &OAuthConfig,
    store: &Store,
    code: &str,
    timeout: Duration,
) -> Result<(u64, String), ApiError> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| {
            failure(
                "oauth/token",
                ErrorClass::Transient,
                "client",
                &e.without_url().to_string(),
            )
        })?;
    let params = [
        ("grant_type", "authorization_code"),
        ("client_id", cfg.client_id.as_str()),
        ("client_secret", cfg.client_secret.expose()),
        ("code", code),
    ];
    let answer = token_request(&http, cfg, &params, &[code]).await?;
    let mut grant = grant_from(&answer, cfg)?;
    grant.seed = cfg.refresh_token.as_ref().map(seed_of);
    store.put_cursor(KEY, &grant).map_err(store_failure)?;
    store.sync().await.map_err(store_failure)?;
    info!(user = grant.user_id, "Bitrix24 app authorized");
    Ok((grant.user_id, grant.scope))
}

/// The authorization URL an administrator opens (`state` guards against a stale paste).
pub fn authorize_url(cfg: &OAuthConfig, state: &str) -> String {
    let mut url = reqwest::Url::parse(&format!("{}/oauth/authorize/", cfg.portal))
        .expect("the portal URL was validated");
    url.query_pairs_mut()
        .append_pair("client_id", &cfg.client_id)
        .append_pair("state", state);
    url.to_string()
}

/// The code from what an administrator pasted: the code itself, or the whole redirect URL.
pub fn code_from(pasted: &str) -> Option<(String, Option<String>)> {
    let pasted = pasted.trim();
    if let Ok(url) = reqwest::Url::parse(pasted) {
        let get = |k: &str| {
            url.query_pairs()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.into_owned())
        };
        return get("code").map(|c| (c, get("state")));
    }
    let plain = !pasted.is_empty()
        && pasted
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    plain.then(|| (pasted.to_string(), None))
}

async fn token_request(
    http: &reqwest::Client,
    cfg: &OAuthConfig,
    params: &[(&str, &str)],
    also_secret: &[&str],
) -> Result<Value, ApiError> {
    const METHOD: &str = "oauth/token";
    let url = format!("{}oauth/token/", cfg.server);
    let secrets: Vec<Secret> = also_secret
        .iter()
        .map(|s| Secret::new(*s))
        .chain([cfg.client_secret.clone()])
        .collect();
    let refs: Vec<&Secret> = secrets.iter().collect();
    // The query holds the client secret and the refresh token: errors drop the URL.
    let sent = http.get(&url).query(params).send().await;
    let response = sent.map_err(|e| {
        failure(
            METHOD,
            ErrorClass::Transient,
            "network",
            &scrub(&e.without_url().to_string(), &refs),
        )
    })?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if let Some(code) = body.get("error").map(value_text) {
        let description = body
            .get("error_description")
            .map(value_text)
            .unwrap_or_default();
        let class = match code.as_str() {
            "invalid_grant" | "invalid_client" | "invalid_scope" | "insufficient_scope"
            | "PAYMENT_REQUIRED" | "invalid_request" => ErrorClass::Auth,
            _ if status >= 500 => ErrorClass::Transient,
            _ => ErrorClass::Auth,
        };
        let mut e = failure(METHOD, class, &code, &scrub(&description, &refs));
        e.status = Some(status);
        return Err(e);
    }
    if status >= 500 || !body.is_object() {
        return Err(failure(
            METHOD,
            ErrorClass::Transient,
            "",
            &format!("HTTP {status} without a token"),
        ));
    }
    Ok(body)
}

fn grant_from(answer: &Value, cfg: &OAuthConfig) -> Result<Grant, ApiError> {
    let text = |k: &str| answer.get(k).map(value_text).unwrap_or_default();
    let access_token = text("access_token");
    let refresh_token = text("refresh_token");
    if access_token.is_empty() || refresh_token.is_empty() {
        return Err(failure(
            "oauth/token",
            ErrorClass::Transient,
            "",
            "the token answer has no access_token or refresh_token",
        ));
    }
    let expires_in = answer
        .get("expires_in")
        .and_then(as_u64)
        .unwrap_or(3600)
        .min(86_400) as i64;
    let endpoint = text("client_endpoint");
    let now = now_ms();
    let life_ms = expires_in * 1000;
    Ok(Grant {
        refresh_token,
        access_token,
        expires_at_ms: now + life_ms,
        refresh_at_ms: now + life_ms - MARGIN_MS.min(life_ms / 4),
        client_endpoint: if endpoint.starts_with("http") {
            if endpoint.ends_with('/') {
                endpoint
            } else {
                format!("{endpoint}/")
            }
        } else {
            format!("{}/rest/", cfg.portal)
        },
        user_id: answer.get("user_id").and_then(as_u64).unwrap_or(0),
        scope: text("scope"),
        seed: None,
    })
}

fn no_grant() -> ApiError {
    failure(
        "oauth/token",
        ErrorClass::Auth,
        "NO_GRANT",
        "no refresh token: set bitrix24.oauth.refresh_token or run `livefeed-bridge bitrix24 authorize`",
    )
}

fn store_failure(e: StoreError) -> ApiError {
    failure(
        "oauth/token",
        ErrorClass::Transient,
        "STORE",
        &format!("cannot keep the rotated token: {e}"),
    )
}

fn failure(method: &str, class: ErrorClass, code: &str, description: &str) -> ApiError {
    ApiError {
        method: method.to_string(),
        status: None,
        code: code.to_string(),
        description: description.to_string(),
        class,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_redirect_or_a_bare_code_gives_the_code() {
        assert_eq!(
            code_from("https://bridge.example/cb?code=abc123&state=s1&domain=x"),
            Some(("abc123".into(), Some("s1".into())))
        );
        assert_eq!(
            code_from("  abc-123_x.y \n"),
            Some(("abc-123_x.y".into(), None))
        );
        assert_eq!(code_from("https://bridge.example/cb?state=s1"), None);
        assert_eq!(code_from("not a code!"), None);
        assert_eq!(code_from(""), None);
    }

    #[test]
    fn seeds_are_stable_and_do_not_contain_the_token() {
        let t = Secret::new("r3fr3sh-t0k3n-value");
        assert_eq!(seed_of(&t), seed_of(&Secret::new("r3fr3sh-t0k3n-value")));
        assert_ne!(seed_of(&t), seed_of(&Secret::new("other")));
        assert!(!seed_of(&t).contains("r3fr3sh"));
        assert_eq!(seed_of(&t).len(), 32);
    }
}
