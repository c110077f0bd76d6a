//! Configuration that changes without a restart.
//!
//! On SIGHUP, and when `bridge.yaml`'s content changes on disk (checked every two seconds), the
//! file is loaded and validated completely before anything changes:
//!
//! - invalid: the configuration in force keeps running; the error (file:line:column) goes to
//!   the log and to `/readyz` (`config.last_error`);
//! - valid but changing something only a restart can (credentials, the store, the intake
//!   mode, `http`, a chat platform added or removed): refused the same way, naming what;
//! - otherwise the new router is put in force in one swap (new mappings start from now, see
//!   [`crate::mappings`]; removed ones stop receiving), and every side retunes its rates and
//!   intervals. The journal and effects in flight are untouched. The generation goes up in
//!   `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use livefeed_core::adapters::BoxFuture;
use livefeed_core::health::Health;
use livefeed_core::metrics::Metrics;
use livefeed_core::model::Platform;
use livefeed_core::route::Routing;
use livefeed_core::store::{Store, now_ms};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::mappings::{self, Resolved};

/// A setting the bridge reads each time it uses it, so a reload can change it in place.
#[derive(Debug, Clone)]
pub struct Live<T>(Arc<RwLock<T>>);

impl<T: Clone> Live<T> {
    /// Starting at `value`.
    pub fn new(value: T) -> Self {
        Live(Arc::new(RwLock::new(value)))
    }

    /// The value now.
    pub fn get(&self) -> T {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Change it.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// A side's part of a reload: apply its new rates and intervals.
pub type Retune = Box<dyn Fn(&Config) + Send + Sync>;

/// A side's way to name a newly mapped room as the platform does (Matrix: alias → room id).
pub type Resolve = Arc<dyn Fn(String) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Reloads the configuration while the bridge runs.
pub struct Reloader {
    path: PathBuf,
    current: Config,
    digest: Option<[u8; 32]>,
    routing: Routing,
    resolved: Resolved,
    resolvers: BTreeMap<Platform, Resolve>,
    retunes: Vec<Retune>,
    store: Store,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    generation: u64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration is in force, as this generation.
    Applied(u64),
    /// The file did not change.
    Unchanged,
    /// Refused; the configuration in force stays.
    Refused(String),
}

/// The parts of a running bridge a reload touches.
pub struct Parts {
    /// The router in force.
    pub routing: Routing,
    /// Rooms as the platforms resolved them at start.
    pub resolved: Resolved,
    /// Per platform, how to resolve a newly mapped room.
    pub resolvers: BTreeMap<Platform, Resolve>,
    /// Each side's retuning.
    pub retunes: Vec<Retune>,
    /// The store (start times of mappings).
    pub store: Store,
    /// `/readyz`.
    pub health: Arc<Health>,
    /// `/metrics`.
    pub metrics: Arc<Metrics>,
}

fn digest(path: &std::path::Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

impl Reloader {
    /// A reloader for the bridge started with `config` (generation 1).
    pub fn new(config: &Config, parts: Parts) -> Self {
        parts.health.config_loaded(1);
        parts.metrics.config_generation.set(1);
        parts.metrics.config_loaded_seconds.set(now_ms() / 1000);
        Reloader {
            path: config.path.clone(),
            digest: digest(&config.path),
            current: config.clone(),
            routing: parts.routing,
            resolved: parts.resolved,
            resolvers: parts.resolvers,
            retunes: parts.retunes,
            store: parts.store,
            health: parts.health,
            metrics: parts.metrics,
            generation: 1,
        }
    }

    /// Reload on SIGHUP and whenever the file's content changes, until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = hup => true,
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                _ = cancel.cancelled() => return,
            };
            self.reload(forced).await;
        }
    }

