//! Assembly: turns a validated [`Config`] into running parts — store, adapters, engine,
//! intakes, HTTP server — and stops them again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bitrix::adapter::BitrixFeed;
use crate::bitrix::client::BitrixClient;
use crate::bitrix::intake::PollIntake;
use crate::bitrix::people::People;
use crate::config::{Config, SlackIntake as SlackIntakeMode};
use crate::http::{self, HttpState};
use crate::matrix::adapter::MatrixChat;
use crate::matrix::intake::MatrixIntake;
use crate::matrix::session;
use crate::slack::adapter::SlackChat;
use crate::slack::api::SlackApi;
use crate::slack::events::EventsApi;
use crate::slack::intake::{Identity, SlackIntake};
use crate::slack::socket::SocketMode;
use livefeed_core::adapters::{ChatAdapter, FeedAdapter};
use livefeed_core::engine::{Engine, EngineConfig};
use livefeed_core::health::Health;
use livefeed_core::journal::Journal;
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{Platform, Room};
use livefeed_core::route::{Route, Router};
use livefeed_core::store::{Store, StoreError};

/// Knobs that are not in `bridge.yaml` (tests shorten the engine's retry delays).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub engine: EngineConfig,
    /// Override of the Bitrix24 client's retry backoff: (min, max, attempts).
    pub bitrix_backoff: Option<(Duration, Duration, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("{0}")]
    Matrix(String),
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
    #[error("Slack auth.test failed: {0}")]
    Slack(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running bridge. Dropping it without [`Running::shutdown`] aborts every task.
pub struct Running {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    pub http_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub store: Store,
    pub journal: Journal,
}

/// The router for a config; Matrix aliases are replaced by the room ids they resolved to.
pub fn router_from(config: &Config, resolved: &BTreeMap<String, String>) -> Router {
    Router::new(
        config
            .mappings
            .iter()
            .map(|m| Route {
                name: m.name.clone(),
                audiences: m.audiences.clone(),
                rooms: m
                    .rooms
                    .iter()
                    .map(|r| match (r.platform, resolved.get(&r.id)) {
                        (Platform::Matrix, Some(id)) => Room::new(Platform::Matrix, id.clone()),
                        _ => r.clone(),
                    })
                    .collect(),
                replies: m.replies,
            })
            .collect(),
    )
}

pub async fn start(config: &Config, options: Options) -> Result<Running, StartError> {
    let opening = std::time::Instant::now();
    let store = open_store(&config.store.path).await?;
    info!(
        path = %config.store.path.display(),
        took_ms = opening.elapsed().as_millis() as u64,
        pending = store.journal_depth(),
        "store opened"
    );
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let journal = Journal::new(store.clone(), metrics.clone());
    let mut chats: Vec<Arc<dyn ChatAdapter>> = Vec::new();

    // Matrix first: its room aliases must be resolved before routing.
    let mut resolved = BTreeMap::new();
    let mut matrix_intake = None;
    if let Some(m) = &config.matrix {
        let client = session::connect(m, &config.store.path.join("matrix"), &store)
            .await
            .map_err(|e| StartError::Matrix(e.to_string()))?;
        let mut room_ids = BTreeSet::new();
        for room in config
            .rooms()
            .into_iter()
            .filter(|r| r.platform == Platform::Matrix)
        {
            let id = session::resolve_room(&client, &room.id)
                .await
                .map_err(|e| StartError::Matrix(format!("Matrix room {e}")))?;
            resolved.insert(room.id.clone(), id.to_string());
            room_ids.insert(id);
        }
        let own = session::own_user(&client)
            .ok_or_else(|| StartError::Matrix("Matrix: no user after sign-in".into()))?;
        info!(user = %own, rooms = room_ids.len(), "Matrix bot signed in");
        chats.push(Arc::new(MatrixChat::new(client.clone(), metrics.clone())));
        matrix_intake = Some(MatrixIntake::new(
            client,
            journal.clone(),
            room_ids,
            own,
            health.clone(),
            m.sync_timeout,
        ));
    }
    let router = router_from(config, &resolved);

    let b = &config.bitrix24;
    let mut bitrix = BitrixClient::new(
        b.webhook_url.clone(),
        b.rate_limit.map(|r| (r.per_second, r.burst)),
        b.request_timeout,
        metrics.clone(),
    )
    .map_err(|e| StartError::Client(e.without_url().to_string()))?;
    if let Some((min, max, times)) = options.bitrix_backoff {
        bitrix = bitrix.with_backoff(min, max, times);
    }
    let feed: Arc<dyn FeedAdapter> = Arc::new(BitrixFeed::new(bitrix.clone()));

    let mut slack_events = None;
    if let Some(s) = &config.slack {
        let api = SlackApi::new(
            s.api_base.clone(),
            s.bot_token.clone(),
            s.post_rate.map(|r| (r.per_second, r.burst)),
            s.request_timeout,
            metrics.clone(),
        )
        .map_err(|e| StartError::Client(e.without_url().to_string()))?;
        let auth = api
            .auth_test()
            .await
            .map_err(|e| StartError::Slack(e.to_string()))?;
        let text = |k: &str| {
            auth.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let own = Identity {
            user_id: text("user_id"),
            bot_id: text("bot_id"),
            app_id: auth
                .get("app_id")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        info!(team = %text("team"), bot_user = %own.user_id, "Slack bot identified");
        let channels = router
            .rooms()
            .into_iter()
            .filter(|r| r.platform == Platform::Slack)
            .map(|r| r.id)
            .collect();
        chats.push(Arc::new(SlackChat::new(
            api.clone(),
            own.bot_id.clone(),
            b.portal_url.clone(),
        )));
        let intake = SlackIntake::new(api.clone(), journal.clone(), own, channels);
        match &s.intake {
            SlackIntakeMode::SocketMode { app_token } => {
                let socket = SocketMode::new(api, app_token.clone(), intake, health.clone());
                tasks.spawn(socket.run(cancel.clone()));
            }
            SlackIntakeMode::EventsApi { signing_secret } => {
                health.ok("slack");
                slack_events = Some(EventsApi {
                    signing_secret: signing_secret.clone(),
                    intake,
                });
            }
        }
    }

    if let Some(intake) = matrix_intake {
        tasks.spawn(intake.run(cancel.clone()));
    }
    tasks.spawn(housekeeping(store.clone(), cancel.clone()));
    let running_journal = journal.clone();
    let engine = Engine::new(
        journal.clone(),
        router.clone(),
        chats,
        feed,
        metrics.clone(),
        options.engine.clone(),
        cancel.clone(),
    )
    .reporting_to(health.clone());
    tasks.spawn(async move {
        if let Err(e) = engine.run().await {
            warn!(error = %e, "engine stopped on a store error");
        }
    });

    let people = People::new(bitrix.clone(), store.clone());
    let poll = PollIntake::new(
        bitrix,
        journal,
        people,
        router.audiences().into_iter().collect(),
        b.poll,
        b.backfill,
        b.portal_url.clone(),
        health.clone(),
    );
    tasks.spawn(poll.run(cancel.clone()));

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.http.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.http.listen,
        source,
    })?;
    let app = http::router(
        HttpState {
            metrics: metrics.clone(),
            health: health.clone(),
            store: store.clone(),
            journal: running_journal.clone(),
        },
        slack_events,
        config.http.max_body_bytes,
    );
    let stop = cancel.clone();
    tasks.spawn(async move {
        // Peer addresses let the admin API answer loopback callers only.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    info!(listen = %http_addr, "livefeed-bridge running");
    Ok(Running {
        cancel,
        tasks,
        http_addr,
        metrics,
        health,
        store,
        journal: running_journal,
    })
}

/// Forget deduplication keys and reply tombstones older than a day, hourly.
async fn housekeeping(store: Store, cancel: CancellationToken) {
    const DAY_MS: i64 = 86_400_000;
    loop {
        match store.prune(DAY_MS) {
            Ok(n) if n > 0 => info!(removed = n, "pruned old deduplication records"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Open the store, waiting a little if a bridge just stopped in this process still holds it.
pub async fn open_store(path: &std::path::Path) -> Result<Store, StartError> {
    Store::open_waiting(path, Duration::from_secs(5))
        .await
        .map_err(|source| StartError::Store {
            path: path.display().to_string(),
            source,
        })
}

impl Running {
    /// Stop intake, let in-flight work end (everything unfinished stays journaled), flush the
    /// store. Tasks still running after `grace` are aborted.
    pub async fn shutdown(mut self, grace: Duration) {
        self.cancel.cancel();
        let joined = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            warn!("some tasks did not stop in time; aborting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        if let Err(e) = self.store.sync().await {
            warn!(error = %e, "final store flush failed");
        }
        info!("livefeed-bridge stopped");
    }

    /// Stop abruptly, as a crash would: no final flush, tasks aborted mid-flight.
    pub async fn abort(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
