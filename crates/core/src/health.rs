//! What each side of the bridge last reported: connected or not, last success, last error.
//! Read by `/readyz`; written by intakes and clients.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::store::now_ms;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
/// What one side (a platform) last reported.
pub struct SideHealth {
    /// Its intake and its calls work.
    pub connected: bool,
    /// Unix ms of the last successful poll / sync / handshake.
    pub last_ok_ms: Option<i64>,
    /// The last failure, in words safe to show (never a secret).
    pub last_error: Option<String>,
    /// Credentials refused: the side is down until an operator acts.
    pub auth_failed: bool,
    /// The side works but holds something back for an operator, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
/// The configuration in force, as `/readyz` shows it.
pub struct ConfigHealth {
    /// 1 at start, one more per applied reload.
    pub generation: u64,
    /// When it was loaded (unix ms).
    pub loaded_at_ms: i64,
    /// Why the last reload was not applied, if it was not.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
/// Every side's health, keyed by the side's platform name. Shared by intakes, clients and the
/// engine. Also the configuration's generation.
pub struct Health {
    sides: Mutex<BTreeMap<String, SideHealth>>,
    config: Mutex<ConfigHealth>,
}

impl Health {
    /// Make `side` appear in `/readyz` (not connected) before it reports anything.
    pub fn register(&self, side: &str) {
        self.with(side, |_| {});
    }

    /// A call or an intake step on `side` worked.
    pub fn ok(&self, side: &str) {
        self.with(side, |s| {
            s.connected = true;
            s.last_ok_ms = Some(now_ms());
            s.last_error = None;
            s.auth_failed = false;
        });
    }

    /// A call or an intake step on `side` failed; `auth` when its credentials were refused.
    pub fn error(&self, side: &str, error: &str, auth: bool) {
        self.with(side, |s| {
            s.connected = false;
            s.last_error = Some(error.to_string());
            s.auth_failed = auth;
        });
    }

    /// A call on a side that had failed with refused credentials worked again.
    pub fn recovered(&self, side: &str) {
        self.with(side, |s| {
            if s.auth_failed {
                s.connected = true;
                s.auth_failed = false;
                s.last_error = None;
            }
        });
    }

    /// The side works but holds something back for an operator (`None` when it no longer
    /// does).
    pub fn degraded(&self, side: &str, reason: Option<String>) {
        self.with(side, |s| s.degraded = reason);
    }

    /// The side's connection dropped (it will reconnect).
    pub fn disconnected(&self, side: &str) {
        self.with(side, |s| s.connected = false);
    }

    /// A configuration was put in force.
    pub fn config_loaded(&self, generation: u64) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = ConfigHealth {
            generation,
            loaded_at_ms: now_ms(),
            last_error: None,
        };
    }

    /// A reload was refused; the configuration in force stays.
    pub fn config_refused(&self, error: &str) {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(error.to_string());
    }

    /// The configuration in force.
    pub fn config(&self) -> ConfigHealth {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A copy of every side's state.
    pub fn snapshot(&self) -> BTreeMap<String, SideHealth> {
        self.sides.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with(&self, side: &str, f: impl FnOnce(&mut SideHealth)) {
        let mut sides = self.sides.lock().unwrap_or_else(|p| p.into_inner());
        f(sides.entry(side.to_string()).or_default());
    }
}