    /// Load the file again: when `forced` (SIGHUP), even if its content looks unchanged.
    pub async fn reload(&mut self, forced: bool) -> Outcome {
        let now = digest(&self.path);
        if !forced && (now.is_none() || now == self.digest) {
            return Outcome::Unchanged;
        }
        self.digest = now;
        let outcome = self.try_reload().await;
        match &outcome {
            Outcome::Applied(generation) => {
                info!(generation, path = %self.path.display(), "configuration reloaded");
            }
            Outcome::Refused(why) => {
                warn!(path = %self.path.display(), error = %why, "configuration reload refused; the configuration in force keeps running");
                self.health.config_refused(why);
            }
            Outcome::Unchanged => {}
        }
        outcome
    }

    async fn try_reload(&mut self) -> Outcome {
        let new = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        let needs_restart = restart_needed(&self.current, &new);
        if !needs_restart.is_empty() {
            return Outcome::Refused(format!(
                "{} changed; that needs a restart (the running configuration stays until then)",
                needs_restart.join(", ")
            ));
        }
        let mut resolved = self.resolved.clone();
        for room in new.rooms() {
            let known = resolved
                .get(&room.platform)
                .is_some_and(|r| r.contains_key(&room.id));
            if known {
                continue;
            }
            let id = match self.resolvers.get(&room.platform) {
                Some(resolve) => match resolve(room.id.clone()).await {
                    Ok(id) => id,
                    Err(e) => return Outcome::Refused(format!("{room}: {e}")),
                },
                None => room.id.clone(),
            };
            resolved
                .entry(room.platform.clone())
                .or_default()
                .insert(room.id.clone(), id);
        }
        let router = match mappings::router_from(&new, &resolved, &self.store) {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        if let Err(e) = mappings::forget_removed(&router, &self.store) {
            warn!(error = %e, "cannot forget removed mappings' start times");
        }
        self.routing.replace(router);
        for retune in &self.retunes {
            retune(&new);
        }
        self.resolved = resolved;
        self.current = new;
        self.generation += 1;
        self.health.config_loaded(self.generation);
        self.metrics.config_generation.set(self.generation as i64);
        self.metrics.config_loaded_seconds.set(now_ms() / 1000);
        Outcome::Applied(self.generation)
    }
}

/// What changed between `old` and `new` that only a restart can apply.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (ob, nb) = (&old.bitrix24, &new.bitrix24);
    let mut differs = |what: &'static str, changed: bool| {
        if changed {
            out.push(what);
        }
    };
    differs("bitrix24.webhook_url", ob.webhook_url != nb.webhook_url);
    differs("bitrix24.intake", ob.intake != nb.intake);
    differs("bitrix24.oauth", ob.oauth != nb.oauth);
    differs("bitrix24.push", ob.push != nb.push);
    differs(
        "bitrix24.request_timeout",
        ob.request_timeout != nb.request_timeout,
    );
    differs(
        "bitrix24.rate_limit (switched on or off)",
        ob.rate_limit.is_some() != nb.rate_limit.is_some(),
    );
    let slack = |c: &Config| {
        c.slack.as_ref().map(|s| {
            (
                s.bot_token.clone(),
                s.intake.clone(),
                s.api_base.clone(),
                s.request_timeout,
            )
        })
    };
    differs("slack credentials or intake", slack(old) != slack(new));
    let paced = |c: &Config| {
        c.slack
            .as_ref()
            .map(|s| (s.post_rate.is_some(), s.catch_up_rate.is_some()))
    };
    differs(
        "slack pacing (switched on or off)",
        paced(old).is_some() && paced(old) != paced(new),
    );
    differs("matrix", old.matrix != new.matrix);
    differs("store.path", old.store.path != new.store.path);
    differs(
        "store.cache_capacity",
        old.store.cache_bytes != new.store.cache_bytes,
    );
    differs("http", old.http != new.http);
    differs("important", old.important != new.important);
    differs("files", old.files != new.files);
    differs(
        "people",
        old.people.match_by_email != new.people.match_by_email
            || old.people.comments_as_author != new.people.comments_as_author
            || old.people.links != new.people.links
            || old.people.refresh != new.people.refresh,
    );
    out
}
